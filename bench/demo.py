"""8. The tutorial end to end, warm: upload-data.py, run-pytorch-data.py, the run to Completed.

The control scripts run unchanged as processes, in a folder whose ``.azureml/config.json`` names a fresh
bench workspace (so the user's ``datasets/cifar10`` is not touched), with the full-size CIFAR-10 (in
--quick: 10,000 images). The time splits into: the upload, the submit script, the wait until train.py's
first line, train.py itself (its first to its last line, read from the driver log), and the end of the
run until Completed. Azure's published figures are not compared here: they time the hello-world job, not
this tutorial (see bench/published.py and the published table).
"""

from __future__ import annotations

import re
import time

from bench.common import PYTHON, REPO, SMALL_IMAGES, Context, Row, Section, fmt_s, measure_process, spread
from bench.runs import wait_for_line, wait_until_done


def run(ctx: Context) -> Section:
    section = Section(8, "The tutorial end to end (`make demo` steps, warm)")
    data = ctx.cifar(SMALL_IMAGES if ctx.quick else None)
    folder = ctx.new_workspace_dir()
    ctx.forget_cached_dataset(ctx.workspace(folder).get_default_datastore().container_name, "datasets/cifar10")
    start = time.perf_counter()
    measure_process([PYTHON, str(REPO / "control" / "upload-data.py"), "--src-dir", str(data)], cwd=folder)
    t_upload = time.perf_counter()
    submitted = measure_process([PYTHON, str(REPO / "control" / "run-pytorch-data.py"), "--experiment",
                                 "bench-demo"], cwd=folder)
    t_submitted = time.perf_counter()
    match = re.search(r"/runs/([^?\s]+)", submitted.stdout)
    if not match:
        raise RuntimeError(f"run-pytorch-data.py printed no run URL: {submitted.stdout[-500:]}")
    run_id = match.group(1)
    wait_for_line(ctx, run_id, r"^===== DATA =====", poll=0.2)
    t_first = time.perf_counter()
    wait_for_line(ctx, run_id, r"^Finished Training", poll=0.5, timeout=3600)
    t_last = time.perf_counter()
    wait_until_done(ctx, run_id, poll=0.2)
    t_done = time.perf_counter()
    total = t_done - start
    training = t_last - t_first
    overhead = total - training
    parts = {
        "upload-data.py (process)": t_upload - start,
        "run-pytorch-data.py (process)": t_submitted - t_upload,
        "until train.py's first line": t_first - t_submitted,
        "train.py (first to last line)": training,
        "until Completed": t_done - t_last,
    }
    section.samples.update({f"8 {k}": [v] for k, v in parts.items()})
    section.notes.append("One pass (the training alone takes minutes): " + "; ".join(
        f"{k} {fmt_s(v)}" for k, v in parts.items()) + ".")
    images = "full size" if not ctx.quick else f"{SMALL_IMAGES:,} images"
    section.rows.append(Row(
        f"8a the tutorial, upload to Completed, warm (CIFAR-10 {images}, train.py's 2 epochs; one pass)",
        spread([total]), "—", "—", "—"))
    section.rows.append(Row(
        "8b the same, less train.py's own time (the sandbox's overhead: upload, submit, start, finalise; one pass)",
        spread([overhead]), "—", "—", "—",
        note=f"Of which the upload (upload-data.py, a whole process) {fmt_s(parts['upload-data.py (process)'])}; "
        f"without it {fmt_s(overhead - parts['upload-data.py (process)'])}."))
    return section
