"""1. Upload: ``datastore.upload`` (the facade) beside raw azure-storage-blob loops and the Azure CLI.

Workloads: (a) the 9-file CIFAR-10 folder at full size (~357 MB), (b) 10,000 files of 3 KB in 100 folders.
Methods, all against the same Azurite, each into a fresh blob container that is deleted right after:

- ``facade``: ``Workspace.from_config().get_default_datastore().upload(src, target_path, overwrite=True)``
  (a fresh workspace name per measurement gives a fresh datastore container);
- ``sequential``: a plain loop of ``ContainerClient.upload_blob`` with the client's defaults;
- ``tuned pool``: a thread pool of ``upload_blob`` calls whose size (and, for large files, per-blob
  concurrency and block size) is chosen by a tuning pass over a few settings just before, with an HTTP
  connection pool as large as the number of requests in flight;
- ``az CLI``: ``az storage blob upload-batch`` (wall time of the command, its start-up included).

Each measurement checks that every file arrived (a blob count) outside the timed part.
"""

from __future__ import annotations

import concurrent.futures
import os
import resource
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import azcli
from bench.common import Context, Row, Section, fmt_s, interleave, median, quiet_stdout

MIB = 2**20
SMALL_FILES = 10_000
SMALL_FILES_QUICK = 2_000
SMALL_SIZE = 3 * 1024


AZ_NOTE = ("The machine's 2 cores are the limit: the facade is at {pool:.2f}x the tuned raw pool and {seq:.2f}x a "
           "sequential loop; the Azure CLI uploads one blob at a time ({az_seq:.2f}x the sequential loop's speed). "
           "{cpu}What would close it lies outside the client: more cores (Azurite's single Node.js thread on a core "
           "of its own, the client on others), or a cheaper Azurite (e.g. --inMemoryPersistence, which gives up the "
           "volume's persistence and so is not the stack's setting).")
CPU_NOTE = ("CPU per 3 KB blob, measured in the facade's runs: Azurite {azurite:.1f} ms (its container's cgroup), "
            "the uploading process {client:.1f} ms (azure-storage-blob's request pipeline). Together {total:.1f} ms "
            "of CPU per blob on 2 cores: a ceiling of about {ceiling:.0f} blobs/s for any client of this Azurite "
            "here, and Azurite alone, with a whole core, tops out at about {azurite_max:.0f} blobs/s; 2x the CLI is "
            "{wanted:.0f} blobs/s. ")


@dataclass(frozen=True)
class PoolSettings:
    workers: int
    per_blob_concurrency: int = 1
    block_mib: int = 4
    single_put_mib: int = 64

    def describe(self) -> str:
        text = f"{self.workers} threads"
        if self.per_blob_concurrency > 1 or self.block_mib != 4 or self.single_put_mib != 64:
            text += (f" x {self.per_blob_concurrency} per blob, {self.block_mib} MiB blocks, single PUT up to "
                     f"{self.single_put_mib} MiB")
        return text


class CpuMeter:
    """CPU seconds spent by Azurite (its container, read from the engine) and by this process and its children."""

    def __init__(self, ctx: Context) -> None:
        import docker

        self.container = docker.from_env().containers.get(f"{ctx.settings.project}-azurite-1")

    def read(self) -> tuple[float, float]:
        stats = self.container.stats(stream=False, one_shot=True)
        azurite = stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return azurite, own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


LATENCY_NOTE = ("The sequential loop and the CLI wait for each blob's round trip, so they slow down more than the "
                "concurrent uploads when the shared machine is busy: the CLI ratio moves between runs (1.57x in a run "
                "on 2026-11-26 15:54 UTC, when the CLI reached 123 files/s).")


def make_small_files(ctx: Context, count: int) -> Path:
    folder = ctx.mkdtemp("small-")
    per_folder = 100
    for index in range(count):
        sub = folder / f"part{index // per_folder:03d}"
        if index % per_folder == 0:
            sub.mkdir()
        (sub / f"file{index:05d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    return folder


def files_of(src: Path) -> list[Path]:
    return sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: (-p.stat().st_size, str(p)))


