"""The stack's CA and HTTPS proxy, in-process: no Docker, local fake upstreams on random ports."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import socketserver
import ssl
import stat
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store

from sandbox.errors import ConfigurationError
from sandbox.proxy.ca import StackCA
from sandbox.proxy.server import ProxyConfig, ProxyServer

BLOB_HOST = "devstoreaccount1.blob.core.windows.net"


# -- the CA ----------------------------------------------------------------------------------------


def test_the_ca_is_made_once_with_a_user_only_key_and_a_bundle_of_public_roots_plus_it(tmp_path: Path) -> None:
    ca = StackCA.ensure(tmp_path)
    folder = tmp_path / "proxy"
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    cert_pem = (folder / "ca.pem").read_bytes()
    bundle = (folder / "ca-bundle.pem").read_bytes()
    assert bundle.startswith(Path(certifi.where()).read_bytes().rstrip(b"\n"))
    assert bundle.rstrip().endswith(cert_pem.rstrip())
    assert x509.load_pem_x509_certificate(cert_pem) == ca.cert
    again = StackCA.ensure(tmp_path)
    assert again.cert == ca.cert, "a second start must keep the CA clients already trust"
    assert (folder / "ca-bundle.pem").read_bytes() == bundle


def test_a_leaf_for_a_blob_host_verifies_against_the_bundle(tmp_path: Path) -> None:
    ca = StackCA.ensure(tmp_path)
    chain_pem, _key = ca.leaf_pem(BLOB_HOST)
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    with warnings.catch_warnings():  # one of certifi's public roots has a serial number cryptography frowns on
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        roots = x509.load_pem_x509_certificates(ca.files.bundle.read_bytes())
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(BLOB_HOST))
    chain = verifier.verify(leaf, intermediates)  # webpki rules, as rustls (the dataset engine) applies them
    assert chain[-1] == ca.cert
    other = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName("other.blob.core.windows.net"))
    with pytest.raises(x509.verification.VerificationError):
        other.verify(leaf, intermediates)


def test_a_corrupt_ca_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    StackCA.ensure(tmp_path)
    (tmp_path / "proxy" / "ca.key").write_bytes(b"not a key")
    with pytest.raises(ValueError, match=r"ca\.key does not hold the stack's CA.*delete"):
        StackCA.ensure(tmp_path)


# -- fixtures: the proxy in a thread, a fake Azurite, an echo server --------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> StackCA:
    return StackCA.ensure(tmp_path_factory.mktemp("home"))


@contextlib.contextmanager
def running(config: ProxyConfig, ca: StackCA, **options: Any) -> Iterator[ProxyServer]:
    loop = asyncio.new_event_loop()
    server = ProxyServer(config, ca, **options)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, name="proxy", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class FakeAzurite(http.server.ThreadingHTTPServer):
    """Records each request (method, path, headers, body) and answers like a blob service would."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.blobs: dict[str, bytes] = {}
        super().__init__(("127.0.0.1", 0), _FakeHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeAzurite

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.read(2)
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _record(self, body: bytes = b"") -> None:
        self.server.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                 "body": body})

    def do_PUT(self) -> None:
        body = self._body()
        self._record(body)
        self.server.blobs[self.path.split("?")[0]] = body
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._record()
        data = self.server.blobs.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._record()
        data = self.server.blobs.get(self.path.split("?")[0], b"")
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()


@pytest.fixture
def azurite() -> Iterator[FakeAzurite]:
    server = FakeAzurite()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def config(ca: StackCA, upstream: str = "http://127.0.0.1:9", **changes: Any) -> ProxyConfig:
    return replace(ProxyConfig(home=ca.files.folder.parent, port=0, blob_upstream=upstream), **changes)


def session(proxy: ProxyServer, ca: StackCA) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.proxies = {"https": f"http://127.0.0.1:{proxy.port}"}
    http.verify = str(ca.files.bundle)
    return http


def raw_request(port: int, data: bytes, *, read: int = 4096) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while len(answer) < read and (chunk := sock.recv(read)):
                answer += chunk
        return answer


# -- blob hosts: TLS terminated, requests forwarded path-style -------------------------------------


