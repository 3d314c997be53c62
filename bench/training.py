"""5. Training throughput: src/train/train.py in the run container vs the same script in .venv on the host.

The same data (CIFAR-10 generated with 10,000 training images, on the datastore, mounted into the
run; the host reads the very same files in the service's cache), the same arguments (``--epochs 1
--num_workers 2``, the tutorial's batch size 4), the same code (train.py, model.py, cifar10_data.py
copied beside ``bench/scripts/train_timed.py``, which does the imports and then times train.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bench.common import PYTHON, REPO, SMALL_IMAGES, Context, Row, Section, fmt_s, interleave, measure_process, median
from bench.runs import copy_scripts, curated_image, docker_run, result_line, submit

TRAIN = r"^BENCH_TRAIN seconds=([\d.]+)"
TORCH = r"^BENCH_TORCH threads=(\d+) cpus=(\d+)"
ARGS = ["--epochs", "1", "--num_workers", "2"]


def run(ctx: Context) -> Section:
    from sandbox.datapaths import DatastorePath
    from sandbox.fake_mount import DatasetCache
    from sandbox.storage import BlobStore

    section = Section(5, "Training throughput (src/train/train.py): container vs host")
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
                                options=["--cpus", "2", "--memory", "7g", "--shm-size", "2g", "-w", "/tmp"])
        finally:
            item.release()
        match = re.search(TRAIN, out, re.MULTILINE)
        if not match:
            raise RuntimeError(f"train_timed.py printed no result: {out[-800:]}")
        return float(match.group(1))

    reps = 2 if ctx.quick else 3
    try:
        samples = interleave({"container": in_container, "host": on_host, "bare docker run": bare_docker}, reps,
                             ctx.log)
    finally:
        store.close()
    section.samples.update({f"5 train.py seconds, {k}": v for k, v in samples.items()})
    c, h = median(samples["container"]), median(samples["host"])
    ratio = h / c
    section.rows.append(Row(
        f"5 train.py, 1 epoch of {SMALL_IMAGES:,} images, batch 4, 2 loader workers",
        f"container (submitted run): {SMALL_IMAGES / c:.0f} images/s ({fmt_s(c)})",
        f"host .venv: {SMALL_IMAGES / h:.0f} images/s ({fmt_s(h)})", f"{ratio:.2f}x the speed", ">= 0.95x",
        ratio >= 0.95,
        "" if ratio >= 0.95 else "Both sides run the same torch build on the same 2 cores; see the raw samples for "
        "the spread on this shared machine."))
    b = median(samples["bare docker run"])
    section.rows.append(Row(
        f"5 train.py, 1 epoch of {SMALL_IMAGES:,} images, batch 4, 2 loader workers",
        f"container (submitted run): {SMALL_IMAGES / c:.0f} images/s ({fmt_s(c)})",
        f"bare `docker run` of the same image, same limits (2 CPUs, 7 GiB): {SMALL_IMAGES / b:.0f} images/s "
        f"({fmt_s(b)})", f"{b / c:.2f}x the speed", "—", None))
    section.notes.append("Seconds are train.py's whole run after its imports (loading the data set, the loop, saving "
                         "the model). Threads seen: " + "; ".join(f"{k}: {v}" for k, v in threads.items()) + ".")
    return section
