"""2. Submit: how long ``experiment.submit()`` takes to return, and how long until the script's first line.

Warm: the image is built and the dataset is in the service's cache (a warm-up run first). Each sandbox
sample is the tutorial's submit from a fresh process (bench.worker: curated environment, the CIFAR-10
dataset mounted) of ``bench/scripts/first_line.py``, which does train.py's imports (torch, torchvision,
azureml-core) and prints ``time.time()``; the latency is that timestamp minus the time taken just before
``submit()``, read from the driver log through the service's API. The reference is a bare
``docker run --rm`` of the same image running the same script (latency: its printed time minus the time
taken just before ``docker run``).
"""

from __future__ import annotations

import re

from bench.common import Context, Row, Section, interleave, median, noise, spread
from bench.runs import copy_scripts, curated_image, docker_run, submit, wait_for_line, wait_until_done

FIRST_LINE = r"^BENCH_FIRST_LINE (\d+\.\d+)"


def run(ctx: Context) -> Section:
    section = Section(2, "Submit: `experiment.submit()` and the time to the script's first line")
    dataset = ctx.dataset_on_datastore()
    image = curated_image()
    source = copy_scripts(ctx, "first_line.py")
    ctx.log("2: warm-up (a run that materialises the dataset in the service's cache, a bare docker run)")
    warm = submit(ctx, source, "first_line.py", dataset=dataset)
    wait_until_done(ctx, warm.run_id)
    docker_run(image, ["python", "/bench/first_line.py"], volumes={str(source): "/bench"})
    returns: list[float] = []

    def sandbox() -> float:
        submitted = submit(ctx, source, "first_line.py", dataset=dataset)
        match = wait_for_line(ctx, submitted.run_id, FIRST_LINE)
        returns.append(submitted.submit_seconds)
        wait_until_done(ctx, submitted.run_id)
        return float(match.group(1)) - submitted.t0

    def bare() -> float:
        t0, out = docker_run(image, ["python", "/bench/first_line.py"], volumes={str(source): "/bench"})
        match = re.search(FIRST_LINE, out, re.MULTILINE)
        if not match:
            raise RuntimeError(f"the bare run printed no first line: {out[-500:]}")
        return float(match.group(1)) - t0

    reps = 3 if ctx.quick else 5
    samples = interleave({"sandbox: submit -> first line": sandbox, "bare docker run -> first line": bare}, reps,
                         ctx.log)
    section.samples["2 submit() returns"] = returns
    section.samples.update({f"2 {k}": v for k, v in samples.items()})
    submit_s = median(returns)
    section.rows.append(Row(
        "2a `experiment.submit()` returns (warm, the tutorial's config with a dataset mount, a fresh process)",
        spread(returns), "—", "—", "—", "< 1 s", submit_s < 1.0))
    sandbox = samples["sandbox: submit -> first line"]
    bare = samples["bare docker run -> first line"]
    sandbox_s, bare_s = median(sandbox), median(bare)
    extra = sandbox_s - bare_s
    section.rows.append(Row(
        "2b `submit()` -> the script's first line (warm; the script imports torch, torchvision, azureml-core)",
        spread(sandbox), f"bare `docker run` of the same image and script: {spread(bare)}",
        f"{extra:+.2f} s ({sandbox_s / bare_s:.2f}x the time)", noise(sandbox, bare), "<= bare + 1.5 s",
        extra <= 1.5))
    return section
