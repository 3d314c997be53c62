"""4. Reading the data through the mount in the run container vs the same files on the host.

``bench/scripts/read_batches.py`` unpickles the six CIFAR-10 batch files (as torchvision does) and times
itself. In the container it runs as a submitted run, reading the dataset through the sandbox's
read-only bind mount; on the host it runs in .venv on the very same files (the version folder of the
service's dataset cache). Twice over: with the files in the page cache, and with them dropped from it
first (posix_fadvise DONTNEED, done by the script itself), so that the reads come from the disk.
"""

from __future__ import annotations

import re

from bench.common import PYTHON, Context, Row, Section, fmt_s, interleave, measure_process, median
from bench.runs import copy_scripts, result_line, submit, wait_until_done

READ = r"^BENCH_READ seconds=([\d.]+) bytes=(\d+)"


def run(ctx: Context) -> Section:
    from sandbox.datapaths import DatastorePath
    from sandbox.fake_mount import DatasetCache
    from sandbox.storage import BlobStore

    section = Section(4, "Reading the data through the mount (container) vs on the host")
    dataset = ctx.dataset_on_datastore()
    source = copy_scripts(ctx, "read_batches.py")
    ctx.log("4: warm-up run (the dataset in the service's cache)")
    warm = submit(ctx, source, "read_batches.py", dataset=dataset)
    wait_until_done(ctx, warm.run_id)
    container = ctx.workspace().get_default_datastore().container_name
    store = BlobStore(ctx.settings)
    item = DatasetCache(store, ctx.settings.home / "cache" / "datasets").materialize(
        "input", (DatastorePath("workspaceblobstore", container, dataset),))
    if item.fetched:
        raise RuntimeError("the service's cache did not hold the dataset after the warm-up run")
    host_path = str(item.path)
    sizes: list[int] = []

    def in_container(cold: bool) -> float:
        submitted = submit(ctx, source, "read_batches.py", dataset=dataset, args=["--cold"] if cold else [])
        match = result_line(ctx, submitted.run_id, READ, poll=0.5)
        sizes.append(int(match.group(2)))
        return float(match.group(1))

    def on_host(cold: bool) -> float:
        result = measure_process([PYTHON, str(source / "read_batches.py"), host_path, *(["--cold"] if cold else [])])
        match = re.search(READ, result.stdout, re.MULTILINE)
        if not match:
            raise RuntimeError(f"read_batches.py printed no result: {result.stdout[-500:]}")
        return float(match.group(1))

    reps = 2 if ctx.quick else 5
    try:
        samples = interleave({
            "container, page cache warm": lambda: in_container(False),
            "host, page cache warm": lambda: on_host(False),
            "container, from disk": lambda: in_container(True),
            "host, from disk": lambda: on_host(True),
        }, reps, ctx.log)
    finally:
        item.release()
        store.close()
    section.samples.update({f"4 {k}": v for k, v in samples.items()})
    size_mb = (sizes[0] if sizes else 0) / 1e6
    for label, key in (("page cache warm", "warm"), ("from disk", "disk")):
        name = "page cache warm" if key == "warm" else "from disk"
        c, h = median(samples[f"container, {name}"]), median(samples[f"host, {name}"])
        ratio = h / c
        section.rows.append(Row(
            f"4{'a' if key == 'warm' else 'b'} read + unpickle the 6 batch files ({size_mb:.0f} MB), {label}",
            f"container, read-only bind mount: {fmt_s(c)} ({size_mb / c:.0f} MB/s)",
            f"host, .venv, same files: {fmt_s(h)} ({size_mb / h:.0f} MB/s)", f"{ratio:.2f}x the speed", ">= 0.9x",
            ratio >= 0.9))
    section.notes.append(
        "The host runs .venv's CPython (pyenv 3.11.7), the container the image's (Debian's 3.11.2): the figure says "
        "that reading through the sandbox's read-only bind mount costs nothing measurable, not that containers "
        "unpickle faster. Where the container comes out faster, the cause was not pinned down: a side check with a "
        "bare `docker run` of the image on the same files read at the host's speed, so it is not the Python build "
        "alone.")
    return section