class Uploader:
    """The four ways to put a folder on the same Azurite; each returns the seconds its upload took."""

    def __init__(self, ctx: Context, src: Path) -> None:
        self.ctx = ctx
        self.src = src
        self.files = files_of(src)
        self.count = len(self.files)
        self.bytes = sum(p.stat().st_size for p in self.files)

    def _blob_name(self, path: Path) -> str:
        return "bench/" + path.relative_to(self.src).as_posix()

    def _fresh_container(self, **client_options: Any) -> tuple[Any, Any, str]:
        from azure.storage.blob import BlobServiceClient

        name = f"bench-{uuid.uuid4().hex[:12]}"
        service = BlobServiceClient.from_connection_string(self.ctx.settings.connection_string, **client_options)
        container = service.get_container_client(name)
        container.create_container()
        return service, container, name

    def _finish(self, service: Any, name: str, method: str) -> None:
        try:
            found = self.ctx.count_blobs(name)
            if found != self.count:
                raise RuntimeError(f"{method}: {found} blobs arrived, {self.count} expected")
        finally:
            self.ctx.delete_container(name)
            service.close()

    def facade(self) -> float:
        folder = self.ctx.new_workspace_dir()
        datastore = self.ctx.workspace(folder).get_default_datastore()
        with quiet_stdout():
            start = time.perf_counter()
            datastore.upload(src_dir=str(self.src), target_path="bench", overwrite=True)
            elapsed = time.perf_counter() - start
        found = self.ctx.count_blobs(datastore.container_name)
        self.ctx.delete_container(datastore.container_name)
        datastore.blob_store.close()
        if found != self.count:
            raise RuntimeError(f"facade: {found} blobs arrived, {self.count} expected")
        return elapsed

    def sequential(self) -> float:
        service, container, name = self._fresh_container()
        start = time.perf_counter()
        for path in self.files:
            with open(path, "rb") as stream:
                container.upload_blob(self._blob_name(path), stream, overwrite=True)
        elapsed = time.perf_counter() - start
        self._finish(service, name, "sequential")
        return elapsed

    def pool(self, settings: PoolSettings) -> float:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        in_flight = settings.workers * settings.per_blob_concurrency + 2
        session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=in_flight))
        service, container, name = self._fresh_container(
            session=session, max_block_size=settings.block_mib * MIB, max_single_put_size=settings.single_put_mib * MIB)

        def one(path: Path) -> None:
            with open(path, "rb") as stream:
                container.upload_blob(self._blob_name(path), stream, overwrite=True,
                                      max_concurrency=settings.per_blob_concurrency,
                                      length=os.fstat(stream.fileno()).st_size)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(settings.workers) as executor:
            for future in [executor.submit(one, path) for path in self.files]:
                future.result()
        elapsed = time.perf_counter() - start
        self._finish(service, name, "pool")
        session.close()
        return elapsed

    def az(self) -> float:
        service, _, name = self._fresh_container()
        elapsed = azcli.upload_batch(self.src, name, "bench", self.ctx.settings.connection_string,
                                     self.ctx.mkdtemp("azcfg-"))
        self._finish(service, name, "az")
        return elapsed

    def tune(self, candidates: list[PoolSettings]) -> tuple[PoolSettings, dict[str, float]]:
        """One pass over ``candidates``, then a second over the two fastest; the fastest by its best time."""
        times: dict[PoolSettings, list[float]] = {c: [self.pool(c)] for c in candidates}
        finalists = sorted(candidates, key=lambda c: min(times[c]))[:2]
        for candidate in finalists:
            times[candidate].append(self.pool(candidate))
        best = min(finalists, key=lambda c: min(times[c]))
        return best, {c.describe(): min(t) for c, t in times.items()}


def _rate(uploader: Uploader, seconds: float) -> str:
    if uploader.count > 100:
        return f"{uploader.count / seconds:.0f} files/s"
    return f"{uploader.bytes / seconds / 1e6:.0f} MB/s"


