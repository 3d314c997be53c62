"""The local stack: docker compose + Azurite, bootstrap, images, up/down/status (issue 2)."""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContainerSasPermissions, generate_container_sas

from sandbox.config import AZURITE_ACCOUNT_KEY, AZURITE_ACCOUNT_NAME, account_key_path
from tests.integration.conftest import CLI, SandboxEnv, require_docker
from tests.integration.helpers import tcp_listeners

pytestmark = pytest.mark.local_only


def _roundtrip(sandbox: SandboxEnv, container: str, payload: bytes) -> None:
    client = BlobServiceClient.from_connection_string(sandbox.settings.connection_string)
    box = client.get_container_client(container)
    if not box.exists():
        box.create_container()
    box.upload_blob("probe/hello.bin", payload, overwrite=True)


def _read(sandbox: SandboxEnv, container: str) -> bytes | None:
    client = BlobServiceClient.from_connection_string(sandbox.settings.connection_string)
    box = client.get_container_client(container)
    if not box.exists():
        return None
    return box.download_blob("probe/hello.bin").readall()


def _azurite_container(sandbox: SandboxEnv) -> dict:
    ids = sandbox.compose("ps", "-q", "azurite").stdout.split()
    assert ids, "azurite container not found"
    inspect = subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True, check=True)
    return json.loads(inspect.stdout)[0]


def test_compose_up_gives_healthy_azurite_that_keeps_data_until_down_v(sandbox_env: SandboxEnv) -> None:
    up = sandbox_env.cli("up")
    assert "The local stack is up" in up.stdout
    assert sandbox_env.settings.blob_endpoint in up.stdout
    assert sandbox_env.settings.account_key not in up.stdout + up.stderr

    assert _azurite_container(sandbox_env)["State"]["Health"]["Status"] == "healthy"
    payload = uuid.uuid4().bytes * 1000
    _roundtrip(sandbox_env, "keep", payload)
    assert _read(sandbox_env, "keep") == payload

    sandbox_env.cli("down")
    sandbox_env.cli("up")
    assert _read(sandbox_env, "keep") == payload, "data must survive down + up (named volume)"

    sandbox_env.cli("down", "--volumes")
    sandbox_env.cli("up")
    assert _read(sandbox_env, "keep") is None, "down --volumes must delete the data"


def test_plain_docker_compose_up_works_with_the_resolved_images(sandbox_env: SandboxEnv) -> None:
    """`docker compose up` with no aml-sandbox in between: the compose file needs no edits."""
    sandbox_env.compose("up", "--detach", "--wait", "--wait-timeout", "120")
    payload = b"plain compose"
    _roundtrip(sandbox_env, "plain", payload)
    assert _read(sandbox_env, "plain") == payload


def test_azurite_listens_on_loopback_only(sandbox_env: SandboxEnv) -> None:
    sandbox_env.cli("up")
    bindings = _azurite_container(sandbox_env)["HostConfig"]["PortBindings"]["10000/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]

    # The kernel listens on the published port on loopback only (read from its table: nothing is sent to
    # another address of this machine).
    assert tcp_listeners(sandbox_env.settings.azurite_port) == {"127.0.0.1"}
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", sandbox_env.settings.azurite_port)) == 0


def test_status_reports_a_stopped_stack_and_up_twice_is_a_no_op(sandbox_env: SandboxEnv) -> None:
    stopped = sandbox_env.cli("status")
    assert "azurite      not running" in stopped.stdout
    assert "does not answer" in stopped.stdout

    sandbox_env.cli("up")
    first = _azurite_container(sandbox_env)
    again = sandbox_env.cli("up")
    second = _azurite_container(sandbox_env)
    assert "built" not in again.stdout
    assert (second["Id"], second["State"]["StartedAt"]) == (first["Id"], first["State"]["StartedAt"])

    running = sandbox_env.cli("status")
    assert "azurite      running (healthy)" in running.stdout
    assert "azurite: answers" in running.stdout
    assert "missing" not in running.stdout.split("images:")[1].split("azurite:")[0]


def test_bootstrap_is_idempotent() -> None:
    require_docker()
    result = subprocess.run([*CLI, "bootstrap"], capture_output=True, text=True, timeout=120, check=True)
    assert "nothing to install" in result.stdout
    assert "docker compose 2." in result.stdout
    assert "Docker is ready (nothing changed)" in result.stdout
    assert "Installing" not in result.stdout and "Starting" not in result.stdout


def test_second_images_build_builds_nothing(sandbox_env: SandboxEnv) -> None:
    first = sandbox_env.cli("images", "build")
    second = sandbox_env.cli("images", "build")
    assert "built 0, pulled 0" in second.stdout, second.stdout
    ids_before = {line.split()[0]: line.split()[1] for line in _image_lines(first.stdout)}
    ids_after = {line.split()[0]: line.split()[1] for line in _image_lines(second.stdout)}
    assert ids_before == ids_after
    assert {"base", "azurite"} <= set(ids_after)


def _image_lines(stdout: str) -> list[str]:
    tail = stdout.split("images ready")[1]
    return [line.strip() for line in tail.splitlines()[1:] if line.strip()]


def _refused(call: Callable[[], object]) -> int:
    """The HTTP status Azurite answers a call it refuses (the call must fail)."""
    with pytest.raises(HttpResponseError) as refused:
        call()
    return refused.value.status_code


def test_up_gives_azurite_a_key_of_its_own_and_the_published_key_is_refused(sandbox_env: SandboxEnv) -> None:
    """A run handed a SAS cannot sign its own for other blobs with Azurite's well-known key."""
    up = sandbox_env.cli("up")
    key_file = account_key_path(sandbox_env.settings.home)
    own = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert own != AZURITE_ACCOUNT_KEY
    assert own not in up.stdout + up.stderr
    assert sandbox_env.settings.account_key == own  # settings made before `up` use the key `up` made

    payload = uuid.uuid4().bytes * 100
    _roundtrip(sandbox_env, "own-key", payload)  # the stack's key is accepted

    published = replace(sandbox_env.settings, account_key_override=AZURITE_ACCOUNT_KEY)
    client = BlobServiceClient.from_connection_string(published.connection_string, retry_total=0)
    assert _refused(lambda: client.create_container("published-key")) == 403
    assert _refused(lambda: client.get_blob_client("own-key", "probe/hello.bin").download_blob()) == 403
    sas = generate_container_sas(AZURITE_ACCOUNT_NAME, "own-key", account_key=AZURITE_ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    forged = ContainerClient(sandbox_env.settings.blob_endpoint, "own-key", credential=sas, retry_total=0)
    assert _refused(lambda: forged.download_blob("probe/hello.bin").readall()) == 403

    # The workspace service (key from compose, not the file) reaches Azurite with the same key.
    probe = ("import hashlib; from azure.storage.blob import BlobServiceClient; from sandbox.config import Settings; "
             "s = Settings.from_env(); "
             "BlobServiceClient.from_connection_string(s.connection_string, retry_total=0).get_container_client("
             "'own-key').get_blob_client('probe/hello.bin').get_blob_properties(); "
             "print(hashlib.sha256(s.account_key.encode()).hexdigest())")
    seen = sandbox_env.compose("exec", "-T", "workspace", "python", "-c", probe, check=False)
    assert seen.returncode == 0, seen.stderr[-2000:]
    assert seen.stdout.strip() == hashlib.sha256(own.encode()).hexdigest()

    sandbox_env.cli("up")
    assert key_file.read_text().strip() == own, "a second `up` keeps the stack's key"
    assert _read(sandbox_env, "own-key") == payload
