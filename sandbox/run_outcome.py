"""How a run ended: its final status and Azure's error details, from how its container stopped and what it recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox.config import ComputeDefinition
from sandbox.run_definition import RunDefinition, RunStatus


@dataclass
class RunOutcome:
    status: RunStatus
    exit_code: int | None = None
    error: dict[str, Any] | None = None
    #: A line the service adds to the driver log (the run itself could not say it).
    note: str | None = None


def classify(definition: RunDefinition, compute: ComputeDefinition, exit_code: int, oom: bool,
             stop_reason: str | None, errors: list[dict[str, Any]], *, stop_message: str | None = None) -> RunOutcome:
    """The final status and error of a run from how its container ended and the error it reported.

    ``errors`` holds the error the run posted to run history (azureml-core's ``Run.Error`` event, Azure's
    shape: ``code``, ``message``, ``debug_type``, ``debug_stack_trace``), if any: with exit code 0 it is a
    ``run.fail()``, which fails the run.

    ``stop_reason`` is why the service stopped the container (``"canceled"``, ``"timeout"``, ``"disk"`` with
    ``stop_message`` saying what was over the limit), or None.
    """
    if stop_reason == "disk":
        message = stop_message or "The run was stopped: it wrote more than the sandbox allows."
        return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message,
                                                          "type": "DiskFull"}, message)
    if stop_reason == "canceled":
        return RunOutcome(RunStatus.CANCELED, exit_code,
                          {"code": "UserError", "message": "The run was canceled by the user."},
                          "The run was canceled. Finalizing run...")
    if stop_reason == "timeout":
        message = (f"The run exceeded max_run_duration_seconds={definition.max_run_duration_seconds} and was "
                   "stopped.")
        return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message}, message)
    if oom:
        limit = compute.memory_bytes / 1024**3
        message = (f"The run was killed because it ran out of memory: it exceeded the {limit:g} GiB memory "
                   f"limit of compute target '{compute.name}' ({compute.vm_size}), exit code "
                   f"{exit_code} (OOMKilled). Use less memory or a compute target with a larger VM size.")
        return RunOutcome(RunStatus.FAILED, exit_code, {"code": "UserError", "message": message,
                                                          "type": "OutOfMemory"}, message)
    reported = errors[-1] if errors else None
    if exit_code == 0 and not reported:
        return RunOutcome(RunStatus.COMPLETED, 0)
    note = None
    if reported and reported.get("message"):
        message = str(reported["message"])  # Azure's own wording, as the run's azureml-core posted it
    elif exit_code in (137, 143, -1):
        message = (f"The run's container was stopped from outside (exit code {exit_code}) before the script "
                   "finished.")
        note = message
    elif exit_code == 0:
        message = "The run was marked as failed"
    else:
        message = f"User program failed with exit code {exit_code}"
    details: dict[str, Any] = {"code": str((reported or {}).get("code") or "UserError"), "message": message}
    if reported and (reported.get("debug_type") or reported.get("type")):
        details["type"] = str(reported.get("debug_type") or reported.get("type"))
    if reported and (reported.get("debug_stack_trace") or reported.get("traceback")):
        details["traceback"] = str(reported.get("debug_stack_trace") or reported.get("traceback"))
    return RunOutcome(RunStatus.FAILED, exit_code, details, note)
