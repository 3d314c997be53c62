"""The run container as a value: what it runs, what it sees of the host, and the limits it runs under.

Hardened: uid 1000, no capabilities, ``no-new-privileges``, no Docker socket, no storage keys; a PID
limit and ``nproc``/``nofile`` ulimits so a fork bomb or a descriptor leak stays inside the run; memory
and CPUs of the compute target's VM size. Bind mounts are a list (the same dataset may be mounted under
two input names).

A run reaches the workspace service as a run on Azure does (:class:`RunConnection`): on the stack's run
network, shared with the service and the proxy only, with Azure's ``AZUREML_*`` variables, a run token
scoped to the run's own tree, MLflow's tracking variables, and ``HTTPS_PROXY`` plus the stack's CA bundle
for the blob URLs azureml-core rebuilds as ``https://<account>.blob.core.windows.net``.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.config import ComputeDefinition, Settings
from sandbox.docker_engine import MANAGED_LABEL
from sandbox.fake_mount import MountSpec, dataset_environment_vars
from sandbox.run_definition import RunDefinition
from sandbox.run_folder import RunFolder

if TYPE_CHECKING:  # pragma: no cover
    from docker.types import Mount

RUN_ID_LABEL = "aml-sandbox.run-id"
EXPERIMENT_LABEL = "aml-sandbox.experiment"
PROJECT_LABEL = "aml-sandbox.project"
SETUP_MOUNT = "/azureml-setup"
CONTROL_MOUNT = "/azureml-run"
SITE_PATH = f"{SETUP_MOUNT}/aml_sandbox_runtime/site"
RUN_UID = 1000
DRIVER_COMMAND = ("import sys; sys.path.insert(0, '/azureml-setup'); "
                  "from aml_sandbox_runtime.driver import main; sys.exit(main())")
#: Processes and threads in one run container (the cgroup's pids limit: a fork bomb stops here).
PIDS_LIMIT = 4096
#: ``ulimit -u``. The kernel counts it per uid across the host (all runs share uid 1000), so it is a
#: backstop above PIDS_LIMIT; the pids limit is what bounds one run.
NPROC_LIMIT = 16384
#: ``ulimit -n``: open files per process.
NOFILE_LIMIT = 65536
#: Where a run finds the stack's CA bundle (public roots and the stack's CA), bound read-only.
CA_BUNDLE_MOUNT = "/etc/aml-sandbox/ca-bundle.pem"
#: The names runs use for the two services on the run network (compose service names), and their ports.
RUN_NETWORK_NAME = "workspace"
SERVICE_URL = f"http://{RUN_NETWORK_NAME}:8790"
PROXY_URL = "http://proxy:8791"
#: Azure ML's regional API host, as a run on Azure reaches run history (``https://<region>.api.azureml.ms``):
#: through the proxy, which terminates TLS with the stack's CA and sends it to the workspace service. The
#: region is the local workspace's location.
API_HOST = "local.api.azureml.ms"
API_URL = f"https://{API_HOST}"


@dataclass(frozen=True)
class RunConnection:
    """How runs reach the stack: the run network and, on it, the workspace service, the proxy and the CA bundle."""

    network: str
    ca_bundle: Path
    service_url: str = SERVICE_URL
    proxy_url: str = PROXY_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: Path) -> RunConnection | None:
        """The connection the compose stack gives (``AML_SANDBOX_RUN_NETWORK``); None outside it."""
        network = env.get("AML_SANDBOX_RUN_NETWORK", "").strip()
        if not network:
            return None
        return cls(network=network, ca_bundle=home / "proxy" / "ca-bundle.pem")

    def environment(self, definition: RunDefinition, credentials: RunCredentials) -> dict[str, str]:
        """Azure's run variables that point azureml-core and MLflow at the service, and the proxy variables."""
        ws = definition.workspace
        scope = (f"subscriptions/{ws['subscription_id']}/resourceGroups/{ws['resource_group']}/providers/"
                 f"Microsoft.MachineLearningServices/workspaces/{ws['name']}")
        no_proxy = "workspace,localhost,127.0.0.1"
        return {
            # azureml-core (and azureml-mlflow, which always builds https:// URLs) as on Azure, over TLS;
            # plain MLflow straight to the service on the run network.
            "AZUREML_SERVICE_ENDPOINT": API_URL,
            "AZUREML_DISCOVERY_SERVICE_ENDPOINT": f"{API_URL}/discovery",
            "AZUREML_RUN_TOKEN": credentials.token,
            "AZUREML_EXPERIMENT_ID": credentials.experiment_id,
            "MLFLOW_TRACKING_URI": f"{self.service_url}/mlflow/v1.0/{scope}",
            "MLFLOW_TRACKING_TOKEN": credentials.token,
            "MLFLOW_RUN_ID": definition.run_id,
            "MLFLOW_EXPERIMENT_NAME": definition.experiment,
            "MLFLOW_EXPERIMENT_ID": credentials.experiment_id,
            "HTTPS_PROXY": self.proxy_url, "https_proxy": self.proxy_url,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy,
            "REQUESTS_CA_BUNDLE": CA_BUNDLE_MOUNT, "SSL_CERT_FILE": CA_BUNDLE_MOUNT,
        }


