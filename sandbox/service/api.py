"""The workspace service's JSON API: thin handlers over the run store and the executor.

Run summaries, metrics and file lists are open (the port is on 127.0.0.1 only); run files and run
definitions need the stack's token or a page session (see ``security.py``); every call that changes
anything needs the token (``Authorization: Bearer <token>``). A malformed or unauthenticated request is
refused before anything is stored or started; a request naming a foreign Host is refused before any route.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from sandbox.local_runner import ARTIFACT_CONTAINER, LocalRunner, artifact_prefix
from sandbox.run_definition import RunDefinition
from sandbox.service.auth import token_matches, token_path
from sandbox.service.executor import Executor
from sandbox.service.routes import include_routes
from sandbox.service.routes.bodies import read_json
from sandbox.service.routes.common import AzureError
from sandbox.service.routes.mlflow.state import MlflowState
from sandbox.service.run_token import RunTokens
from sandbox.service.security import SecurityMiddleware, bearer_token, has_page_session, host_allowlist
from sandbox.service.store import PropertyConflictError, RunNotFoundError, SqliteRunStore, metrics_summary
from sandbox.snapshot import MAX_ARCHIVE_BYTES, SnapshotLimitError, check_archive
from sandbox.storage import BlobStore

log = logging.getLogger("aml_sandbox.api")
RUN_ID = re.compile(r"^[A-Za-z0-9][\w\-.]{0,254}$")
SNAPSHOT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Services:
    """What the handlers need; owned by the app, never module globals."""

    def __init__(self, store: SqliteRunStore, executor: Executor, runner: LocalRunner, blobs: BlobStore,
                 token: str) -> None:
        self.store = store
        self.executor = executor
        self.runner = runner
        self.blobs = blobs
        self.token = token
        self.run_tokens = RunTokens(token)
        self.mlflow = MlflowState()

    def record(self, run_id: str) -> Any:
        if not RUN_ID.match(run_id):
            raise HTTPException(400, f"{run_id!r} is not a run id")
        try:
            return self.store.get_run(run_id)
        except RunNotFoundError as exc:
            raise HTTPException(404, str(exc.args[0])) from exc

    def files(self, run_id: str) -> list[str]:
        """The run's files: those in its run folder while it goes, those stored when it ended, and those its
        own azureml-core or MLflow uploaded through the artifact routes (in Azurite from the start)."""
        from azure.core.exceptions import AzureError

        record = self.record(run_id)
        prefix = artifact_prefix(run_id)
        try:
            stored = {blob.name[len(prefix):] for blob in self.blobs.list_blobs(ARTIFACT_CONTAINER, prefix)}
        except AzureError as exc:  # Azurite away: the page and the list still show what the service knows
            log.warning("listing the stored files of run %s failed: %s", run_id, exc)
            stored = set()
        live = self.runner.folder(run_id).list_files() if self.runner.folder(run_id).root.exists() else []
        return sorted(set(live) | set(record.files or []) | stored)

    def open_file(self, run_id: str, name: str, offset: int = 0, *,
                  tail: int | None = None) -> tuple[int, int, Iterator[bytes]]:
        """(start, size, chunks): the file's bytes from ``offset`` (or its last ``tail`` bytes) up to its size now.

        Sent in chunks, never whole in memory. A file of a run that goes on is read from its run folder
        (regular files only, no link followed: see ``sandbox.run_folder``); the size is taken first, so a
        log that grows while it is sent is sent up to that size and the next request goes on from there.
        """
        self.record(run_id)
        live = self.runner.folder(run_id).open(name)
        if live is not None:
            start = _start(offset, live.size, tail)
            return start, live.size, live.chunks(start)
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            blob = self.blobs.container(ARTIFACT_CONTAINER).get_blob_client(artifact_prefix(run_id) + name)
            size = blob.get_blob_properties().size
            start = _start(offset, size, tail)
            if start >= size:
                return size, size, iter(())
            # The store's client reads in GET_SIZE ranges, so chunks() holds one range at a time.
            return start, size, blob.download_blob(offset=start, length=size - start).chunks()
        except ResourceNotFoundError as exc:
            raise HTTPException(404, f"run {run_id} has no file {name!r}") from exc
        except AzureError as exc:
            raise HTTPException(503, f"the run's stored files cannot be read: the blob storage does not answer "
                                     f"({type(exc).__name__}); check 'aml-sandbox status'") from exc


def _start(offset: int, size: int, tail: int | None) -> int:
    start = min(offset, size)
    return max(start, size - tail) if tail is not None else start


def create_api(services: Services, *, allowed_hosts: Collection[str] | None = None) -> FastAPI:
    """The API; ``allowed_hosts`` defaults to :func:`host_allowlist` of the executor's settings."""
    # No /api/docs: Swagger UI loads its script from a CDN. The schema stays at /api/openapi.json.
    app = FastAPI(title="aml-sandbox workspace service", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.services = services
    settings = services.executor.settings
    app.add_middleware(SecurityMiddleware, allowed_hosts=allowed_hosts or host_allowlist(settings))
    app.add_exception_handler(AzureError, lambda _request, exc: exc.response())
    include_routes(app)
    token_file = token_path(settings.home)

    def authorized(request: Request) -> None:
        if not token_matches(services.token, bearer_token(request)):
            raise HTTPException(401, "This call changes the workspace and needs the stack's token "
                                     f"(Authorization: Bearer <the token in {token_file}>).")

    def may_read(request: Request) -> None:
        """Run files and definitions: the token, or the session cookie a page of this service set."""
        if not (token_matches(services.token, bearer_token(request)) or has_page_session(request, services.token)):
            raise HTTPException(401, "Run files and run definitions need the stack's token (Authorization: "
                                     f"Bearer <the token in {token_file}>; aml-sandbox and the SDK send it) or "
                                     f"the session of this service's run page (open {settings.service_url}"
                                     "/runs/<run id> in the browser, then download from there).")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "activeRuns": services.executor.active(),
                "computeTargets": {n: q.definition.to_dict() for n, q in services.executor.queues.items()}}

    @app.put("/api/snapshots/{snapshot_id}", status_code=201, dependencies=[Depends(authorized)])
    async def put_snapshot(snapshot_id: str, request: Request) -> dict[str, Any]:
        if not SNAPSHOT_ID.match(snapshot_id):
            raise HTTPException(400, f"{snapshot_id!r} is not a snapshot id (a uuid4)")
        target = services.executor.snapshot_path(snapshot_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        too_large = HTTPException(413, f"The snapshot archive is over {MAX_ARCHIVE_BYTES} bytes compressed, so its "
                                       "files exceed Azure's snapshot limit of 300.0 MB. Please see "
                                       "http://aka.ms/aml-largefiles on how to work with large files.")
        if _declared_length(request) > MAX_ARCHIVE_BYTES:
            raise too_large
        size = 0
        try:
            with open(partial, "wb") as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_ARCHIVE_BYTES:
                        raise too_large
                    handle.write(chunk)
            if size == 0 or not _is_gzip(partial):
                raise HTTPException(400, "the snapshot must be a non-empty .tar.gz")
            await run_in_threadpool(check_archive, partial)  # the 300 MB of files, counted as it unpacks
        except SnapshotLimitError as exc:
            partial.unlink(missing_ok=True)
            raise HTTPException(413, str(exc)) from None
        except ValueError as exc:
            partial.unlink(missing_ok=True)
            raise HTTPException(400, f"the snapshot must be a .tar.gz of the source directory: {exc}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return {"snapshotId": snapshot_id, "size": size}

    @app.post("/api/runs", status_code=201, dependencies=[Depends(authorized)])
    async def submit(request: Request) -> JSONResponse:
        body = await _read_json(request, MAX_SUBMIT_BYTES, "a run submission (definition and image build log)")
        if not isinstance(body, dict) or not isinstance(body.get("definition"), dict) \
                or not isinstance(body.get("image_build_log"), str | None):
            raise HTTPException(400, "expected {\"definition\": {...}, \"image_build_log\": null|str}")
        try:
            definition = RunDefinition.from_dict(body["definition"])
            services.executor.validate(definition)
        except (ValueError, TypeError, KeyError) as exc:
            raise HTTPException(400, f"invalid run definition: {exc}") from exc
        try:
            record = services.executor.submit(definition, body.get("image_build_log"))
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        return JSONResponse(record.to_dict(), status_code=201)

    @app.get("/api/runs")
    def list_runs(experiment: str | None = None) -> list[dict[str, Any]]:
        return [_summary(r) for r in services.store.list_runs(experiment)]

    @app.get("/api/experiments")
    def list_experiments() -> list[dict[str, Any]]:
        return [{"name": name, "runs": count} for name, count in services.store.list_experiments()]

    @app.get("/api/runs/{run_id}", dependencies=[Depends(may_read)])
    def get_run(run_id: str) -> dict[str, Any]:
        return services.record(run_id).to_dict()

    @app.post("/api/runs/{run_id}/token", dependencies=[Depends(authorized)])
    def run_token(run_id: str) -> dict[str, Any]:
        """A run token for ``run_id`` (what its container gets as ``AZUREML_RUN_TOKEN``), for the stack's owner."""
        record = services.record(run_id)
        return {"token": services.run_tokens.issue(run_id, record.experiment, root_run_id=record.root_run_id)}

    @app.post("/api/runs/{run_id}/cancel", dependencies=[Depends(authorized)])
    def cancel(run_id: str) -> dict[str, Any]:
        services.record(run_id)
        return services.executor.cancel(run_id).to_dict()

    @app.get("/api/runs/{run_id}/metrics")
    def metrics(run_id: str) -> dict[str, Any]:
        services.record(run_id)
        raw = services.store.get_metrics(run_id)
        return {"metrics": metrics_summary(raw), "series": [m.to_dict() for m in raw]}  # NaN as Azure sends it

    @app.post("/api/runs/{run_id}/tags", dependencies=[Depends(authorized)])
    async def tags(run_id: str, request: Request) -> dict[str, Any]:
        services.record(run_id)
        body = await _json_object(request, "tags")
        try:
            services.store.set_tags(run_id, body)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        return services.record(run_id).to_dict()

    @app.post("/api/runs/{run_id}/properties", dependencies=[Depends(authorized)])
    async def properties(run_id: str, request: Request) -> dict[str, Any]:
        services.record(run_id)
        body = await _json_object(request, "properties")
        try:
            services.store.add_properties(run_id, body)
        except PropertyConflictError as exc:
            raise HTTPException(409, str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        return services.record(run_id).to_dict()

    @app.get("/api/runs/{run_id}/files")
    def files(run_id: str) -> dict[str, Any]:
        return {"files": services.files(run_id)}

    @app.get("/api/runs/{run_id}/files/{name:path}", dependencies=[Depends(may_read)])
    def read_file(run_id: str, name: str, offset: int = Query(0, ge=0)) -> StreamingResponse:
        if ".." in name.split("/"):
            raise HTTPException(400, "file names cannot contain '..'")
        record = services.record(run_id)  # the status before the read: a final status means nothing more comes
        start, size, chunks = services.open_file(run_id, name, offset)
        media = "text/plain; charset=utf-8" if name.endswith((".txt", ".log", ".json")) else "application/octet-stream"
        return StreamingResponse(chunks, media_type=media, headers={
            "Content-Length": str(size - start), "X-Next-Offset": str(size), "X-Run-Status": str(record.status)})

    return app


#: POST bodies are read up to these sizes (a 413 names the limit past them).
MAX_SUBMIT_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024


def _declared_length(request: Request) -> int:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


async def _read_json(request: Request, limit: int, what: str) -> Any:
    """The body as strict JSON (no NaN/Infinity), at most ``limit`` bytes (``routes.bodies``), with the
    JSON API's error shape (``detail``) that the service client reads."""
    try:
        return await read_json(request, limit, what)
    except AzureError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None


async def _json_object(request: Request, key: str) -> dict[str, Any]:
    body = await _read_json(request, MAX_JSON_BYTES, f"{key}")
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise HTTPException(400, f"expected {{\"{key}\": {{...}}}}")
    return body[key]


def _summary(record: Any) -> dict[str, Any]:
    data = record.to_dict()
    data.pop("definition", None)
    return data


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"