def run(ctx: Context) -> Section:
    section = Section(1, "Upload (`datastore.upload`) beside azure-storage-blob and the Azure CLI")
    install = azcli.ensure(ctx.log)
    if install is not None:
        section.notes.append(f"The Azure CLI's environment (bench/.venv-az, azure-cli=={azcli.AZURE_CLI_VERSION}) was "
                             f"installed in this run in {install:.0f} s.")
    section.notes.append(
        "`sandbox/storage.py` was changed for issue 12 after this benchmark found 1a below target (0.81x the tuned "
        "pool: 3.20 s vs 2.59 s, a --quick run, 2026-11-26): blocks of 8 MiB instead of 4 MiB, 2 to 4 block "
        "requests per large blob depending on how many large files the upload has (was always 2), and an HTTP "
        "connection pool as large as the requests in flight (requests' default keeps 10, so with 16 threads x 2 "
        "blocks every extra connection was opened and thrown away). A/B runs in one process, 6 interleaved rounds "
        "each against the tuned pool: connection pool and per-blob concurrency alone, 4 MiB blocks: 3.65 s vs "
        "3.21 s (0.88x); with 8 MiB blocks too (the change as made): 2.81 s vs 2.81 s (1.00x). "
        "Small files unchanged (2,000 files: 6.82 s before, 6.62 s after, within the noise). The memory bound "
        "stays independent of file size (at most 32 blocks of 8 MiB in flight; see 7c).")
    workloads = [
        ("a", "CIFAR-10, 9 files, full size", ctx.cifar(), [
            PoolSettings(9, 1, 4, 64), PoolSettings(9, 2, 4, 8), PoolSettings(9, 2, 8, 8), PoolSettings(9, 4, 8, 8)],
         3),
        ("b", f"{SMALL_FILES_QUICK if ctx.quick else SMALL_FILES:,} files of 3 KB",
         make_small_files(ctx, SMALL_FILES_QUICK if ctx.quick else SMALL_FILES),
         [PoolSettings(8), PoolSettings(16), PoolSettings(32)], 3),
    ]
    for key, label, src, candidates, reps in workloads:
        uploader = Uploader(ctx, src)
        ctx.log(f"1{key}: {label} ({uploader.count} files, {uploader.bytes / 1e6:.0f} MB): tuning the thread pool")
        tuned, tuning = uploader.tune(candidates)
        section.notes.append(f"1{key} tuning pass of the raw thread pool (best of 1-2 tries each): "
                             + ", ".join(f"{name}: {fmt_s(t)}" for name, t in tuning.items())
                             + f"; chosen: {tuned.describe()}.")
        ctx.log(f"1{key}: tuned pool = {tuned.describe()}; measuring, interleaved")
        slow_reps = reps if key == "a" or ctx.quick else 2  # the sequential loop and az take minutes on 10,000 files
        meter = CpuMeter(ctx)
        cpu: list[tuple[float, float]] = []

        def facade(u: Uploader = uploader, meter: CpuMeter = meter, cpu: list[tuple[float, float]] = cpu) -> float:
            before = meter.read()
            seconds = u.facade()
            after = meter.read()
            cpu.append(((after[0] - before[0]) / u.count, (after[1] - before[1]) / u.count))
            return seconds

        samples = interleave({
            "facade": facade,
            "tuned pool": lambda u=uploader, t=tuned: u.pool(t),
            "sequential": uploader.sequential,
            "az CLI": uploader.az,
        }, {"facade": reps, "tuned pool": reps, "sequential": slow_reps, "az CLI": slow_reps}, ctx.log)
        for name, values in samples.items():
            section.samples[f"1{key} {name}"] = values
        section.samples[f"1{key} facade: Azurite CPU ms per blob"] = [round(a * 1000, 2) for a, _ in cpu]
        section.samples[f"1{key} facade: client CPU ms per blob"] = [round(c * 1000, 2) for _, c in cpu]
        azurite_cpu, client_cpu = median([a for a, _ in cpu]), median([c for _, c in cpu])
        cpu_note = ""
        if key == "b":
            cpu_note = CPU_NOTE.format(
                azurite=azurite_cpu * 1000, client=client_cpu * 1000, total=(azurite_cpu + client_cpu) * 1000,
                ceiling=2 / (azurite_cpu + client_cpu), azurite_max=1 / azurite_cpu,
                wanted=2 * uploader.count / median(samples["az CLI"]))
            section.notes.append(f"1b: {cpu_note}{LATENCY_NOTE}")
        facade = median(samples["facade"])
        refs = {name: median(values) for name, values in samples.items() if name != "facade"}
        best_name = min(refs, key=lambda n: refs[n])
        measured = f"{fmt_s(facade)} ({_rate(uploader, facade)})"
        for name, seconds in refs.items():
            ratio = seconds / facade
            target, met, note = "—", None, ""
            if key == "a" and name == best_name:
                target, met = ">= 0.9x the best reference", ratio >= 0.9
            elif key == "b" and name == "tuned pool":
                target, met = ">= 0.9x", ratio >= 0.9
            elif key == "b" and name == "az CLI":
                target, met = ">= 2x", ratio >= 2.0
                if not met:
                    note = AZ_NOTE.format(pool=refs["tuned pool"] / facade, seq=refs["sequential"] / facade,
                                          az_seq=refs["sequential"] / seconds, cpu=cpu_note)
            reference = f"{name}{' (' + tuned.describe() + ')' if name == 'tuned pool' else ''}: " \
                        f"{fmt_s(seconds)} ({_rate(uploader, seconds)})"
            if key == "a" and name == best_name:
                reference += ", the best reference"
            section.rows.append(Row(f"1{key} upload {label}", measured, reference, f"{ratio:.2f}x the speed",
                                    target, met, note))
    return section
