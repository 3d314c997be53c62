"""The stack's HTTPS proxy: TLS terminated for Azure blob hosts (sent to Azurite), every other host tunnelled.

azureml-core rebuilds every blob URL it is handed as ``https://<account>.blob.core.windows.net/...``
(artifacts, ``log_image``, ``upload_file``, snapshots, the dataset engine), so the one way to send those
requests to the local Azurite is the client's own ``HTTPS_PROXY``. This proxy answers ``CONNECT``:

- ``<account>.blob.core.windows.net``: it answers ``200``, terminates TLS with a leaf certificate for that
  host signed by the stack's CA (``sandbox.proxy.ca``; clients trust it through ``REQUESTS_CA_BUNDLE`` and
  ``SSL_CERT_FILE``), and forwards each plain HTTP/1.1 request to Azurite (``http://azurite:10000`` in the
  compose network), rewriting the path to path-style ``/<account>/<container>/<blob>`` because the stack's
  Azurite runs with ``--disableProductStyleUrl``. A Shared Access Signature does not sign the URL's host or
  style, so SAS requests stay valid; a **SharedKey** signature covers the canonicalised resource
  ``/<account>/<path>`` as the client saw it, so SharedKey requests rewritten this way fail their signature
  check (the workspace service hands out SAS URLs for that reason).
- any other host: the bytes are piped both ways unchanged, or, with ``AML_SANDBOX_OFFLINE=1``, refused
  with ``403`` naming the host.

Routing is by host name only: the proxy knows hosts, not Azure ML. ``GET /health`` answers ``200`` for
readiness checks; any other plain request gets ``405``. Request and response heads are bounded (size and
header count), every read and write has a timeout, bodies are streamed in chunks with back-pressure
(nothing is buffered whole), and the number of connections is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sandbox.proxy.ca import StackCA

log = logging.getLogger("sandbox.proxy")
T = TypeVar("T")

#: Azure storage account names: 3 to 24 lower-case letters and digits.
BLOB_HOST = re.compile(r"^([a-z0-9]{3,24})\.blob\.core\.windows\.net$")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: Headers that concern one hop only: never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
                        "te", "trailer", "upgrade", "expect"})
CHUNK = 64 * 1024
DEFAULT_PORT = 8791
DEFAULT_BLOB_UPSTREAM = "http://azurite:10000"


class HttpError(Exception):
    """A request the proxy answers itself with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Payload Too Large", 431: "Request Header Fields Too Large", 501: "Not Implemented",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy listens, where blob requests go, and its bounds."""

    home: Path
    listen_host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    blob_upstream: str = DEFAULT_BLOB_UPSTREAM
    offline: bool = False
    max_head_bytes: int = 64 * 1024
    max_headers: int = 128
    connect_timeout: float = 10.0
    #: A connection with nothing moving (between requests, or in a tunnel both ways) is closed after this.
    idle_timeout: float = 300.0
    #: One read or write of a head or a body chunk.
    io_timeout: float = 120.0
    max_connections: int = 512

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxyConfig:
        """From ``AML_SANDBOX_HOME`` (the CA's folder), ``AML_SANDBOX_PROXY_LISTEN_HOST`` (default 127.0.0.1),
        ``AML_SANDBOX_PROXY_LISTEN_PORT`` (default: the settings' ``proxy_port``), ``AML_SANDBOX_PROXY_BLOB_UPSTREAM``
        (default http://azurite:10000) and ``AML_SANDBOX_OFFLINE``."""
        from sandbox.config import Settings, _env_int
        from sandbox.errors import ConfigurationError

        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        upstream = env.get("AML_SANDBOX_PROXY_BLOB_UPSTREAM") or DEFAULT_BLOB_UPSTREAM
        try:
            _upstream_address(upstream)
        except ValueError as exc:
            raise ConfigurationError(f"AML_SANDBOX_PROXY_BLOB_UPSTREAM={upstream!r}: {exc}") from None
        offline = env.get("AML_SANDBOX_OFFLINE", "")
        if offline not in {"", "0", "1"}:
            raise ConfigurationError(f"AML_SANDBOX_OFFLINE={offline!r} must be 1 (refuse every host but the local "
                                     "blob storage) or 0/unset (tunnel other hosts)")
        port = settings.proxy_port
        if env.get("AML_SANDBOX_PROXY_LISTEN_PORT"):  # in its container: the port behind the published one
            port = _env_int(env, "AML_SANDBOX_PROXY_LISTEN_PORT", port)
        return cls(home=settings.home, listen_host=env.get("AML_SANDBOX_PROXY_LISTEN_HOST") or "127.0.0.1",
                   port=port, blob_upstream=upstream, offline=offline == "1")

    @property
    def upstream_address(self) -> tuple[str, int]:
        return _upstream_address(self.blob_upstream)


