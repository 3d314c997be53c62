"""1. Upload: ``datastore.upload`` (the facade) beside raw azure-storage-blob loops and the Azure CLI.

Workloads: (a) the 9-file CIFAR-10 folder at full size (~357 MB), (b) 10,000 files of 3 KB in 100 folders.
Methods, all against the same Azurite, each into a fresh blob container that is deleted right after:

- ``facade``: ``Workspace.from_config().get_default_datastore().upload(src, target_path, overwrite=True)`` in a
  process of its own (``bench.worker upload``, as upload-data.py runs it; a fresh workspace name per
  measurement gives a fresh datastore container). Two times from each: the ``upload`` call alone (compared
  with the in-process loops below) and the whole process, Python's start included (compared with the CLI);
- ``sequential``: a plain loop of ``ContainerClient.upload_blob`` with the client's defaults;
- ``tuned pool``: a thread pool of ``upload_blob`` calls whose size (and, for large files, per-blob
  concurrency and block size) is chosen by a tuning pass just before, over a range that reaches past the
  sandbox's own settings (16 threads, 2-4 requests per large blob, 8 MiB blocks) on both sides, with an
  HTTP connection pool as large as the number of requests in flight;
- ``az CLI``: ``az storage blob upload-batch``, the whole process (its start-up included), as the facade's
  whole process is timed.

Each measurement checks that every file arrived (a blob count) outside the timed part.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import azcli
from bench.common import PYTHON, REPO, Context, Row, Section, fmt_s, interleave, measure_process, median, noise, spread

MIB = 2**20
SMALL_FILES = 10_000
SMALL_FILES_QUICK = 2_000
SMALL_SIZE = 3 * 1024


CPU_NOTE = ("CPU per 3 KB blob, measured in the facade's runs: Azurite {azurite:.1f} ms (its container's cgroup), "
            "the upload call {client:.1f} ms (azure-storage-blob's request pipeline). Together {total:.1f} ms of CPU "
            "per blob on {cores} cores: a ceiling of about {ceiling:.0f} blobs/s for any client of this Azurite here; "
            "Azurite alone, with a whole core, tops out at about {azurite_max:.0f} blobs/s. The facade reached "
            "{facade:.0f} blobs/s, the tuned pool {pool:.0f}, the CLI {az:.0f}.")


@dataclass(frozen=True)
class FacadeResult:
    process: float  # the whole process, Python's start included
    call: float  # the upload call alone
    cpu: float  # CPU of the upload call (this process's threads)


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


class AzuriteCpu:
    """CPU seconds spent by Azurite so far: its container's cgroup, read from the engine."""

    def __init__(self, ctx: Context) -> None:
        import docker

        self.container = docker.from_env().containers.get(f"{ctx.settings.project}-azurite-1")

    def read(self) -> float:
        stats = self.container.stats(stream=False, one_shot=True)
        return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


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

    def facade(self) -> FacadeResult:
        """``datastore.upload`` in a process of its own: (whole process, upload call, its CPU) in seconds."""
        folder = self.ctx.new_workspace_dir()
        result = measure_process([PYTHON, "-m", "bench.worker", "upload", "--workspace-dir", str(folder),
                                  "--src", str(self.src), "--target", "bench"], cwd=REPO)
        data = json.loads(result.stdout.strip().splitlines()[-1])
        found = self.ctx.count_blobs(data["container"])
        self.ctx.delete_container(data["container"])
        if found != self.count:
            raise RuntimeError(f"facade: {found} blobs arrived, {self.count} expected")
        return FacadeResult(result.seconds, data["upload_s"], data["upload_cpu_s"])

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

    def tune(self, candidates: list[PoolSettings]) -> tuple[PoolSettings, dict[PoolSettings, list[float]]]:
        """One pass over ``candidates``, then a second over the two fastest; the fastest by its best time."""
        times: dict[PoolSettings, list[float]] = {c: [self.pool(c)] for c in candidates}
        finalists = sorted(candidates, key=lambda c: min(times[c]))[:2]
        for candidate in finalists:
            times[candidate].append(self.pool(candidate))
        best = min(finalists, key=lambda c: min(times[c]))
        return best, times


