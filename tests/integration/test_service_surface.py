"""What the workspace service shows to a browser and to other local processes (issue 16, items 5-7), against
the real compose stack: the Host allowlist (DNS rebinding), the token or page session on run files and
definitions, the security headers, no CDN docs page, the refused short token, and the bounds of the
service container itself."""

from __future__ import annotations

import getpass
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from sandbox.service.auth import read_token
from sandbox.service.security import SESSION_COOKIE
from tests.integration.conftest import SandboxEnv, inspect
from tests.integration.helpers import submit, write_script

WRITES_A_SECRET = """
    import os
    os.makedirs("outputs", exist_ok=True)
    with open("outputs/secret.txt", "w") as handle:
        handle.write("the model's secret weights")
    print("hello from the run", flush=True)
    """


@pytest.mark.local_only
def test_a_request_naming_a_foreign_host_is_refused(stack: SandboxEnv) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 with its own name in Host: the service answers it nothing."""
    port = stack.settings.service_port
    for path in ("/api/health", "/api/runs", "/experiments"):
        for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "evil.example"):
            response = httpx.get(f"{stack.settings.service_url}{path}", headers={"Host": host})
            assert response.status_code == 421, (path, host, response.text)
            assert "DNS rebinding" in response.text and "runId" not in response.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(f"{stack.settings.service_url}/api/health", headers={"Host": host}).status_code == 200


@pytest.mark.local_only
def test_run_files_and_definitions_need_the_token_or_the_run_pages_session(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None) -> None:
    write_script(tmp_path / "src", "secret.py", WRITES_A_SECRET)
    run = submit(tmp_path / "src", "secret.py")
    assert run.wait_for_completion()["status"] == "Completed"
    base = workspace_env.settings.service_url
    file_url, run_url = f"{base}/api/runs/{run.id}/files/outputs/secret.txt", f"{base}/api/runs/{run.id}"
    user_at_host = f"{getpass.getuser()}@{socket.gethostname()}"

    for url in (file_url, run_url, f"{base}/api/runs/{run.id}/files/azureml-logs/70_driver_log.txt"):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Cookie": f"{SESSION_COOKIE}=forged"}):
            refused = httpx.get(url, headers=headers)
            assert refused.status_code == 401, (url, headers)
            assert "secret weights" not in refused.text and user_at_host not in refused.text
            assert "token" in refused.json()["detail"]
    token = {"Authorization": f"Bearer {read_token(workspace_env.settings.home)}"}
    assert httpx.get(file_url, headers=token).text == "the model's secret weights"
    assert httpx.get(run_url, headers=token).json()["definition"]["submitted_by"] == user_at_host
    assert run.get_details()["submittedBy"] == user_at_host, "the SDK facade sends the token"

    with httpx.Client() as browser:  # a browser: loads the run page, then follows its download link
        page = browser.get(run.get_portal_url())
        assert page.status_code == 200 and "hello from the run" in page.text, "the page shows the driver log"
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert f'href="/api/runs/{run.id}/files/outputs/secret.txt"' in page.text
        assert browser.get(file_url).text == "the model's secret weights"
        assert browser.post(f"{run_url}/cancel").status_code == 401, "a page session never changes anything"
    # What the pages and the CLI list stays open: status, metrics, file names.
    assert httpx.get(f"{base}/api/runs/{run.id}/metrics").status_code == 200
    assert "outputs/secret.txt" in httpx.get(f"{base}/api/runs/{run.id}/files").json()["files"]
    assert run.id in {r["runId"] for r in httpx.get(f"{base}/api/runs", params={"experiment": run.experiment.name})
                      .json()}


@pytest.mark.local_only
def test_every_response_has_csp_nosniff_and_frame_deny_and_no_docs_page_loads_a_cdn(
        workspace_env: SandboxEnv) -> None:
    base = workspace_env.settings.service_url
    for path in ("/experiments", "/api/health", "/api/runs/nope_1_abcdef12", "/static/run.js"):
        headers = httpx.get(f"{base}{path}").headers
        assert "default-src 'none'" in headers["Content-Security-Policy"], path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY", path
    for path in ("/api/docs", "/docs", "/redoc"):
        docs = httpx.get(f"{base}{path}")
        assert docs.status_code == 404 and "cdn.jsdelivr.net" not in docs.text, path


@pytest.mark.local_only
def test_the_service_refuses_to_start_with_a_short_token(stack: SandboxEnv) -> None:
    """The real service in its own container, pointed at a state folder whose token is short."""
    home = stack.settings.home / f"short-token-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    (home / "token").write_text("tooshort\n")
    result = stack.compose("exec", "-T", "-e", f"AML_SANDBOX_HOME={home}", "-e", f"AML_SANDBOX_DB={home}/runs.db",
                           "-e", "AML_SANDBOX_SERVICE_LISTEN_PORT=18999", "workspace", "python", "-m",
                           "sandbox.service", check=False)
    assert result.returncode == 1, result
    assert f"The stack token in {home / 'token'} is 8 characters long" in result.stderr
    assert "aml-sandbox up" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "runs.db").exists(), "it refused before opening anything"


@pytest.mark.local_only
def test_up_refuses_a_short_token_before_starting_anything(sandbox_env: SandboxEnv) -> None:
    (sandbox_env.settings.home / "token").write_text("\n")
    result = sandbox_env.cli("up", check=False, timeout=600)
    assert result.returncode == 1
    assert f"The stack token in {sandbox_env.settings.home / 'token'} is empty" in result.stderr
    assert sandbox_env.compose("ps", "-q").stdout.strip() == "", "no container was started"


@pytest.mark.local_only
def test_the_service_container_is_bounded_and_its_root_is_read_only(stack: SandboxEnv) -> None:
    (container_id,) = stack.compose("ps", "-q", "workspace").stdout.split()
    host = inspect(container_id)["HostConfig"]
    assert host["Memory"] == 1024**3 and host["PidsLimit"] == 512
    assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    written = stack.compose("exec", "-T", "workspace", "touch", "/opt/aml-sandbox/planted", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    (azurite_id,) = stack.compose("ps", "-q", "azurite").stdout.split()
    assert inspect(azurite_id)["HostConfig"]["PidsLimit"] == 256