def test_a_blob_host_is_served_by_the_local_storage_with_the_account_moved_into_the_path(
        ca: StackCA, azurite: FakeAzurite) -> None:
    with running(config(ca, azurite.url), ca) as proxy, session(proxy, ca) as http:
        url = f"https://{BLOB_HOST}/azureml/ExperimentRun/dcid.r1/outputs/a.txt?sv=2021&sig=abc"
        put = http.put(url, data=b"hello", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10)
        assert put.status_code == 201
        head = http.head(url, timeout=10)  # the same kept-alive TLS connection
        get = http.get(url, timeout=10)
    assert head.headers["Content-Length"] == "5"
    assert get.content == b"hello"
    first = azurite.seen[0]
    assert first["method"] == "PUT"
    assert first["path"] == "/devstoreaccount1/azureml/ExperimentRun/dcid.r1/outputs/a.txt?sv=2021&sig=abc"
    assert first["body"] == b"hello"
    assert first["headers"]["x-ms-blob-type"] == "BlockBlob"
    assert first["headers"]["Host"] == azurite.url.removeprefix("http://")
    assert [s["method"] for s in azurite.seen] == ["PUT", "HEAD", "GET"]


def test_an_azure_ml_api_host_is_served_by_the_workspace_service_with_its_host_and_path_as_sent(
        ca: StackCA, azurite: FakeAzurite) -> None:
    # The fake server plays the workspace service here: requests reach it in plain HTTP, path and Host unchanged.
    with running(config(ca, service_upstream=azurite.url), ca) as proxy, session(proxy, ca) as http:
        url = "https://eastus.api.azureml.ms/history/v1.0/subscriptions/s/runs/r1?x=1"
        assert http.put(url, data=b'{"tags": {}}', timeout=10).status_code == 201
    first = azurite.seen[0]
    assert first["method"] == "PUT" and first["path"] == "/history/v1.0/subscriptions/s/runs/r1?x=1"
    assert first["body"] == b'{"tags": {}}'
    assert first["headers"]["Host"] == "eastus.api.azureml.ms"


def test_an_api_host_while_the_service_is_down_answers_502_naming_it(ca: StackCA) -> None:
    with running(config(ca, service_upstream="http://127.0.0.1:9"), ca) as proxy, session(proxy, ca) as http:
        answer = http.get("https://westeurope.api.azureml.ms/discovery", timeout=20)
    assert answer.status_code == 502 and "workspace service at http://127.0.0.1:9 does not answer" in answer.text


def test_a_chunked_upload_and_a_large_body_are_streamed_through(ca: StackCA, azurite: FakeAzurite) -> None:
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)  # ~3 MiB, not a multiple of the copy size
    with running(config(ca, azurite.url), ca) as proxy, session(proxy, ca) as http:
        url = f"https://{BLOB_HOST}/c/big.bin?sig=x"
        assert http.put(url, data=iter([big[:1000], big[1000:]]), timeout=30).status_code == 201  # chunked
        assert http.get(url, timeout=30).content == big
    assert azurite.seen[0]["headers"].get("Transfer-Encoding") == "chunked"


def test_the_leaf_is_refused_by_a_client_that_does_not_trust_the_stack_ca(ca: StackCA, azurite: FakeAzurite) -> None:
    with running(config(ca, azurite.url), ca) as proxy, session(proxy, ca) as http:
        http.verify = certifi.where()
        with pytest.raises(requests.exceptions.SSLError):
            http.get(f"https://{BLOB_HOST}/c/b?sig=x", timeout=10)
    assert azurite.seen == []


def test_a_blob_request_while_the_storage_is_down_answers_502_naming_it(ca: StackCA) -> None:
    with running(config(ca, "http://127.0.0.1:9"), ca) as proxy, session(proxy, ca) as http:
        answer = http.get(f"https://{BLOB_HOST}/c/b?sig=x", timeout=20)
    assert answer.status_code == 502
    assert "Azurite at http://127.0.0.1:9" in answer.text


# -- other hosts ------------------------------------------------------------------------------------


