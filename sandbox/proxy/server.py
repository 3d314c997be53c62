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
- any other host on a public internet address: the bytes are piped both ways unchanged to the address the
  proxy resolved and checked (``sandbox.proxy.policy``); single-label names (the stack's own ``azurite``,
  ``workspace``, ``proxy``) and names or addresses that are not public (loopback, private, link-local with
  the cloud metadata services) are refused with ``403`` naming the host and why. With
  ``AML_SANDBOX_OFFLINE=1`` every such host is refused with ``403``.

Routing is by host name only: the proxy knows hosts, not Azure ML. ``GET /health`` answers ``200`` for
readiness checks; any other plain request gets ``405``. Messages are read and relayed by ``sandbox.proxy.http11``
(heads bounded in size and header count, a timeout on every read and write, bodies streamed in chunks with
back-pressure, nothing buffered whole); the number of connections is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.proxy.ca import StackCA
from sandbox.proxy.http11 import (
    CHUNK,
    HttpError,
    answer,
    authority,
    close_writer,
    copy_chunked,
    copy_exact,
    copy_until_eof,
    forward_head,
    keeps_alive,
    read_head,
    read_response_head,
    request_framing,
    request_line,
    response_framing,
    within,
)
from sandbox.proxy.policy import DestinationRefused, Resolve, public_addresses, system_resolve

log = logging.getLogger("sandbox.proxy")
#: ``dial(address, port)``: a TCP connection to an IP address the policy checked.
Dial = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

#: Azure storage account names: 3 to 24 lower-case letters and digits.
BLOB_HOST = re.compile(r"^([a-z0-9]{3,24})\.blob\.core\.windows\.net$")
#: Azure ML's regional API hosts (``<region>.api.azureml.ms``: run history, metrics, artifacts, MLflow): the
#: workspace service answers them, reached over TLS as on Azure (azureml-mlflow always builds ``https://``).
AZUREML_API_HOST = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.api\.azureml\.ms$")
DEFAULT_SERVICE_UPSTREAM = "http://workspace:8790"
DEFAULT_PORT = 8791
DEFAULT_BLOB_UPSTREAM = "http://azurite:10000"


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy listens, where blob requests go, and its bounds."""

    home: Path
    listen_host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    blob_upstream: str = DEFAULT_BLOB_UPSTREAM
    service_upstream: str = DEFAULT_SERVICE_UPSTREAM
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
        (default http://azurite:10000), ``AML_SANDBOX_PROXY_SERVICE_UPSTREAM`` (default http://workspace:8790)
        and ``AML_SANDBOX_OFFLINE``."""
        from sandbox.config import Settings, _env_int
        from sandbox.errors import ConfigurationError

        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        upstream = env.get("AML_SANDBOX_PROXY_BLOB_UPSTREAM") or DEFAULT_BLOB_UPSTREAM
        service = env.get("AML_SANDBOX_PROXY_SERVICE_UPSTREAM") or DEFAULT_SERVICE_UPSTREAM
        for name, value in (("AML_SANDBOX_PROXY_BLOB_UPSTREAM", upstream),
                            ("AML_SANDBOX_PROXY_SERVICE_UPSTREAM", service)):
            try:
                _upstream_address(value)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={value!r}: {exc}") from None
        offline = env.get("AML_SANDBOX_OFFLINE", "")
        if offline not in {"", "0", "1"}:
            raise ConfigurationError(f"AML_SANDBOX_OFFLINE={offline!r} must be 1 (refuse every host but the local "
                                     "blob storage) or 0/unset (tunnel other hosts)")
        port = settings.proxy_port
        if env.get("AML_SANDBOX_PROXY_LISTEN_PORT"):  # in its container: the port behind the published one
            port = _env_int(env, "AML_SANDBOX_PROXY_LISTEN_PORT", port)
        return cls(home=settings.home, listen_host=env.get("AML_SANDBOX_PROXY_LISTEN_HOST") or "127.0.0.1",
                   port=port, blob_upstream=upstream, service_upstream=service, offline=offline == "1")


@dataclass(frozen=True)
class Upstream:
    """A service of the stack that answers, in plain HTTP, requests the proxy took out of TLS."""

    name: str
    url: str
    #: The account, for Azurite (paths become path-style ``/<account>/...``); None keeps paths and Host as sent.
    account: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        return _upstream_address(self.url)

    def path(self, target: str) -> str:
        return _path_style(target, self.account) if self.account else _origin_form(target)

    def host_header(self) -> str | None:
        """Azurite gets its own address as Host; the workspace service the host the client asked for."""
        if self.account is None:
            return None
        host, port = self.address
        return f"{host}:{port}"


