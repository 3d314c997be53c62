"""The Azure CLI as a reference: ``az storage blob upload-batch`` in a virtual environment of its own.

``bench/.venv-az`` is created on first use with the pinned ``azure-cli`` from PyPI (about a minute and a
half) and reused after that. The CLI talks to the same Azurite through the connection string, given in
``AZURE_STORAGE_CONNECTION_STRING`` (not on the command line); its configuration folder is a temp
folder, telemetry and surveys off, so it neither reads nor writes ``~/.azure``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import pinned_venv

AZURE_CLI_VERSION = "2.91.0"
VENV = Path(__file__).resolve().parent / ".venv-az"
AZ = VENV / "bin" / "az"


def installed_version() -> str | None:
    if not AZ.exists():
        return None
    result = subprocess.run([str(AZ), "version", "--output", "json"], capture_output=True, text=True, check=False,
                            timeout=120, env=_base_env(VENV / "config"))
    if result.returncode != 0:
        return None
    try:
        return json.loads(result.stdout).get("azure-cli")
    except json.JSONDecodeError:
        return None


def ensure(log: Callable[[str], None] = print) -> float | None:
    """Create ``bench/.venv-az`` with ``azure-cli==AZURE_CLI_VERSION`` unless it is there; return the install time."""
    return pinned_venv(VENV, f"azure-cli=={AZURE_CLI_VERSION}", installed_version, AZURE_CLI_VERSION, log,
                       note="about a minute and a half, once")


def _base_env(config_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AZURE_CONFIG_DIR": str(config_dir),
        "AZURE_CORE_COLLECT_TELEMETRY": "no",
        "AZURE_CORE_SURVEY_MESSAGE": "no",
        "AZURE_CORE_ONLY_SHOW_ERRORS": "yes",
        "AZURE_CORE_NO_COLOR": "yes",
    }


def upload_batch(source: Path, container: str, destination_path: str, connection_string: str,
                 config_dir: Path) -> float:
    """``az storage blob upload-batch`` of ``source``; return the wall time of the whole command."""
    env = {**_base_env(config_dir), "AZURE_STORAGE_CONNECTION_STRING": connection_string}
    command = [str(AZ), "storage", "blob", "upload-batch", "--destination", container, "--source", str(source),
               "--destination-path", destination_path, "--overwrite", "--no-progress", "--output", "none"]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=3600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"az storage blob upload-batch exited with {result.returncode}: {result.stderr[-2000:]}")
    return elapsed
