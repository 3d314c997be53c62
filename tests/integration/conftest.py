"""Real Docker, real Azurite. Under CI=true a missing daemon fails the test instead of skipping it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.bootstrap import docker_server_version
from sandbox.config import Settings

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "sandbox.cli"]


def require_docker() -> None:
    if docker_server_version():
        return
    reason = "no Docker engine answers (run 'aml-sandbox bootstrap')"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI=true: {reason}; integration tests never skip in CI")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.settings.project, "-f", str(REPO / "docker-compose.yml"), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300, check=True)


def make_sandbox_env(tmp_path: Path) -> SandboxEnv:
    home = tmp_path / "aml-sandbox-home"
    env = {
        **os.environ,
        "AML_SANDBOX_HOME": str(home),
        "AML_SANDBOX_PROJECT": f"t-{uuid.uuid4().hex[:8]}",
        "AML_SANDBOX_AZURITE_PORT": str(free_port()),
        "AML_SANDBOX_SERVICE_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    return SandboxEnv(env=env, settings=Settings.from_env(env))


@pytest.fixture
def sandbox_env(tmp_path: Path) -> Iterator[SandboxEnv]:
    """A fresh, isolated stack definition; whatever it starts is removed with its volumes afterwards."""
    require_docker()
    sandbox = make_sandbox_env(tmp_path)
    try:
        yield sandbox
    finally:
        subprocess.run(
            ["docker", "compose", "-p", sandbox.settings.project, "-f", str(REPO / "docker-compose.yml"),
             "down", "--volumes", "--remove-orphans"],
            env=sandbox.env, capture_output=True, timeout=300, check=False,
        )
