"""MLflow's tracking REST routes (issue 17 item 3): ``mlflow`` inside a run logs to that Azure ML run.

Set inside a run (Azure sets the same variables in its jobs)::

    MLFLOW_TRACKING_URI=http://<service>/mlflow/v1.0/subscriptions/<s>/resourceGroups/<rg>/providers/
                        Microsoft.MachineLearningServices/workspaces/<ws>
    MLFLOW_RUN_ID=<the Azure ML run id>     MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID=<its experiment>
    MLFLOW_TRACKING_TOKEN=<the run token>   (sent as Authorization: Bearer)

The prefix is Azure's own MLflow root (``/mlflow/v1.0/{ws}``, what ``azureml-mlflow`` builds from an
``azureml://`` tracking URI), so plain ``mlflow``/``mlflow-skinny`` reach ``<prefix>/api/2.0/mlflow/...``
and ``<prefix>/api/2.0/mlflow-artifacts/...`` here. Every route needs the run token and acts only on the
token's run tree; errors come in MLflow's shape (``wire.MlflowRoute``).

Modules: ``wire`` (MLflow's shapes and checks), ``tracking`` (runs, experiments), ``models`` (logged models),
``artifacts`` (files), ``state`` (what is kept in memory).
"""

from __future__ import annotations

from fastapi import APIRouter

from sandbox.service.routes.mlflow import artifacts, models, tracking
from sandbox.service.routes.mlflow.wire import TRACKING_ROOT

router = APIRouter(prefix=TRACKING_ROOT)
for _module in (tracking, models, artifacts):
    router.include_router(_module.router)

__all__ = ["TRACKING_ROOT", "router"]