def _upstream_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in {"", "/"} or parts.query:
        raise ValueError("expected http://<host>:<port> of a service of the stack, e.g. http://azurite:10000")
    return parts.hostname, parts.port or 80


class ProxyServer:
    """The asyncio server; ``start()``, then ``serve_forever()`` or ``close()``.

    ``resolve`` (the system's resolver by default) and ``dial`` (a plain TCP connection) are how tunnels find
    and reach their targets; tests pass fakes so that no packet leaves the machine.
    """

    def __init__(self, config: ProxyConfig, ca: StackCA, *, resolve: Resolve = system_resolve,
                 dial: Dial | None = None) -> None:
        self.config = config
        self.ca = ca
        self._resolve = resolve
        self._dial: Dial = dial or _open_tcp
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
            await answer(writer, 503, f"the proxy serves {self.config.max_connections} connections at most; "
                                       "try again", close=True)
            await close_writer(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = writer
        try:
            await self._handle(reader, writer)
        except HttpError as exc:
            with contextlib.suppress(Exception):
                await answer(writer, exc.status, exc.message, close=True)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("connection ended: %r", exc)
        except asyncio.CancelledError:
            writer.transport.abort()  # the proxy stops: no graceful TLS shutdown to wait for
            raise
        except Exception:  # pragma: no cover - a bug: logged, the connection closed, the server goes on
            log.exception("proxy connection failed")
        finally:
            self._tasks.pop(task, None)
            await close_writer(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader, self.config, self.config.io_timeout)
        if head is None:
            return
        method, target, _version = request_line(head)
        if method == "GET" and target == "/health":
            await answer(writer, 200, '{"status": "ok"}', close=True, content_type="application/json")
            return
        if method != "CONNECT":
            raise HttpError(405, f"this is an HTTPS proxy: it answers CONNECT only (got {method} {target[:100]}); "
                                 "set HTTPS_PROXY, not HTTP_PROXY, to it")
        host, port = authority(target)
        upstream = self._local(host.lower())
        if upstream is not None:
            log.info("CONNECT %s:%d -> %s %s", host, port, upstream.name, upstream.url)
            context = await asyncio.to_thread(self.ca.server_context, host.lower())
            # No await between the answer and start_tls (which stops reading first): the client's TLS hello,
            # sent as soon as it reads the answer, must reach the TLS layer, not the plain reader's buffer.
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.start_tls(context, ssl_handshake_timeout=self.config.connect_timeout)
            await self._serve_local(reader, writer, upstream)
        elif self.config.offline:
            log.info("CONNECT %s:%d refused (AML_SANDBOX_OFFLINE=1)", host, port)
            raise HttpError(403, f"AML_SANDBOX_OFFLINE=1: the stack's proxy reaches no host outside the stack, so "
                                 f"{host}:{port} is refused; unset AML_SANDBOX_OFFLINE to let it through")
        else:
            await self._tunnel(reader, writer, host, port)

    # -- the stack's own services: TLS terminated, requests forwarded in plain HTTP -----------------

    def _local(self, host: str) -> Upstream | None:
        """The stack's service that answers ``host`` (Azurite for blob hosts, the workspace service for Azure
        ML's API hosts), or None for a host the proxy tunnels."""
        blob = BLOB_HOST.match(host)
        if blob:
            return Upstream("local blob storage: Azurite", self.config.blob_upstream, blob.group(1))
        if AZUREML_API_HOST.match(host):
            return Upstream("workspace service", self.config.service_upstream)
        return None

    async def _serve_local(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           upstream: Upstream) -> None:
        """Requests on the client's TLS connection, one at a time, each on a new connection to ``upstream``.

        A fresh upstream connection per request: Azurite (Node.js) closes idle connections after 5 s, and a
        request whose body has been streamed cannot be sent again on another connection.
        """
        cfg = self.config
        while True:
            try:
                head = await read_head(reader, cfg, cfg.idle_timeout)
            except TimeoutError:
                return  # an idle keep-alive connection
            if head is None:
                return
            method, target, version = request_line(head)
            length, chunked = request_framing(head)
            path = upstream.path(target)
            up_reader, up_writer = await self._open_upstream(upstream)
            try:
                if (head.get("Expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # Expect is answered here, not forwarded
                up_writer.write(forward_head(f"{method} {path} HTTP/1.1", head, upstream.host_header(), close=True))
                sent_all = True
                try:
                    await within(up_writer.drain(), cfg.io_timeout)
                    if chunked:
                        await copy_chunked(reader, up_writer, cfg)
                    elif length:
                        await copy_exact(reader, up_writer, length, cfg.io_timeout)
                except (BrokenPipeError, ConnectionResetError):
                    sent_all = False  # Azurite answered early (an error) and closed: relay its answer, then close
                try:
                    response = await read_response_head(up_reader, cfg)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    raise HttpError(502, f"the {upstream.name} at {upstream.url} closed the connection without "
                                         f"an answer ({type(exc).__name__})") from None
                body = response_framing(method, response)
                close_client = not keeps_alive(head, version) or not sent_all or body == "eof"
                writer.write(forward_head(response.start, response, None, close=close_client))
                await within(writer.drain(), cfg.io_timeout)
                if body == "chunked":
                    await copy_chunked(up_reader, writer, cfg)
                elif body == "eof":
                    await copy_until_eof(up_reader, writer, cfg.io_timeout)
                elif isinstance(body, int) and body:
                    await copy_exact(up_reader, writer, body, cfg.io_timeout)
            finally:
                await close_writer(up_writer)
            if close_client:
                return

    async def _open_upstream(self, upstream: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = upstream.address
        try:
            return await within(asyncio.open_connection(host, port, limit=self.config.max_head_bytes),
                                self.config.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise HttpError(502, f"the {upstream.name} at {upstream.url} does not answer: "
                                 f"{exc or type(exc).__name__}; is the stack up? (aml-sandbox status)") from None

    # -- other hosts: bytes piped ------------------------------------------------------------------

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        up_reader, up_writer = await self._connect_public(host, port)
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await within(writer.drain(), self.config.io_timeout)
            activity = [time.monotonic()]
            await asyncio.gather(self._pipe(reader, up_writer, activity), self._pipe(up_reader, writer, activity),
                                 return_exceptions=True)
        finally:
            await close_writer(up_writer)

    async def _connect_public(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to one of the public addresses ``host`` resolves to (403 if any is not public)."""
        errors: list[str] = []
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                addresses = await public_addresses(host, port, self._resolve)
                for address in addresses[:4]:
                    try:
                        connection = await self._dial(address, port)
                        log.info("CONNECT %s:%d tunnelled to %s", host, port, address)
                        return connection
                    except OSError as exc:
                        errors.append(f"{address}: {exc or type(exc).__name__}")
        except DestinationRefused as exc:
            log.info("CONNECT %s:%d refused: %s", host, port, exc.reason)
            raise HttpError(403, str(exc)) from None
        except TimeoutError:
            raise HttpError(504, f"could not reach {host}:{port} within {self.config.connect_timeout:g} s") from None
        except OSError as exc:  # socket.gaierror: the name does not resolve
            raise HttpError(502, f"could not resolve {host}: {exc or type(exc).__name__}") from None
        raise HttpError(502, f"could not reach {host}:{port}: {'; '.join(errors)}")

    async def _pipe(self, source: asyncio.StreamReader, target: asyncio.StreamWriter, activity: list[float]) -> None:
        """Copy until end of stream; idle means nothing moved either way for ``idle_timeout``."""
        step = min(self.config.idle_timeout, 30.0)
        try:
            while True:
                try:
                    data = await within(source.read(CHUNK), step)
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
                await within(target.drain(), self.config.io_timeout)
        except BaseException:
            target.close()  # the other direction ends too
            raise


def _origin_form(target: str) -> str:
    """The request target as a path (``/a/b?q``), from origin form or an absolute ``https://`` URL."""
    if target.startswith("/"):
        return target
    if target.lower().startswith("https://"):
        parts = urlsplit(target)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raise HttpError(400, f"request target {target[:100]!r} is not a path")


def _path_style(target: str, account: str) -> str:
    """``/<container>/<blob>?<query>`` (origin form, or the path of an absolute URL) -> ``/<account>/...``."""
    return f"/{account}{_origin_form(target)}"


async def _open_tcp(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(address, port)
