"""5. Training throughput: src/train/train.py as a submitted run vs the same image run by a bare ``docker run``.

The headline compares like with like: the same image (same Python, torch and numpy builds), the same
limits (2 CPUs, 7 GiB), the same files bind-mounted read-only; what differs is the sandbox's part
(the driver, the run's environment, uid 1000, no capabilities). The same script in the host's .venv
is a side figure: another Python build and other library builds, so its ratio says nothing about the
sandbox.

The same data (CIFAR-10 generated with 10,000 training images, on the datastore, mounted into the
run; the host reads the very same files in the service's cache), the same arguments (``--epochs 1
--num_workers 2``, the tutorial's batch size 4), the same code (train.py, model.py, cifar10_data.py
copied beside ``bench/scripts/train_timed.py``, which does the imports and then times train.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bench.common import (
    PYTHON,
    REPO,
    SMALL_IMAGES,
    Context,
    Row,
    Section,
    interleave,
    measure_process,
    median,
    noise,
    spread,
)
from bench.runs import copy_scripts, curated_image, docker_run, result_line, submit

TRAIN = r"^BENCH_TRAIN seconds=([\d.]+)"
TORCH = r"^BENCH_TORCH threads=(\d+) cpus=(\d+)"
ARGS = ["--epochs", "1", "--num_workers", "2"]


def run(ctx: Context) -> Section:
    from sandbox.datapaths import DatastorePath
    from sandbox.fake_mount import DatasetCache
    from sandbox.storage import BlobStore

    section = Section(5, "Training throughput (src/train/train.py): submitted run vs a bare `docker run`")
    dataset = ctx.dataset_on_datastore(SMALL_IMAGES)
    code = [REPO / "src" / "train" / name for name in ("train.py", "model.py", "cifar10_data.py")]
    source = copy_scripts(ctx, "train_timed.py", extra=code)
    host_source = copy_scripts(ctx, "train_timed.py", extra=code)
    container = ctx.workspace().get_default_datastore().container_name
    store = BlobStore(ctx.settings)
    cache = DatasetCache(store, ctx.settings.home / "cache" / "datasets")
    sources = (DatastorePath("workspaceblobstore", container, dataset),)
    threads: dict[str, str] = {}

    def in_container() -> float:
        submitted = submit(ctx, source, "train_timed.py", dataset=dataset, data_flag=True, args=ARGS)
        match = result_line(ctx, submitted.run_id, TRAIN)
        log = result_line(ctx, submitted.run_id, TORCH)
        threads["container"] = f"{log.group(1)} torch threads, {log.group(2)} CPUs"
        return float(match.group(1))

    def on_host() -> float:
        item = cache.materialize("input", sources)  # the files the container read (the first run fetched them)
        try:
            result = measure_process([PYTHON, "train_timed.py", "--data_path", str(item.path), *ARGS], cwd=host_source)
        finally:
            item.release()
            shutil.rmtree(Path(host_source) / "outputs", ignore_errors=True)
        match = re.search(TRAIN, result.stdout, re.MULTILINE)
        torch = re.search(TORCH, result.stdout, re.MULTILINE)
        if not match or not torch:
            raise RuntimeError(f"train_timed.py printed no result: {result.stdout[-800:]}")
        threads["host"] = f"{torch.group(1)} torch threads, {torch.group(2)} CPUs"
        return float(match.group(1))

    def bare_docker() -> float:
        item = cache.materialize("input", sources)
        try:
            _, out = docker_run(curated_image(), ["python", "/src/train_timed.py", "--data_path", "/data", *ARGS],
                                volumes={str(item.path): "/data", str(source): "/src"},
                                options=["--cpus", "2", "--memory", "7g", "--shm-size", "2g", "--user", "1000:1000",
                                         "-w", "/tmp"])
        finally:
            item.release()
        match = re.search(TRAIN, out, re.MULTILINE)
        torch = re.search(TORCH, out, re.MULTILINE)
        if not match or not torch:
            raise RuntimeError(f"train_timed.py printed no result: {out[-800:]}")
        threads["bare docker run"] = f"{torch.group(1)} torch threads, {torch.group(2)} CPUs"
        return float(match.group(1))

    reps = 2 if ctx.quick else 3
    try:
        samples = interleave({"container": in_container, "bare docker run": bare_docker, "host": on_host}, reps,
                             ctx.log)
    finally:
        store.close()
    section.samples.update({f"5 train.py seconds, {k}": v for k, v in samples.items()})
    container, bare, host = samples["container"], samples["bare docker run"], samples["host"]
    c, b, h = median(container), median(bare), median(host)
    figure = f"5 train.py, 1 epoch of {SMALL_IMAGES:,} images, batch 4, 2 loader workers"
    measured = f"submitted run: {SMALL_IMAGES / c:.0f} images/s; {spread(container)}"
    section.rows.append(Row(
        figure, measured, f"bare `docker run` of the same image, same limits (2 CPUs, 7 GiB), same files: "
        f"{SMALL_IMAGES / b:.0f} images/s; {spread(bare)}", f"{b / c:.2f}x the speed", noise(container, bare),
        ">= 0.95x", b / c >= 0.95))
    section.rows.append(Row(
        figure + " (side figure: another interpreter)", measured,
        f"host .venv (its own Python, torch and numpy builds): {SMALL_IMAGES / h:.0f} images/s; {spread(host)}",
        f"{h / c:.2f}x the speed", noise(container, host)))
    section.notes.append("Seconds are train.py's whole run after its imports (loading the data set, the loop, saving "
                         "the model). Threads seen: " + "; ".join(f"{k}: {v}" for k, v in threads.items()) + ".")
    return section
