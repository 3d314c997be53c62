"""The local stack as docker compose runs it: up, down, status.

``docker compose`` (v2, the CLI plugin) is driven with an explicit project name and file, and the
variables docker-compose.yml interpolates come from :class:`~sandbox.config.Settings`, so a second
stack (tests) can run beside the user's on other ports.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sandbox.config import Settings
from sandbox.errors import StackError


@dataclass(frozen=True)
class ServiceState:
    """One compose service as ``docker compose ps`` reports it."""

    service: str
    container: str
    state: str  # running, exited, created, ...
    health: str  # healthy, starting, unhealthy or "" (no healthcheck)
    ports: str

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.health in {"", "healthy"}


class Stack:
    """``docker compose -p <project> -f docker-compose.yml`` for one set of settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def command(self, *args: str) -> list[str]:
        return ["docker", "compose", "-p", self.settings.project, "-f", str(self.settings.compose_file), *args]

    def compose(self, *args: str, timeout: float = 600) -> str:
        if not self.settings.compose_file.is_file():
            raise StackError(self.command(*args), f"compose file {self.settings.compose_file} does not exist "
                             "(set AML_SANDBOX_COMPOSE_FILE to the repository's docker-compose.yml)")
        command = self.command(*args)
        env = {**os.environ, **self.settings.compose_environment()}
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout,
                                    check=False)
        except subprocess.TimeoutExpired as exc:
            raise StackError(command, f"no answer within {timeout:.0f} s") from exc
        except FileNotFoundError as exc:
            raise StackError(command, "the docker CLI is not installed; run 'aml-sandbox bootstrap'") from exc
        if result.returncode != 0:
            raise StackError(command, result.stdout + result.stderr)
        return result.stdout

    def up(self, *, wait_timeout: int = 120) -> None:
        """Start (or keep) every service and wait for the healthchecks; running services are left alone."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.compose("up", "--detach", "--wait", "--wait-timeout", str(wait_timeout))

    def down(self, *, volumes: bool = False) -> None:
        args = ["down", "--remove-orphans"]
        if volumes:
            args.append("--volumes")
        self.compose(*args)

    def restart(self, *services: str) -> None:
        self.compose("restart", *services)

    def status(self) -> list[ServiceState]:
        """Every service of the project that has a container (running or not)."""
        output = self.compose("ps", "--all", "--format", "json")
        rows: list[dict] = []
        text = output.strip()
        if text.startswith("["):
            rows = json.loads(text)
        else:  # compose >= 2.21 prints one JSON object per line
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [
            ServiceState(
                service=row.get("Service", ""),
                container=row.get("Name", ""),
                state=row.get("State", ""),
                health=row.get("Health", ""),
                ports=row.get("Ports", "") or (row.get("Publishers", "") and _ports(row["Publishers"])),
            )
            for row in rows
        ]

    def services(self) -> list[str]:
        """The services docker-compose.yml defines."""
        return [line for line in self.compose("config", "--services").splitlines() if line.strip()]


def _ports(publishers: list[dict]) -> str:
    return ", ".join(
        f"{p.get('URL')}:{p.get('PublishedPort')}->{p.get('TargetPort')}/{p.get('Protocol')}"
        for p in publishers if p.get("PublishedPort")
    )


SERVICE_IMAGE_ALIAS = "aml-sandbox/service:local"
SERVICE_REQUIREMENTS = Path(__file__).resolve().parent / "service" / "requirements.txt"


def recipes() -> list:
    """The images the stack's services run on (the run environments' images are in sandbox.images)."""
    from sandbox import azurite
    from sandbox.images import DebianBaseRecipe, PythonImageRecipe

    base = DebianBaseRecipe()
    service = PythonImageRecipe(
        name="service",
        repository="aml-sandbox/service",
        requirements=tuple(line.split("==")[0] for line in SERVICE_REQUIREMENTS.read_text().splitlines()
                           if line and not line.startswith("#")),
        venv="/opt/aml-sandbox/venv",
        base=base,
        constraints=SERVICE_REQUIREMENTS,
        alias=SERVICE_IMAGE_ALIAS,
    )
    return [base, azurite.recipe(base), service]
