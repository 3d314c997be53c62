"""The one local/azure seam: ``connect(target)`` hands back the Azure ML names a control script uses.

``azure`` gives azureml-core's own classes, unchanged; ``local`` gives the sandbox's, with the same call
signatures and return shapes. Nothing else in the project branches on the target.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import SimpleNamespace

from sandbox.errors import SandboxError

TARGETS = ("local", "azure")
NAMES = ("Workspace", "Datastore", "Dataset", "Experiment", "Environment", "ScriptRunConfig", "Run")


class TargetConfigurationError(SandboxError):
    """The chosen target cannot be used as configured."""


def add_target_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--target {local,azure}`` (default ``local``)."""
    parser.add_argument(
        "--target", choices=TARGETS, default="local",
        help="local: the aml-sandbox stack on this machine (default); azure: a real Azure ML workspace "
             "(needs its config.json)")
    return parser


def _find_azure_config(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        for candidate in (folder / ".azureml" / "config.json", folder / "aml_config" / "config.json",
                          folder / "config.json"):
            if candidate.is_file():
                return candidate
    return None


def connect(target: str) -> SimpleNamespace:
    """Workspace, Datastore, Dataset, Experiment, Environment, ScriptRunConfig and Run for ``target``."""
    if target == "local":
        from sandbox import aml

        return SimpleNamespace(target="local", **{name: getattr(aml, name) for name in NAMES})
    if target == "azure":
        return _connect_azure()
    raise TargetConfigurationError(f"Unknown target {target!r}; use one of {', '.join(TARGETS)}.")


def _connect_azure() -> SimpleNamespace:
    start = Path(os.environ.get("AML_SANDBOX_AZURE_CONFIG_DIR") or Path.cwd()).resolve()
    if _find_azure_config(start) is None:
        raise TargetConfigurationError(
            f"--target azure needs your workspace's config.json, and none was found in {start} or its parents "
            "(looked for config.json, .azureml/config.json, aml_config/config.json). Download it from "
            "https://ml.azure.com (workspace name, top right: 'Download config file') into this folder, or write "
            "it with Workspace(subscription_id, resource_group, workspace_name).write_config(); "
            "Workspace.from_config(path=...) also takes an explicit path. Or run with --target local."
        )
    try:
        import azureml.core as core
        import azureml.dataprep  # noqa: F401  (azureml-dataset-runtime)
        from azureml.data.dataset_factory import FileDatasetFactory  # noqa: F401 - Dataset.File needs it
    except ImportError as exc:
        raise TargetConfigurationError(
            f"--target azure needs azureml-core and azureml-dataset-runtime ({exc}); run 'make venv'."
        ) from exc
    return SimpleNamespace(target="azure", **{name: getattr(core, name) for name in NAMES})


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors a control script reports in one line (the sandbox's own and Azure ML's)."""
    errors: list[type[BaseException]] = [SandboxError, FileNotFoundError, KeyError, NotImplementedError]
    try:
        from azureml._common.exceptions import AzureMLException

        errors.append(AzureMLException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def error_message(exc: BaseException) -> str:
    """A one-line message for a known error (Azure's exceptions carry theirs in ``.message``)."""
    message = getattr(exc, "message", None)
    if isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])
    return str(message or exc).strip()
