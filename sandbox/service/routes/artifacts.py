"""Azure ML's artifact service (``/artifact/v2.0``): a run's files, kept in Azurite, reached through SAS URLs.

What ``Run.upload_file(s)``, ``upload_folder``, ``log_image``, ``get_file_names``, ``download_file`` and
``get_details`` call (azureml-core 1.61: ``_restclient/operations/artifact_operations.py``,
``_restclient/artifacts_client.py``; docs/design/run-history-routes.md section 3):

- ``POST .../artifacts/batch/metadata/ExperimentRun/dcid.<run>``: ``{"paths": [{"path": ...}]}`` answered by
  ``{"artifacts", "artifactContentInformation", "errors"}``, both maps keyed by each path exactly as sent,
  each with a ``contentUri``: ``https://<account>.blob.core.windows.net/azureml/ExperimentRun/dcid.<run>/<path>``
  plus a SAS (read, write, create; short-lived) signed with the storage account's key. azureml-core rebuilds
  that URL as https on the same host and uploads with one Put Blob (Put Block + Put Block List past 64 MiB)
  and a HEAD; the stack's proxy (``sandbox.proxy``) sends that host to Azurite. A path that is not acceptable
  is answered in ``errors`` (azureml-core raises them together), the others are not created.
- ``GET .../artifacts/contentinfo/ExperimentRun/dcid.<run>/<path>``: one file's read-only SAS URL (404 if absent).
- ``GET .../artifacts/prefix/contentinfo/ExperimentRun/dcid.<run>/<prefix>``: every file under a prefix, paged.
- ``GET .../artifacts/ExperimentRun/dcid.<run>[/<prefix>]``: the listing, paged with ``continuationToken``.

The files live where a run's files live: Azurite container ``azureml``, blobs ``ExperimentRun/dcid.<run>/<path>``
(``sandbox.local_runner.artifact_prefix``). Every route needs the run's token and acts on that run or a run of
its tree; ``batch/metadata`` (which hands out upload URLs) is refused once the token's root run has
finished (``common.write_claims``); an upload URL handed out before stays valid for its SAS lifetime
(:data:`WRITE_SAS_LIFETIME`). Not implemented: origins other than ``ExperimentRun``, ``datastoreName``,
artifact metadata GET/DELETE, ``artifacts/content`` (direct upload and download through the service),
``batch/ingest``.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from sandbox.local_runner import ARTIFACT_CONTAINER, artifact_prefix
from sandbox.run_definition import RUN_ID
from sandbox.service.routes.bodies import read_json
from sandbox.service.routes.common import (
    WORKSPACE_SCOPE,
    AzureError,
    WriteClaims,
    require_scope,
    run_claims,
    services,
)
from sandbox.service.run_token import RunClaims
from sandbox.service.store import RunNotFoundError

log = logging.getLogger("aml_sandbox.artifacts")
router = APIRouter()
Claims = Annotated[RunClaims, Depends(run_claims)]
Continuation = Annotated[str | None, Query(alias="continuationToken")]

ARTIFACTS = f"/artifact/v2.0{WORKSPACE_SCOPE}/artifacts"
ORIGIN = "ExperimentRun"
#: azureml-core sends 50 paths per call; a batch of more than this is refused whole.
MAX_BATCH_PATHS = 500
MAX_BATCH_BYTES = 1024 * 1024
#: Azure Blob Storage's own limits on a blob name: 1024 characters, 254 path segments.
MAX_BLOB_NAME = 1024
MAX_SEGMENTS = 254
#: Files per page of a listing, and the longest continuation token accepted back.
PAGE_SIZE = 500
MAX_CONTINUATION = 4096
#: SAS lifetimes: an upload URL is used at once; a read URL by a download that may take a while.
WRITE_SAS_LIFETIME = datetime.timedelta(hours=1)
READ_SAS_LIFETIME = datetime.timedelta(hours=2)
CLOCK_SKEW = datetime.timedelta(minutes=5)
#: Characters refused in a path: controls, and those that would change the contentUri's meaning
#: (``?``, ``#``; ``%`` because clients differ on unquoting the URL's path) or a file system's (``\\``).
_BAD_CHARACTERS = re.compile(r"[\x00-\x1f\x7f?#%\\]")


@dataclass(frozen=True)
class RunContainer:
    """``dcid.<run id>`` of a run the caller's token may act on."""

    run_id: str

    @property
    def name(self) -> str:
        return f"dcid.{self.run_id}"

    @property
    def blob_prefix(self) -> str:
        return artifact_prefix(self.run_id)

    def artifact(self, path: str, *, etag: str | None = None, created: datetime.datetime | None = None,
                 ) -> dict[str, Any]:
        return {"artifactId": f"{ORIGIN}/{self.name}/{path}", "origin": ORIGIN, "container": self.name,
                "path": path, "etag": etag, "createdTime": _iso(created) if created else None}

    def content(self, path: str, uri: str) -> dict[str, Any]:
        return {"contentUri": uri, "origin": ORIGIN, "container": self.name, "path": path}


