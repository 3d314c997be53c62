"""HTTP/1.1 as the proxy speaks it: bounded message heads, request and response framing, streamed copies.

Nothing here knows about hosts or Azure: ``server`` decides where a message goes, this module reads and
relays it. Heads are bounded in size and header count (``Bounds``), every read and write has a timeout,
bodies are copied in chunks with back-pressure, and a request that frames its body two ways (``Content-Length``
and ``Transfer-Encoding``) is refused (request smuggling).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


class Bounds(Protocol):
    """The limits reading a message obeys (``ProxyConfig`` has them)."""

    @property
    def max_head_bytes(self) -> int: ...

    @property
    def max_headers(self) -> int: ...

    @property
    def io_timeout(self) -> float: ...


TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: Headers that concern one hop only: never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
                        "te", "trailer", "upgrade", "expect"})
CHUNK = 64 * 1024


class HttpError(Exception):
    """A request the proxy answers itself with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Payload Too Large", 431: "Request Header Fields Too Large", 501: "Not Implemented",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


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


# -- HTTP/1.1 framing --------------------------------------------------------------------------


async def read_head(reader: asyncio.StreamReader, cfg: Bounds, timeout: float) -> Head | None:
    """One message head, bounded in size and header count; None on a clean end of stream before it."""
    try:
        raw = await within(reader.readuntil(b"\r\n\r\n"), timeout)
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
        if not sep or not TOKEN.match(name) or "\r" in line or "\n" in line or "\0" in line:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    if "\r" in lines[0] or "\n" in lines[0] or "\0" in lines[0]:
        raise HttpError(400, "malformed start line")
    return Head(lines[0], headers)


async def read_response_head(reader: asyncio.StreamReader, cfg: Bounds) -> Head:
    while True:
        head = await read_head(reader, cfg, cfg.io_timeout)
        if head is None:
            raise asyncio.IncompleteReadError(b"", None)
        parts = head.start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
            raise HttpError(502, f"Azurite answered a malformed status line {head.start[:80]!r}")
        if not parts[1].startswith("1"):
            return head  # interim answers (100 Continue) are dropped: the proxy answered Expect itself


def request_line(head: Head) -> tuple[str, str, str]:
    parts = head.start.split(" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]) or parts[2] not in {"HTTP/1.1", "HTTP/1.0"}:
        raise HttpError(400, f"malformed request line {head.start[:100]!r} (expected METHOD TARGET HTTP/1.1)")
    return parts[0], parts[1], parts[2]


def request_framing(head: Head) -> tuple[int, bool]:
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


def response_framing(method: str, head: Head) -> int | str:
    status = int(head.start.split(" ", 2)[1])
    if method == "HEAD" or status in (204, 304):
        return 0
    codings = [c.strip().lower() for v in head.get_all("Transfer-Encoding") for c in v.split(",") if c.strip()]
    if codings:
        return "chunked" if codings[-1] == "chunked" else "eof"
    lengths = head.get_all("Content-Length")
    return _content_length(lengths) if lengths else "eof"


def keeps_alive(head: Head, version: str) -> bool:
    tokens = {t.strip().lower() for v in head.get_all("Connection") for t in v.split(",")}
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens


def forward_head(start: str, head: Head, host: str | None, *, close: bool = False) -> bytes:
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


def authority(target: str) -> tuple[str, int]:
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


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await`` with a deadline (``asyncio.timeout``: no inner task, so cancellation reaches the read at once)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int, timeout: float) -> None:
    while count > 0:
        data = await within(reader.read(min(count, CHUNK)), timeout)
        if not data:
            raise asyncio.IncompleteReadError(b"", count)
        writer.write(data)
        await within(writer.drain(), timeout)
        count -= len(data)


async def copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
    while data := await within(reader.read(CHUNK), timeout):
        writer.write(data)
        await within(writer.drain(), timeout)


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: Bounds) -> None:
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
                    await within(writer.drain(), cfg.io_timeout)
                    return
        await copy_exact(reader, writer, size, cfg.io_timeout)
        end = await within(reader.readexactly(2), cfg.io_timeout)
        if end != b"\r\n":
            raise HttpError(400, "a chunk did not end with CRLF")
        writer.write(end)


async def _line(reader: asyncio.StreamReader, cfg: Bounds) -> bytes:
    try:
        line = await within(reader.readuntil(b"\r\n"), cfg.io_timeout)
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"a chunk line is over {cfg.max_head_bytes} bytes") from None
    if len(line) > 4096 + 2 and not line.startswith(b"\r\n"):
        raise HttpError(400, "a chunk size line is over 4 KiB")
    return line


async def answer(writer: asyncio.StreamWriter, status: int, message: str, *, close: bool,
                  content_type: str = "text/plain; charset=utf-8") -> None:
    body = (message + ("\n" if content_type.startswith("text/") else "")).encode("utf-8")
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    writer.write(head.encode("latin-1") + body)
    with contextlib.suppress(Exception):
        await within(writer.drain(), 10)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await within(writer.wait_closed(), 5)
