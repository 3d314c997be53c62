"""How a run ended: status, Azure's error wording and the service's driver-log line, from the container's end."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.config import ComputeDefinition
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.run_outcome import classify

SMALL = ComputeDefinition("small-memory", 2, "STANDARD_A1_V2")


def _definition(**fields: Any) -> RunDefinition:
    base: dict[str, Any] = {"run_id": "r1", "experiment": "e", "workspace": {
        "name": "ws", "subscription_id": "s", "resource_group": "g"}, "script": "train.py", "arguments": [],
        "compute_target": "small-memory", "environment": {"name": "env"}, "image": "img:1",
        "snapshot_id": "00000000-0000-4000-8000-000000000000"}
    return RunDefinition(**{**base, **fields})


def test_exit_zero_without_an_explicit_failure_completes_with_no_line_of_the_services() -> None:
    outcome = classify(_definition(), SMALL, 0, False, None, [])
    assert (outcome.status, outcome.exit_code, outcome.error, outcome.note) == (RunStatus.COMPLETED, 0, None, None)


def test_the_scripts_exception_is_named_as_azure_names_it_with_its_traceback() -> None:
    # What azureml-core's status context manager posts (Run.Error) for an exception in the script.
    error = {"code": "UserError", "message": "User program failed with ValueError: boom 42",
             "debug_type": "ValueError", "debug_message": "boom 42", "debug_stack_trace": "Traceback ...\n"}
    outcome = classify(_definition(), SMALL, 1, False, None, [error])
    assert outcome.status is RunStatus.FAILED
    assert outcome.error == {"code": "UserError", "message": "User program failed with ValueError: boom 42",
                             "type": "ValueError", "traceback": "Traceback ...\n"}
    assert outcome.note is None  # the script's own traceback is already in the driver log


def test_run_fail_from_the_script_fails_a_run_that_exited_zero() -> None:
    outcome = classify(_definition(), SMALL, 0, False, None, [{"code": "UserError", "message": "bad data"}])
    assert outcome.status is RunStatus.FAILED and outcome.error["message"] == "bad data"


@pytest.mark.parametrize("exit_code", [137, 143, -1])
def test_a_container_stopped_from_outside_fails_and_says_so_in_the_driver_log(exit_code: int) -> None:
    outcome = classify(_definition(), SMALL, exit_code, False, None, [])
    assert outcome.status is RunStatus.FAILED
    assert f"stopped from outside (exit code {exit_code})" in outcome.error["message"]
    assert outcome.note == outcome.error["message"]


def test_an_out_of_memory_kill_names_the_limit_and_the_compute_target() -> None:
    outcome = classify(_definition(), SMALL, 137, True, None, [])
    assert outcome.status is RunStatus.FAILED and outcome.error["type"] == "OutOfMemory"
    assert "exceeded the 2 GiB memory limit of compute target 'small-memory' (STANDARD_A1_V2)" in outcome.note


def test_cancel_time_limit_and_disk_limit_each_say_why_the_service_stopped_the_run() -> None:
    canceled = classify(_definition(), SMALL, 143, False, "canceled", [])
    assert canceled.status is RunStatus.CANCELED and canceled.note == "The run was canceled. Finalizing run..."
    timed_out = classify(_definition(max_run_duration_seconds=5), SMALL, 143, False, "timeout", [])
    assert timed_out.status is RunStatus.FAILED and "max_run_duration_seconds=5" in timed_out.note
    disk = classify(_definition(), SMALL, 143, False, "disk", [], stop_message="wrote 101 GiB, over 100 GiB")
    assert disk.status is RunStatus.FAILED and disk.error["type"] == "DiskFull" and "101 GiB" in disk.note


def test_a_dataset_that_cannot_be_mounted_fails_with_azures_dataset_initialization_wording() -> None:
    # What the runtime posts (Run.Error) when a mount point is missing or empty as the run starts.
    message = "Dataset initialization failed: DatasetMountValidationException: Cannot mount dataset."
    error = {"code": "UserError", "debug_type": "DatasetMountValidationException", "message": message}
    outcome = classify(_definition(), SMALL, 1, False, None, [error])
    assert outcome.error == {"code": "UserError", "message": message, "type": "DatasetMountValidationException"}


def test_a_plain_non_zero_exit_names_the_code() -> None:
    assert classify(_definition(), SMALL, 3, False, None, []).error["message"] == "User program failed with exit code 3"
