"""The workspace service's browser-facing defences (issue 16, item 6), on the real app without Docker:
the Host allowlist, the security headers, the page session, no CDN docs page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sandbox.config import Settings
from sandbox.docker_engine import DockerEngine
from sandbox.local_runner import DRIVER_LOG, LocalRunner
from sandbox.run_definition import RunDefinition
from sandbox.service.api import Services, create_api
from sandbox.service.executor import Executor
from sandbox.service.pages import add_pages
from sandbox.service.security import SESSION_COOKIE, host_allowlist
from sandbox.service.store import SqliteRunStore
from sandbox.storage import BlobStore

PORT = 18790
TOKEN = "t" * 43
RUN_ID = "exp_1_abcdef12"
SECRET = "hunter2-environment-value"


def _client(app: object, host: str, cookies: dict[str, str] | None = None) -> TestClient:
    return TestClient(app, base_url=f"http://{host}", cookies=cookies)  # type: ignore[arg-type]


class _NoStoredFiles:
    """The blob storage of a stack whose runs stored nothing yet (no Azurite needed)."""

    def list_blobs(self, container: str, prefix: str = "") -> list[object]:
        return []

    def container(self, name: str) -> object:
        from azure.core.exceptions import ResourceNotFoundError

        raise ResourceNotFoundError("no stored files")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[object]:
    settings = Settings(home=tmp_path / "home", service_port=PORT)
    store = SqliteRunStore(tmp_path / "runs.db")
    blobs = BlobStore(settings)
    runner = LocalRunner(DockerEngine(), blobs, settings)
    services = Services(store, Executor(store, runner, settings), runner, _NoStoredFiles(), TOKEN)  # type: ignore[arg-type]
    store.create_run(RunDefinition.from_dict({
        "run_id": RUN_ID, "experiment": "exp", "script": "train.py", "arguments": [],
        "workspace": {"name": settings.workspace_name, "subscription_id": settings.subscription_id,
                      "resource_group": settings.resource_group},
        "compute_target": "cpu-cluster", "environment": {"name": "env"},
        "image": "aml-sandbox/azureml:x", "snapshot_id": str(uuid.uuid4()),
        "environment_variables": {"SECRET": SECRET}, "submitted_by": "alice@laptop"}))
    log = runner.folder(RUN_ID).control / DRIVER_LOG
    log.parent.mkdir(parents=True)
    log.write_text("line one of the driver log\n")
    api = create_api(services)
    add_pages(api, services)
    yield api
    store.close()


def test_a_request_naming_a_foreign_host_is_refused_before_any_route(app: object) -> None:
    for host in (f"evil.example:{PORT}", "evil.example", f"127.0.0.1.evil.example:{PORT}", "127.0.0.1:1"):
        response = _client(app, host).get("/api/health")
        assert response.status_code == 421, host
        assert "DNS rebinding" in response.text and f"127.0.0.1:{PORT}" in response.text
        assert response.headers["X-Frame-Options"] == "DENY"
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"LOCALHOST:{PORT}", "127.0.0.1:8790"):
        assert _client(app, host).get("/api/health").status_code != 421, host


def test_the_allowlist_holds_loopback_with_the_published_and_the_listen_port() -> None:
    allowed = host_allowlist(Settings(home=Path("/x"), service_port=PORT), names=["workspace"])
    assert allowed == {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "workspace") for port in (PORT, 8790)}


def test_every_response_carries_csp_nosniff_and_frame_deny(app: object) -> None:
    client = _client(app, f"127.0.0.1:{PORT}")
    for path in ("/api/health", "/experiments", f"/runs/{RUN_ID}", "/static/run.js", "/api/runs/nope_1_x/files/a",
                 "/no-such-page"):
        headers = client.get(path).headers
        csp = headers.get("Content-Security-Policy", "")
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "http" not in csp, path
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        assert headers.get("X-Frame-Options") == "DENY", path


def test_the_run_page_has_no_inline_script_or_style_and_loads_only_its_own_files(app: object) -> None:
    client = _client(app, f"127.0.0.1:{PORT}")
    html = client.get(f"/runs/{RUN_ID}").text
    assert "line one of the driver log" in html
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None, "an inline <script> would be blocked by the CSP"
    assert "<style" not in html and "style=" not in html and " on" + "click=" not in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/run.js" in sources and "/static/site.css" in sources
    assert all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    for asset in ("/static/run.js", "/static/site.css"):
        assert client.get(asset).status_code == 200
    assert f'data-run-id="{RUN_ID}"' in html


def test_run_files_and_definitions_need_the_token_or_the_page_session(app: object) -> None:
    stranger = _client(app, f"127.0.0.1:{PORT}")
    file_path, run_path = f"/api/runs/{RUN_ID}/files/{DRIVER_LOG}", f"/api/runs/{RUN_ID}"
    for path in (file_path, run_path):
        refused = stranger.get(path)
        assert refused.status_code == 401 and "token" in refused.json()["detail"], path
        assert SECRET not in refused.text and "alice@laptop" not in refused.text
        assert stranger.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert _client(app, f"127.0.0.1:{PORT}", {SESSION_COOKIE: "forged"}).get(path).status_code == 401
    with_token = {"Authorization": f"Bearer {TOKEN}"}
    assert stranger.get(file_path, headers=with_token).text == "line one of the driver log\n"
    definition = stranger.get(run_path, headers=with_token).json()["definition"]
    assert definition["environment_variables"] == {"SECRET": SECRET}
    # What stays open: summaries, metrics and file names (the run list and the pages need no token).
    assert stranger.get(f"/api/runs/{RUN_ID}/metrics").status_code == 200
    assert [r["runId"] for r in stranger.get("/api/runs").json()] == [RUN_ID]
    assert DRIVER_LOG in stranger.get(f"/api/runs/{RUN_ID}/files").json()["files"]


def test_a_page_of_the_service_gives_the_browser_a_strict_httponly_session(app: object) -> None:
    browser = _client(app, f"127.0.0.1:{PORT}")
    page = browser.get(f"/runs/{RUN_ID}")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie, "the token itself never reaches the browser"
    assert browser.get(f"/api/runs/{RUN_ID}/files/{DRIVER_LOG}?offset=5").text == "one of the driver log\n"
    assert browser.get(f"/api/runs/{RUN_ID}").status_code == 200
    assert browser.post(f"/api/runs/{RUN_ID}/cancel").status_code == 401, "the session never allows a change"


def test_the_api_docs_page_is_not_served_because_it_would_load_swagger_from_a_cdn(app: object) -> None:
    client = _client(app, f"127.0.0.1:{PORT}")
    for path in ("/api/docs", "/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 404 and "cdn" not in response.text.lower(), path
    assert client.get("/api/openapi.json").json()["info"]["title"] == "aml-sandbox workspace service"


def test_a_child_run_has_its_own_page_linking_its_parent_and_the_parent_lists_it(app: object) -> None:
    services = app.state.services  # type: ignore[attr-defined]
    services.store.create_child_run("exp_1_abcdef12_child", RUN_ID, name="kid")
    client = _client(app, f"127.0.0.1:{PORT}")
    child = client.get("/runs/exp_1_abcdef12_child")
    assert child.status_code == 200, child.text
    assert f'href="/runs/{RUN_ID}" id="parent"' in child.text
    parent = client.get(f"/runs/{RUN_ID}")
    assert 'href="/runs/exp_1_abcdef12_child"' in parent.text and "kid" in parent.text