class FakeNetwork:
    """A resolver answering from a table and a dialler that records each address and reaches the local echo
    server instead: no packet leaves the machine."""

    def __init__(self, echo_port: int, names: dict[str, list[str]] | None = None) -> None:
        self.echo_port = echo_port
        self.names = names or {}
        self.resolved: list[tuple[str, int]] = []
        self.dialled: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append((host, port))
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[host]

    async def dial(self, address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.dialled.append((address, port))
        return await asyncio.open_connection("127.0.0.1", self.echo_port)

    def options(self) -> dict[str, Any]:
        return {"resolve": self.resolve, "dial": self.dial}


#: A public address (Azure's): the fake dialler never sends it a packet.
PUBLIC = "20.150.1.2"


def test_a_public_host_is_tunnelled_unchanged_to_the_address_the_proxy_checked(ca: StackCA, echo: int) -> None:
    network = FakeNetwork(echo, {"files.example.com": [PUBLIC, "2603:1030::7"]})
    with running(config(ca), ca, **network.options()) as proxy:
        expected = b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01 any bytes at all"
        answer = raw_request(proxy.port, b"CONNECT files.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"
                             + b"\x16\x03\x01 any bytes at all", read=len(expected))
    assert answer == expected
    assert network.resolved == [("files.example.com", 443)], "resolved once: the name is never looked up again"
    assert network.dialled == [(PUBLIC, 443)], "dialled by the checked address, not by the name"


def test_a_public_ip_address_is_dialled_as_it_is_without_resolving(ca: StackCA, echo: int) -> None:
    network = FakeNetwork(echo)
    with running(config(ca), ca, **network.options()) as proxy:
        answer = raw_request(proxy.port, b"CONNECT [2603:1030::7]:443 HTTP/1.1\r\n\r\n", read=12)
    assert answer.startswith(b"HTTP/1.1 200")
    assert (network.resolved, network.dialled) == ([], [("2603:1030::7", 443)])


@pytest.mark.parametrize(("target", "names", "why"), [
    # single-label names: the stack's own compose services and the machine itself, never resolved
    ("azurite:10000", {}, "single-label name"),
    ("workspace:8790", {}, "single-label name"),
    ("proxy:8791", {}, "single-label name"),
    ("localhost:22", {}, "single-label name"),
    ("api.localhost:443", {}, "the machine itself"),
    # IP addresses that are not public
    ("127.0.0.1:8790", {}, "loopback"),
    ("10.1.2.3:443", {}, "private network"),
    ("172.17.0.1:2375", {}, "private network"),
    ("192.168.1.1:80", {}, "private network"),
    ("169.254.169.254:80", {}, "link-local"),
    ("168.63.129.16:80", {}, "wire server"),
    ("100.64.0.1:443", {}, "not a public internet address"),
    ("0.0.0.0:8790", {}, "unspecified address"),
    ("[::]:8790", {}, "unspecified address"),
    ("224.0.0.1:443", {}, "multicast"),
    ("[::1]:8790", {}, "loopback"),
    ("[fd00::1]:443", {}, "private network"),
    ("[fe80::1]:443", {}, "link-local"),
    ("[::ffff:127.0.0.1]:8790", {}, "carries the IPv4 address 127.0.0.1"),
    ("[::ffff:a9fe:a9fe]:80", {}, "carries the IPv4 address 169.254.169.254"),
    ("[64:ff9b::a00:5]:443", {}, "carries the IPv4 address 10.0.0.5"),
    ("[2002:a00:5::1]:443", {}, "carries the IPv4 address 10.0.0.5"),
    # names whose answers include an address that is not public (one is enough)
    ("metadata.example.com:80", {"metadata.example.com": ["169.254.169.254"]}, "resolves to 169.254.169.254"),
    ("mixed.example.com:443", {"mixed.example.com": [PUBLIC, "172.18.0.3"]}, "resolves to 172.18.0.3"),
    ("v6.example.com:443", {"v6.example.com": ["fd12:3456::1"]}, "resolves to fd12:3456::1"),
    ("mapped.example.com:443", {"mapped.example.com": ["::ffff:10.0.0.5"]}, "resolves to ::ffff:10.0.0.5"),
])
def test_a_tunnel_to_anything_but_a_public_address_is_refused_naming_the_host_and_why(
        ca: StackCA, echo: int, target: str, names: dict[str, list[str]], why: str) -> None:
    network = FakeNetwork(echo, names)
    with running(config(ca), ca, **network.options()) as proxy:
        answer = raw_request(proxy.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    text = answer.decode()
    assert target in text and why in text, text
    assert network.dialled == []
    if not names:
        assert network.resolved == [], "a name refused by its form, or an address, is never resolved"


def test_a_public_looking_name_resolving_to_a_private_address_is_refused(ca: StackCA, echo: int) -> None:
    network = FakeNetwork(echo, {"storage.example.com": ["10.0.0.5"]})
    with running(config(ca), ca, **network.options()) as proxy:
        answer = raw_request(proxy.port, b"CONNECT storage.example.com:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"storage.example.com:443 is refused: 'storage.example.com' resolves to 10.0.0.5" in answer
    assert b"private network" in answer
    assert network.dialled == []


def test_a_name_that_does_not_resolve_answers_502_naming_it(ca: StackCA, echo: int) -> None:
    network = FakeNetwork(echo)
    with running(config(ca), ca, **network.options()) as proxy:
        answer = raw_request(proxy.port, b"CONNECT nowhere.example.com:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"could not resolve nowhere.example.com" in answer


def test_offline_refuses_other_hosts_and_still_serves_blob_hosts(ca: StackCA, echo: int,
                                                                 azurite: FakeAzurite) -> None:
    with running(config(ca, azurite.url, offline=True), ca) as proxy:
        answer = raw_request(proxy.port, f"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with session(proxy, ca) as http:
            put = http.put(f"https://{BLOB_HOST}/c/b?sig=x", data=b"1", timeout=10)
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"AML_SANDBOX_OFFLINE=1" in answer and f"127.0.0.1:{echo}".encode() in answer
    assert put.status_code == 201


def test_offline_is_read_from_the_environment_and_a_bad_value_names_the_variable(tmp_path: Path) -> None:
    env = {"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_OFFLINE": "1", "AML_SANDBOX_PROXY_LISTEN_PORT": "8791",
           "AML_SANDBOX_PROXY_PORT": "18791"}
    loaded = ProxyConfig.from_env(env)
    assert (loaded.offline, loaded.port, loaded.listen_host) == (True, 8791, "127.0.0.1")
    assert ProxyConfig.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_PROXY_PORT": "18791"}).port == 18791
    with pytest.raises(ConfigurationError, match="AML_SANDBOX_OFFLINE='yes'"):
        ProxyConfig.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_OFFLINE": "yes"})
    with pytest.raises(ConfigurationError, match="AML_SANDBOX_PROXY_BLOB_UPSTREAM='azurite:10000'"):
        ProxyConfig.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_PROXY_BLOB_UPSTREAM": "azurite:10000"})


# -- bounds and malformed requests ------------------------------------------------------------------


def test_a_huge_header_is_refused_before_anything_is_forwarded(ca: StackCA, echo: int) -> None:
    with running(config(ca), ca) as proxy:
        huge = b"X-Big: " + b"a" * (proxy.config.max_head_bytes + 10) + b"\r\n"
        answer = raw_request(proxy.port, f"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n".encode() + huge + b"\r\n")
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(proxy.config.max_headers + 1))
        too_many = raw_request(proxy.port, f"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n".encode() + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert too_many.startswith(b"HTTP/1.1 431 ")


def test_a_huge_header_inside_the_tls_connection_is_refused(ca: StackCA, azurite: FakeAzurite) -> None:
    with running(config(ca, azurite.url), ca) as proxy, session(proxy, ca) as http:
        answer = http.get(f"https://{BLOB_HOST}/c/b?sig=x", headers={"X-Big": "a" * 70_000}, timeout=10)
    assert answer.status_code == 431
    assert azurite.seen == []


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
    (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", b"405"),
    (b"CONNECT no-port HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT a.b:99999 HTTP/1.1\r\n\r\n", b"400"),
    (b"NOT A REQUEST LINE\r\n\r\n", b"400"),
])
def test_plain_requests_and_malformed_connects_are_answered_by_the_proxy(ca: StackCA, request_bytes: bytes,
                                                                         status: bytes) -> None:
    with running(config(ca), ca) as proxy:
        answer = raw_request(proxy.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]


def test_a_request_with_both_length_and_chunked_is_refused(ca: StackCA, azurite: FakeAzurite) -> None:
    with running(config(ca, azurite.url), ca) as proxy:
        context = ssl.create_default_context(cafile=str(ca.files.bundle))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"CONNECT {BLOB_HOST}:443 HTTP/1.1\r\nHost: {BLOB_HOST}:443\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            with context.wrap_socket(sock, server_hostname=BLOB_HOST) as tls:
                tls.sendall(b"PUT /c/b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"0\r\n\r\n")
                answer = tls.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert azurite.seen == []
