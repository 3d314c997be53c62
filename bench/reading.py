"""4. Reading the data through the mount: like for like, the same image and interpreter on every side.

``bench/scripts/read_batches.py`` reads the six CIFAR-10 batch files raw (``readinto`` one reused
buffer: the file system alone) and unpickles them as torchvision does, each from the disk (dropped from
the page cache first) and then warm, and counts the minor page faults of the unpickling. Sides:

- the submitted run: the dataset through the sandbox's read-only bind mount of the service's cache;
- a bare ``docker run`` of the same image with the same limits (2 CPUs, 7 GiB, uid 1000) and the same
  folder bind-mounted read-only, which also reads a copy of the files in the container's own file
  system (overlay), in the same process: the bind mount's own cost, nothing else differing;
- the host's .venv on the same files: a side figure only, since it is another Python and numpy build
  (and another process history: see the page faults).

Why like for like: an earlier version compared the submitted run with the host's .venv and found the
run up to 3x faster. Unpickling these 30 MB pickles is dominated by page faults on freshly allocated
memory, and whether glibc's malloc hands back the freed ~60 MB per file to the kernel (to fault it in
again for the next file) depends on the process's allocation history (what was imported, even one
``os.stat`` between load and free): the two sides differed in their heaps, not in their file systems.
"""

from __future__ import annotations

import re
import statistics

from bench.common import PYTHON, Context, Row, Section, interleave, measure_process, median, noise, spread
from bench.runs import copy_scripts, curated_image, docker_run, driver_log, submit, wait_until_done

LINE = re.compile(r"^BENCH_READ source=(\w+) (.*)$", re.MULTILINE)
KEYS = ("read_cold", "read_warm", "unpickle_cold", "unpickle_warm", "faults_cold", "faults_warm")
PASSES = 3


def parse(output: str) -> dict[str, dict[str, float]]:
    """``{source: {key: value}}`` from read_batches.py's lines."""
    found = {}
    for source, rest in LINE.findall(output):
        found[source] = {key: float(value) for key, value in (item.split("=", 1) for item in rest.split())}
    if "given" not in found:
        raise RuntimeError(f"read_batches.py printed no result: {output[-800:]}")
    return found


