"""Real Docker, real Azurite, the real workspace service. Under CI=true a missing daemon fails, never skips.

Session-wide: one Azurite (testcontainers, random port, readiness wait) for datastore tests, and one
whole stack (docker compose: Azurite + workspace service) for run tests; both can be given from
outside (``AML_SANDBOX_TEST_BLOB_ENDPOINT`` / ``AML_SANDBOX_TEST_STACK_HOME``). Every test gets its
own workspace (so its own blob container) and experiment names; run containers are checked and
removed afterwards.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk's image cannot be pulled here

from sandbox.bootstrap import docker_server_version
from sandbox.config import Settings
from tests.integration import leftovers

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "sandbox.cli"]
#: Compute targets of the test stack: the defaults, a one-node target (queueing) and a 2 GiB one (OOM).
TEST_COMPUTE = ("cpu-cluster:4:STANDARD_D2_V2,local:1:STANDARD_D2_V2,single-node:1:STANDARD_D2_V2,"
                "small-memory:2:STANDARD_A1_V2")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_docker() -> None:
    if docker_server_version():
        return
    reason = "no Docker engine answers (run 'aml-sandbox bootstrap')"
    if in_ci():
        pytest.fail(f"CI=true: {reason}; integration tests never skip in CI")
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove what an earlier, killed test session left (its compose stacks and containers)."""
    if docker_server_version():
        for item in leftovers.sweep():
            print(f"removed the leftover {item} of an earlier test session that did not finish", file=sys.stderr)


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now, never given before in this session, and outside the kernel's ephemeral range.

    Docker publishes `-p 0` ports and the kernel picks outgoing ports from the ephemeral range
    (net.ipv4.ip_local_port_range, 32768-60999 by default), so a port probed there can be taken by another
    container before compose binds it ("port is already allocated"). Ports below that range are only ever
    taken on request.
    """
    low, _ = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, max(10001, low))
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range after 1000 tries")


@dataclass
class SandboxEnv:
    """An isolated stack: its own compose project, state folder and ports."""

    env: dict[str, str]
    settings: Settings

    def cli(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                cwd=REPO, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"aml-sandbox {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.settings.project, "-f", str(REPO / "docker-compose.yml"), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300, check=check)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", check=False)
        leftovers.remove_run_containers(self.settings.project)
        leftovers.release("project", self.settings.project)


def make_sandbox_env(tmp_path: Path, **extra: str) -> SandboxEnv:
    home = tmp_path / "aml-sandbox-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AML_SANDBOX_HOME": str(home),
        "AML_SANDBOX_PROJECT": f"t-{uuid.uuid4().hex[:8]}",
        "AML_SANDBOX_AZURITE_PORT": str(free_port()),
        "AML_SANDBOX_SERVICE_PORT": str(free_port()),
        "AML_SANDBOX_PROXY_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("AML_SANDBOX_BLOB_ENDPOINT", None)
    leftovers.claim("project", env["AML_SANDBOX_PROJECT"])
    return SandboxEnv(env=env, settings=Settings.from_env(env))


@pytest.fixture
def sandbox_env(tmp_path: Path) -> Iterator[SandboxEnv]:
    """A fresh, isolated stack definition; whatever it starts is removed with its volumes afterwards."""
    require_docker()
    sandbox = make_sandbox_env(tmp_path)
    try:
        yield sandbox
    finally:
        sandbox.down()


# -- Azurite alone (datastore tests) ----------------------------------------------------------------


@dataclass
class AzuriteHandle:
    blob_endpoint: str
    container: object | None  # testcontainers DockerContainer, when we started it


def azurite_container(host_port: int | None = None) -> Any:
    """A testcontainers Azurite from the stack's image (a random host port unless given), started and claimed."""
    from testcontainers.core.container import DockerContainer

    from sandbox import azurite
    from sandbox.docker_engine import MANAGED_LABEL

    container = (DockerContainer(azurite.IMAGE_ALIAS)
                 .with_command(list(azurite.COMMAND))
                 .with_kwargs(labels={MANAGED_LABEL: "true", "aml-sandbox.test": "true"}, init=True))
    if host_port:
        container.with_bind_ports(azurite.BLOB_PORT, host_port)
    else:
        container.with_exposed_ports(azurite.BLOB_PORT)
    container.start()
    leftovers.claim("container", container.get_wrapped_container().id)
    return container