@dataclass(frozen=True)
class RunCredentials:
    """What the service issues a run at start: its run token and its experiment's id."""

    token: str = field(repr=False)
    experiment_id: str


def working_directory(definition: RunDefinition) -> str:
    """Azure's legacy working directory on the node (PARITY.md 7)."""
    return (f"/mnt/batch/tasks/shared/LS_root/jobs/{definition.workspace['name']}/azureml/{definition.run_id}"
            f"/mounts/workspaceblobstore/azureml/{definition.run_id}")


@dataclass(frozen=True)
class BindMount:
    """A host path bound into the container."""

    source: str
    target: str
    read_only: bool

    def to_docker(self) -> Mount:
        from docker.types import Mount

        return Mount(self.target, self.source, type="bind", read_only=self.read_only)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything ``containers.create`` gets for one run."""

    image: str
    command: list[str]
    name: str
    working_dir: str
    environment: dict[str, str]
    mounts: list[BindMount]
    labels: dict[str, str]
    memory_bytes: int
    nano_cpus: int
    shm_size: str
    network: str | None = None
    user: str = f"{RUN_UID}:{RUN_UID}"
    pids_limit: int = PIDS_LIMIT
    nproc: int = NPROC_LIMIT
    nofile: int = NOFILE_LIMIT
    cap_drop: list[str] = field(default_factory=lambda: ["ALL"])
    security_opt: list[str] = field(default_factory=lambda: ["no-new-privileges"])

    def to_create_kwargs(self) -> dict[str, Any]:
        from docker.types import Ulimit

        kwargs: dict[str, Any] = {
            "image": self.image, "command": self.command, "name": self.name, "user": self.user,
            "working_dir": self.working_dir, "environment": self.environment,
            "mounts": [m.to_docker() for m in self.mounts], "labels": self.labels,
            "mem_limit": self.memory_bytes, "memswap_limit": self.memory_bytes, "nano_cpus": self.nano_cpus,
            "shm_size": self.shm_size, "pids_limit": self.pids_limit,
            "ulimits": [Ulimit(name="nproc", soft=self.nproc, hard=self.nproc),
                        Ulimit(name="nofile", soft=self.nofile, hard=self.nofile)],
            "cap_drop": self.cap_drop, "security_opt": self.security_opt, "init": True, "detach": True,
        }
        if self.network:
            kwargs["network"] = self.network
        return kwargs


def run_container_spec(definition: RunDefinition, folder: RunFolder, compute: ComputeDefinition,
                       mounts: list[MountSpec], direct: dict[str, str], settings: Settings, *,
                       host_memory: int, host_cpus: float, connection: RunConnection | None = None,
                       credentials: RunCredentials | None = None) -> ContainerSpec:
    """The container of one run: Azure's environment variables, the run folder and the dataset mounts.

    Without a ``connection`` (outside the compose stack) the run has no service to report to: azureml-core's
    ``Run.get_context()`` then gives its offline run."""
    ws = definition.workspace
    env = {
        "AZUREML_RUN_ID": definition.run_id,
        "AZUREML_ARM_SUBSCRIPTION": ws["subscription_id"],
        "AZUREML_ARM_RESOURCEGROUP": ws["resource_group"],
        "AZUREML_ARM_WORKSPACE_NAME": ws["name"],
        "AZUREML_ARM_PROJECT_NAME": definition.experiment,
        "AZUREML_WORKSPACE_ID": ws.get("id", ""),
        "AZUREML_TARGET_TYPE": "amlcompute" if definition.compute_target != "local" else "local",
        "AZUREML_DATASET_ENVIRONMENT_VARS": dataset_environment_vars(mounts) + "".join(
            f",{name}:direct" for name in direct).lstrip(","),
        "AML_SANDBOX_CONTROL_DIR": CONTROL_MOUNT,
        "PYTHONUNBUFFERED": "1",
        # Every Python process of the run flushes its run records at its end (runtime/site/sitecustomize.py).
        "PYTHONPATH": SITE_PATH,
        "HOME": "/tmp",
        **{str(k): str(v) for k, v in (definition.environment.get("environmentVariables") or {}).items()},
        **definition.environment_variables,
    }
    user_path = str((definition.environment.get("environmentVariables") or {}).get("PYTHONPATH", "")
                    or definition.environment_variables.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = SITE_PATH + (f":{user_path}" if user_path else "")
    for mount in mounts:
        env.update(mount.environment())
    env.update(direct)
    wd = working_directory(definition)
    binds = [BindMount(str(folder.setup), SETUP_MOUNT, True), BindMount(str(folder.control), CONTROL_MOUNT, False),
             BindMount(str(folder.wd), wd, False)]
    owners = {SETUP_MOUNT: "the sandbox's runtime", CONTROL_MOUNT: "the sandbox's control folder",
              wd: "the working directory"}
    if connection is not None and credentials is not None:
        env.update(connection.environment(definition, credentials))
        binds.append(BindMount(str(connection.ca_bundle), CA_BUNDLE_MOUNT, True))
        owners[CA_BUNDLE_MOUNT] = "the stack's CA bundle"
    for mount in mounts:
        if mount.mount_point in owners:
            raise ValueError(f"input {mount.name!r} would be mounted at {mount.mount_point}, where "
                             f"{owners[mount.mount_point]} is already; give it another path_on_compute")
        owners[mount.mount_point] = f"input {mount.name!r}"
        binds.append(BindMount(mount.host_path, mount.mount_point, mount.read_only))
    memory = min(compute.memory_bytes, int(host_memory))
    return ContainerSpec(
        image=definition.image,
        command=[definition.interpreter, "-c", DRIVER_COMMAND],
        name=f"aml-run-{definition.run_id}",
        working_dir=wd,
        environment=env,
        mounts=binds,
        labels={MANAGED_LABEL: "true", RUN_ID_LABEL: definition.run_id, EXPERIMENT_LABEL: definition.experiment,
                PROJECT_LABEL: settings.project},
        memory_bytes=memory,
        nano_cpus=int(min(compute.cores, host_cpus) * 1e9),
        shm_size=definition.shm_size or "2g",
        network=connection.network if connection is not None else None,
        nproc=within_hard_limit(NPROC_LIMIT, resource.RLIMIT_NPROC),
        nofile=within_hard_limit(NOFILE_LIMIT, resource.RLIMIT_NOFILE),
    )


def within_hard_limit(wanted: int, which: int) -> int:
    """``wanted``, or less when Docker's own hard limit is lower (a container cannot raise it: runc refuses).

    The service runs in a container of the same daemon, so its hard limit is the one run containers get.
    """
    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
