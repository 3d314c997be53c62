"""9. Metric logging inside a run: ``mlflow.log_metric`` calls per second, sandbox vs a local ``mlflow server``.

Both sides run ``bench/scripts/log_metrics.py``: an untimed warm-up call, then N synchronous
``mlflow.log_metric`` calls, timed in the script. The sandbox side is a run of the curated environment
(mlflow-skinny in the image), its MLflow pointed by the run's environment at the workspace service's
MLflow routes; the same run then times N azureml-core ``run.log`` calls up to the end of ``run.flush()``
(an extra row: azureml-core batches, so it has no counterpart on the MLflow side). The reference is the
same script from a host process, with the full ``mlflow==MLFLOW_VERSION`` of a bench venv, against
``mlflow server`` on loopback with a SQLite backend store in a temp folder: two of them, one with
``--workers 1`` (one process, as the workspace service runs) and one with mlflow's default workers, both
started for this section and stopped at its end. Samples are interleaved (run, host, host, run, ...); after
each sample the metrics are counted in the store they went to, so a fast figure that lost metrics fails
instead of being published.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import REPO, Context, Row, Section, interleave, median, noise, pinned_venv, spread
from bench.runs import copy_scripts, result_line, submit

MLFLOW_VERSION = "3.17.2"
#: Ignored by git (``/.venv-*/``); made on first use, reused after that.
VENV = REPO / ".venv-mlflow"
SCRIPT = "log_metrics.py"
MLFLOW_LINE = r"^BENCH_MLFLOW (\d+) (\d+\.\d+)"
AZUREML_LINE = r"^BENCH_AZUREML (\d+) (\d+\.\d+)"
RUN_ID_LINE = r"^BENCH_MLFLOW_RUN (\w+)"
SERVER_START_TIMEOUT = 120.0
SANDBOX = "sandbox run: mlflow.log_metric calls/s"
ONE_WORKER = "host -> mlflow server --workers 1: mlflow.log_metric calls/s"
DEFAULT_WORKERS = "host -> mlflow server (default workers): mlflow.log_metric calls/s"


def installed_version() -> str | None:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "mlflow").exists() or not python.exists():
        return None
    result = subprocess.run([str(python), "-c", "import mlflow, mlflow.server; print(mlflow.__version__)"],
                            capture_output=True, text=True, check=False, timeout=120)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure(log: Callable[[str], None] = print) -> float | None:
    """Create ``VENV`` with ``mlflow==MLFLOW_VERSION`` (the full package: it has the server) unless it is there;
    return the install time."""
    return pinned_venv(VENV, f"mlflow=={MLFLOW_VERSION}", installed_version, MLFLOW_VERSION, log)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The host's environment without any MLflow setting, plus ``tracking_uri``; no telemetry."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@contextlib.contextmanager
def mlflow_server(ctx: Context, *, workers: int | None = None) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, SQLite store in a temp folder, ``--workers`` unless None (its
    default then); yields its URL, stops it after."""
    import httpx

    folder = ctx.mkdtemp("mlflow-server-")
    port = _free_port()
    command = [str(VENV / "bin" / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)] if workers else []
    log_path = folder / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=folder, env=_client_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    ctx.on_cleanup(f"mlflow server (pid {process.pid})", lambda: _stop(process))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode} before answering; its log:\n"
                                   f"{log_path.read_text(errors='replace')[-1500:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer {url}/health within {SERVER_START_TIMEOUT:.0f} s; "
                                   f"its log:\n{log_path.read_text(errors='replace')[-1500:]}")
            time.sleep(0.5)
        ctx.log(f"9: mlflow server {MLFLOW_VERSION} ({workers or 'default'} workers) up at {url} (pid {process.pid})")
        yield url
    finally:
        _stop(process)


def _rate(match: re.Match[str]) -> float:
    return int(match.group(1)) / float(match.group(2))


def _history_length(url: str, run_id: str, key: str) -> int:
    import httpx

    response = httpx.get(f"{url}/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": key},
                         timeout=60)
    response.raise_for_status()
    return len(response.json().get("metrics", []))


def _sandbox_count(ctx: Context, run_id: str, name: str) -> int:
    from sandbox.service.client import ServiceClient

    series = ServiceClient(ctx.settings).metrics(run_id)["series"]
    return sum(1 for metric in series if metric["name"] == name)


