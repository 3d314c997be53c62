"""Blob storage on Azurite through the real azure-storage-blob client: the transfers every part shares.

Concurrent uploads and downloads (many small files never go one at a time), large files streamed in
blocks (memory stays flat whatever the size), downloads written to a temporary name and renamed
(no half file is ever visible under its real name), bounded retries so a stopped Azurite is
reported within seconds with the endpoint and the fix.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.config import Settings
from sandbox.errors import StorageUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from azure.storage.blob import BlobServiceClient, ContainerClient

#: Threads per transfer. Azurite on 2 cores serves ~500 small blobs/s; 16 requests in flight saturate it.
DEFAULT_CONCURRENCY = 16
#: Block requests per large blob: 2 to 4, so that the blocks in flight over a whole transfer stay within
#: IN_FLIGHT_BLOCKS (memory bounded by that many blocks, 256 MiB, whatever the files' sizes), and a few
#: large files (CIFAR-10's archive) still move several blocks at once after the small ones are done.
IN_FLIGHT_BLOCKS = 2 * DEFAULT_CONCURRENCY
MIN_BLOB_CONCURRENCY = 2
MAX_BLOB_CONCURRENCY = 4
#: Files up to this size go in one request; larger ones in blocks of BLOCK_SIZE (8 MiB: Azurite spends
#: per request, and 4 MiB blocks made a 170 MB file ~10% slower to upload).
SINGLE_PUT_SIZE = 8 * 1024 * 1024
BLOCK_SIZE = 8 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
#: Downloads read each blob in ranges of this size, one in memory per thread (the client's default
#: first read of 32 MiB made a download of CIFAR-10's 9 files peak at 450-550 MiB; 8 MiB: 260-330 MiB,
#: about 0.4 s slower in all; 4 MiB ranges took twice as long from Azurite).
GET_SIZE = 8 * 1024 * 1024
AVAILABILITY_TIMEOUT = 20.0
READ_TIMEOUT = 20


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    etag: str


@dataclass(frozen=True)
class Transfer:
    """One file to move: ``local`` path <-> ``blob`` name."""

    local: str
    blob: str


@dataclass(frozen=True)
class TransferResult:
    transfer: Transfer
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BlobStore:
    """One storage account (Azurite) reached through an explicit-endpoint connection string."""

    def __init__(self, settings: Settings, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self._service: BlobServiceClient | None = None

    @property
    def endpoint(self) -> str:
        return self.settings.blob_endpoint

    @property
    def service(self) -> BlobServiceClient:
        if self._service is None:
            from azure.storage.blob import BlobServiceClient

            self._service = BlobServiceClient.from_connection_string(
                self.settings.connection_string,
                # requests' default pool keeps 10 connections per host: with more requests in flight,
                # every extra one opened a new TCP connection and threw it away afterwards.
                session=_http_session(MAX_BLOB_CONCURRENCY * self.concurrency + 2),
                max_single_put_size=SINGLE_PUT_SIZE,
                max_block_size=BLOCK_SIZE,
                max_single_get_size=GET_SIZE,
                max_chunk_get_size=GET_SIZE,
                connection_timeout=10,
                # A request moves at most one 8 MiB block; a storage that stopped mid-request must not
                # hold an upload for minutes (a killed container's proxy keeps the socket open).
                read_timeout=READ_TIMEOUT,
                retry_policy=_retry_policy(),
            )
        return self._service

    def container(self, name: str) -> ContainerClient:
        return self.service.get_container_client(name)

    # -- availability ------------------------------------------------------------------------

    def ensure_available(self, timeout: float = AVAILABILITY_TIMEOUT) -> None:
        """Raise :class:`StorageUnavailableError` if Azurite does not answer within ``timeout`` seconds."""
        from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
        from azure.storage.blob import BlobServiceClient

        probe = BlobServiceClient.from_connection_string(
            self.settings.connection_string, connection_timeout=3, read_timeout=5, retry_total=0
        )
        deadline = time.monotonic() + timeout
        reason = ""
        try:
            while True:
                try:
                    next(iter(probe.list_containers(results_per_page=1)), None)
                    return
                except (ServiceRequestError, ServiceResponseError) as exc:
                    reason = _first_line(exc)
                except AzureError as exc:  # it answered, but refused: wrong key, ...
                    raise StorageUnavailableError(self.endpoint, _first_line(exc)) from exc
                if time.monotonic() >= deadline:
                    raise StorageUnavailableError(self.endpoint, f"no answer within {timeout:.0f} s: {reason}")
                time.sleep(1.0)
        finally:
            probe.close()

    def ensure_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container(name).create_container()
        except ResourceExistsError:
            pass

    # -- listing -----------------------------------------------------------------------------

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return [
                BlobInfo(blob.name, blob.size, blob.etag)
                for blob in self.container(container).list_blobs(name_starts_with=prefix or None)
            ]
        except ResourceNotFoundError:
            return []

    # -- transfers ---------------------------------------------------------------------------

    def upload(self, container: str, transfers: Iterable[Transfer], *, overwrite: bool,
               content_types: Callable[[str], str | None] | None = None) -> Iterator[TransferResult]:
        """Upload concurrently; yield each result as it completes (completion order)."""
        box = self.container(container)
        transfers = list(transfers)
        per_blob = self.blob_concurrency(sum(1 for t in transfers if _size(t.local) > SINGLE_PUT_SIZE))

        def one(transfer: Transfer) -> None:
            from azure.storage.blob import ContentSettings

            settings = None
            if content_types is not None and (kind := content_types(transfer.blob)):
                settings = ContentSettings(content_type=kind)
            with open(transfer.local, "rb") as stream:
                box.upload_blob(transfer.blob, stream, overwrite=overwrite, blob_type="BlockBlob",
                                length=os.fstat(stream.fileno()).st_size, max_concurrency=per_blob,
                                content_settings=settings)

        yield from self._run(one, transfers)

    def blob_concurrency(self, large_files: int) -> int:
        """Block requests per large blob when ``large_files`` of a transfer go in blocks."""
        at_once = max(1, min(large_files, self.concurrency))
        return max(MIN_BLOB_CONCURRENCY, min(MAX_BLOB_CONCURRENCY, IN_FLIGHT_BLOCKS // at_once))

    def download(self, container: str, transfers: Iterable[Transfer]) -> Iterator[TransferResult]:
        """Download concurrently, streaming each blob to ``<local>.part`` and renaming it when complete."""
        box = self.container(container)

        def one(transfer: Transfer) -> None:
            target = Path(transfer.local)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")
            try:
                with open(partial, "wb") as handle:
                    for chunk in box.download_blob(transfer.blob, max_concurrency=1).chunks():
                        handle.write(chunk)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)

        yield from self._run(one, transfers)

    def read_text(self, container: str, blob: str) -> str:
        return self.container(container).download_blob(blob).readall().decode("utf-8", "replace")

    def _run(self, work: Callable[[Transfer], None], transfers: Iterable[Transfer]) -> Iterator[TransferResult]:
        """Results in completion order, from daemon worker threads.

        A caller that stops early (the storage went away) leaves the requests still in flight to end on
        their own within the read timeout; daemon workers never hold up the process's exit.
        """
        pending: queue.SimpleQueue[Transfer | None] = queue.SimpleQueue()
        done: queue.SimpleQueue[TransferResult] = queue.SimpleQueue()
        stop = threading.Event()
        count = 0
        for transfer in transfers:
            pending.put(transfer)
            count += 1

        def worker() -> None:
            while not stop.is_set():
                transfer = pending.get()
                if transfer is None:
                    return
                try:
                    work(transfer)
                    done.put(TransferResult(transfer))
                except BaseException as exc:
                    done.put(TransferResult(transfer, exc))

        workers = min(self.concurrency, count)
        for _ in range(workers):
            pending.put(None)
            threading.Thread(target=worker, name="blob-transfer", daemon=True).start()
        try:
            for _ in range(count):
                yield done.get()
        finally:
            stop.set()

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None


def _retry_policy() -> Any:
    """Storage's own retry policy with short waits: its default (15 s, then 15 + 3**n s) made a stopped
    Azurite take 40 s per call to report, and it ignores azure-core's ``retry_backoff_*`` settings."""
    from azure.storage.blob import ExponentialRetry

    return ExponentialRetry(initial_backoff=1, increment_base=2, random_jitter_range=1, retry_total=3,
                            retry_connect=2,
                            retry_read=0)  # a response cut off is reported at once; the caller checks the storage


def _http_session(pool_size: int) -> Any:
    """A requests session that keeps up to ``pool_size`` connections to Azurite (azure-core's adapter settings)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    # As azure-core's own transport: no retries in urllib3 (the client's retry policy does them).
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return session


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # reported by the transfer itself


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
