"""``python -m sandbox.service``: the workspace service as docker compose starts it.

Settings come from the environment the compose file gives (state folder at the same absolute path as
on the host, Azurite at ``http://azurite:10000/...``, the run store on the ``service-data`` volume).
It refuses to start with an empty or short token, before it opens anything.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import uvicorn

from sandbox.config import Settings, _env_int
from sandbox.container_spec import API_HOST, RUN_NETWORK_NAME, RunConnection
from sandbox.docker_engine import DockerEngine
from sandbox.errors import SandboxError
from sandbox.local_runner import MAX_RUN_BYTES, LocalRunner
from sandbox.service.api import Services, create_api
from sandbox.service.auth import ensure_token
from sandbox.service.executor import Executor
from sandbox.service.pages import add_pages
from sandbox.service.run_token import RunTokens
from sandbox.service.security import LISTEN_PORT, host_allowlist
from sandbox.service.store import SqliteRunStore
from sandbox.storage import BlobStore

log = logging.getLogger("aml_sandbox.service")


def build(settings: Settings, db_path: Path, listen_port: int) -> tuple:
    token = ensure_token(settings.home)
    engine = DockerEngine()
    if not engine.available():
        raise SandboxError(
            "The workspace service cannot reach the Docker engine. Mount the socket into its container "
            "(volumes: - /var/run/docker.sock:/var/run/docker.sock, as docker-compose.yml does).")
    blobs = BlobStore(settings)
    store = SqliteRunStore(db_path)
    disk_gib = _env_int(os.environ, "AML_SANDBOX_RUN_DISK_GIB", MAX_RUN_BYTES // 1024**3)
    connection = RunConnection.from_env(os.environ, settings.home)
    runner = LocalRunner(engine, blobs, settings, max_run_bytes=disk_gib * 1024**3, connection=connection)
    executor = Executor(store, runner, settings, RunTokens(token))
    services = Services(store, executor, runner, blobs, token)
    # Runs name the service by its compose name on the run network (container_spec.SERVICE_URL).
    allowed = host_allowlist(settings, listen_port=listen_port, names=(RUN_NETWORK_NAME,) if connection else ())
    if connection:  # azureml-core in runs reaches the service as Azure ML's API host, through the stack's proxy
        allowed |= {API_HOST}
    app = create_api(services, allowed_hosts=allowed)
    add_pages(app, services)
    return app, executor


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "docker", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        db_path = Path(os.environ.get("AML_SANDBOX_DB", str(settings.home / "service" / "runs.db")))
        port = _env_int(os.environ, "AML_SANDBOX_SERVICE_LISTEN_PORT", LISTEN_PORT)
        app, executor = build(settings, db_path, port)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    executor.keep_tidy(threading.Event())
    recovered = executor.recover()
    if recovered:
        log.info("picked up %d unfinished runs: %s", len(recovered), ", ".join(recovered))
    uvicorn.run(app, host=os.environ.get("AML_SANDBOX_SERVICE_LISTEN_HOST", "0.0.0.0"), port=port,
                log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