def _upstream_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in {"", "/"} or parts.query:
        raise ValueError("expected http://<host>:<port> of Azurite's blob service, e.g. http://azurite:10000")
    return parts.hostname, parts.port or 80


@dataclass(frozen=True)
class Head:
    """The start line and headers of one HTTP/1.1 message."""

    start: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]


class ProxyServer:
    """The asyncio server; ``start()``, then ``serve_forever()`` or ``close()``."""

    def __init__(self, config: ProxyConfig, ca: StackCA) -> None:
        self.config = config
        self.ca = ca
        self._server: Any = None
        self._tasks: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.config.listen_host, self.config.port,
                                                  limit=self.config.max_head_bytes)

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the one the system chose for port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and end the connections in progress."""
        if self._server is not None:
            self._server.close()
        # Aborting the connections ends their handlers (a cancelled handler task makes Python 3.11's
        # stream callback log a spurious traceback); cancellation is the fallback.
        for writer in list(self._tasks.values()):
            writer.transport.abort()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=5)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # -- one client connection -----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.config.max_connections:
            await _answer(writer, 503, f"the proxy serves {self.config.max_connections} connections at most; "
                                       "try again", close=True)
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = writer
        try:
            await self._handle(reader, writer)
        except HttpError as exc:
            with contextlib.suppress(Exception):
                await _answer(writer, exc.status, exc.message, close=True)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("connection ended: %r", exc)
        except asyncio.CancelledError:
            writer.transport.abort()  # the proxy stops: no graceful TLS shutdown to wait for
            raise
        except Exception:  # pragma: no cover - a bug: logged, the connection closed, the server goes on
            log.exception("proxy connection failed")
        finally:
            self._tasks.pop(task, None)
            await _close(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_head(reader, self.config, self.config.io_timeout)
        if head is None:
            return
        method, target, _version = _request_line(head)
        if method == "GET" and target == "/health":
            await _answer(writer, 200, '{"status": "ok"}', close=True, content_type="application/json")
            return
        if method != "CONNECT":
            raise HttpError(405, f"this is an HTTPS proxy: it answers CONNECT only (got {method} {target[:100]}); "
                                 "set HTTPS_PROXY, not HTTP_PROXY, to it")
        host, port = _authority(target)
        blob = BLOB_HOST.match(host.lower())
        if blob:
            log.info("CONNECT %s:%d -> local blob storage %s", host, port, self.config.blob_upstream)
            context = await asyncio.to_thread(self.ca.server_context, host.lower())
            # No await between the answer and start_tls (which stops reading first): the client's TLS hello,
            # sent as soon as it reads the answer, must reach the TLS layer, not the plain reader's buffer.
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.start_tls(context, ssl_handshake_timeout=self.config.connect_timeout)
            await self._serve_blob(reader, writer, blob.group(1))
        elif self.config.offline:
            log.info("CONNECT %s:%d refused (AML_SANDBOX_OFFLINE=1)", host, port)
            raise HttpError(403, f"AML_SANDBOX_OFFLINE=1: the stack's proxy reaches no host outside the stack, so "
                                 f"{host}:{port} is refused; unset AML_SANDBOX_OFFLINE to let it through")
        else:
            log.info("CONNECT %s:%d tunnelled", host, port)
            await self._tunnel(reader, writer, host, port)

    # -- blob storage: TLS terminated, requests forwarded to Azurite ----------------------------

    async def _serve_blob(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, account: str) -> None:
        """Requests on the client's TLS connection, one at a time, each on a new connection to Azurite.

        A fresh upstream connection per request: Azurite (Node.js) closes idle connections after 5 s, and a
        request whose body has been streamed cannot be sent again on another connection.
        """
        cfg = self.config
        while True:
            try:
                head = await _read_head(reader, cfg, cfg.idle_timeout)
            except TimeoutError:
                return  # an idle keep-alive connection
            if head is None:
                return
            method, target, version = _request_line(head)
            length, chunked = _request_framing(head)
            path = _path_style(target, account)
            up_reader, up_writer = await self._open_upstream()
            try:
                if (head.get("Expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # Expect is answered here, not forwarded
                up_writer.write(_forward_head(f"{method} {path} HTTP/1.1", head, self._upstream_host(), close=True))
                sent_all = True
                try:
                    await _within(up_writer.drain(), cfg.io_timeout)
                    if chunked:
                        await _copy_chunked(reader, up_writer, cfg)
                    elif length:
                        await _copy_exact(reader, up_writer, length, cfg.io_timeout)
                except (BrokenPipeError, ConnectionResetError):
                    sent_all = False  # Azurite answered early (an error) and closed: relay its answer, then close
                try:
                    response = await _read_response_head(up_reader, cfg)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    raise HttpError(502, f"Azurite at {cfg.blob_upstream} closed the connection without an "
                                         f"answer ({type(exc).__name__})") from None
                body = _response_framing(method, response)
                close_client = not _keeps_alive(head, version) or not sent_all or body == "eof"
                writer.write(_forward_head(response.start, response, None, close=close_client))
                await _within(writer.drain(), cfg.io_timeout)
                if body == "chunked":
                    await _copy_chunked(up_reader, writer, cfg)
                elif body == "eof":
                    await _copy_until_eof(up_reader, writer, cfg.io_timeout)
                elif isinstance(body, int) and body:
                    await _copy_exact(up_reader, writer, body, cfg.io_timeout)
            finally:
                await _close(up_writer)
            if close_client:
                return

    def _upstream_host(self) -> str:
        host, port = self.config.upstream_address
        return f"{host}:{port}"

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.config.upstream_address
        try:
            return await _within(asyncio.open_connection(host, port, limit=self.config.max_head_bytes),
                                          self.config.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise HttpError(502, f"the local blob storage (Azurite at {self.config.blob_upstream}) does not answer: "
                                 f"{exc or type(exc).__name__}; is the stack up? (aml-sandbox status)") from None

    # -- other hosts: bytes piped ------------------------------------------------------------------

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        try:
            up_reader, up_writer = await _within(asyncio.open_connection(host, port),
                                                          self.config.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise HttpError(502, f"could not reach {host}:{port}: {exc or type(exc).__name__}") from None
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await _within(writer.drain(), self.config.io_timeout)
            activity = [time.monotonic()]
            await asyncio.gather(self._pipe(reader, up_writer, activity), self._pipe(up_reader, writer, activity),
                                 return_exceptions=True)
        finally:
            await _close(up_writer)

    async def _pipe(self, source: asyncio.StreamReader, target: asyncio.StreamWriter, activity: list[float]) -> None:
        """Copy until end of stream; idle means nothing moved either way for ``idle_timeout``."""
        step = min(self.config.idle_timeout, 30.0)
        try:
            while True:
                try:
                    data = await _within(source.read(CHUNK), step)
                except TimeoutError:
                    if time.monotonic() - activity[0] > self.config.idle_timeout:
                        raise
                    continue
                activity[0] = time.monotonic()
                if not data:
                    if target.can_write_eof():
                        with contextlib.suppress(OSError):
                            target.write_eof()
                    return
                target.write(data)
                await _within(target.drain(), self.config.io_timeout)
        except BaseException:
            target.close()  # the other direction ends too
            raise


# -- HTTP/1.1 framing --------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader, cfg: ProxyConfig, timeout: float) -> Head | None:
    """One message head, bounded in size and header count; None on a clean end of stream before it."""
    try:
        raw = await _within(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError(400, "the request head ended before its blank line") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"the request head is over {cfg.max_head_bytes} bytes") from None
    if len(raw) > cfg.max_head_bytes:
        raise HttpError(431, f"the request head is over {cfg.max_head_bytes} bytes")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    if len(lines) - 1 > cfg.max_headers:
        raise HttpError(431, f"the request has {len(lines) - 1} header lines, over {cfg.max_headers}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name) or "\r" in line or "\n" in line or "\0" in line:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    if "\r" in lines[0] or "\n" in lines[0] or "\0" in lines[0]:
        raise HttpError(400, "malformed start line")
    return Head(lines[0], headers)


async def _read_response_head(reader: asyncio.StreamReader, cfg: ProxyConfig) -> Head:
    while True:
        head = await _read_head(reader, cfg, cfg.io_timeout)
        if head is None:
            raise asyncio.IncompleteReadError(b"", None)
        parts = head.start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
            raise HttpError(502, f"Azurite answered a malformed status line {head.start[:80]!r}")
        if not parts[1].startswith("1"):
            return head  # interim answers (100 Continue) are dropped: the proxy answered Expect itself


def _request_line(head: Head) -> tuple[str, str, str]:
    parts = head.start.split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in {"HTTP/1.1", "HTTP/1.0"}:
        raise HttpError(400, f"malformed request line {head.start[:100]!r} (expected METHOD TARGET HTTP/1.1)")
    return parts[0], parts[1], parts[2]


def _request_framing(head: Head) -> tuple[int, bool]:
    """(Content-Length, chunked); a request with both, or with an unknown coding, is refused (smuggling)."""
    codings = [c.strip().lower() for v in head.get_all("Transfer-Encoding") for c in v.split(",") if c.strip()]
    lengths = head.get_all("Content-Length")
    if codings:
        if lengths:
            raise HttpError(400, "a request cannot carry both Transfer-Encoding and Content-Length")
        if codings != ["chunked"]:
            raise HttpError(501, f"Transfer-Encoding {', '.join(codings)} is not supported (only chunked)")
        return 0, True
    return _content_length(lengths), False


def _content_length(values: list[str]) -> int:
    if not values:
        return 0
    distinct = {v.strip() for v in values}
    value = distinct.pop()
    if distinct or not (value.isascii() and value.isdigit()) or len(value) > 15:
        raise HttpError(400, f"bad Content-Length {values!r}")
    return int(value)


def _response_framing(method: str, head: Head) -> int | str:
    status = int(head.start.split(" ", 2)[1])
    if method == "HEAD" or status in (204, 304):
        return 0
    codings = [c.strip().lower() for v in head.get_all("Transfer-Encoding") for c in v.split(",") if c.strip()]
    if codings:
        return "chunked" if codings[-1] == "chunked" else "eof"
    lengths = head.get_all("Content-Length")
    return _content_length(lengths) if lengths else "eof"


def _keeps_alive(head: Head, version: str) -> bool:
    tokens = {t.strip().lower() for v in head.get_all("Connection") for t in v.split(",")}
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens


def _forward_head(start: str, head: Head, host: str | None, *, close: bool = False) -> bytes:
    """The head to send on: hop-by-hop headers (and those the Connection header names) dropped, Host replaced."""
    named = {t.strip().lower() for v in head.get_all("Connection") for t in v.split(",")}
    lines = [start]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in head.headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or (host is not None and lower == "host"):
            continue
        lines.append(f"{name}: {value}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _path_style(target: str, account: str) -> str:
    """``/<container>/<blob>?<query>`` (origin form, or the path of an absolute URL) -> ``/<account>/...``."""
    if target.startswith("/"):
        path = target
    elif target.lower().startswith("https://"):
        parts = urlsplit(target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    else:
        raise HttpError(400, f"request target {target[:100]!r} is not a path")
    return f"/{account}{path}"


def _authority(target: str) -> tuple[str, int]:
    """``host:port`` of a CONNECT, checked: a host name or an IP address, and a port."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise HttpError(400, f"CONNECT target {target[:100]!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HttpError(400, f"CONNECT target {target[:100]!r} has a malformed IPv6 address") from None
    elif not HOST_NAME.match(host):
        raise HttpError(400, f"CONNECT target {target[:100]!r} is not a host name")
    return host.rstrip("."), int(port_text)


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await`` with a deadline (``asyncio.timeout``: no inner task, so cancellation reaches the read at once)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def _copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int, timeout: float) -> None:
    while count > 0:
        data = await _within(reader.read(min(count, CHUNK)), timeout)
        if not data:
            raise asyncio.IncompleteReadError(b"", count)
        writer.write(data)
        await _within(writer.drain(), timeout)
        count -= len(data)


