"""What keeps a web browser from being turned against the workspace service (issue 16, item 6).

The service listens on 127.0.0.1 only, but any web page the user opens can make the browser send
requests there. Three defences, each small:

* **Host allowlist** (DNS rebinding): a page of ``evil.example`` that re-resolves its name to
  127.0.0.1 makes same-origin requests that carry ``Host: evil.example:<port>``. Every request whose
  Host is not in :func:`host_allowlist` (``127.0.0.1``/``localhost`` with the published port or the
  port the service listens on inside its container) is refused with 421 before any route runs.
* **Headers on every response**: a Content-Security-Policy that loads nothing from anywhere but the
  service itself and allows no inline script or style (the pages use ``/static/`` files), no framing
  (``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``), ``X-Content-Type-Options: nosniff``
  (a run's file is never run as script or style by another site).
* **Page session**: run files and run definitions (environment variables, user@host) need either the
  stack's token (``Authorization: Bearer``; the CLI and the SDK facade send it) or the session cookie
  that every HTML page of the service sets: HttpOnly, ``SameSite=Strict``, its value an HMAC of the
  token. The run page's script and its download links send it back. What keeps another web page from
  reading run files is that no response allows CORS and the Host allowlist refuses rebinding: cookies
  are not scoped by port, so a page served from another port of 127.0.0.1 counts as same-site and its
  requests carry the cookie, but it cannot read the answers. It is not a defence against another local
  process, which can load a page as a browser does: the port is on 127.0.0.1 only and the token file is
  the owner's alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.config import Settings

#: The port the service listens on inside its container (the compose healthcheck calls it there).
LISTEN_PORT = 8790
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
SESSION_COOKIE = "aml_sandbox_session"
_SESSION_PURPOSE = b"aml-sandbox page session v1"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def host_allowlist(settings: Settings, *, listen_port: int = LISTEN_PORT,
                   names: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values the service answers: loopback names (and ``names``) with the published port
    (``settings.service_port``) or ``listen_port``. Lower case, ``host:port``; a name alone for port 80."""
    allowed = set()
    for name in (*LOOPBACK_NAMES, *names):
        for port in {settings.service_port, listen_port}:
            allowed.add(f"{name.lower()}:{port}")
            if port == 80:
                allowed.add(name.lower())
    return frozenset(allowed)


class SecurityMiddleware:
    """Refuses requests naming a foreign Host (421) and adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: the service would refuse every request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        if host.lower() not in self.allowed_hosts:
            example = sorted(self.allowed_hosts)[0]
            response = PlainTextResponse(
                f"Host {host!r} is not a name of this workspace service (it answers to "
                f"{', '.join(sorted(self.allowed_hosts))}); open http://{example}/ instead. Other names are "
                "refused so that a web page cannot reach the service by re-pointing its own name (DNS rebinding).",
                status_code=421, headers=SECURITY_HEADERS)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    header = connection.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def page_session(token: str) -> str:
    """The page session cookie's value: an HMAC of the token (the token itself never reaches a browser)."""
    return hmac.new(token.encode(), _SESSION_PURPOSE, hashlib.sha256).hexdigest()


def has_page_session(connection: HTTPConnection, token: str) -> bool:
    presented = connection.cookies.get(SESSION_COOKIE)
    return presented is not None and hmac.compare_digest(page_session(token).encode(), presented.encode())


def set_page_session(response: Response, token: str) -> None:
    """Give the browser that loads a page the session its script and download links send back."""
    response.set_cookie(SESSION_COOKIE, page_session(token), httponly=True, samesite="strict", path="/")