def run(ctx: Context) -> Section:
    from sandbox.datapaths import DatastorePath
    from sandbox.fake_mount import DatasetCache
    from sandbox.storage import BlobStore

    section = Section(4, "Reading the data through the mount, like for like")
    dataset = ctx.dataset_on_datastore()
    source = copy_scripts(ctx, "read_batches.py")
    image = curated_image()
    ctx.log("4: warm-up run (the dataset in the service's cache)")
    warm = submit(ctx, source, "read_batches.py", dataset=dataset, args=["--passes", "1"])
    wait_until_done(ctx, warm.run_id)
    container = ctx.workspace().get_default_datastore().container_name
    store = BlobStore(ctx.settings)
    item = DatasetCache(store, ctx.settings.home / "cache" / "datasets").materialize(
        "input", (DatastorePath("workspaceblobstore", container, dataset),))
    if item.fetched:
        raise RuntimeError("the service's cache did not hold the dataset after the warm-up run")
    host_path = str(item.path)
    results: dict[str, list[dict[str, float]]] = {"run": [], "bare": [], "bare copy": [], "host": []}

    def in_run() -> float:
        submitted = submit(ctx, source, "read_batches.py", dataset=dataset, args=["--passes", str(PASSES)])
        wait_until_done(ctx, submitted.run_id, poll=2.0)
        results["run"].append(parse(driver_log(ctx, submitted.run_id))["given"])
        return results["run"][-1]["unpickle_warm"]

    def bare() -> float:
        _, out = docker_run(image, ["python", "/src/read_batches.py", "/data", "--copy-to", "/tmp/own",
                                    "--passes", str(PASSES)],
                            volumes={host_path: "/data", str(source): "/src"},
                            options=["--cpus", "2", "--memory", "7g", "--user", "1000:1000", "-w", "/tmp"])
        found = parse(out)
        results["bare"].append(found["given"])
        results["bare copy"].append(found["copy"])
        return found["given"]["unpickle_warm"]

    def on_host() -> float:
        result = measure_process([PYTHON, str(source / "read_batches.py"), host_path, "--passes", str(PASSES)])
        results["host"].append(parse(result.stdout)["given"])
        return results["host"][-1]["unpickle_warm"]

    reps = 2 if ctx.quick else 5
    try:
        interleave({"submitted run": in_run, "bare docker run": bare, "host .venv": on_host}, reps, ctx.log)
    finally:
        item.release()
        store.close()
    labels = {"run": "submitted run, read-only bind mount", "bare": "bare docker run, read-only bind mount",
              "bare copy": "bare docker run, own file system", "host": "host .venv, same files"}
    for side, values in results.items():
        for key in KEYS:
            per_pass = [v[key] / PASSES for v in values]
            section.samples[f"4 {labels[side]}: {key.replace('_', ' ')}{' (s)' if 'faults' not in key else ''} "
                            "per pass"] = per_pass
    size_mb = results["run"][0]["bytes"] / 1e6 if results["run"] else 0.0
    what = f"the 6 batch files ({size_mb:.0f} MB)"

    def per_pass(side: str, key: str) -> list[float]:
        return [v[key] / PASSES for v in results[side]]

    def row(figure: str, a: str, b: str, key: str, *, goal: str = "—", side_figure: bool = False) -> Row:
        av, bv = per_pass(a, key), per_pass(b, key)
        ratio = median(bv) / median(av)
        return Row(figure, f"{labels[a]}: {spread(av)}; {size_mb / median(av):.0f} MB/s",
                   f"{labels[b]}: {spread(bv)}; {size_mb / median(bv):.0f} MB/s", f"{ratio:.2f}x the speed",
                   noise(av, bv), goal, None if goal == "—" else ratio >= 0.9,
                   "" if not side_figure else "Another Python and numpy build and another heap: not a measure of "
                   "the sandbox (see the page faults below).")

    section.rows += [
        row(f"4a read {what} (readinto, no unpickling) from disk, per pass: the bind mount alone", "bare", "bare copy",
            "read_cold"),
        row(f"4b read {what} (readinto) page cache warm, per pass: the bind mount alone", "bare", "bare copy",
            "read_warm"),
        row(f"4c read + unpickle {what} as torchvision does, page cache warm, per pass: the sandbox's run vs the "
            "same image run bare", "run", "bare", "unpickle_warm", goal=">= 0.9x"),
        row(f"4d read + unpickle {what}, from disk, per pass: the sandbox's run vs the same image run bare", "run",
            "bare", "unpickle_cold", goal=">= 0.9x"),
        row(f"4e read + unpickle {what}, page cache warm, per pass (side figure: another interpreter)", "run", "host",
            "unpickle_warm", side_figure=True),
    ]
    section.notes.append(_faults_note(results))
    return section


def _faults_note(results: dict[str, list[dict[str, float]]]) -> str:
    """The minor page faults while unpickling, per side, and how much of the time they explain in this run."""
    names = {"run": "submitted run", "bare": "bare docker run (bind mount)", "bare copy": "bare docker run (own file "
             "system)", "host": "host .venv"}
    text = "Minor page faults per pass while unpickling (warm, median): " + ", ".join(
        f"{names[side]} {median([v['faults_warm'] / PASSES for v in values]):,.0f}"
        for side, values in results.items() if values) + "."
    points = [(v["faults_warm"] / PASSES, v["unpickle_warm"] / PASSES) for values in results.values() for v in values]
    faults = [f for f, _ in points]
    if len(points) >= 3 and max(faults) - min(faults) > 0.1 * max(faults):
        slope, intercept = statistics.linear_regression(faults, [s for _, s in points])
        text += (f" Over all {len(points)} samples the unpickling time grows by {slope * 1e6:.1f} µs per fault "
                 f"(least squares; {intercept * 1000:.0f} ms at no faults): each fault maps a fresh 4 KiB page, so "
                 "a side whose heap returns freed memory to the kernel and faults it in again is slower for that "
                 "reason alone.")
    else:
        text += " The sides faulted about as often, so the faults do not explain a difference here."
    return text
