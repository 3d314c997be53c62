"""MLflow's tracking REST routes (issue 17 item 3): ``mlflow`` inside a run logs to that Azure ML run.

Set inside a run (Azure sets the same variables in its jobs)::

    MLFLOW_TRACKING_URI=http://<service>/mlflow/v1.0/subscriptions/<s>/resourceGroups/<rg>/providers/
                        Microsoft.MachineLearningServices/workspaces/<ws>
    MLFLOW_RUN_ID=<the Azure ML run id>     MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID=<its experiment>
    MLFLOW_TRACKING_TOKEN=<the run token>   (sent as Authorization: Bearer)

The prefix is Azure's own MLflow root (``/mlflow/v1.0/{ws}``, what ``azureml-mlflow`` builds from an
``azureml://`` tracking URI), so plain ``mlflow``/``mlflow-skinny`` reach ``<prefix>/api/2.0/mlflow/...``
and ``<prefix>/api/2.0/mlflow-artifacts/...`` here. Every route needs the run token and acts only on the
token's run tree; a route that writes refuses it (403 ``PERMISSION_DENIED``) once the token's root run has
finished (``wire.WriteClaims``). Keys, param values and tag values are held to MLflow's own limits (250,
6000 and 8000 characters: 400 ``INVALID_PARAMETER_VALUE`` naming the key), and what is kept in memory is
bounded in entries and bytes (``state``). Errors come in MLflow's shape (``wire.MlflowRoute``).

Modules: ``wire`` (MLflow's shapes and checks), ``tracking`` (runs, experiments), ``models`` (logged models),
``artifacts`` (files), ``state`` (what is kept in memory).
"""

from __future__ import annotations

from fastapi import APIRouter

from sandbox.service.routes.mlflow import artifacts, models, tracking
from sandbox.service.routes.mlflow.wire import TRACKING_ROOT

router = APIRouter()
# azureml-mlflow builds /mlflow/v2.0 for MLflow 2 and 3 clients, /mlflow/v1.0 for MLflow 1: the same routes.
for _root in (TRACKING_ROOT, TRACKING_ROOT.replace("/mlflow/v1.0", "/mlflow/v2.0", 1)):
    for _module in (tracking, models, artifacts):
        router.include_router(_module.router, prefix=_root)

__all__ = ["TRACKING_ROOT", "router"]
