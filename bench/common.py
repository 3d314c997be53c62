"""What every benchmark shares: result rows, interleaved repetitions, the bench workspace, data, clean-up.

Every figure is taken beside its reference in the same run, repetitions interleaved (A, B, A, B, ...)
so that the noise of a shared 2-core machine falls on both sides alike; medians are reported with
their range, and whether the two sides' ranges overlap (the difference is then within noise).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: The curated environment of the tutorial.
ENVIRONMENT = "AzureML-PyTorch-1.6-CPU"
#: Where the bench workspace keeps its data sets on the datastore.
FULL_DATASET = "datasets/cifar10"
SMALL_DATASET = "datasets/cifar10-10k"
SMALL_IMAGES = 10_000
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@dataclass
class Row:
    """One line of the results table: measured values only (published figures live in bench/published.py)."""

    figure: str
    measured: str
    reference: str
    ratio: str
    #: Whether the two sides' sample ranges overlap (``noise(a, b)``), or "—" without a measured reference.
    noise: str = "—"
    #: A goal of this project, checked on the medians of this run; never a published figure.
    goal: str = "—"
    met: bool | None = None
    #: What the figure means, from this run's data.
    note: str = ""


@dataclass
class Section:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    #: Raw samples, name -> seconds (or another unit), for the details block.
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "n/a"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 100:
        return f"{seconds:.2f} s"
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def fmt_mib(size: float) -> str:
    return f"{size / 2**20:.0f} MiB"


def spread(values: list[float], fmt: Callable[[float], str] = fmt_s) -> str:
    """``median (range min to max, n=N)`` of the samples, each value formatted with ``fmt``."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{fmt(values[0])} (n=1)"
    return f"{fmt(median(values))} (range {fmt(min(values))} to {fmt(max(values))}, n={len(values)})"


def noise(a: list[float], b: list[float]) -> str:
    """Whether two sets of samples can be told apart here: do their ranges (min to max) overlap?

    With 3-5 samples a side this is a coarse test, stated as such: overlapping ranges mean the
    difference of the medians is within this run's noise; disjoint ranges mean every sample of one side
    beat every sample of the other.
    """
    if len(a) < 2 or len(b) < 2:
        return "cannot tell (1 sample)"
    if max(a) < min(b) or max(b) < min(a):
        return "no: the ranges do not overlap"
    return "yes: the ranges overlap"


def interleave(methods: dict[str, Callable[[], float]], reps: int | dict[str, int],
               log: Callable[[str], None]) -> dict[str, list[float]]:
    """Call each method in turn, ``reps`` rounds (A, B, C, A, B, C, ...); return the samples by name."""
    counts = reps if isinstance(reps, dict) else dict.fromkeys(methods, reps)
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(max(counts.values())):
        for name, method in methods.items():
            if round_ < counts.get(name, 0):
                value = method()
                samples[name].append(value)
                log(f"    {name} #{round_ + 1}: {value:.3f}")
    return samples


