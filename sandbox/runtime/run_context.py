"""The run context ``Run.get_context()`` returns inside a sandbox run.

It behaves as azureml-core's ``Run`` does inside a submitted run: ``run.log`` prints nothing and
records the value; ``id``, ``experiment``, ``input_datasets`` are the run's. Records go to
``history.jsonl`` in the run folder, which the host follows while the run goes; uploaded files and
images go to ``artifacts/`` there and become run files. Child runs and HyperDrive are not supported.
"""

from __future__ import annotations

import os
import shutil
import stat
import types
from collections.abc import Callable
from inspect import isgeneratorfunction
from typing import Any

from .history import HistoryWriter


def _user_error(message: str) -> Exception:
    try:
        from azureml.exceptions import UserErrorException

        return UserErrorException(message)
    except ImportError:  # the environment has no azureml-core
        return ValueError(message)


class CleanupQueue:
    """azureml-core's ``_RunBase._registered_kill_handlers``: one flush per run object, run at cleanup.

    azureml-core registers ``run._client.flush`` for every ``Run`` it builds with ``clean_up=True``
    (azureml/_run_impl/run_base.py), and ``_RunBase._kill`` prints how many it found
    (``N items cleaning up...``) and times running them (PARITY.md 1.4).
    """

    def __init__(self) -> None:
        self._handlers: list[Callable[[float], None]] = []

    def register(self, flush: Callable[[float], None]) -> None:
        self._handlers.append(flush)

    def drain(self) -> list[Callable[[float], None]]:
        """The handlers registered so far, in order; the queue is empty afterwards."""
        handlers, self._handlers = self._handlers, []
        return handlers


class _Workspace:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = spec["workspace"]["name"]
        self.subscription_id = spec["workspace"]["subscription_id"]
        self.resource_group = spec["workspace"]["resource_group"]
        self._workspace_id = spec["workspace"].get("id")

    def __repr__(self) -> str:
        return (f"Workspace.create(name='{self.name}', subscription_id='{self.subscription_id}', "
                f"resource_group='{self.resource_group}')")


class _Experiment:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = spec["experiment"]
        self.workspace = _Workspace(spec)

    def __repr__(self) -> str:
        return f"Experiment(Name: {self.name},\nWorkspace: {self.workspace.name})"


