"""The stack's proxy, as compose runs it, refuses tunnels into the stack and to non-public addresses."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.integration.conftest import SandboxEnv

pytestmark = pytest.mark.local_only


def _connect(port: int, target: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer.decode("utf-8", "replace")


def _addresses(project: str, service: str) -> list[str]:
    found = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                            "--filter", f"label=com.docker.compose.service={service}"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert found, f"no {service} container in project {project}"
    networks = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                          found[0]], capture_output=True, text=True, check=True).stdout)
    return [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]


def test_the_proxy_refuses_to_tunnel_to_the_stacks_own_services_and_private_addresses(stack: SandboxEnv) -> None:
    port = stack.settings.proxy_port
    targets = ["azurite:10000", "workspace:8790", "proxy:8791", "localhost:8791", "127.0.0.1:8791",
               "169.254.169.254:80", "[::1]:8791"]
    targets += [f"{address}:10000" for address in _addresses(stack.settings.project, "azurite")]
    for target in targets:
        answer = _connect(port, target)
        assert answer.startswith("HTTP/1.1 403 "), (target, answer[:300])
        assert f"{target} is refused" in answer, (target, answer)