def check_path(path: object, *, prefix_of: RunContainer) -> str:
    """The artifact path as stored, or a ValueError saying what is wrong with it and what to send instead.

    ``.`` segments are dropped as Azure drops them: azureml-core uploads ``outputs/`` at the end of a run as
    ``./outputs/model.pt`` (``os.walk("./outputs")``), which Azure lists as ``outputs/model.pt``."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"an artifact path must be a non-empty string, got {path!r}")
    if path.startswith("/"):
        raise ValueError(f"artifact path {path[:200]!r} is absolute; name the file relative to the run "
                         "(for example 'outputs/plot.png' instead of '/tmp/plot.png')")
    if bad := _BAD_CHARACTERS.search(path):
        raise ValueError(f"artifact path {path[:200]!r} contains {bad.group()!r}; use letters, digits, spaces, "
                         "'/', '.', '-', '_' and other printable characters except \\ ? # %")
    segments = [segment for segment in path.split("/") if segment != "."]
    path = "/".join(segments)
    if any(segment in {"", ".."} for segment in segments):
        raise ValueError(f"artifact path {path[:200]!r} has an empty or '..' segment; send a normalised "
                         "relative path such as 'outputs/model.pkl'")
    blob = prefix_of.blob_prefix + path
    if len(blob) > MAX_BLOB_NAME or len(blob.split("/")) > MAX_SEGMENTS:
        raise ValueError(f"artifact path {path[:100]!r}... is {len(path)} characters in {len(segments)} segments; "
                         f"with the run's prefix it must stay within Azure's {MAX_BLOB_NAME} characters and "
                         f"{MAX_SEGMENTS} segments per blob name")
    return path


# -- routes ------------------------------------------------------------------------------------


@router.post(f"{ARTIFACTS}/batch/metadata/{{origin}}/{{container}}")
async def batch_metadata(origin: str, container: str, request: Request,
                         claims: WriteClaims) -> dict[str, Any]:
    """Create artifacts and hand out one upload URL (SAS) per path."""
    run = await run_in_threadpool(_run_container, request, claims, origin, container)
    return await create_artifacts(request, run)


@router.get(f"{ARTIFACTS}/contentinfo/{{origin}}/{{container}}/{{path:path}}")
def content_information(origin: str, container: str, path: str, request: Request,
                        claims: Claims) -> dict[str, Any]:
    """One file's read URL; 404 (azureml-core then lists the run's files in its message) when it is absent."""
    return content_of(request, _run_container(request, claims, origin, container), path)


@router.get(f"{ARTIFACTS}/prefix/contentinfo/{{origin}}/{{container}}")
@router.get(f"{ARTIFACTS}/prefix/contentinfo/{{origin}}/{{container}}/{{path:path}}")
def content_information_by_prefix(origin: str, container: str, request: Request, claims: Claims, path: str = "",
                                  continuation_token: Continuation = None) -> dict[str, Any]:
    """Read URLs of every file under a prefix (an empty list when there is none), paged."""
    return contents_by_prefix(request, _run_container(request, claims, origin, container), path, continuation_token)


@router.get(f"{ARTIFACTS}/{{origin}}/{{container}}")
@router.get(f"{ARTIFACTS}/{{origin}}/{{container}}/{{path:path}}")
def list_artifacts(origin: str, container: str, request: Request, claims: Claims, path: str = "",
                   continuation_token: Continuation = None) -> dict[str, Any]:
    """The run's files (``get_file_names``), or those under a prefix, paged with ``continuationToken``."""
    return listing(request, _run_container(request, claims, origin, container), path, continuation_token)