class SandboxRun:
    """The submitted run, seen from inside (``azureml.core.Run`` inside a job)."""

    def __init__(self, spec: dict[str, Any], control_dir: str, input_datasets: dict[str, str],
                 cleanup: CleanupQueue | None = None) -> None:
        self._spec = spec
        self._control_dir = control_dir
        self._history = HistoryWriter(os.path.join(control_dir, "history.jsonl"))
        self._tags: dict[str, Any] = dict(spec.get("tags") or {})
        self._properties: dict[str, Any] = dict(spec.get("properties") or {})
        self._input_datasets = dict(input_datasets)
        self.experiment = _Experiment(spec)
        self.parent = None
        self.number = spec.get("number", 1)
        if cleanup is not None:
            cleanup.register(self.flush)

    # -- identity ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._spec["run_id"]

    @property
    def name(self) -> str:
        return self._spec["run_id"]

    @property
    def display_name(self) -> str:
        return self._spec["run_id"]

    @property
    def type(self) -> str:
        return "azureml.scriptrun"

    @property
    def status(self) -> str:
        return "Running"

    @property
    def input_datasets(self) -> dict[str, str]:
        return dict(self._input_datasets)

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self._properties)

    @property
    def tags(self) -> dict[str, Any]:
        return dict(self._tags)

    def get_status(self) -> str:
        return "Running"

    def get_portal_url(self) -> str:
        return self._spec.get("portal_url", "")

    def get_details(self) -> dict[str, Any]:
        return {"runId": self.id, "target": self._spec.get("compute_target"), "status": "Running",
                "properties": self.properties, "inputDatasets": self._spec.get("input_details", [])}

    # -- metrics -----------------------------------------------------------------------------

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        if isinstance(value, list | range | types.GeneratorType) or isgeneratorfunction(value):
            raise _user_error("run.log does not support list type. Use run.log_list instead")
        self._history.write("metric", name=name, type="scalar", value=value, description=description, step=step)

    def log_list(self, name: str, value: Any, description: str = "") -> None:
        self._history.write("metric", name=name, type="list", value=list(value), description=description)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        self._history.write("metric", name=name, type="row", value=kwargs, description=description or "")

    def log_table(self, name: str, value: dict[str, list[Any]], description: str = "") -> None:
        self._history.write("metric", name=name, type="table", value=value, description=description)

    def _log_structured(self, kind: str, name: str, value: Any, description: str | None) -> None:
        self._history.write("metric", name=name, type=kind, value=value, description=description or "")

    def log_confusion_matrix(self, name: str, value: Any, description: str = "") -> None:
        self._log_structured("confusion_matrix", name, value, description)

    def log_accuracy_table(self, name: str, value: Any, description: str = "") -> None:
        self._log_structured("accuracy_table", name, value, description)

    def log_residuals(self, name: str, value: Any, description: str = "") -> None:
        self._log_structured("residuals", name, value, description)

    def log_predictions(self, name: str, value: Any, description: str = "") -> None:
        self._log_structured("predictions", name, value, description)

    def log_image(self, name: str, path: str | None = None, plot: Any = None, description: str = "") -> None:
        if (path is None) == (plot is None):
            raise _user_error("log_image needs exactly one of path or plot")
        target = os.path.join(self._control_dir, "artifacts", name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if path is not None:
            shutil.copyfile(path, target)
        else:
            plot.savefig(target, format="png")
        self._history.write("file", name=name)
        self._history.write("metric", name=name, type="image", value=f"aml://artifactId/ExperimentRun/dcid.{self.id}/"
                            f"{name}", description=description)

    # -- tags and properties -----------------------------------------------------------------

    def tag(self, key: str, value: Any = None) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any] | list[str]) -> None:
        updates = {t: "" for t in tags} if isinstance(tags, list) else dict(tags)
        self._tags.update(updates)
        self._history.write("tags", values=updates)

    def get_tags(self) -> dict[str, Any]:
        return dict(self._tags)

    def remove_tags(self, tags: list[str]) -> None:
        for tag in tags:
            self._tags.pop(tag, None)
        self._history.write("tags_removed", values=list(tags))

    def add_properties(self, properties: dict[str, Any]) -> None:
        clashes = {k for k in properties if k in self._properties and self._properties[k] != properties[k]}
        if clashes:
            raise _user_error(f"Properties are immutable once set: {sorted(clashes)}")
        self._properties.update(properties)
        self._history.write("properties", values=dict(properties))

    def get_properties(self) -> dict[str, Any]:
        return dict(self._properties)

    # -- files -------------------------------------------------------------------------------

    def upload_file(self, name: str, path_or_stream: Any, datastore_name: str | None = None) -> None:
        target = os.path.join(self._control_dir, "artifacts", name.lstrip("/"))
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if isinstance(path_or_stream, str | os.PathLike):
            shutil.copyfile(path_or_stream, target)
        else:
            data = path_or_stream.read()
            with open(target, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        self._history.write("file", name=name.lstrip("/"))

    def upload_files(self, names: list[str], paths: list[str], return_artifacts: bool = False,
                     timeout_seconds: int | None = None, datastore_name: str | None = None) -> None:
        for name, path in zip(names, paths, strict=True):
            self.upload_file(name, path)

    def upload_folder(self, name: str, path: str, datastore_name: str | None = None) -> None:
        for root, _dirs, files in os.walk(path):
            for file_name in files:
                full = os.path.join(root, file_name)
                self.upload_file(f"{name.rstrip('/')}/{os.path.relpath(full, path)}", full)

    # -- status ------------------------------------------------------------------------------

    def complete(self, _set_status: bool = True) -> None:
        """Completion is recorded when the script ends, as on Azure."""

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        message = str(error_details) if error_details is not None else "The run was marked as failed"
        self._history.write("error", message=message, code=error_code or "UserError", explicit=True)

    def cancel(self) -> None:
        self._history.write("error", message="The run was canceled from the script", code="Canceled",
                            explicit=True)

    def flush(self, timeout_seconds: float = 300) -> None:
        """Make the run's history records durable (``fsync``); they are written, unbuffered, as they are logged."""
        try:  # non-blocking and no links: a script may have put a FIFO or a link in its place
            fd = os.open(self._history.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # nothing recorded yet, or not a file any more
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fsync(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> SandboxRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def __repr__(self) -> str:
        return (f"Run(Experiment: {self.experiment.name},\nId: {self.id},\nType: azureml.scriptrun,\n"
                "Status: Running)")


def install(make_run: Callable[[], SandboxRun]) -> bool:
    """Make ``azureml.core.Run.get_context()`` return the script's run; False when azureml-core is not installed.

    The run is made by the first call and returned by every later one, as azureml-core caches it
    (``_SubmittedRun._get_instance``): a script that never asks for it adds no cleanup item.
    """
    try:
        from azureml.core import run as run_module
    except ImportError:
        return False
    made: list[SandboxRun] = []

    def get_context(cls: Any, allow_offline: bool = True, used_for_context_manager: bool = False,
                    **kwargs: Any) -> SandboxRun:
        if not made:
            made.append(make_run())
        return made[0]

    run_module.Run.get_context = classmethod(get_context)  # type: ignore[method-assign]
    return True

