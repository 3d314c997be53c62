"""Azure's run history context manager around the script: azureml-core's own, or a note when it is missing.

With azureml-core in the environment this is ``azureml.history._tracking.get_history_context_manager``,
what Azure's job wrapper enters: the run's ``Run`` object, its metrics sent, ``logs/`` streamed as the run
writes it, ``outputs/`` uploaded at the end, the script's exception posted as the run's error, and
``_RunBase._kill()``, which prints Azure's cleanup lines and flushes every run object (PARITY.md 1.4).

Without azureml-core the script still runs (its ``mlflow`` calls still land, through ``MLFLOW_*``), its
exception is posted with the standard library, and the driver log says that ``outputs/`` and ``logs/`` are
not uploaded.
"""

from __future__ import annotations

import os
import stat
import sys
import time
import traceback
from types import TracebackType
from typing import Any

from . import report

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
#: Folders streamed while the run goes (Azure's job wrapper watches ``logs``; azureml-core adds logs/azureml).
DIRECTORIES_TO_WATCH = ["logs"]
KILL_TIMEOUT = "300"
#: Folders azureml-core uploads at the end of a run (``outputs`` as Azure's ``./outputs``; ``logs`` is streamed).
UPLOADED_FOLDERS = ("outputs", "logs")
#: Entries looked at in those folders before the upload (a run may make millions; the upload would take as long).
MAX_CHECKED = 100_000


def set_aside_unreadable(folder: str) -> list[str]:
    """Remove what the upload could never read from ``folder`` (FIFOs, sockets, devices, dangling links) and say so.

    azureml-core opens every name ``os.walk`` lists: a FIFO would block the end of the run for ever and a
    dangling link (a host path, which the container does not see) fails the upload of its whole batch.
    Regular files, and links to files inside the container, are left to azureml-core.
    """
    lines: list[str] = []
    checked = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            checked += 1
            if checked > MAX_CHECKED:
                return lines
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                if os.path.exists(path):
                    continue
                why = "a link to a file that does not exist in the run"
            elif stat.S_ISREG(info.st_mode):
                continue
            elif stat.S_ISFIFO(info.st_mode):
                why = "a FIFO"
            elif stat.S_ISSOCK(info.st_mode):
                why = "a socket"
            else:
                why = "a device file"
            try:
                os.unlink(path)
            except OSError:
                continue
            lines.append(f"Not uploaded: {os.path.normpath(path)} is {why}.")
    return lines


class RunHistory:
    """Entered before the script, left after it with how the script ended."""

    def __init__(self) -> None:
        self._stack: Any = None
        #: Why azureml-core's context manager is not in use (None when it is).
        self.missing: str | None = None

    def enter(self) -> None:
        os.environ.setdefault("AZUREML_RUN_KILL_SIGNAL_TIMEOUT_SEC", KILL_TIMEOUT)
        try:
            from azureml.history._tracking import get_history_context_manager
        except ImportError:
            self.missing = ("azureml-core is not installed in this environment; add azureml-core (or "
                            "azureml-defaults) to the environment to keep them")
        else:
            try:
                stack = get_history_context_manager(DirectoriesToWatch=list(DIRECTORIES_TO_WATCH))
                stack.__enter__()
            except Exception as exc:  # no run to report to (run outside the stack), or the service is down
                reason = getattr(exc, "message", None) or (str(exc).splitlines() or [""])[0]
                self.missing = f"azureml-core could not load the run ({type(exc).__name__}: {reason})"
                print(f"aml-sandbox: {self.missing}", file=sys.stderr)
            else:
                self._stack = stack
                return
        os.makedirs(os.path.join("logs", "azureml"), exist_ok=True)
        os.makedirs("outputs", exist_ok=True)
        os.environ.setdefault("AZUREML_OUTPUT_DIRECTORY", "./outputs")  # azureml-core's OUTPUTS_DIR

    def exit(self, exc_info: ExcInfo, timeout: float) -> None:
        """Azure's end of a run: upload, report the error, flush; the cleanup lines in the driver log."""
        for folder in UPLOADED_FOLDERS:
            for line in set_aside_unreadable(folder):
                print(line)
        if self._stack is not None:
            try:
                self._stack.__exit__(*exc_info)
            except Exception as exc:  # the run's result is the script's: say what could not be recorded
                print(f"aml-sandbox: the run history context manager failed at the end of the run: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return
        _, exc, tb = exc_info
        print(f"Cleaning up all outstanding Run operations, waiting {timeout} seconds")
        print("0 items cleaning up...")
        started = time.time()  # what is left to send: the script's error
        if exc is not None and not (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            report.post_error({"code": "UserError", "message": f"User program failed with {type(exc).__name__}: {exc}",
                               "debug_type": type(exc).__name__, "debug_message": str(exc),
                               "debug_stack_trace": "".join(traceback.format_tb(tb))})
        print(f"aml-sandbox: the run's outputs/ and logs/ were not sent to run history: {self.missing}.")
        print(f"Cleanup took {time.time() - started} seconds")