# -- what the routes do for one run (also run history's artifact routes: routes/run_artifacts.py) -------------


async def create_artifacts(request: Request, run: RunContainer) -> dict[str, Any]:
    """The batch in the request's body created: one upload URL (SAS) per path, keyed by each path as sent."""
    paths = _paths(await read_json(request, MAX_BATCH_BYTES, "an artifact batch (ArtifactPathList)"))
    artifacts: dict[str, Any] = {}
    contents: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    accepted: list[tuple[str, str]] = []  # (the path as sent: the answer's key, the path stored)
    for raw in paths:
        try:
            accepted.append((raw, check_path(raw, prefix_of=run)))
        except ValueError as exc:
            key = raw if isinstance(raw, str) else json.dumps(raw)[:200]
            errors[key] = {"error": {"code": "ValidationError", "message": str(exc), "details": []}}
    if errors:
        return {"artifacts": {}, "artifactContentInformation": {}, "errors": errors}
    if accepted:
        await run_in_threadpool(services(request).blobs.ensure_container, ARTIFACT_CONTAINER)
    sign = _Signer(request, write=True)
    for sent, path in accepted:
        artifacts[sent] = run.artifact(path, created=sign.start + CLOCK_SKEW)
        contents[sent] = run.content(path, sign.url(run.blob_prefix + path))
    return {"artifacts": artifacts, "artifactContentInformation": contents, "errors": {}}


def content_of(request: Request, run: RunContainer, path: str) -> dict[str, Any]:
    """One file's read URL; 404 naming it when the run has no such file."""
    from azure.core.exceptions import ResourceNotFoundError

    path = _checked(path, run)
    blob = run.blob_prefix + path
    try:
        services(request).blobs.container(ARTIFACT_CONTAINER).get_blob_client(blob).get_blob_properties()
    except ResourceNotFoundError:
        raise AzureError(404, "NotFound", f"Artifact {ORIGIN}/{run.name}/{path} was not found.") from None
    return run.content(path, _Signer(request, write=False).url(blob))


def contents_by_prefix(request: Request, run: RunContainer, prefix: str, token: str | None) -> dict[str, Any]:
    """Read URLs of every file under ``prefix``, one page, with the next page's token."""
    blobs, next_token = _page(request, run, _checked_prefix(prefix, run), token)
    sign = _Signer(request, write=False)
    return {"value": [run.content(name, sign.url(run.blob_prefix + name)) for name, _e, _c in blobs],
            "continuationToken": next_token}


def listing(request: Request, run: RunContainer, prefix: str, token: str | None) -> dict[str, Any]:
    """The run's files under ``prefix``, one page, with the next page's token."""
    blobs, next_token = _page(request, run, _checked_prefix(prefix, run), token)
    return {"value": [run.artifact(name, etag=etag, created=created) for name, etag, created in blobs],
            "continuationToken": next_token}


def read_urls(request: Request, run_id: str, prefix: str) -> dict[str, str]:
    """Read URLs (SAS) of the run's files under ``prefix``, by name: one listing page (``PAGE_SIZE`` files).

    Empty, with a warning in the service's log, when the storage does not answer: callers show what exists.
    """
    from azure.core.exceptions import AzureError as StorageError

    run = RunContainer(run_id)
    try:
        names, _more = _page(request, run, prefix, None)
    except StorageError as exc:
        log.warning("listing the files of run %s under %r failed: %s", run_id, prefix, exc)
        return {}
    sign = _Signer(request, write=False)
    return {name: sign.url(run.blob_prefix + name) for name, _etag, _created in names}


# -- helpers ---------------------------------------------------------------------------------


def _run_container(request: Request, claims: RunClaims, origin: str, container: str) -> RunContainer:
    """The run behind ``dcid.<run id>``, checked against the caller's token before anything else is said."""
    if origin != ORIGIN:
        raise AzureError(404, "NotFound", f"Artifact origin {origin[:100]!r} is not served by the local workspace; "
                                          f"only {ORIGIN!r} (a run's files) is.")
    run_id = container.removeprefix("dcid.")
    if run_id == container:
        raise AzureError(400, "ValidationError", f"Artifact container {container[:100]!r} is not 'dcid.<run id>'.")
    return run_of(request, claims, run_id)


