"""Settings of the local stack: endpoints, ports, credentials, the state folder.

One frozen dataclass built by :meth:`Settings.from_env`, never read at import time. Each value comes
from, in order: an environment variable, the stack file ``<home>/stack.json`` written by
``aml-sandbox up``, a default that matches ``docker-compose.yml``. A bad value names its variable.

The storage account key is the stack's own (:func:`ensure_account_key`, made at the first ``up``), so a run
handed a SAS cannot sign one of its own with Azurite's published key: ``AML_SANDBOX_ACCOUNT_KEY`` (how
compose gives it to Azurite and to the workspace service), else ``<home>/azurite/account.key``, else the
published key (a plain ``docker compose up``, a bare Azurite in tests). It is read when asked for, so
settings made before ``up`` use the key ``up`` makes.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sandbox.errors import ConfigurationError
from sandbox.private_files import create_once, read_private

#: Azurite's documented development account (https://learn.microsoft.com/azure/storage/common/
#: storage-use-azurite#well-known-storage-account-and-key). Treated as a secret all the same:
#: it is never printed unless the user asks for it.
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

#: The stack's own key: random bytes (as many as Azure's keys hold), base64, in <home>/azurite/account.key.
ACCOUNT_KEY_FOLDER = "azurite"
ACCOUNT_KEY_FILE = "account.key"
ACCOUNT_KEY_BYTES = 64
#: A shorter key (from the variable or a hand-written file) is refused.
MIN_ACCOUNT_KEY_BYTES = 32
_ACCOUNT_KEY_READ_LIMIT = 4096

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMPUTE_TARGETS = "cpu-cluster:4:STANDARD_D2_V2,local:1:STANDARD_D2_V2"

#: VM sizes the sandbox knows: (cores, memory in GiB), Azure's published figures.
VM_SIZES: dict[str, tuple[int, float]] = {
    "STANDARD_A1_V2": (1, 2.0),
    "STANDARD_A2_V2": (2, 4.0),
    "STANDARD_D1_V2": (1, 3.5),
    "STANDARD_D2_V2": (2, 7.0),
    "STANDARD_D3_V2": (4, 14.0),
    "STANDARD_DS3_V2": (4, 14.0),
    "STANDARD_D4_V2": (8, 28.0),
}
STACK_FILE_NAME = "stack.json"
_WORKSPACE_NAMESPACE = uuid.UUID("5f0c6d2e-8f7a-4c1b-9a57-3a8c1d2e4b60")


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not a port number; set it to an integer between 1 and 65535 or unset it"
        ) from None
    if not 1 <= value <= 65535:
        raise ConfigurationError(f"{name}={value} is out of range; use a port between 1 and 65535")
    return value


@dataclass(frozen=True)
class ComputeDefinition:
    """A compute target of the local workspace: its node count bounds concurrent runs, its VM size the limits."""

    name: str
    max_nodes: int
    vm_size: str = "STANDARD_D2_V2"

    @property
    def cores(self) -> int:
        return VM_SIZES[self.vm_size][0]

    @property
    def memory_bytes(self) -> int:
        return int(VM_SIZES[self.vm_size][1] * 1024**3)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "max_nodes": self.max_nodes, "vm_size": self.vm_size,
                "cores": self.cores, "memory_bytes": self.memory_bytes}


def parse_compute_targets(raw: str, variable: str = "AML_SANDBOX_COMPUTE_TARGETS") -> tuple[ComputeDefinition, ...]:
    """``name:max_nodes[:vm_size],...`` -> definitions; a bad entry names the variable and the format."""
    definitions = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        parts = entry.split(":")
        try:
            name, nodes = parts[0], int(parts[1])
            vm_size = parts[2].upper() if len(parts) > 2 else "STANDARD_D2_V2"
            if len(parts) > 3 or not name or nodes < 1 or vm_size not in VM_SIZES:
                raise ValueError
        except (IndexError, ValueError):
            raise ConfigurationError(
                f"{variable} entry {entry!r} is not 'name:max_nodes[:vm_size]' with max_nodes >= 1 and vm_size one "
                f"of {sorted(VM_SIZES)}; example: {DEFAULT_COMPUTE_TARGETS}"
            ) from None
        definitions.append(ComputeDefinition(name, nodes, vm_size))
    if not definitions:
        raise ConfigurationError(f"{variable} is empty; example: {DEFAULT_COMPUTE_TARGETS}")
    return tuple(definitions)


@dataclass(frozen=True)
class Settings:
    """Where the local stack lives and how to reach it."""

    home: Path
    project: str = "aml-sandbox"
    compose_file: Path = REPO_ROOT / "docker-compose.yml"
    bind_host: str = "127.0.0.1"
    azurite_port: int = 10000
    service_port: int = 8790
    #: The stack's HTTPS proxy (TLS terminated for *.blob.core.windows.net, other hosts tunnelled).
    proxy_port: int = 8791
    #: Overrides the blob endpoint (inside the compose network it is http://azurite:10000/<account>).
    blob_endpoint_override: str | None = None
    account_name: str = AZURITE_ACCOUNT_NAME
    #: ``AML_SANDBOX_ACCOUNT_KEY``; None: the stack's key file, else the published key (see :attr:`account_key`).
    account_key_override: str | None = field(default=None, repr=False)
    subscription_id: str = "00000000-0000-0000-0000-000000000000"
    resource_group: str = "aml-sandbox-rg"
    workspace_name: str = "aml-sandbox-ws"
    compute_targets: tuple[ComputeDefinition, ...] = parse_compute_targets(DEFAULT_COMPUTE_TARGETS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from ``AML_SANDBOX_*`` variables, the stack file and defaults."""
        env = os.environ if environ is None else environ
        home_raw = env.get("AML_SANDBOX_HOME") or str(Path.home() / ".aml-sandbox")
        home = Path(home_raw).expanduser()
        if not home.is_absolute():
            raise ConfigurationError(
                f"AML_SANDBOX_HOME={home_raw!r} must be an absolute path (the workspace service sees "
                "the state folder at the same absolute path as the host)"
            )
        stored = _read_stack_file(home)
        settings = cls(home=home)
        settings = replace(
            settings,
            project=env.get("AML_SANDBOX_PROJECT") or stored.get("project", settings.project),
            azurite_port=_env_int(env, "AML_SANDBOX_AZURITE_PORT", stored.get("azurite_port", 10000)),
            service_port=_env_int(env, "AML_SANDBOX_SERVICE_PORT", stored.get("service_port", 8790)),
            proxy_port=_env_int(env, "AML_SANDBOX_PROXY_PORT", stored.get("proxy_port", 8791)),
            blob_endpoint_override=env.get("AML_SANDBOX_BLOB_ENDPOINT") or None,
            account_key_override=_env_account_key(env, home),
        )
        compute = env.get("AML_SANDBOX_COMPUTE_TARGETS") or stored.get("compute_targets")
        if compute:
            settings = replace(settings, compute_targets=parse_compute_targets(compute))
        compose = env.get("AML_SANDBOX_COMPOSE_FILE")
        if compose:
            settings = replace(settings, compose_file=Path(compose).expanduser().resolve())
        for attr, var in (
            ("subscription_id", "AML_SANDBOX_SUBSCRIPTION_ID"),
            ("resource_group", "AML_SANDBOX_RESOURCE_GROUP"),
            ("workspace_name", "AML_SANDBOX_WORKSPACE_NAME"),
        ):
            value = env.get(var) or stored.get(attr)
            if value:
                settings = replace(settings, **{attr: value})
        return settings

    # -- derived values ----------------------------------------------------------------------

    @property
    def account_key(self) -> str:
        """``AML_SANDBOX_ACCOUNT_KEY``, else the stack's key file, else Azurite's published key."""
        if self.account_key_override:
            return self.account_key_override
        return read_account_key(self.home) or AZURITE_ACCOUNT_KEY

    @property
    def blob_endpoint(self) -> str:
        if self.blob_endpoint_override:
            return self.blob_endpoint_override.rstrip("/")
        return f"http://{self.bind_host}:{self.azurite_port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        """The explicit-endpoint connection string (works inside a compose network too)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def masked_connection_string(self) -> str:
        return self.connection_string.replace(self.account_key, "<hidden: aml-sandbox status --show-secrets>")

    @property
    def service_url(self) -> str:
        return f"http://{self.bind_host}:{self.service_port}"

    @property
    def workspace_id(self) -> str:
        """A stable workspace GUID derived from the workspace's ARM coordinates."""
        key = f"{self.subscription_id}/{self.resource_group}/{self.workspace_name}"
        return str(uuid.uuid5(_WORKSPACE_NAMESPACE, key))

    @property
    def wheelhouse(self) -> Path:
        return self.home / "wheelhouse"

    @property
    def stack_file(self) -> Path:
        return self.home / STACK_FILE_NAME

    def compose_environment(self) -> dict[str, str]:
        """Variables ``docker compose`` needs to interpolate docker-compose.yml for this stack."""
        return {
            "AML_SANDBOX_HOME": str(self.home),
            "AML_SANDBOX_AZURITE_PORT": str(self.azurite_port),
            "AML_SANDBOX_SERVICE_PORT": str(self.service_port),
            "AML_SANDBOX_PROXY_PORT": str(self.proxy_port),
            "AML_SANDBOX_COMPUTE_TARGETS": self.compute_targets_spec,
            "AML_SANDBOX_PROJECT": self.project,
            # Azurite's only key (AZURITE_ACCOUNTS) and the service's: never on a command line, never printed.
            "AML_SANDBOX_ACCOUNT_KEY": self.account_key,
        }

    @property
    def compute_targets_spec(self) -> str:
        return ",".join(f"{c.name}:{c.max_nodes}:{c.vm_size}" for c in self.compute_targets)

    def write_stack_file(self) -> None:
        """Remember ports and names so later processes (control scripts, tests) find this stack."""
        self.home.mkdir(parents=True, exist_ok=True)
        data = {
            key: value
            for key, value in asdict(self).items()
            if key in {"project", "azurite_port", "service_port", "proxy_port", "subscription_id", "resource_group",
                       "workspace_name"}
        }
        data["compute_targets"] = self.compute_targets_spec
        tmp = self.stack_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.stack_file)


