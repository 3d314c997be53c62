"""Runs the user's script the way Azure ML's legacy context manager injector did (``Script type = None``).

Prints the driver-log lines in Azure's order and wording (PARITY.md 1.2-1.4): the injector header,
the dataset context manager (``Processing 'input'.``, the dataset JSON, the mount lines), the run
history context manager (``Current directory:``, ``$input`` before and after variable expansion),
then runs the script in this process as ``python <script> <args>`` would (same ``sys.argv``,
``__name__ == "__main__"``, working directory, ``sys.path[0]``) inside azureml-core's own run history
context manager (:mod:`.history`: ``Run.get_context()`` is azureml-core's, reporting over HTTP), and ends
with Azure's completion or failure lines and the script's exit code.

Failure tail: Azure's wording for a failed ``Script type = None`` run was not observed; this uses
"The experiment failed. Finalizing run..." (PARITY.md 1.5), after the user's traceback.

Cleanup tail (PARITY.md 1.4): printed by azureml-core's own ``_RunBase._kill`` (``N items cleaning up...``
counts its kill handlers: the context manager's run, plus the script's ``Run.get_context()`` if it asked).
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import sys
import traceback
import types
from datetime import datetime, timezone
from typing import Any

from . import listing, report
from .history import ExcInfo, RunHistory

INJECT = ["ProjectPythonPath:context_managers.ProjectPythonPath", "Dataset:context_managers.Datasets",
          "RunHistory:context_managers.RunHistory", "TrackUserError:context_managers.TrackUserError",
          "UserExceptions:context_managers.UserExceptions"]
MOUNT_VALIDATION_ERROR = ("UserError: Dataset initialization failed: DatasetMountValidationException: Cannot mount "
                          "dataset. Source of the dataset is either not accessible or does not contain any data.")


def _stamp() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _version(package: str) -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return "unknown"
    try:
        return version(package)
    except PackageNotFoundError:
        return "n/a"


class DatasetContextManager:
    """The dataset lines. The data itself was bound into the container by the host before start."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.inputs = spec.get("inputs", [])
        self.run_id = spec["run_id"]
        _say("Initialize DatasetContextManager.")

    def enter(self) -> dict[str, str]:
        _say(f"Starting the daemon thread to refresh tokens in background for process with pid = {os.getpid()}")
        _say("Enter __enter__ of DatasetContextManager")
        _say(f"SDK version: azureml-core=={_version('azureml-core')} azureml-dataprep=={_version('azureml-dataprep')}. "
             f"Session id: (telemetry disabled). Run id: {self.run_id}.")
        paths: dict[str, str] = {}
        for item in self.inputs:
            name, path = item["name"], item["path"]
            _say(f"Processing '{name}'.")
            _say(f"Processing dataset {item['dataset_str']}")
            shape = "single file" if item.get("single_file") else "folder"
            verb = ("Mounting", "Mounted") if item["mode"] == "mount" else ("Downloading", "Downloaded")
            _say(f"{verb[0]} {name} to {item['mount_point']}." if item["mode"] == "mount"
                 else f"{verb[0]} {name} to {item['mount_point']}")
            if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
                raise DatasetMountError(MOUNT_VALIDATION_ERROR)
            _say(f"{verb[1]} {name} to {item['mount_point']} as {shape}.")
            paths[name] = path
        _say("Exit __enter__ of DatasetContextManager")
        return paths

    def exit(self) -> None:
        _say("Enter __exit__ of DatasetContextManager")
        for item in self.inputs:
            if item["mode"] == "mount":
                _say(f"Unmounting {item['mount_point']}.")
                _say(f"Finishing unmounting {item['mount_point']}.")
        _say("Exit __exit__ of DatasetContextManager")


class DatasetMountError(Exception):
    pass


