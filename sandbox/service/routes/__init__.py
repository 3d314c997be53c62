"""The Azure ML REST routes the workspace service answers, one module per Azure service (STYLE.md 15).

Each module holds a FastAPI ``router`` with the paths and JSON shapes azureml-core 1.61 uses (checked in
``azureml/_restclient/``; docs/design/run-history-routes.md maps them), thin over the run store, the
executor and Azurite. Routes speak plain JSON and never import azureml-core.
"""

from __future__ import annotations

from fastapi import FastAPI

from sandbox.service.routes import artifacts, discovery, history, metrics, mlflow, run_artifacts


def include_routes(app: FastAPI) -> None:
    """Add every service's routes to the app (the handlers reach the services through ``app.state``)."""
    for module in (discovery, history, run_artifacts, metrics, artifacts, mlflow):
        app.include_router(module.router)