def _read_stack_file(home: Path) -> dict:
    path = home / STACK_FILE_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"{path} is not readable JSON ({exc}); delete it and run 'aml-sandbox up' to write it again"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object; delete it and run 'aml-sandbox up'")
    return data


# -- the stack's account key ----------------------------------------------------------------------------


def account_key_path(home: Path) -> Path:
    return home / ACCOUNT_KEY_FOLDER / ACCOUNT_KEY_FILE


def ensure_account_key(home: Path) -> str:
    """Read the stack's account key, or make it once (64 random bytes, base64, mode 0600, owned as ``home``)."""
    existing = read_account_key(home)
    if existing is not None:
        return existing
    path = account_key_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = base64.b64encode(secrets.token_bytes(ACCOUNT_KEY_BYTES)).decode("ascii")
    create_once(path, (key + "\n").encode("ascii"), owner=home.stat())
    made = read_account_key(home)  # the key on disk: another process may have made it first
    if made is None:
        raise ConfigurationError(f"{path} vanished right after it was made; run 'aml-sandbox up' again")
    return made


def read_account_key(home: Path) -> str | None:
    """The key in ``<home>/azurite/account.key``, None when there is none; a link or a damaged key is refused."""
    path = account_key_path(home)
    fix = "delete it and run 'aml-sandbox up' (it makes a new one; Azurite is restarted with it, data kept)"
    try:
        raw = read_private(path, _ACCOUNT_KEY_READ_LIMIT + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        what = "a link (never followed)" if exc.errno == errno.ELOOP else f"not readable ({exc.strerror})"
        raise ConfigurationError(f"The stack's account key file {path} is {what}; {fix}") from None
    problem = _account_key_problem(raw.decode("ascii", "replace").strip(), len(raw))
    if problem:
        raise ConfigurationError(f"The stack's account key in {path} is {problem}; {fix}")
    return raw.decode("ascii").strip()


def _env_account_key(env: Mapping[str, str], home: Path) -> str | None:
    raw = env.get("AML_SANDBOX_ACCOUNT_KEY")
    if raw is None or raw.strip() == "":
        return None
    key = raw.strip()
    problem = _account_key_problem(key, len(raw.encode()))
    if problem:  # never echoed: it is a secret
        raise ConfigurationError(
            f"AML_SANDBOX_ACCOUNT_KEY is {problem}; set it to the base64 of at least {MIN_ACCOUNT_KEY_BYTES} random "
            "bytes (python -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(64)).decode())'), "
            f"or unset it to use the stack's own key ({account_key_path(home)})")
    return key


def _account_key_problem(key: str, size: int) -> str | None:
    """Why ``key`` cannot be Azurite's key, or None. A key AZURITE_ACCOUNTS cannot parse would make Azurite fall
    back to its published key, so only plain base64 passes (no ':' or ';')."""
    if size > _ACCOUNT_KEY_READ_LIMIT:
        return f"longer than {_ACCOUNT_KEY_READ_LIMIT} bytes"
    if not key:
        return "empty"
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return f"not base64 ({len(key)} characters; expected A-Z a-z 0-9 + / and '=' padding only)"
    if len(decoded) < MIN_ACCOUNT_KEY_BYTES:
        return f"{len(decoded)} bytes long once decoded; at least {MIN_ACCOUNT_KEY_BYTES} are needed"
    return None