class Context:
    """One bench run: options, a temp folder, the bench workspace, generated data, clean-up."""

    def __init__(self, *, quick: bool) -> None:
        from sandbox.config import Settings

        self.quick = quick
        self.settings = Settings.from_env()
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="aml-bench-"))
        os.chmod(self.tmp, 0o755)
        self._cleanups: list[tuple[str, Callable[[], None]]] = []
        self._data: dict[str, Path] = {}
        self._uploaded: set[str] = set()
        self.on_cleanup("temp folder", lambda: shutil.rmtree(self.tmp, ignore_errors=True))  # runs last
        self.workspace_dir = self.new_workspace_dir()

    # -- output ----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:7.1f} s] {message}", file=sys.stderr, flush=True)

    # -- clean-up --------------------------------------------------------------------------

    def on_cleanup(self, what: str, action: Callable[[], None]) -> None:
        self._cleanups.append((what, action))

    def cleanup(self) -> None:
        for what, action in reversed(self._cleanups):
            try:
                action()
            except Exception as exc:  # clean-up goes on whatever one step does
                self.log(f"clean-up of {what} failed: {type(exc).__name__}: {exc}")
        self._cleanups.clear()

    def mkdtemp(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
        os.chmod(path, 0o755)
        return path

    # -- workspaces ------------------------------------------------------------------------

    def new_workspace_dir(self) -> Path:
        """A folder whose ``.azureml/config.json`` names a fresh workspace: a fresh datastore container.

        ``Workspace.from_config(path=...)`` (or a control script started in that folder) gets it; the
        container ``azureml-blobstore-<workspace id>`` is deleted at clean-up.
        """
        folder = Path(tempfile.mkdtemp(prefix="ws-", dir=self.tmp))
        (folder / ".azureml").mkdir()
        name = f"bench-{uuid.uuid4().hex[:10]}"
        (folder / ".azureml" / "config.json").write_text(json.dumps({
            "subscription_id": self.settings.subscription_id, "resource_group": self.settings.resource_group,
            "workspace_name": name}), encoding="utf-8")
        container = self.workspace(folder).get_default_datastore().container_name
        self.on_cleanup(f"datastore container of workspace {name}", lambda: self.delete_container(container))
        return folder

    def workspace(self, folder: Path | None = None) -> Any:
        from sandbox import aml

        return aml.Workspace.from_config(path=str(folder or self.workspace_dir))

    def delete_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with self.blob_service() as service:
            with contextlib.suppress(ResourceNotFoundError):
                service.delete_container(name)

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.settings.connection_string)

    def count_blobs(self, container: str, prefix: str = "") -> int:
        with self.blob_service() as service:
            return sum(1 for _ in service.get_container_client(container).list_blobs(name_starts_with=prefix or None))

    # -- data ------------------------------------------------------------------------------

    def cifar(self, images: int | None = None) -> Path:
        """A generated CIFAR-10 folder (full size when ``images`` is None), made once per bench run."""
        key = "full" if images is None else str(images)
        if key not in self._data:
            from sandbox import cifar10

            folder = self.mkdtemp(f"cifar-{key}-")
            start = time.monotonic()
            cifar10.generate(folder, images=images)
            self.log(f"generated CIFAR-10 ({key}) in {time.monotonic() - start:.1f} s")
            self._data[key] = folder
        return self._data[key]

    def forget_cached_dataset(self, container: str, path: str) -> None:
        """At clean-up, delete the service's dataset cache of ``(container, path)`` (what runs mounted).

        The cache folder's name is the hash that ``sandbox.fake_mount.DatasetCache`` gives the source.
        """
        import hashlib

        from sandbox.datapaths import DatastorePath

        source = DatastorePath("workspaceblobstore", container, path)
        key = hashlib.sha256(json.dumps([source.to_dict()], sort_keys=True).encode()).hexdigest()[:24]
        folder = self.settings.home / "cache" / "datasets" / key
        self.on_cleanup(f"dataset cache {folder}", lambda: shutil.rmtree(folder, ignore_errors=True))

    def dataset_on_datastore(self, images: int | None = None) -> str:
        """Upload a generated CIFAR-10 to the bench workspace once; return its path on the datastore."""
        path = FULL_DATASET if images is None else SMALL_DATASET
        if path not in self._uploaded:
            datastore = self.workspace().get_default_datastore()
            self.forget_cached_dataset(datastore.container_name, path)
            with quiet_stdout():
                datastore.upload(str(self.cifar(images)), target_path=path, overwrite=True, show_progress=False)
            self._uploaded.add(path)
        return path

    def dataset_input(self, images: int | None = None) -> Any:
        """The tutorial's ``dataset.as_named_input('input').as_mount()`` on the bench workspace."""
        from sandbox import aml

        path = self.dataset_on_datastore(images)
        datastore = self.workspace().get_default_datastore()
        return aml.Dataset.File.from_files(path=(datastore, path)).as_named_input("input").as_mount()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Drop what the measured code prints (the facade's per-file lines) without a terminal's cost."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def run_command(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result


@dataclass(frozen=True)
class ProcessResult:
    seconds: float
    peak_rss: int  # bytes, of that one process (its children not included)
    stdout: str


def measure_process(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
                    ) -> ProcessResult:
    """Run ``command`` to its end; its wall time and the peak RSS of that one process (``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:4])} ... exited with {process.returncode}: {err.read()[-2000:]}")
        return ProcessResult(seconds, usage.ru_maxrss * 1024, out.read())


def machine() -> dict[str, str]:
    """Cores, memory, CPU, kernel, OS, Docker and Python versions, date."""
    import platform

    info: dict[str, str] = {"date": time.strftime("%Y-%m-%d %H:%M %Z")}
    info["cores"] = str(os.cpu_count())
    with contextlib.suppress(OSError):
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal:")))
        info["memory"] = f"{kib / 2**20:.1f} GiB"
    with contextlib.suppress(OSError, StopIteration):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
    info["kernel"] = platform.release()
    with contextlib.suppress(OSError):
        lines = Path("/etc/os-release").read_text().splitlines()
        os_release = dict(line.split("=", 1) for line in lines if "=" in line)
        info["os"] = os_release.get("PRETTY_NAME", "").strip('"')
    try:
        info["docker"] = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                        text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["docker"] = "unknown"
    with contextlib.suppress(OSError):
        info["disk"] = _root_disk()
    info["python"] = platform.python_version()
    return info


def _root_disk() -> str:
    usage = shutil.disk_usage("/")
    return f"{usage.total / 1e9:.0f} GB ({usage.free / 1e9:.0f} GB free)"


def pinned_venv(venv: Path, requirement: str, installed: Callable[[], str | None], version: str,
                log: Callable[[str], None] = print, *, note: str = "a minute or two, once") -> float | None:
    """Create ``venv`` holding ``requirement`` unless ``installed()`` already gives ``version``; the install time."""
    if installed() == version:
        return None
    start = time.monotonic()
    log(f"installing {requirement} into {venv} ({note})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    requirement], check=True)
    if installed() != version:
        raise RuntimeError(f"{requirement} did not install into {venv}; remove the folder and run again")
    return time.monotonic() - start