def _user_traceback(exc: BaseException, script_path: str) -> str:
    """The traceback as ``python script.py`` would print it: the injector's own frames left out.

    A script that does not compile has no frame of its own: Python then prints only the error.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    script_dir = os.path.dirname(os.path.abspath(script_path))
    start = next((i for i, frame in enumerate(frames)
                  if os.path.abspath(frame.filename).startswith(script_dir + os.sep)), None)
    if start is None:
        return "".join(traceback.format_exception_only(type(exc), exc))
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames[start:])
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _exec_as_main(script_path: str) -> None:
    """Run the file as ``python <script>`` does: a fresh ``__main__`` module, ``sys.argv[0]`` as given."""
    with io.open_code(script_path) as handle:
        code = compile(handle.read(), script_path, "exec")
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": script_path, "__builtins__": builtins, "__spec__": None, "__cached__": None,
                          "__loader__": None, "__package__": None})
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def run_script(spec: dict[str, Any]) -> int:
    script = spec["script"]
    _say(f"[{_stamp()}] Entering context manager injector.")
    _say(f"[context_manager_injector.py] Command line Options: Namespace(inject={INJECT!r}, "
         f"invocation={[script, *spec['arguments_template']]!r})")
    datasets = DatasetContextManager(spec)
    try:
        datasets.enter()
    except DatasetMountError as exc:
        _say(str(exc))
        message = str(exc).split(": ", 1)[1]  # "Dataset initialization failed: DatasetMountValidationException: ..."
        report.post_error({"code": "UserError", "message": message, "debug_type": "DatasetMountValidationException"})
        return 1

    _say("Entering Run History Context Manager.")
    history = RunHistory()
    history.enter()
    listing.install([item["mount_point"] for item in spec.get("inputs", []) if item["mode"] == "mount"])
    _say(f"Current directory:  {os.getcwd()}")
    display = spec["arguments_display"]
    _say(f"Preparing to call script [ {script} ] with arguments: {display!r}")
    expanded = [os.path.expandvars(arg) for arg in display]
    _say(f"After variable expansion, calling script [ {script} ] with arguments: {expanded!r}")
    _say()
    _say("Script type = None")

    script_path = os.path.abspath(script)
    exit_code = 0
    exc_info: ExcInfo = (None, None, None)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *expanded]
    setup_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [os.path.dirname(script_path)] + [p for p in sys.path if p not in ("", setup_dir)]
    try:
        _exec_as_main(script_path)
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            exit_code = 0
        elif isinstance(code, int):
            exit_code = code
        else:
            sys.stderr.write(f"{code}\n")
            exit_code = 1
        if exit_code:
            exc_info = (type(exc), exc, exc.__traceback__)
    except BaseException as exc:
        sys.stderr.write(_user_traceback(exc, script_path))
        sys.stderr.flush()
        exc_info = (type(exc), exc, exc.__traceback__)
        exit_code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        sys.stdout.flush()
        sys.stderr.flush()

    _say(f"Starting the daemon thread to refresh tokens in background for process with pid = {os.getpid()}")
    _say()
    _say()
    if exit_code == 0:
        _say("The experiment completed successfully. Finalizing run...")
    else:
        _say("The experiment failed. Finalizing run...")
    _say("Logging experiment finalizing status in history service.")
    _say(f"[{_stamp()}] TimeoutHandler __init__")
    _say(f"[{_stamp()}] TimeoutHandler __enter__")
    history.exit(exc_info, float(spec.get("cleanup_timeout", 300.0)))
    sys.stdout.flush()
    datasets.exit()
    _say(f"[{_stamp()}] TimeoutHandler __exit__")
    logging.getLogger("azureml").info("Run %s: script exited with %s", spec["run_id"], exit_code)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    control_dir = os.environ.get("AML_SANDBOX_CONTROL_DIR", "/azureml-run")
    with open(os.path.join(control_dir, "spec.json"), encoding="utf-8") as handle:
        spec = json.load(handle)
    return run_script(spec)