def run_of(request: Request, claims: RunClaims, run_id: str) -> RunContainer:
    """The files of run ``run_id``, checked against the caller's token before anything else is said."""
    if not RUN_ID.fullmatch(run_id):
        raise AzureError(400, "ValidationError", f"{run_id[:100]!r} is not a run id.")
    try:
        record = services(request).store.get_run(run_id)
    except RunNotFoundError:
        record = None
    root = (getattr(record, "root_run_id", "") or run_id) if record is not None else None
    require_scope(claims, run_id, root)
    if record is None:
        raise AzureError(404, "RunNotFound", f"Run {run_id} was not found in the local workspace's run history.")
    return RunContainer(run_id)


def _checked(path: str, run: RunContainer) -> str:
    try:
        return check_path(path, prefix_of=run)
    except ValueError as exc:
        raise AzureError(400, "ValidationError", str(exc)) from None


def _checked_prefix(prefix: str, run: RunContainer) -> str:
    if not prefix:
        return ""
    _checked(prefix.rstrip("/"), run)
    return prefix


def _page(request: Request, run: RunContainer, prefix: str,
          token: str | None) -> tuple[list[tuple[str, str, datetime.datetime | None]], str | None]:
    """One page of (path, etag, created) under the run's prefix, and the token of the next page (or None)."""
    if token is not None and (len(token) > MAX_CONTINUATION or _BAD_CHARACTERS.sub("", token) != token):
        raise AzureError(400, "ValidationError", f"continuationToken of {len(token)} characters is not one this "
                                                 "service handed out; start the listing again without it.")
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    box = services(request).blobs.container(ARTIFACT_CONTAINER)
    pages = box.list_blobs(name_starts_with=run.blob_prefix + prefix, results_per_page=PAGE_SIZE).by_page(
        continuation_token=token or None)
    try:
        page = list(next(pages))
    except StopIteration:
        return [], None
    except ResourceNotFoundError:
        return [], None  # no run has stored a file yet: the container does not exist
    except HttpResponseError as exc:
        if token:
            raise AzureError(400, "ValidationError", "continuationToken was refused by the storage; start the "
                                                     "listing again without it.") from exc
        raise
    names = [(blob.name[len(run.blob_prefix):], blob.etag, blob.creation_time) for blob in page]
    return names, pages.continuation_token or None


class _Signer:
    """SAS URLs on ``https://<account>.blob.core.windows.net`` signed with the account key of the service's settings."""

    def __init__(self, request: Request, *, write: bool) -> None:
        from azure.storage.blob import BlobSasPermissions

        self.settings = services(request).blobs.settings
        now = datetime.datetime.now(datetime.UTC)
        self.start = now - CLOCK_SKEW
        self.expiry = now + (WRITE_SAS_LIFETIME if write else READ_SAS_LIFETIME)
        # add: azureml-core streams logs/ as append blobs (FileWatcher: create_append_blob, append_block)
        self.permission = BlobSasPermissions(read=True, write=write, create=write, add=write)

    def url(self, blob: str) -> str:
        from azure.storage.blob import generate_blob_sas

        account = self.settings.account_name
        sas = generate_blob_sas(account_name=account, container_name=ARTIFACT_CONTAINER, blob_name=blob,
                                account_key=self.settings.account_key, permission=self.permission,
                                start=self.start, expiry=self.expiry)
        # The blob name goes in unquoted: azureml-core splits this URL and quotes the name itself, and the
        # characters that quoting would change meaning for are refused in paths (check_path).
        return f"https://{account}.blob.core.windows.net/{ARTIFACT_CONTAINER}/{blob}?{sas}"


def _paths(body: Any) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("paths"), list):
        raise AzureError(400, "ValidationError", 'expected {"paths": [{"path": "outputs/file.txt"}, ...]}')
    items = body["paths"]
    if len(items) > MAX_BATCH_PATHS:
        raise AzureError(400, "ValidationError", f"a batch names {len(items)} paths, over {MAX_BATCH_PATHS}; send "
                                                 "them in several batches (azureml-core sends 50 at a time)")
    return [item.get("path") if isinstance(item, dict) else item for item in items]


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
