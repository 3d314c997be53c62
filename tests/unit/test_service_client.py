"""The facade's service client (issue 16, item 14): it repeats only what is safe to send twice, and sends
the token on the reads that need it. A scripted transport plays the service; no sockets."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sandbox.config import Settings
from sandbox.errors import ServiceError, ServiceUnavailableError
from sandbox.service import client as client_module
from sandbox.service.client import ServiceClient

TOKEN = "k" * 43


class Service:
    """A transport that answers from a script: each step is a response or an exception to raise."""

    def __init__(self, *steps: Callable[[httpx.Request], httpx.Response]) -> None:
        self.steps = list(steps)
        self.seen: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        self.bodies.append(request.read())
        return self.steps.pop(0)(request) if len(self.steps) > 1 else self.steps[0](request)


def ok(body: object = None) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=body if body is not None else {"status": "ok"})


def fails(error: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def raise_it(request: httpx.Request) -> httpx.Response:
        raise error("scripted failure", request=request)
    return raise_it


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Service], ServiceClient]:
    monkeypatch.setattr(client_module, "RETRY_DELAYS", (0.0,) * len(client_module.RETRY_DELAYS))
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN + "\n")
    return lambda service: ServiceClient(Settings(home=home), transport=httpx.MockTransport(service))


def test_a_submit_whose_connection_broke_after_sending_is_not_sent_again(make: Callable[..., ServiceClient]) -> None:
    for error in (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        service = Service(fails(error), ok({"runId": "r"}))
        with pytest.raises(ServiceUnavailableError, match=r"was not sent again.*aml-sandbox runs list"):
            make(service).submit({"run_id": "r"})
        assert [r.method for r in service.seen] == ["POST"], f"{error.__name__}: the submit was repeated"


def test_a_cancel_is_not_repeated_either(make: Callable[..., ServiceClient]) -> None:
    service = Service(fails(httpx.RemoteProtocolError), ok())
    with pytest.raises(ServiceUnavailableError):
        make(service).cancel("r")
    assert len(service.seen) == 1


def test_a_submit_that_never_connected_is_sent_again(make: Callable[..., ServiceClient]) -> None:
    service = Service(fails(httpx.ConnectError), ok({"runId": "r"}))
    assert make(service).submit({"run_id": "r"}) == {"runId": "r"}
    assert len(service.seen) == 2


def test_reads_are_retried_after_a_broken_connection_then_give_one_clear_error(
        make: Callable[..., ServiceClient]) -> None:
    service = Service(fails(httpx.ReadError), ok({"runId": "r", "status": "Running"}))
    assert make(service).get_run("r")["status"] == "Running"
    assert len(service.seen) == 2
    down = Service(fails(httpx.ConnectError))
    with pytest.raises(ServiceUnavailableError, match=r"does not answer.*aml-sandbox up"):
        make(down).get_run("r")
    assert len(down.seen) == client_module.CONNECT_ATTEMPTS


def test_a_retried_snapshot_upload_sends_the_whole_archive_again(
        make: Callable[..., ServiceClient], tmp_path: Path) -> None:
    archive = tmp_path / "snapshot.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 1000)

    def read_then_break(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("the service went away mid-upload", request=request)

    service = Service(read_then_break, lambda request: httpx.Response(201, json={"size": 0}))
    make(service).upload_snapshot("0" * 8, archive)
    assert [r.method for r in service.seen] == ["PUT", "PUT"]
    assert service.bodies == [archive.read_bytes()] * 2, "the second attempt must send the whole file, not the rest"


def test_reads_of_run_definitions_and_files_send_the_token(make: Callable[..., ServiceClient]) -> None:
    service = Service(lambda request: httpx.Response(200, json={"runId": "r"}, headers={"X-Next-Offset": "3"}))
    client = make(service)
    client.get_run("r")
    client.read_file("r", "azureml-logs/70_driver_log.txt")
    with client.stream_file("r", "outputs/model.pt"):
        pass
    assert [r.headers.get("authorization") for r in service.seen] == [f"Bearer {TOKEN}"] * 3
    client.health()
    assert "authorization" not in service.seen[-1].headers, "health needs no token"


def test_a_missing_token_is_named_before_anything_is_sent(tmp_path: Path) -> None:
    service = Service(ok())
    client = ServiceClient(Settings(home=tmp_path), transport=httpx.MockTransport(service))
    with pytest.raises(ServiceError, match=rf"No stack token at {re.escape(str(tmp_path / 'token'))}.*aml-sandbox up"):
        client.get_run("r")
    assert service.seen == []
