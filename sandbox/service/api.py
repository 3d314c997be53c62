"""The workspace service's JSON API: thin handlers over the run store and the executor.

Reads are open (the port is on 127.0.0.1 only); every call that changes anything needs the stack's
token (``Authorization: Bearer <token>``). A malformed or unauthenticated request is refused before
anything is stored or started.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sandbox.local_runner import ARTIFACT_CONTAINER, LocalRunner, artifact_prefix
from sandbox.run_definition import RunDefinition
from sandbox.service.auth import token_matches
from sandbox.service.executor import Executor
from sandbox.service.store import RunNotFoundError, SqliteRunStore, metrics_summary
from sandbox.storage import BlobStore

RUN_ID = re.compile(r"^[A-Za-z0-9][\w\-.]{0,254}$")
SNAPSHOT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_SNAPSHOT_BYTES = 400 * 1024 * 1024
#: Files are sent in chunks of this size, so a large output never sits whole in the service's memory.
CHUNK = 1024 * 1024


class Services:
    """What the handlers need; owned by the app, never module globals."""

    def __init__(self, store: SqliteRunStore, executor: Executor, runner: LocalRunner, blobs: BlobStore,
                 token: str) -> None:
        self.store = store
        self.executor = executor
        self.runner = runner
        self.blobs = blobs
        self.token = token

    def record(self, run_id: str) -> Any:
        if not RUN_ID.match(run_id):
            raise HTTPException(400, f"{run_id!r} is not a run id")
        try:
            return self.store.get_run(run_id)
        except RunNotFoundError as exc:
            raise HTTPException(404, str(exc.args[0])) from exc

    def files(self, run_id: str) -> list[str]:
        record = self.record(run_id)
        if record.files is not None and not self.runner.folder(run_id).root.exists():
            return record.files
        live = self.runner.folder(run_id).list_files()
        return sorted(set(live) | set(record.files or []))

    def open_file(self, run_id: str, name: str, offset: int = 0, *,
                  tail: int | None = None) -> tuple[int, int, Iterator[bytes]]:
        """(start, size, chunks): the file's bytes from ``offset`` (or its last ``tail`` bytes) up to its size now.

        Sent in chunks, never whole in memory. A file of a run that goes on is read from its run folder;
        the size is taken first, so a log that grows while it is sent is sent up to that size and the
        next request goes on from there.
        """
        self.record(run_id)
        path: Path | None = self.runner.folder(run_id).file(name)
        if path is not None:
            handle = open(path, "rb")
            size = os.fstat(handle.fileno()).st_size
            start = _start(offset, size, tail)
            return start, size, _file_chunks(handle, start, size)
        from azure.core.exceptions import ResourceNotFoundError

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


def _start(offset: int, size: int, tail: int | None) -> int:
    start = min(offset, size)
    return max(start, size - tail) if tail is not None else start


def _file_chunks(handle: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def create_api(services: Services) -> FastAPI:
    app = FastAPI(title="aml-sandbox workspace service", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.services = services

    def authorized(request: Request) -> None:
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else None
        if not token_matches(services.token, presented):
            raise HTTPException(401, "This call changes the workspace and needs the stack's token "
                                     "(Authorization: Bearer <token from ~/.aml-sandbox/token>).")

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
        size = 0
        with open(partial, "wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_SNAPSHOT_BYTES:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise HTTPException(413, "snapshot larger than the 300 MB limit")
                handle.write(chunk)
        if size == 0 or not _is_gzip(partial):
            partial.unlink(missing_ok=True)
            raise HTTPException(400, "the snapshot must be a non-empty .tar.gz")
        partial.replace(target)
        return {"snapshotId": snapshot_id, "size": size}

    @app.post("/api/runs", status_code=201, dependencies=[Depends(authorized)])
    async def submit(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as exc:
            raise HTTPException(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("definition"), dict):
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

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        return services.record(run_id).to_dict()

    @app.post("/api/runs/{run_id}/cancel", dependencies=[Depends(authorized)])
    def cancel(run_id: str) -> dict[str, Any]:
        services.record(run_id)
        return services.executor.cancel(run_id).to_dict()

    @app.get("/api/runs/{run_id}/metrics")
    def metrics(run_id: str) -> dict[str, Any]:
        services.record(run_id)
        raw = services.store.get_metrics(run_id)
        return {"metrics": metrics_summary(raw),
                "series": [{"name": m.name, "type": m.type, "value": m.value, "time": m.time, "step": m.step}
                           for m in raw]}

    @app.post("/api/runs/{run_id}/tags", dependencies=[Depends(authorized)])
    async def tags(run_id: str, request: Request) -> dict[str, Any]:
        services.record(run_id)
        body = await _json_object(request, "tags")
        services.store.set_tags(run_id, body)
        return services.record(run_id).to_dict()

    @app.post("/api/runs/{run_id}/properties", dependencies=[Depends(authorized)])
    async def properties(run_id: str, request: Request) -> dict[str, Any]:
        services.record(run_id)
        body = await _json_object(request, "properties")
        try:
            services.store.add_properties(run_id, body)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        return services.record(run_id).to_dict()

    @app.get("/api/runs/{run_id}/files")
    def files(run_id: str) -> dict[str, Any]:
        return {"files": services.files(run_id)}

    @app.get("/api/runs/{run_id}/files/{name:path}")
    def read_file(run_id: str, name: str, offset: int = Query(0, ge=0)) -> StreamingResponse:
        if ".." in name.split("/"):
            raise HTTPException(400, "file names cannot contain '..'")
        record = services.record(run_id)  # the status before the read: a final status means nothing more comes
        start, size, chunks = services.open_file(run_id, name, offset)
        media = "text/plain; charset=utf-8" if name.endswith((".txt", ".log", ".json")) else "application/octet-stream"
        return StreamingResponse(chunks, media_type=media, headers={
            "Content-Length": str(size - start), "X-Next-Offset": str(size), "X-Run-Status": str(record.status)})

    return app


async def _json_object(request: Request, key: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from exc
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