def _host_sample(url: str, source: Path, calls: int) -> float:
    """The script as a host process against the server at ``url``; its calls per second, the values counted."""
    result = subprocess.run([str(VENV / "bin" / "python"), str(source / SCRIPT), str(calls)], env=_client_env(url),
                            capture_output=True, text=True, timeout=600, check=False, cwd=source)
    if result.returncode != 0:
        raise RuntimeError(f"{SCRIPT} against mlflow server exited with {result.returncode}: {result.stderr[-1500:]}")
    match = re.search(MLFLOW_LINE, result.stdout, re.MULTILINE)
    run_id = re.search(RUN_ID_LINE, result.stdout, re.MULTILINE)
    if not match or not run_id:
        raise RuntimeError(f"{SCRIPT} printed no result line: {result.stdout[-800:]}")
    stored = _history_length(url, run_id.group(1), "bench_mlflow")
    if stored != calls:
        raise RuntimeError(f"mlflow server at {url} holds {stored} values of 'bench_mlflow' for run {run_id.group(1)}, "
                           f"expected {calls}")
    return _rate(match)


def run(ctx: Context) -> Section:
    section = Section(9, "Metric logging inside a run: `mlflow.log_metric` calls per second")
    installed = ensure(ctx.log)
    if installed is not None:
        section.notes.append(f"Installing mlflow=={MLFLOW_VERSION} into {VENV.name} took {installed:.0f} s "
                             "(once; not part of any figure).")
    calls = 200 if ctx.quick else 1000
    reps = 3 if ctx.quick else 5
    source = copy_scripts(ctx, SCRIPT)
    azureml: list[float] = []

    with mlflow_server(ctx, workers=1) as one, mlflow_server(ctx) as default:
        def sandbox() -> float:
            submitted = submit(ctx, source, SCRIPT, args=[str(calls), "--azureml"], experiment="bench-logging")
            mlflow_match = result_line(ctx, submitted.run_id, MLFLOW_LINE)
            azureml_match = result_line(ctx, submitted.run_id, AZUREML_LINE, timeout=60)
            for name in ("bench_mlflow", "bench_azureml"):
                stored = _sandbox_count(ctx, submitted.run_id, name)
                if stored != calls:
                    raise RuntimeError(f"run {submitted.run_id} logged {calls} values of {name!r} but the run store "
                                       f"holds {stored}: a rate of lost metrics is no rate; see the run's driver log")
            azureml.append(_rate(azureml_match))
            return _rate(mlflow_match)

        def host(url: str) -> Callable[[], float]:
            return lambda: _host_sample(url, source, calls)

        samples = interleave({SANDBOX: sandbox, ONE_WORKER: host(one), DEFAULT_WORKERS: host(default)}, reps, ctx.log)

    inside = samples[SANDBOX]
    section.samples.update({f"9 {name}": values for name, values in samples.items()})
    section.samples["9 sandbox run: azureml-core run.log to flush() calls/s"] = azureml

    def per_s(value: float) -> str:
        return f"{value:.0f}/s"

    for reference, label in ((ONE_WORKER, "`mlflow server --workers 1` (one process, as the service runs)"),
                             (DEFAULT_WORKERS, "`mlflow server` with its default 4 workers")):
        server = samples[reference]
        section.rows.append(Row(
            f"9a `mlflow.log_metric` calls per second inside a run ({calls} synchronous calls, timed in the script)",
            spread(inside, per_s), f"the same calls from the host against {label}: {spread(server, per_s)}",
            f"{median(inside) / median(server):.2f}x the rate", noise(inside, server),
            note=(f"vs {label}: {1000 / median(inside):.1f} ms per call in the run, {1000 / median(server):.1f} ms "
                  "against the server; every value of every sample was counted in the store it went to.")))
    section.rows.append(Row(
        f"9b extra: azureml-core `run.log` calls per second inside the same runs ({calls} calls, until "
        "`run.flush()` returns)",
        spread(azureml, per_s), "— (azureml-core batches its metrics; MLflow's calls are one request each)", "—",
        note=f"{median(azureml) / median(inside):.1f}x the rate of `mlflow.log_metric` in the same runs."))
    section.notes += [
        f"The same script on both sides with the same MLflow client version ({MLFLOW_VERSION}: mlflow-skinny in the "
        "curated image, the full mlflow in the host venv), one untimed warm-up call first; each sample is a fresh "
        "process (a new run on the sandbox side, a new MLflow run on the server), whose start, imports and "
        "submission are not timed.",
        "Not like for like, and the figure includes all of it: the sandbox side runs in a container (uid 1000, the "
        "runs' Docker network) and reaches the workspace service, which checks the run token on every request and "
        "writes each metric to its run store (SQLite, WAL); the reference is a host process over loopback to "
        "`mlflow server` (uvicorn; once with one worker process like the service, once with its default 4) and a "
        "SQLite backend store each, no authentication. All servers share this 2-core machine with the client that "
        "calls them (both `mlflow server`s are up through the whole section).",
    ]
    return section
