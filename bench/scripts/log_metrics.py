"""Times N synchronous ``mlflow.log_metric`` calls (and, with --azureml, N ``run.log`` calls to ``run.flush()``).

    python log_metrics.py N [--azureml]

The same file runs inside a sandbox run (MLflow's tracking URI and run id come from the environment the
run is given) and on the host against a local ``mlflow server`` (``MLFLOW_TRACKING_URI`` set by the bench;
the first call starts a run). One untimed warm-up call first, so that the timing covers the calls only:
not the imports, the run lookup or the first connection. Prints one line per measure:
``BENCH_MLFLOW <calls> <seconds>``, ``BENCH_MLFLOW_RUN <run id>`` and ``BENCH_AZUREML <calls> <seconds>``.
"""

import sys
import time

import mlflow

calls = int(sys.argv[1])
mlflow.log_metric("bench_warmup", 0.0)
start = time.perf_counter()
for step in range(calls):
    mlflow.log_metric("bench_mlflow", float(step), step=step)
print(f"BENCH_MLFLOW {calls} {time.perf_counter() - start:.6f}", flush=True)
print(f"BENCH_MLFLOW_RUN {mlflow.active_run().info.run_id}", flush=True)

if "--azureml" in sys.argv[2:]:
    from azureml.core import Run

    run = Run.get_context()
    run.log("bench_warmup_azureml", 0.0)
    run.flush()
    start = time.perf_counter()
    for step in range(calls):
        run.log("bench_azureml", float(step))
    run.flush()
    print(f"BENCH_AZUREML {calls} {time.perf_counter() - start:.6f}", flush=True)
