"""The facade's side of the workspace service API (the REST mirror of the run store's contract).

Connection failures are retried a few times, then reported as one clear error naming the endpoint
and ``aml-sandbox up``; a refused call keeps the service's own message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sandbox.config import Settings
from sandbox.errors import ServiceError, ServiceUnavailableError
from sandbox.service.auth import read_token, token_path

CONNECT_ATTEMPTS = 3


class ServiceClient:
    def __init__(self, settings: Settings, *, timeout: float = 30.0) -> None:
        self.settings = settings
        self.base_url = settings.service_url
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        token = read_token(self.settings.home)
        if token is None:
            raise ServiceError(401, f"No stack token at {token_path(self.settings.home)}; run 'aml-sandbox up' "
                                    "(it creates the token the workspace service expects).")
        return {"Authorization": f"Bearer {token}"}

    def _request(self, method: str, path: str, *, write: bool = False, **kwargs: Any) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), **(self._auth() if write else {})}
        last: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                last = exc
                time.sleep(0.5 * (attempt + 1))
            except httpx.TimeoutException as exc:
                raise ServiceUnavailableError(self.base_url, f"timed out: {exc}") from exc
        else:
            raise ServiceUnavailableError(self.base_url, str(last) or type(last).__name__) from last
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(response.status_code, str(detail))
        return response

    # -- calls -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/health").json()

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except (ServiceUnavailableError, ServiceError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def upload_snapshot(self, snapshot_id: str, archive: Path) -> None:
        with open(archive, "rb") as handle:
            self._request("PUT", f"/api/snapshots/{snapshot_id}", write=True, content=handle,
                          headers={"Content-Type": "application/gzip"})

    def submit(self, definition: dict[str, Any], image_build_log: str | None = None) -> dict[str, Any]:
        return self._request("POST", "/api/runs", write=True,
                             json={"definition": definition, "image_build_log": image_build_log}).json()

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/runs/{run_id}").json()

    def list_runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        params = {"experiment": experiment} if experiment else None
        return self._request("GET", "/api/runs", params=params).json()

    def list_experiments(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/experiments").json()

    def metrics(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/runs/{run_id}/metrics").json()

    def files(self, run_id: str) -> list[str]:
        return self._request("GET", f"/api/runs/{run_id}/files").json()["files"]

    def read_file(self, run_id: str, name: str, offset: int = 0) -> tuple[bytes, int, str]:
        response = self._request("GET", f"/api/runs/{run_id}/files/{name}", params={"offset": offset})
        return (response.content, int(response.headers.get("X-Next-Offset", offset + len(response.content))),
                response.headers.get("X-Run-Status", ""))

    @contextmanager
    def stream_file(self, run_id: str, name: str) -> Iterator[httpx.Response]:
        with self._http.stream("GET", f"/api/runs/{run_id}/files/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise ServiceError(response.status_code, response.text)
            yield response

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._request("POST", f"/api/runs/{run_id}/cancel", write=True).json()

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/api/runs/{run_id}/tags", write=True, json={"tags": tags}).json()

    def add_properties(self, run_id: str, properties: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/api/runs/{run_id}/properties", write=True,
                             json={"properties": properties}).json()
