"""The facade's side of the workspace service API (the REST mirror of the run store's contract).

Retries are for what is safe to send twice: a call whose connection could not be made (nothing was
sent) is sent again, whatever its method; a call whose connection broke after it was sent is sent again
only if it is idempotent (GETs, and the snapshot PUT, which re-opens its file for each attempt). A submit
or cancel that may have reached the service is never repeated: the error says so. After the last
attempt, one clear error names the endpoint and ``aml-sandbox up``; a refused call keeps the service's
own message. Every call that changes anything, and reads of run definitions and run files, send the
stack's token.
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

#: Seconds to wait before each further attempt: 7.5 s in all, longer than a restart of the service
#: (about 3 s, during which Docker's port proxy accepts connections and then resets them).
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
CONNECT_ATTEMPTS = len(RETRY_DELAYS) + 1
#: The connection broke after the request was (perhaps) sent: the service may have carried it out.
_BROKEN_AFTER_SENDING = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ServiceClient:
    def __init__(self, settings: Settings, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.base_url = settings.service_url
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        token = read_token(self.settings.home)
        if token is None:
            raise ServiceError(401, f"No stack token at {token_path(self.settings.home)}; run 'aml-sandbox up' "
                                    "(it creates the token the workspace service expects).")
        return {"Authorization": f"Bearer {token}"}

    def _request(self, method: str, path: str, *, auth: bool = False, idempotent: bool | None = None,
                 body_file: Path | None = None, **kwargs: Any) -> httpx.Response:
        """One call; ``idempotent`` defaults to True for GET; ``body_file`` is opened afresh for each attempt."""
        headers = {**kwargs.pop("headers", {}), **(self._auth() if auth else {})}
        idempotent = method == "GET" if idempotent is None else idempotent
        last: Exception | None = None
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                if body_file is None:
                    response = self._http.request(method, path, headers=headers, **kwargs)
                else:
                    with open(body_file, "rb") as body:
                        response = self._http.request(method, path, headers=headers, content=body, **kwargs)
                break
            except httpx.ConnectError as exc:  # no connection, so nothing was sent: safe to send again
                last = exc
            except _BROKEN_AFTER_SENDING as exc:
                if not idempotent:
                    reason = str(exc) or type(exc).__name__
                    raise ServiceUnavailableError(
                        self.base_url, f"the connection broke after {method} {path} was sent ({reason}); it was not "
                        "sent again because the service may have carried it out: check with 'aml-sandbox runs list' "
                        "before repeating it") from exc
                last = exc
            except httpx.TimeoutException as exc:
                raise ServiceUnavailableError(self.base_url, f"timed out: {exc}") from exc
            if attempt < CONNECT_ATTEMPTS:
                time.sleep(RETRY_DELAYS[attempt - 1])
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
        # Idempotent: the same id and the whole file again (re-opened) replace a partial upload.
        self._request("PUT", f"/api/snapshots/{snapshot_id}", auth=True, idempotent=True, body_file=archive,
                      headers={"Content-Type": "application/gzip"})

    def submit(self, definition: dict[str, Any], image_build_log: str | None = None) -> dict[str, Any]:
        return self._request("POST", "/api/runs", auth=True,
                             json={"definition": definition, "image_build_log": image_build_log}).json()

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/runs/{run_id}", auth=True).json()

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
        response = self._request("GET", f"/api/runs/{run_id}/files/{name}", auth=True, params={"offset": offset})
        return (response.content, int(response.headers.get("X-Next-Offset", offset + len(response.content))),
                response.headers.get("X-Run-Status", ""))

    @contextmanager
    def stream_file(self, run_id: str, name: str) -> Iterator[httpx.Response]:
        with self._http.stream("GET", f"/api/runs/{run_id}/files/{name}", headers=self._auth()) as response:
            if response.status_code >= 400:
                response.read()
                raise ServiceError(response.status_code, response.text)
            yield response

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._request("POST", f"/api/runs/{run_id}/cancel", auth=True).json()

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/api/runs/{run_id}/tags", auth=True, json={"tags": tags}).json()

    def add_properties(self, run_id: str, properties: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/api/runs/{run_id}/properties", auth=True,
                             json={"properties": properties}).json()
