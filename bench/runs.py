"""Runs through the workspace service, as the benchmarks submit and follow them, and bare containers beside them."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ENVIRONMENT, PYTHON, REPO, Context, ProcessResult, measure_process

DRIVER_LOG = "azureml-logs/70_driver_log.txt"
TERMINAL = {"Completed", "Failed", "Canceled"}


@dataclass(frozen=True)
class Submitted:
    run_id: str
    t0: float  # time.time() just before experiment.submit()
    submit_seconds: float
    peak_rss: int  # bytes, the submitting process's VmHWM
    process: ProcessResult


def curated_image() -> str:
    """The image of the tutorial's curated environment (as ``submit`` resolves it)."""
    from sandbox import curated
    from sandbox.images import environment_recipe

    return environment_recipe(curated.catalog()[ENVIRONMENT].definition).reference


def submit(ctx: Context, source: Path, script: str, *, dataset: str | None = None, data_flag: bool = False,
           args: list[str] | None = None, experiment: str = "bench", workspace_dir: Path | None = None) -> Submitted:
    """Submit from a fresh process (``bench.worker submit``), as a control script does."""
    command = [PYTHON, "-m", "bench.worker", "submit", "--workspace-dir", str(workspace_dir or ctx.workspace_dir),
               "--source", str(source), "--script", script, "--experiment", experiment]
    if dataset:
        command += ["--dataset", dataset] + (["--data-flag"] if data_flag else [])
    command += ["--", *(args or [])]
    result = measure_process(command, cwd=REPO)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return Submitted(data["run_id"], data["t0"], data["submit_s"], data["peak_rss"], result)


def _client(ctx: Context) -> Any:
    from sandbox.service.client import ServiceClient

    return ServiceClient(ctx.settings)


def driver_log(ctx: Context, run_id: str) -> str:
    from sandbox.errors import ServiceError

    try:
        data, _, _ = _client(ctx).read_file(run_id, DRIVER_LOG, 0)
    except ServiceError:
        return ""
    return data.decode("utf-8", "replace")


def wait_for_line(ctx: Context, run_id: str, pattern: str, *, timeout: float = 600, poll: float = 0.25
                  ) -> re.Match[str]:
    """Poll the driver log until a line matches ``pattern`` (a run that ends without it is an error)."""
    regex = re.compile(pattern, re.MULTILINE)
    client = _client(ctx)
    deadline = time.monotonic() + timeout
    while True:
        log = driver_log(ctx, run_id)
        match = regex.search(log)
        if match:
            return match
        status = client.get_run(run_id)["status"]
        if status in TERMINAL:
            log = driver_log(ctx, run_id)
            match = regex.search(log)
            if match:
                return match
            raise RuntimeError(f"run {run_id} ended {status} without printing {pattern!r}; driver log tail:\n"
                               f"{log[-1500:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id}: {pattern!r} did not appear within {timeout:.0f} s")
        time.sleep(poll)


def wait_until_done(ctx: Context, run_id: str, *, timeout: float = 1200, poll: float = 0.5) -> dict[str, Any]:
    client = _client(ctx)
    deadline = time.monotonic() + timeout
    while True:
        record = client.get_run(run_id)
        if record["status"] in TERMINAL:
            if record["status"] != "Completed":
                raise RuntimeError(f"run {run_id} ended {record['status']}: {record.get('error')}; driver log tail:\n"
                                   f"{driver_log(ctx, run_id)[-1500:]}")
            return record
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} still {record['status']} after {timeout:.0f} s")
        time.sleep(poll)


def result_line(ctx: Context, run_id: str, pattern: str, *, timeout: float = 1200, poll: float = 2.0
                ) -> re.Match[str]:
    """Wait for the run to complete (polling its status seldom, so as not to load the machine the run
    is measured on), then find ``pattern`` in its driver log."""
    wait_until_done(ctx, run_id, timeout=timeout, poll=poll)
    log = driver_log(ctx, run_id)
    match = re.search(pattern, log, re.MULTILINE)
    if not match:
        raise RuntimeError(f"run {run_id} completed without printing {pattern!r}; driver log tail:\n{log[-1500:]}")
    return match


def docker_run(image: str, command: list[str], *, volumes: dict[str, str] | None = None,
               options: list[str] | None = None, timeout: float = 1200) -> tuple[float, str]:
    """A bare ``docker run --rm`` (read-only bind mounts ``host: container``); return (t0, stdout)."""
    args = ["docker", "run", "--rm", *(options or [])]
    for host, target in (volumes or {}).items():
        args += ["-v", f"{host}:{target}:ro"]
    t0 = time.time()
    result = subprocess.run([*args, image, *command], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"docker run {image} exited with {result.returncode}: {result.stderr[-1500:]}")
    return t0, result.stdout


def copy_scripts(ctx: Context, *names: str, extra: list[Path] | None = None) -> Path:
    """A source folder holding bench/scripts/<names> (and ``extra`` files)."""
    import shutil

    from bench.common import SCRIPTS

    folder = ctx.mkdtemp("src-")
    for name in names:
        shutil.copy(SCRIPTS / name, folder / name)
    for path in extra or []:
        shutil.copy(path, folder / path.name)
    return folder
