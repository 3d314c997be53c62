"""MLflow 3's logged models, as much as ``mlflow.autolog()`` and ``log_model`` need inside a run.

With MLflow 3, autolog creates a logged model before it sends the training metrics; a 404 there makes it
log "unexpected error" and drop the metrics (docs/design/run-history-routes.md, section 4). A logged model
here is kept in memory (``state.LoggedModel``); its files go under its ``artifact_uri``, which is a folder
named after the model in its run's files (``model/MLmodel``, ``model/model.pkl``: where Azure ML showed
``mlflow.sklearn.log_model(..., "model")`` files with MLflow 2). A second model of the same name in one run
writes over the first one's files.

Not implemented: model metrics, ``DELETE``, tag deletion, search filters and ordering (search answers the
models of the caller's run tree in the experiments asked for).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import APIRouter, Request

from sandbox.service.routes.mlflow.state import LoggedModel, mlflow_state
from sandbox.service.routes.mlflow.tracking import API, now_ms
from sandbox.service.routes.mlflow.wire import (
    ARTIFACT_URI,
    MAX_BATCH_PARAMS,
    MAX_BATCH_TAGS,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    Body,
    Claims,
    MlflowError,
    MlflowRoute,
    WriteClaims,
    bad,
    key_values,
    scoped_run,
    text,
)
from sandbox.service.run_token import RunClaims

router = APIRouter(route_class=MlflowRoute)
MODELS = API + "/logged-models"
MODEL_STATUSES = frozenset({"LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED"})
#: A model's name becomes a folder of its run's files: one plain path segment.
MODEL_NAME = re.compile(r"[A-Za-z0-9][\w\-.]{0,127}", re.ASCII)
MODEL_ID = re.compile(r"m-[0-9a-f]{32}", re.ASCII)
#: Tags, and params, one logged model may have.
MAX_MODEL_ENTRIES = 1000


def _model(request: Request, claims: RunClaims, model_id: str) -> LoggedModel:
    model = mlflow_state(request).model(model_id) if MODEL_ID.fullmatch(model_id) else None
    if model is None:
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"Logged model with ID '{model_id:.80}' not found "
                          "(logged models are kept in the workspace service's memory, for the run that made them).")
    scoped_run(request, claims, model.source_run_id)
    return model


@router.post(MODELS)
def create_logged_model(request: Request, body: Body,
                        claims: WriteClaims) -> dict[str, Any]:
    run = scoped_run(request, claims, text(body, "source_run_id", limit=255, required=False) or claims.run_id)
    wanted = body.get("experiment_id")
    if wanted not in (None, "", run.experiment_id):
        raise MlflowError(403, "PERMISSION_DENIED", f"experiment_id={wanted!r:.80} is not the experiment of run "
                          f"{run.run_id!r} ({run.experiment_id}).")
    name = text(body, "name", limit=128, required=False) or "model"
    if not MODEL_NAME.fullmatch(name):
        raise bad(f"name={name!r:.80} must be a letter or digit, then up to 127 letters, digits, '_', '-' or '.': "
                  "it names the folder of the model's files in the run.")
    created = now_ms()
    model = LoggedModel(
        model_id=f"m-{uuid.uuid4().hex}", experiment_id=run.experiment_id, name=name, source_run_id=run.run_id,
        artifact_uri=f"{ARTIFACT_URI.format(run_id=run.run_id)}/{name}", created_ms=created, updated_ms=created,
        model_type=text(body, "model_type", limit=255, required=False),
        tags=dict(key_values(body.get("tags"), "tags", MAX_BATCH_TAGS, value_limit=MAX_TAG_VALUE)),
        params=dict(key_values(body.get("params"), "params", MAX_BATCH_PARAMS, value_limit=MAX_PARAM_VALUE)))
    mlflow_state(request).add_model(model)
    return {"model": model.to_dict()}


@router.post(MODELS + "/search")
def search_logged_models(request: Request, body: Body,
                         claims: Claims) -> dict[str, Any]:
    wanted = body.get("experiment_ids") or []
    if not isinstance(wanted, list):
        raise bad(f"experiment_ids={wanted!r:.80} must be a list of experiment ids.")
    found = []
    for model in mlflow_state(request).all_models():
        if model.experiment_id in wanted or not wanted:
            try:
                scoped_run(request, claims, model.source_run_id)
            except MlflowError:
                continue
            found.append(model.to_dict())
    return {"models": found}


@router.get(MODELS + "/{model_id}")
def get_logged_model(request: Request, model_id: str, claims: Claims) -> dict[str, Any]:
    return {"model": _model(request, claims, model_id).to_dict()}


@router.patch(MODELS + "/{model_id}")
def finalize_logged_model(request: Request, model_id: str, body: Body,
                          claims: WriteClaims) -> dict[str, Any]:
    model = _model(request, claims, model_id)
    status = body.get("status")
    if status not in MODEL_STATUSES:
        raise bad(f"status={status!r:.80} is not a logged model status; expected one of {sorted(MODEL_STATUSES)}.")
    with mlflow_state(request).lock:
        model.status, model.updated_ms = status, now_ms()
    return {"model": model.to_dict()}


@router.patch(MODELS + "/{model_id}/tags")
def set_logged_model_tags(request: Request, model_id: str, body: Body,
                          claims: WriteClaims) -> dict[str, Any]:
    model = _model(request, claims, model_id)
    tags = key_values(body.get("tags"), "tags", MAX_BATCH_TAGS, value_limit=MAX_TAG_VALUE)
    state = mlflow_state(request)
    with state.lock:
        if len({**model.tags, **dict(tags)}) > MAX_MODEL_ENTRIES:
            raise bad(f"A logged model may have at most {MAX_MODEL_ENTRIES} tags.")
        model.tags.update(tags)
        model.updated_ms = now_ms()
        state.add_model(model)  # counted again: the state stays within its bytes
    return {}


@router.post(MODELS + "/{model_id}/params")
def log_logged_model_params(request: Request, model_id: str, body: Body,
                            claims: WriteClaims) -> dict[str, Any]:
    model = _model(request, claims, model_id)
    params = key_values(body.get("params"), "params", MAX_BATCH_PARAMS, value_limit=MAX_PARAM_VALUE)
    state = mlflow_state(request)
    with state.lock:
        if len({**model.params, **dict(params)}) > MAX_MODEL_ENTRIES:
            raise bad(f"A logged model may have at most {MAX_MODEL_ENTRIES} params.")
        model.params.update(params)
        state.add_model(model)  # counted again: the state stays within its bytes
    return {}
