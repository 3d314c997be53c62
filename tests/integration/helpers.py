"""Small helpers for run tests: write a script, submit it, poll statuses."""

from __future__ import annotations

import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from sandbox import aml

ENV = "AzureML-PyTorch-1.6-CPU"


def experiment_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


def submit(folder: Path, script: str, arguments: list[Any] | None = None, *, compute: str = "cpu-cluster",
           experiment: str | None = None, environment: str = ENV) -> Any:
    ws = aml.Workspace.from_config()
    config = aml.ScriptRunConfig(source_directory=str(folder), script=script, arguments=arguments or [],
                                 compute_target=compute)
    config.run_config.environment = ws.environments[environment]
    return aml.Experiment(ws, experiment or experiment_name()).submit(config)


def submit_with(folder: Path, script: str, environment: Any, experiment: str) -> Any:
    """Submit ``script`` from ``folder`` in ``environment`` (an ``Environment``) on cpu-cluster."""
    ws = aml.Workspace.from_config()
    config = aml.ScriptRunConfig(source_directory=str(folder), script=script, compute_target="cpu-cluster",
                                 environment=environment)
    return aml.Experiment(ws, experiment).submit(config)


def wait_for_status(run: Any, wanted: set[str], timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    status = run.get_status()
    while status not in wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run.id} stayed {status}, wanted one of {sorted(wanted)}")
        time.sleep(0.3)
        status = run.get_status()
    return status


def driver_log(run: Any) -> str:
    data, _, _ = run._client.read_file(run.id, "azureml-logs/70_driver_log.txt", 0)
    return data.decode("utf-8")


def wait_for_log_line(run: Any, text: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            log = driver_log(run)
        except Exception:
            log = ""
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in the driver log of {run.id}:\n{log}")
        time.sleep(0.3)


def page(url: str) -> str:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.text


def tcp_listeners(port: int) -> set[str]:
    """The local addresses on which this machine listens on ``port`` (from /proc/net/tcp and tcp6).

    Read from the kernel's table rather than probed: no packet is sent to any address but loopback.
    """
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, state = fields[1], fields[3]
            host, port_hex = address.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(host)
            words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
            packed = b"".join(words)
            if width == 8:
                found.add(".".join(str(b) for b in packed))
            else:
                import ipaddress

                found.add(str(ipaddress.IPv6Address(packed)))
    return found
