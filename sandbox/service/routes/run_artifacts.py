"""Run history's artifact routes (``/history/v1.0/.../runs/<run>/artifacts``): a run's files by experiment and run.

The same files as the artifact service's ``ExperimentRun/dcid.<run>`` container (``routes/artifacts.py``, which
does the work), addressed the way ``azureml-mlflow``'s run artifact client addresses them (its generated
client, ``_restclient/run_artifact/operations/_run_artifacts_operations.py``): ``mlflow.log_artifact`` in a
run whose MLflow tracking URI is ``azureml://`` creates its files through ``batch/metadata`` here, then
uploads to the SAS URL; downloads read ``contentinfo?path=``. Both experiment forms (``experiments/<name>``
and ``experimentids/<id>``) are answered; the path of a file goes in the ``path`` query parameter.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from sandbox.service.routes.artifacts import (
    Claims,
    Continuation,
    RunContainer,
    content_of,
    contents_by_prefix,
    create_artifacts,
    listing,
)
from sandbox.service.routes.common import WriteClaims
from sandbox.service.routes.history import BY_ID, BY_NAME, authorized_run
from sandbox.service.run_token import RunClaims

router = APIRouter()
FilePath = Annotated[str, Query(alias="path", min_length=1, max_length=1024)]
Prefix = Annotated[str, Query(alias="path", max_length=1024)]


def _run(request: Request, claims: RunClaims, run_id: str) -> RunContainer:
    """The run of the path, in the experiment the path names (by name or by id), within the token's tree."""
    experiment = request.path_params
    authorized_run(request, claims, run_id, experiment_name=experiment.get("experiment_name"),
                   experiment_uuid=experiment.get("experiment_id"))
    return RunContainer(run_id)


def _both(suffix: str) -> list[str]:
    return [BY_NAME + "/artifacts" + suffix, BY_ID + "/artifacts" + suffix]


async def batch_metadata(request: Request, run_id: str, claims: WriteClaims) -> dict[str, Any]:
    """Create the run's artifacts of the body's paths, each with an upload URL."""
    return await create_artifacts(request, await run_in_threadpool(_run, request, claims, run_id))


def list_artifacts(request: Request, run_id: str, claims: Claims,
                   continuation_token: Continuation = None) -> dict[str, Any]:
    """The run's files, paged."""
    return listing(request, _run(request, claims, run_id), "", continuation_token)


def list_under(request: Request, run_id: str, claims: Claims, path: Prefix = "",
               continuation_token: Continuation = None) -> dict[str, Any]:
    """The run's files under ``path``, paged."""
    return listing(request, _run(request, claims, run_id), path, continuation_token)


def content_information(request: Request, run_id: str, claims: Claims, path: FilePath) -> dict[str, Any]:
    """One file's read URL (404 when the run has no such file)."""
    return content_of(request, _run(request, claims, run_id), path)


def content_information_by_prefix(request: Request, run_id: str, claims: Claims, path: Prefix = "",
                                  continuation_token: Continuation = None) -> dict[str, Any]:
    """Read URLs of the run's files under ``path``, paged."""
    return contents_by_prefix(request, _run(request, claims, run_id), path, continuation_token)


for _route in _both("/batch/metadata"):
    router.post(_route)(batch_metadata)
for _suffix, _handler in (("", list_artifacts), ("/path", list_under), ("/contentinfo", content_information),
                          ("/prefix/contentinfo", content_information_by_prefix)):
    for _route in _both(_suffix):
        router.get(_route)(_handler)
