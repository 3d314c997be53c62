"""7. Peak memory: the submitting process, the workspace service with 4 runs going, a 1 GiB upload.

- The submitting process: peak RSS (``wait4``) of a fresh process doing the tutorial's submit
  (bench.worker submit), beside a process that only imports azureml.core (any control script's floor).
- The workspace service: its container's memory (cgroup ``memory.stat``: ``rss``, the process's own
  memory, and usage less inactive file cache, as ``docker stats`` shows it), sampled every 0.2 s while 4
  runs that each sleep 20 s with the CIFAR-10 dataset mounted go at once (cpu-cluster has 4 nodes),
  beside the same figures idle just before.
- Upload: peak RSS of a fresh process uploading one 1 GiB file through ``datastore.upload``, beside the
  same process uploading one 1 MiB file; the memory must not grow with the file's size.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    REPO,
    Context,
    Row,
    Section,
    fmt_mib,
    interleave,
    measure_process,
    median,
    noise,
    spread,
)
from bench.runs import copy_scripts, submit, wait_until_done

SLEEP_SECONDS = 20


def _mib(value: float) -> str:
    return f"{value:.0f} MiB"


def _service_cgroup(ctx: Context) -> Path:
    import docker

    client = docker.from_env()
    containers = client.containers.list(filters={"label": [f"com.docker.compose.project={ctx.settings.project}",
                                                           "com.docker.compose.service=workspace"]})
    if not containers:
        raise RuntimeError("the workspace service's container is not running")
    cid = containers[0].id
    client.close()
    root = Path("/sys/fs/cgroup")
    for candidate in (root / "memory" / "docker" / cid, root / "system.slice" / f"docker-{cid}.scope",
                      root / "docker" / cid):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"no memory cgroup found for container {cid[:12]}")


def _memory(cgroup: Path) -> tuple[int, int]:
    """(anonymous memory, usage less inactive file cache) of a container's cgroup, v1 or v2."""
    stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
    if (cgroup / "memory.usage_in_bytes").exists():  # cgroup v1
        usage = int((cgroup / "memory.usage_in_bytes").read_text())
        return int(stat.get("total_rss", stat.get("rss", 0))), usage - int(stat.get("total_inactive_file", 0))
    usage = int((cgroup / "memory.current").read_text())
    return int(stat.get("anon", 0)), usage - int(stat.get("inactive_file", 0))


class Sampler:
    def __init__(self, cgroup: Path, interval: float = 0.2) -> None:
        self.cgroup = cgroup
        self.interval = interval
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(_memory(self.cgroup))
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _upload_rss(ctx: Context, size: int) -> float:
    folder = ctx.mkdtemp("upload-one-")
    path = folder / "blob.bin"
    with open(path, "wb") as handle:  # sparse: no disk used here; the reads still return every byte
        handle.truncate(size)
    workspace = ctx.new_workspace_dir()
    result = measure_process([PYTHON, "-m", "bench.worker", "upload", "--workspace-dir", str(workspace),
                              "--src", str(folder), "--target", "bench"], cwd=REPO)
    ctx.delete_container(ctx.workspace(workspace).get_default_datastore().container_name)
    path.unlink()
    data = json.loads(result.stdout.strip().splitlines()[-1])
    ctx.log(f"    upload of {size / 2**20:.0f} MiB took {data['upload_s']:.2f} s")
    return data["peak_rss"] / 2**20


def run(ctx: Context) -> Section:
    section = Section(7, "Peak memory")
    dataset = ctx.dataset_on_datastore()
    first_line = copy_scripts(ctx, "first_line.py")
    sleeper = copy_scripts(ctx, "sleep.py")
    reps = 2 if ctx.quick else 3

    def submitting() -> float:
        submitted = submit(ctx, first_line, "first_line.py", dataset=dataset)
        wait_until_done(ctx, submitted.run_id)
        return submitted.peak_rss / 2**20

    def imports_only() -> float:
        result = measure_process([PYTHON, "-m", "bench.worker", "imports"], cwd=REPO)
        return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss"] / 2**20

    samples = interleave({"submitting process (MiB)": submitting, "azureml.core import only (MiB)": imports_only},
                         reps, ctx.log)
    section.samples.update({f"7 {k}": v for k, v in samples.items()})
    sub, floor = samples["submitting process (MiB)"], samples["azureml.core import only (MiB)"]
    section.rows.append(Row("7a peak RSS of the process that submits (the tutorial's submit, a fresh process)",
                            spread(sub, _mib), f"a process that only imports azureml.core: {spread(floor, _mib)}",
                            f"{median(sub) / median(floor):.2f}x ({median(sub) - median(floor):+.0f} MiB)",
                            noise(sub, floor)))

    ctx.log("7: the workspace service, idle then with 4 runs going")
    cgroup = _service_cgroup(ctx)
    with Sampler(cgroup) as idle:
        time.sleep(4)
    submitted = []
    with Sampler(cgroup) as busy:
        for _ in range(4):
            submitted.append(submit(ctx, sleeper, "sleep.py", dataset=dataset, args=[str(SLEEP_SECONDS)]))
        from sandbox.service.client import ServiceClient

        client = ServiceClient(ctx.settings)
        most_running = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            statuses = [client.get_run(s.run_id)["status"] for s in submitted]
            most_running = max(most_running, statuses.count("Running"))
            if all(s in {"Completed", "Failed", "Canceled"} for s in statuses):
                break
            time.sleep(0.5)
        for s in submitted:
            wait_until_done(ctx, s.run_id)
    idle_rss = median([a for a, _ in idle.samples])
    idle_use = median([u for _, u in idle.samples])
    peak_rss = max(a for a, _ in busy.samples)
    peak_use = max(u for _, u in busy.samples)
    section.samples["7 service rss idle, busy (MiB)"] = [a / 2**20 for a, _ in idle.samples[:3]] + \
        [a / 2**20 for a, _ in busy.samples[:: max(1, len(busy.samples) // 20)]]
    section.rows.append(Row(
        f"7b workspace service container, peak with 4 runs going (at most {most_running} Running at once seen)",
        f"rss {fmt_mib(peak_rss)}; usage less inactive cache {fmt_mib(peak_use)}",
        f"the same service idle: rss {fmt_mib(idle_rss)}; usage {fmt_mib(idle_use)}",
        f"{peak_rss / idle_rss:.2f}x ({(peak_rss - idle_rss) / 2**20:+.0f} MiB rss)",
        noise([a for a, _ in idle.samples], [a for a, _ in busy.samples]),
        note=f"Idle: the median of {len(idle.samples)} samples over 4 s; busy: the peak of {len(busy.samples)} samples "
        "taken every 0.2 s."))

    ctx.log("7: a 1 GiB upload vs a 1 MiB upload")
    uploads = interleave({"1 GiB upload (MiB)": lambda: _upload_rss(ctx, 2**30),
                          "1 MiB upload (MiB)": lambda: _upload_rss(ctx, 2**20)}, 2, ctx.log)
    section.samples.update({f"7 {k}": v for k, v in uploads.items()})
    big, small = uploads["1 GiB upload (MiB)"], uploads["1 MiB upload (MiB)"]
    growth = median(big) - median(small)
    section.rows.append(Row(
        "7c peak RSS of a process uploading one 1 GiB file (`datastore.upload`)", spread(big, _mib),
        f"the same uploading one 1 MiB file: {spread(small, _mib)}", f"{growth:+.0f} MiB for 1024x the data",
        noise(big, small), "does not grow with the file (< +64 MiB)", growth < 64))
    os.sync()
    return section
