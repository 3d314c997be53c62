"""A run's files through Azure ML's artifact routes and the stack's HTTPS proxy, on the real stack (issue 17).

Host processes play the run: they get SAS upload URLs on ``https://devstoreaccount1.blob.core.windows.net``
from the artifact routes with a run token, and reach that host through ``HTTPS_PROXY`` (the stack's proxy,
which terminates TLS with the stack's CA and sends the requests to Azurite), as a run's own azure-storage-blob
and azureml-core will.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.local_runner import ARTIFACT_CONTAINER, artifact_prefix
from sandbox.service.auth import read_token
from sandbox.service.store import experiment_id
from sandbox.storage import BlobStore
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import experiment_name, submit, tcp_listeners, wait_for_status, write_script

pytestmark = pytest.mark.local_only

WAITING_SCRIPT = "import time\nfor _ in range(240):\n    time.sleep(1)\n"
BLOB_HOST = "devstoreaccount1.blob.core.windows.net"

#: Plays a run's azure-storage-blob: uploads with the SAS URL it is given, reads back, tries a read-only URL.
BLOB_CLIENT = r'''
import json, sys
from azure.storage.blob import BlobClient

action, url = sys.argv[1], sys.argv[2]
client = BlobClient.from_blob_url(url)
out = {}
if action == "upload":
    client.upload_blob(b"hello through the proxy", overwrite=True)
    out["size"] = client.get_blob_properties().size
    out["read"] = client.download_blob().readall().decode()
else:
    out["read"] = client.download_blob().readall().decode()
    try:
        client.upload_blob(b"overwritten", overwrite=True)
        out["write"] = "allowed"
    except Exception as exc:
        out["write"] = type(exc).__name__ + ": " + str(getattr(exc, "error_code", ""))
print("RESULT " + json.dumps(out))
'''

#: Plays a submitted run with azureml-core's own Run.
AZUREML_CLIENT = r'''
import json, os
from azureml.core import Run

run = Run.get_context()
with open("up.txt", "w") as handle:
    handle.write("from azureml-core")
run.upload_file("outputs/up.txt", "up.txt")
os.makedirs("folder/sub")
for name in ("folder/a.txt", "folder/sub/b.txt"):
    with open(name, "w") as handle:
        handle.write(name)
run.upload_folder("tree", "folder")
run.download_file("outputs/up.txt", "down.txt")
print("RESULT " + json.dumps({"module": type(run).__module__, "names": sorted(run.get_file_names()),
                              "down": open("down.txt").read()}))
'''


def _proxy_env(env: SandboxEnv, home: Path) -> dict[str, str]:
    bundle = str(env.settings.home / "proxy" / "ca-bundle.pem")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "HTTPS_PROXY": f"http://127.0.0.1:{env.settings.proxy_port}", "NO_PROXY": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": bundle, "SSL_CERT_FILE": bundle}


def _python(script: str, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    path = cwd / "client.py"
    path.write_text(script, encoding="utf-8")
    played = subprocess.run([sys.executable, str(path), *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    lines = [line for line in played.stdout.splitlines() if line.startswith("RESULT ")]
    assert played.returncode == 0 and lines, f"{played.stdout[-3000:]}\n{played.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@contextlib.contextmanager
def _running_runs(folder: Path, count: int) -> Iterator[tuple[str, list[Any]]]:
    """``count`` runs that wait while a host process plays them (a run token writes only while its run runs)."""
    experiment = experiment_name("artifacts")
    write_script(folder, "wait.py", WAITING_SCRIPT)
    runs = [submit(folder, "wait.py", experiment=experiment) for _ in range(count)]
    try:
        for run in runs:
            assert wait_for_status(run, {"Running", "Completed", "Failed", "Canceled"}, timeout=600) == "Running"
        yield experiment, runs
    finally:
        for run in runs:
            run.cancel()


def _tokens(env: SandboxEnv, runs: list[Any]) -> list[str]:
    owner = {"Authorization": f"Bearer {read_token(env.settings.home)}"}
    api = f"http://127.0.0.1:{env.settings.service_port}/api"
    return [httpx.post(f"{api}/runs/{run.id}/token", headers=owner, timeout=30).json()["token"] for run in runs]


def _artifacts(env: SandboxEnv, run_id: str) -> str:
    return (f"http://127.0.0.1:{env.settings.service_port}/artifact/v2.0/subscriptions/{env.settings.subscription_id}"
            f"/resourceGroups/{env.settings.resource_group}/providers/Microsoft.MachineLearningServices/workspaces/"
            f"{env.settings.workspace_name}/artifacts")


def test_a_blob_client_uploads_and_reads_a_run_file_through_the_proxy_with_the_routes_sas_url(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    with _running_runs(tmp_path / "src", 2) as (_experiment, (run, other)):
        _blob_client_checks(workspace_env, tmp_path, run, other)


def _blob_client_checks(workspace_env: SandboxEnv, tmp_path: Path, run: Any, other: Any) -> None:
    token, other_token = _tokens(workspace_env, [run, other])
    base = _artifacts(workspace_env, run.id)
    bearer = {"Authorization": f"Bearer {token}"}
    batch = f"{base}/batch/metadata/ExperimentRun/dcid.{run.id}"

    answer = httpx.post(batch, json={"paths": [{"path": "outputs/proxy.txt"}]}, headers=bearer, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["errors"] == {}
    assert body["artifacts"]["outputs/proxy.txt"]["artifactId"] == f"ExperimentRun/dcid.{run.id}/outputs/proxy.txt"
    upload_url = body["artifactContentInformation"]["outputs/proxy.txt"]["contentUri"]
    assert upload_url.startswith(f"https://{BLOB_HOST}/azureml/ExperimentRun/dcid.{run.id}/outputs/proxy.txt?")

    # Another run's token, no token, and paths that leave the run are refused before any URL is handed out.
    assert httpx.post(batch, json={"paths": [{"path": "x"}]}, headers={"Authorization": f"Bearer {other_token}"},
                      timeout=30).status_code == 403
    assert httpx.post(batch, json={"paths": [{"path": "x"}]}, timeout=30).status_code == 401
    escaping = httpx.post(batch, json={"paths": [{"path": "../other/x"}, {"path": "/etc/passwd"}]}, headers=bearer,
                          timeout=30).json()
    assert set(escaping["errors"]) == {"../other/x", "/etc/passwd"} and escaping["artifactContentInformation"] == {}
    info = f"{base}/contentinfo/ExperimentRun/dcid.{run.id}/outputs/proxy.txt"
    assert httpx.get(info, headers=bearer, timeout=30).status_code == 404  # nothing uploaded yet

    home = tmp_path / "home"
    home.mkdir()
    uploaded = _python(BLOB_CLIENT, ["upload", upload_url], _proxy_env(workspace_env, home), home)
    assert uploaded == {"size": 23, "read": "hello through the proxy"}

    # It is in Azurite, where the run's files are, and the artifact routes list and serve it.
    blob = artifact_prefix(run.id) + "outputs/proxy.txt"
    stored = BlobStore(workspace_env.settings).read_text(ARTIFACT_CONTAINER, blob)
    assert stored == "hello through the proxy"
    listing = httpx.get(f"{base}/ExperimentRun/dcid.{run.id}", headers=bearer, timeout=30).json()
    paths = [item["path"] for item in listing["value"]]
    assert "outputs/proxy.txt" in paths
    assert listing["continuationToken"] is None
    assert httpx.get(f"{base}/ExperimentRun/dcid.{run.id}", headers={"Authorization": f"Bearer {other_token}"},
                     timeout=30).status_code == 403
    read_url = httpx.get(info, headers=bearer, timeout=30).json()["contentUri"]
    read = _python(BLOB_CLIENT, ["read", read_url], _proxy_env(workspace_env, home), home)
    assert read["read"] == "hello through the proxy"
    assert read["write"].startswith("HttpResponseError") or "AuthorizationPermissionMismatch" in read["write"], read
    prefix = httpx.get(f"{base}/prefix/contentinfo/ExperimentRun/dcid.{run.id}/outputs", headers=bearer,
                       timeout=30).json()
    assert [item["path"] for item in prefix["value"]] == ["outputs/proxy.txt"]


def test_azureml_core_run_uploads_lists_and_downloads_its_files_through_the_proxy(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    pytest.importorskip("azureml.core", reason="the host process plays the run with the real azureml-core")
    with _running_runs(tmp_path / "src", 1) as (experiment, (run,)):
        out = _play_with_azureml_core(workspace_env, tmp_path, experiment, run)
    assert out["module"].startswith("azureml.core")
    assert {"outputs/up.txt", "tree/a.txt", "tree/sub/b.txt"} <= set(out["names"])
    assert out["down"] == "from azureml-core"


def _play_with_azureml_core(workspace_env: SandboxEnv, tmp_path: Path, experiment: str, run: Any) -> dict[str, Any]:
    (token,) = _tokens(workspace_env, [run])
    home = tmp_path / "home"
    home.mkdir()
    url = f"http://127.0.0.1:{workspace_env.settings.service_port}"
    env = {**_proxy_env(workspace_env, home),
           "AZUREML_RUN_ID": run.id, "AZUREML_ARM_SUBSCRIPTION": workspace_env.settings.subscription_id,
           "AZUREML_ARM_RESOURCEGROUP": workspace_env.settings.resource_group,
           "AZUREML_ARM_WORKSPACE_NAME": workspace_env.settings.workspace_name, "AZUREML_ARM_PROJECT_NAME": experiment,
           "AZUREML_EXPERIMENT_ID": experiment_id(experiment), "AZUREML_SERVICE_ENDPOINT": url,
           "AZUREML_DISCOVERY_SERVICE_ENDPOINT": url + "/discovery", "AZUREML_RUN_TOKEN": token}
    return _python(AZUREML_CLIENT, [], env, home)


def test_files_uploaded_through_the_routes_are_listed_by_the_api_once_the_run_has_ended(
        workspace_env: SandboxEnv, tmp_path: Path) -> None:
    with _running_runs(tmp_path / "src", 1) as (_experiment, (run,)):
        (token,) = _tokens(workspace_env, [run])
        base = _artifacts(workspace_env, run.id)
        batch = f"{base}/batch/metadata/ExperimentRun/dcid.{run.id}"
        bearer = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(batch, json={"paths": [{"path": "late.txt"}]}, headers=bearer, timeout=30).json()
        home = tmp_path / "home"
        home.mkdir()
        _python(BLOB_CLIENT, ["upload", answer["artifactContentInformation"]["late.txt"]["contentUri"]],
                _proxy_env(workspace_env, home), home)
    assert wait_for_status(run, {"Canceled", "Completed", "Failed"}, timeout=120) == "Canceled"
    # Once the run has ended its token writes no more.
    refused = httpx.post(batch, json={"paths": [{"path": "later.txt"}]}, headers=bearer, timeout=30)
    assert refused.status_code == 403 and "no longer writes" in refused.text, refused.text
    files = httpx.get(f"http://127.0.0.1:{workspace_env.settings.service_port}/api/runs/{run.id}/files",
                      timeout=30).json()["files"]
    assert "late.txt" in files and "azureml-logs/70_driver_log.txt" in files


def test_the_proxy_listens_on_loopback_only_and_the_ca_key_is_user_only(stack: SandboxEnv) -> None:
    assert tcp_listeners(stack.settings.proxy_port) == {"127.0.0.1"}
    folder = stack.settings.home / "proxy"
    key = (folder / "ca.key").stat()
    assert stat.S_IMODE(key.st_mode) == 0o600
    assert (key.st_uid, key.st_gid) == (stack.settings.home.stat().st_uid, stack.settings.home.stat().st_gid)
    assert stat.S_IMODE((folder / "ca-bundle.pem").stat().st_mode) == 0o644
    health = httpx.get(f"http://127.0.0.1:{stack.settings.proxy_port}/health", timeout=10)
    assert health.status_code == 200