async def _copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
    while data := await _within(reader.read(CHUNK), timeout):
        writer.write(data)
        await _within(writer.drain(), timeout)


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: ProxyConfig) -> None:
    """Relay a chunked body as it is framed, checking each size line and the trailers' bounds."""
    trailer_bytes = 0
    while True:
        line = await _line(reader, cfg)
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 15 or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise HttpError(400, f"malformed chunk size line {line[:40]!r}")
        writer.write(line)
        size = int(size_text, 16)
        if size == 0:
            while True:  # trailers, then the blank line
                line = await _line(reader, cfg)
                trailer_bytes += len(line)
                if trailer_bytes > cfg.max_head_bytes:
                    raise HttpError(431, f"chunked trailers over {cfg.max_head_bytes} bytes")
                writer.write(line)
                if line == b"\r\n":
                    await _within(writer.drain(), cfg.io_timeout)
                    return
        await _copy_exact(reader, writer, size, cfg.io_timeout)
        end = await _within(reader.readexactly(2), cfg.io_timeout)
        if end != b"\r\n":
            raise HttpError(400, "a chunk did not end with CRLF")
        writer.write(end)


async def _line(reader: asyncio.StreamReader, cfg: ProxyConfig) -> bytes:
    try:
        line = await _within(reader.readuntil(b"\r\n"), cfg.io_timeout)
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"a chunk line is over {cfg.max_head_bytes} bytes") from None
    if len(line) > 4096 + 2 and not line.startswith(b"\r\n"):
        raise HttpError(400, "a chunk size line is over 4 KiB")
    return line


async def _answer(writer: asyncio.StreamWriter, status: int, message: str, *, close: bool,
                  content_type: str = "text/plain; charset=utf-8") -> None:
    body = (message + ("\n" if content_type.startswith("text/") else "")).encode("utf-8")
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    writer.write(head.encode("latin-1") + body)
    with contextlib.suppress(Exception):
        await _within(writer.drain(), 10)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await _within(writer.wait_closed(), 5)
