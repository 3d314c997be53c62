"""Azurite, the Azure Storage emulator that stands in for the workspace's blob storage.

This folder holds the offline image recipe (``Dockerfile``: Debian + Node.js + ``azurite`` from npm);
this module holds the version, the command line that docker-compose.yml also uses, and a readiness
check that makes a real request through azure-storage-blob.
"""

from __future__ import annotations

import time
from pathlib import Path

from sandbox.config import Settings
from sandbox.errors import StorageUnavailableError
from sandbox.images import DebianBaseRecipe, DockerfileRecipe

#: Pinned: the last release that runs on Debian bookworm's Node.js 18 (3.36 needs Node 21+).
AZURITE_VERSION = "3.35.0"
OFFICIAL_IMAGE = f"mcr.microsoft.com/azure-storage/azurite:{AZURITE_VERSION}"
IMAGE_ALIAS = f"aml-sandbox/azurite:{AZURITE_VERSION}"
BLOB_PORT = 10000

#: Flags (also in docker-compose.yml): --skipApiVersionCheck lets azure-storage-blob releases newer
#: than this Azurite talk to it; --disableProductStyleUrl takes the account from the path, which
#: a compose-network host name (``azurite``) needs; --disableTelemetry keeps it offline.
COMMAND = (
    "azurite-blob", "--blobHost", "0.0.0.0", "--blobPort", str(BLOB_PORT), "--location", "/data",
    "--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry", "--loose",
)


def recipe(base: DebianBaseRecipe | None = None) -> DockerfileRecipe:
    return DockerfileRecipe(
        name="azurite",
        repository="aml-sandbox/azurite",
        context=Path(__file__).resolve().parent,
        base=base or DebianBaseRecipe(),
        build_args=(("AZURITE_VERSION", AZURITE_VERSION),),
        official=OFFICIAL_IMAGE,
        alias=IMAGE_ALIAS,
    )


def probe(settings: Settings, *, timeout: float = 3.0) -> str | None:
    """One real request (list containers); None when Azurite answers, else the reason it does not."""
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(
        settings.connection_string, connection_timeout=timeout, read_timeout=timeout, retry_total=0
    )
    try:
        next(iter(client.list_containers(results_per_page=1)), None)
    except AzureError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        client.close()
    return None


def wait_until_ready(settings: Settings, *, timeout: float = 60.0) -> None:
    """Block until Azurite answers a real request, or raise StorageUnavailableError."""
    deadline = time.monotonic() + timeout
    reason = "no answer yet"
    while time.monotonic() < deadline:
        reason = probe(settings) or ""
        if not reason:
            return
        time.sleep(0.5)
    raise StorageUnavailableError(settings.blob_endpoint, f"still failing after {timeout:.0f} s: {reason}")