def _rate(uploader: Uploader, seconds: float) -> str:
    if uploader.count > 100:
        return f"{uploader.count / seconds:.0f} files/s"
    return f"{uploader.bytes / seconds / 1e6:.0f} MB/s"


#: Candidates of the tuning passes. The sandbox uses 16 threads, 2-4 block requests per large blob (4 for
#: CIFAR-10's 7 large files) and 8 MiB blocks: each range reaches past those on both sides.
LARGE_CANDIDATES = [PoolSettings(3, 4, 8, 8), PoolSettings(9, 1, 4, 64), PoolSettings(9, 2, 8, 8),
                    PoolSettings(9, 4, 4, 8), PoolSettings(9, 4, 8, 8), PoolSettings(9, 4, 16, 16),
                    PoolSettings(9, 8, 8, 8), PoolSettings(9, 8, 16, 16)]
SMALL_CANDIDATES = [PoolSettings(4), PoolSettings(8), PoolSettings(16), PoolSettings(32), PoolSettings(64)]
#: Files of the small-file tuning pass (the full 10,000 per candidate would take minutes each).
SMALL_TUNING_FILES = 2_000


def _edge(chosen: PoolSettings, candidates: list[PoolSettings]) -> str:
    """Say so when the chosen setting is at an end of the range tried (a further value might be faster)."""
    edges = []
    for name in ("workers", "per_blob_concurrency", "block_mib"):
        values = sorted({getattr(c, name) for c in candidates})
        if len(values) > 1 and getattr(chosen, name) in (values[0], values[-1]):
            edges.append(f"{name.replace('_', ' ')} {getattr(chosen, name)} is at an end of the range tried "
                         f"({values[0]}-{values[-1]})")
    return ("; " + ", ".join(edges)) if edges else "; inside the range tried on every setting"


def _tuning_note(key: str, what: str, tuned: PoolSettings, tuning: dict[PoolSettings, list[float]],
                 candidates: list[PoolSettings]) -> str:
    return (f"1{key} tuning pass of the raw thread pool ({what}; best of 1-2 tries each): "
            + ", ".join(f"{c.describe()}: {fmt_s(min(t))}" for c, t in tuning.items())
            + f". Chosen: {tuned.describe()}{_edge(tuned, candidates)}.")


