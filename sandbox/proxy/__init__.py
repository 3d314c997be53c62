"""The stack's TLS-terminating proxy and its CA (routing by host only: the proxy knows hosts, not Azure ML).

``ca`` makes and keeps the stack's (name-constrained) CA and mints leaf certificates; ``server`` is the asyncio
proxy (``python -m sandbox.proxy`` runs it; docker-compose.yml's ``proxy`` service does so), ``http11`` the
HTTP/1.1 framing it reads and relays, ``policy`` where its tunnels may go (public addresses only). :func:`probe` and
:func:`wait_until_ready` check a running proxy from the host.
"""

from __future__ import annotations

import socket
import time

from sandbox.config import Settings
from sandbox.errors import StackError


def probe(settings: Settings, *, timeout: float = 3.0) -> str | None:
    """One ``GET /health`` to the published port; None when the proxy answers 200, else the reason it does not."""
    try:
        with socket.create_connection((settings.bind_host, settings.proxy_port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0].decode("latin-1", "replace")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if status.startswith("HTTP/1.1 200") else f"answered {status!r}"


def wait_until_ready(settings: Settings, *, timeout: float = 60.0) -> None:
    """Block until the proxy answers its health check, or raise StackError naming the port and the reason."""
    deadline = time.monotonic() + timeout
    reason = probe(settings)
    while reason is not None:
        if time.monotonic() > deadline:
            raise StackError(["aml-sandbox", "up"],
                             f"the stack's HTTPS proxy at {settings.bind_host}:{settings.proxy_port} does not answer "
                             f"after {timeout:.0f} s: {reason} (its log: docker compose -p {settings.project} "
                             "logs proxy)")
        time.sleep(0.5)
        reason = probe(settings)
