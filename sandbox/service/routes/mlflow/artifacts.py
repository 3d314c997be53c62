"""``mlflow-artifacts``: the files ``mlflow.log_artifact`` (and autolog's model files) send, kept with the run's.

A run's ``artifact_uri`` is ``mlflow-artifacts:/ExperimentRun/dcid.<run id>``, so the client PUTs
``<tracking URI>/api/2.0/mlflow-artifacts/artifacts/ExperimentRun/dcid.<run id>/<path>``. The body is
streamed to a temporary file (at most :data:`MAX_ARTIFACT_BYTES`), then stored as the blob
``ExperimentRun/dcid.<run id>/<path>`` of the ``azureml`` container, where the run's other files are,
and ``<path>`` is added to the run's file list. GET answers a file back and lists a folder.

Not implemented: multipart uploads (``/mlflow-artifacts/mpu/...``; ``/server-info`` is not answered, so the
client uploads in one PUT), deleting artifacts.
"""

from __future__ import annotations

import re
import tempfile
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from sandbox.local_runner import ARTIFACT_CONTAINER, artifact_prefix
from sandbox.service.routes.common import services
from sandbox.service.routes.mlflow.wire import (
    ARTIFACTS_ROOT,
    Claims,
    MlflowError,
    MlflowRoute,
    WriteClaims,
    bad,
    scoped_run,
)
from sandbox.storage import Transfer

router = APIRouter(route_class=MlflowRoute)
RUN_FILES = ARTIFACTS_ROOT + "/ExperimentRun/dcid.{run_id}/{path:path}"
#: The largest file one PUT may send (it is spooled to the service's disk before it goes to Azurite).
MAX_ARTIFACT_BYTES = 1024 * 1024 * 1024
MAX_PATH = 1024
_SEGMENT = re.compile(r"[^\x00-\x1f\x7f\\]{1,255}")


def artifact_path(path: str) -> str:
    """A run file name from the URL: relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no control
    character or backslash; 400 naming the rule otherwise."""
    segments = path.split("/")
    if (not path or len(path) > MAX_PATH or any(s in ("", ".", "..") for s in segments)
            or not all(_SEGMENT.fullmatch(s) for s in segments)):
        raise bad(f"artifact path {path!r:.120} must be a relative path of at most {MAX_PATH} characters, its "
                  "parts separated by single '/', none of them empty, '.' or '..', without backslashes or control "
                  "characters.")
    return path


@router.put(RUN_FILES)
async def put_artifact(request: Request, run_id: str, path: str,
                       claims: WriteClaims) -> dict[str, Any]:
    record = await run_in_threadpool(scoped_run, request, claims, run_id)
    name = artifact_path(path)
    declared = request.headers.get("content-length", "")
    too_large = bad(f"{name} is over {MAX_ARTIFACT_BYTES} bytes, the largest file the local workspace service "
                    "takes in one upload.")
    if declared.isdigit() and int(declared) > MAX_ARTIFACT_BYTES:
        raise too_large
    # Spooled in the state folder (a real disk), not /tmp: the service's /tmp is a small tmpfs in its memory.
    spool_dir = services(request).executor.settings.home / "tmp"
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix="mlflow-artifact-", dir=spool_dir) as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_ARTIFACT_BYTES:
                raise too_large
            await run_in_threadpool(spool.write, chunk)
        spool.flush()
        await run_in_threadpool(_store, request, record.run_id, name, spool.name)
    return {}


def _store(request: Request, run_id: str, name: str, local: str) -> None:
    """Upload the spooled file as the run's blob, then add ``name`` to the run's file list."""
    blobs, store = services(request).blobs, services(request).store
    blobs.ensure_container(ARTIFACT_CONTAINER)
    for result in blobs.upload(ARTIFACT_CONTAINER, [Transfer(local, artifact_prefix(run_id) + name)],
                               overwrite=True):
        if not result.ok:
            raise MlflowError(503, "TEMPORARILY_UNAVAILABLE", f"Storing {name} of run {run_id} in Azurite failed: "
                              f"{str(result.error).splitlines()[0] if str(result.error) else result.error!r}")
    store.add_files(run_id, [name])


@router.get(RUN_FILES)
def get_artifact(request: Request, run_id: str, path: str,
                 claims: Claims) -> StreamingResponse:
    record = scoped_run(request, claims, run_id)
    name = artifact_path(path)
    try:
        start, size, chunks = services(request).open_file(record.run_id, name)
    except HTTPException as exc:
        if exc.status_code != 404:
            raise
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"Run {run_id} has no artifact {name}.") from None
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Length": str(size - start)})


@router.get(ARTIFACTS_ROOT)
def list_artifacts(request: Request, claims: Claims,
                   path: str = Query("", max_length=MAX_PATH + 300)) -> dict[str, Any]:
    """One folder's entries: ``{"files": [{"path", "is_dir", "file_size"}]}``, names relative to the folder."""
    match = re.fullmatch(r"ExperimentRun/dcid\.([^/]+)(?:/(.*))?", path.strip("/"))
    if match is None:
        raise bad(f"path={path!r:.120} must name a run's files: ExperimentRun/dcid.<run id>[/<folder>].")
    record = scoped_run(request, claims, match.group(1))
    folder = artifact_path(match.group(2)) + "/" if match.group(2) else ""
    prefix = artifact_prefix(record.run_id) + folder
    entries: dict[str, dict[str, Any]] = {}
    for blob in services(request).blobs.list_blobs(ARTIFACT_CONTAINER, prefix):
        head, _, rest = blob.name[len(prefix):].partition("/")
        entries[head] = {"path": head, "is_dir": True} if rest else {"path": head, "is_dir": False,
                                                                      "file_size": blob.size}
    return {"files": [entries[k] for k in sorted(entries)]}