def run(ctx: Context) -> Section:
    section = Section(1, "Upload (`datastore.upload`) beside azure-storage-blob and the Azure CLI")
    install = azcli.ensure(ctx.log)
    if install is not None:
        section.notes.append(f"The Azure CLI's environment (bench/.venv-az, azure-cli=={azcli.AZURE_CLI_VERSION}) was "
                             f"installed in this run in {install:.0f} s.")
    small_count = SMALL_FILES_QUICK if ctx.quick else SMALL_FILES
    small = make_small_files(ctx, small_count)
    workloads = [
        ("a", "CIFAR-10, 9 files, full size", ctx.cifar(), LARGE_CANDIDATES, None, 3),
        ("b", f"{small_count:,} files of 3 KB", small, SMALL_CANDIDATES,
         None if small_count <= SMALL_TUNING_FILES else _subset(ctx, small, SMALL_TUNING_FILES), 3),
    ]
    for key, label, src, candidates, tuning_src, reps in workloads:
        uploader = Uploader(ctx, src)
        tuner = uploader if tuning_src is None else Uploader(ctx, tuning_src)
        what = "the same files" if tuning_src is None else f"on {tuner.count:,} of the files"
        ctx.log(f"1{key}: {label} ({uploader.count} files, {uploader.bytes / 1e6:.0f} MB): tuning the thread pool "
                f"({what})")
        tuned, tuning = tuner.tune(candidates)
        section.notes.append(_tuning_note(key, what, tuned, tuning, candidates))
        ctx.log(f"1{key}: tuned pool = {tuned.describe()}; measuring, interleaved")
        slow_reps = reps if key == "a" or ctx.quick else 2  # the sequential loop and az take minutes on 10,000 files
        meter = AzuriteCpu(ctx)
        facade_runs: list[FacadeResult] = []
        azurite_cpu: list[float] = []

        def facade(u: Uploader = uploader, meter: AzuriteCpu = meter, runs: list[FacadeResult] = facade_runs,
                   azurite: list[float] = azurite_cpu) -> float:
            before = meter.read()
            result = u.facade()
            azurite.append((meter.read() - before) / u.count)
            runs.append(result)
            return result.process

        samples = interleave({
            "facade, whole process": facade,
            "tuned pool": lambda u=uploader, t=tuned: u.pool(t),
            "sequential": uploader.sequential,
            "az CLI, whole process": uploader.az,
        }, {"facade, whole process": reps, "tuned pool": reps, "sequential": slow_reps,
            "az CLI, whole process": slow_reps}, ctx.log)
        call = [r.call for r in facade_runs]
        samples = {"facade, upload call": call, **samples}
        for name, values in samples.items():
            section.samples[f"1{key} {name}"] = values
        section.samples[f"1{key} facade: Azurite CPU ms per blob"] = [round(a * 1000, 3) for a in azurite_cpu]
        section.samples[f"1{key} facade: upload call CPU ms per blob"] = [
            round(r.cpu / uploader.count * 1000, 3) for r in facade_runs]
        if key == "b":
            azurite, client = median(azurite_cpu), median([r.cpu / uploader.count for r in facade_runs])
            section.notes.append("1b: " + CPU_NOTE.format(
                azurite=azurite * 1000, client=client * 1000, total=(azurite + client) * 1000,
                cores=os.cpu_count(), ceiling=(os.cpu_count() or 1) / (azurite + client), azurite_max=1 / azurite,
                facade=uploader.count / median(call),
                pool=uploader.count / median(samples["tuned pool"]),
                az=uploader.count / median(samples["az CLI, whole process"])))
        section.rows += _rows(key, label, uploader, tuned, samples)
    return section


def _subset(ctx: Context, src: Path, count: int) -> Path:
    """A folder holding hard links to the first ``count`` files of ``src`` (same layout)."""
    folder = ctx.mkdtemp("subset-")
    for path in sorted(p for p in src.rglob("*") if p.is_file())[:count]:
        target = folder / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    return folder


def _rows(key: str, label: str, uploader: Uploader, tuned: PoolSettings, samples: dict[str, list[float]]
          ) -> list[Row]:
    def side(values: list[float]) -> str:
        return f"{spread(values)}; {_rate(uploader, median(values))}"

    call, process = samples["facade, upload call"], samples["facade, whole process"]
    rows = []
    # In-process: the upload call beside the raw loops, which run inside the bench's process.
    for name in ("tuned pool", "sequential"):
        reference = samples[name]
        ratio = median(reference) / median(call)
        goal, met = "—", None
        if name == "tuned pool":
            goal, met = ">= 0.9x the tuned pool", ratio >= 0.9
        described = f"{name} ({tuned.describe()})" if name == "tuned pool" else name
        rows.append(Row(f"1{key} upload {label}: the upload call, in-process", f"`datastore.upload`: {side(call)}",
                        f"{described}: {side(reference)}", f"{ratio:.2f}x the speed", noise(call, reference),
                        goal, met))
    # Whole processes: the facade's process (as upload-data.py runs) beside the CLI's.
    az = samples["az CLI, whole process"]
    ratio = median(az) / median(process)
    goal, met = (">= 2x the CLI", ratio >= 2.0) if key == "b" else ("—", None)
    rows.append(Row(f"1{key} upload {label}: whole processes, start-up included",
                    f"`python -m bench.worker upload` (`datastore.upload`): {side(process)}",
                    f"`az storage blob upload-batch`: {side(az)}", f"{ratio:.2f}x the speed", noise(process, az),
                    goal, met))
    return rows