def remove_container(container: Any) -> None:
    """Remove a testcontainers container with its anonymous volumes (testcontainers' ``stop`` keeps them)."""
    leftovers.remove("container", container.get_wrapped_container().id)


def start_azurite() -> tuple[object, str]:
    """A throw-away Azurite from the stack's image on a random port, with a real readiness wait."""
    from sandbox import azurite

    container = azurite_container()
    port = container.get_exposed_port(azurite.BLOB_PORT)
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    settings = Settings.from_env({"AML_SANDBOX_HOME": "/tmp", "AML_SANDBOX_BLOB_ENDPOINT": endpoint})
    azurite.wait_until_ready(settings, timeout=60)
    return container, endpoint


@pytest.fixture(scope="session")
def azurite_endpoint() -> Iterator[str]:
    given = os.environ.get("AML_SANDBOX_TEST_BLOB_ENDPOINT")
    if given:
        yield given
        return
    require_docker()
    container, endpoint = start_azurite()
    try:
        yield endpoint
    finally:
        remove_container(container)


@pytest.fixture
def local_workspace(azurite_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The facade pointed at the session Azurite, with a workspace (hence a blob container) of its own."""
    home = tmp_path / "home"
    home.mkdir()
    values = {
        "AML_SANDBOX_HOME": str(home),
        "AML_SANDBOX_BLOB_ENDPOINT": azurite_endpoint,
        "AML_SANDBOX_WORKSPACE_NAME": f"t-{uuid.uuid4().hex[:10]}",
        "AML_SANDBOX_SERVICE_PORT": str(free_port()),  # no service here: submits fail clearly
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return Settings.from_env()


# -- the whole stack (run tests) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxEnv]:
    """Azurite + the workspace service as docker compose runs them, in a project of their own."""
    given = os.environ.get("AML_SANDBOX_TEST_STACK_HOME")
    if given:
        env = {**os.environ, "AML_SANDBOX_HOME": given}
        yield SandboxEnv(env=env, settings=Settings.from_env(env))
        return
    require_docker()
    sandbox = make_sandbox_env(tmp_path_factory.mktemp("stack"), AML_SANDBOX_COMPUTE_TARGETS=TEST_COMPUTE)
    try:
        sandbox.cli("up", timeout=1800)
        yield sandbox
    finally:
        sandbox.down()


def run_containers(project: str) -> list[str]:
    """Run containers of a stack that still exist (running or not)."""
    result = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=aml-sandbox.project={project}"],
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.fixture
def workspace_env(stack: SandboxEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SandboxEnv:
    """The facade pointed at the session stack, with a workspace and blob container of its own."""
    values = {k: v for k, v in stack.env.items() if k.startswith("AML_SANDBOX_")}
    values["AML_SANDBOX_WORKSPACE_NAME"] = f"t-{uuid.uuid4().hex[:10]}"
    values.pop("AML_SANDBOX_BLOB_ENDPOINT", None)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    env = {**stack.env, **values}
    return SandboxEnv(env=env, settings=Settings.from_env(env))


@pytest.fixture
def no_leftover_containers(stack: SandboxEnv) -> Iterator[None]:
    """After the test: no run container of this stack exists (each run removes its own)."""
    yield
    leftovers = run_containers(stack.settings.project)
    assert not leftovers, f"run containers left behind: {leftovers}"


def inspect(container: str) -> dict:
    result = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)[0]
