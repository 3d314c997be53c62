"""Azure ML's discovery service: the base URL of every Azure ML service of the workspace.

azureml-core GETs the URL in ``AZUREML_DISCOVERY_SERVICE_ENDPOINT`` (or the workspace's
``properties.discoveryUrl``) **without** a token and caches the answer in ``~/.azureml/.discovery``; it
indexes the answer directly, so every key it may ask for must be present (a missing one is a KeyError
at ``Run.get_context()``, not an offline run). Here every service is this workspace service, at the base
URL the caller reached it by.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()
#: Azure ML's regional API hosts: clients reach them over HTTPS through the stack's proxy only.
API_HOST_SUFFIX = ".api.azureml.ms"

#: The path ``AZUREML_DISCOVERY_SERVICE_ENDPOINT`` names (Azure's is ``https://<region>.api.azureml.ms/discovery``).
DISCOVERY_PATH = "/discovery"
#: Every key Azure's discovery answers (azureml-core reads api, history, modelmanagement, experimentation,
#: hyperdrive, studio; pipelines, catalog and the rest are read by other azureml packages).
SERVICES = ("api", "catalog", "experimentation", "gallery", "history", "hyperdrive", "labeling",
            "modelmanagement", "pipelines", "studio")


@router.get(DISCOVERY_PATH)
def discovery(request: Request) -> dict[str, str]:
    """``{service: base URL}`` for every Azure ML service, all this service's own base URL."""
    base = str(request.base_url).rstrip("/")
    host = request.url.hostname or ""
    if host.endswith(API_HOST_SUFFIX):  # reached through the stack's proxy, which took it out of TLS
        base = f"https://{host}"
    return {name: base for name in SERVICES}
