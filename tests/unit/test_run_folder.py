"""The run folder read as hostile input (no Docker): no link followed, no FIFO opened, bounded scans.

The service reads only the run's logs folder (``control/azureml-logs``: the driver log, the image build log);
``outputs/`` and ``logs/`` are uploaded by the run's own azureml-core. It still measures the whole folder for
the disk limits, and classifies the exit with the error the run posted to run history."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import ComputeDefinition, Settings
from sandbox.container_spec import NOFILE_LIMIT, NPROC_LIMIT, PIDS_LIMIT, run_container_spec, within_hard_limit
from sandbox.fake_mount import MountSpec
from sandbox.local_runner import LocalRunner
from sandbox.run_definition import RunDefinition, RunStatus
from sandbox.run_folder import DRIVER_LOG, IMAGE_BUILD_LOG, RunFolder
from sandbox.run_outcome import classify
from sandbox.storage import Transfer, TransferResult


def _within(seconds: float, work: Callable[[], Any]) -> Any:
    """``work()``'s result, failing the test (instead of hanging it) when it blocks."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    return result[0]


@pytest.fixture
def folder(tmp_path: Path) -> RunFolder:
    run = RunFolder(tmp_path / "runs" / "r1")
    for path in (run.wd / "outputs", run.wd / "logs", run.control / "azureml-logs"):
        path.mkdir(parents=True)
    return run


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "token"
    path.parent.mkdir()
    path.write_text("the stack's token\n")
    return path


def _read(run_file: Any) -> bytes:
    return b"".join(run_file.chunks())


def test_a_regular_log_is_listed_and_read_and_outputs_are_left_to_the_run(folder: RunFolder) -> None:
    (folder.control / "azureml-logs" / "sub").mkdir()
    (folder.control / "azureml-logs" / "sub" / "x.txt").write_bytes(b"log lines")
    (folder.wd / "outputs" / "model.pt").write_bytes(b"weights")  # the run's azureml-core uploads it itself
    (folder.wd / "logs" / "own.log").write_text("l")
    assert folder.list_files() == ["azureml-logs/sub/x.txt"]
    run_file = folder.open("azureml-logs/sub/x.txt")
    assert run_file is not None and run_file.size == 9 and _read(run_file) == b"log lines"
    assert folder.open("outputs/model.pt") is None and folder.open("logs/own.log") is None


def test_a_link_to_a_host_file_is_neither_listed_nor_read(folder: RunFolder, secret: Path) -> None:
    (folder.control / "azureml-logs" / "x.txt").symlink_to(secret)
    assert folder.list_files() == []
    assert folder.open("azureml-logs/x.txt") is None
    assert any("azureml-logs/x.txt is a symbolic link" in s for s in folder.scan().skipped)


def test_a_linked_folder_on_the_way_is_not_followed(folder: RunFolder, secret: Path) -> None:
    (folder.control / "azureml-logs" / "dir").symlink_to(secret.parent)
    assert folder.list_files() == []
    assert folder.open("azureml-logs/dir/token") is None
    (folder.control / "azureml-logs" / "dir").unlink()
    os.rmdir(folder.control / "azureml-logs")  # the whole log folder swapped for a link
    (folder.control / "azureml-logs").symlink_to(secret.parent)
    assert folder.list_files() == []
    assert folder.open("azureml-logs/token") is None


def test_a_fifo_is_skipped_without_blocking(folder: RunFolder) -> None:
    os.mkfifo(folder.control / "azureml-logs" / "pipe")
    assert _within(5, folder.list_files) == []
    assert _within(5, lambda: folder.open("azureml-logs/pipe")) is None
    assert any("azureml-logs/pipe is a FIFO" in s for s in _within(5, folder.scan).skipped)


def test_names_that_leave_the_folder_are_refused(folder: RunFolder) -> None:
    (folder.root / "secret.txt").write_text("s")
    (folder.control / "spec.json").write_text("{}")
    for name in ("../secret.txt", "azureml-logs/../../secret.txt", "azureml-logs/../spec.json",
                 "azureml-logs/../../../secret.txt", "azureml-logs/", "azureml-logs/\x00", "", "/"):
        assert folder.open(name) is None, name


def test_the_services_lines_follow_the_driver_log_once_the_run_has_ended(folder: RunFolder) -> None:
    log = folder.control / DRIVER_LOG
    log.write_text("script output\n")
    folder.note("The run was canceled. Finalizing run...")
    assert log.read_text() == "script output\n", "the service wrote into the run's folder"
    assert _read(folder.open(DRIVER_LOG)) == b"script output\n"  # the run goes on: its log only
    folder.seal()
    served = _read(folder.open(DRIVER_LOG)).decode()
    assert served.startswith("script output\n[") and served.endswith("] The run was canceled. Finalizing run...\n")


def test_a_driver_log_replaced_by_a_link_gets_only_the_services_lines(folder: RunFolder, secret: Path) -> None:
    (folder.control / DRIVER_LOG).symlink_to(secret)
    folder.note("The run exceeded max_run_duration_seconds=5 and was stopped.")
    folder.seal()
    served = _read(folder.open(DRIVER_LOG)).decode()
    assert "stopped" in served and "token" not in served
    assert secret.read_text() == "the stack's token\n"


class _Store:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def ensure_container(self, name: str) -> None:
        pass

    def upload(self, container: str, transfers: list[Transfer], **_: Any) -> list[TransferResult]:
        for transfer in transfers:
            self.blobs[transfer.blob] = Path(transfer.local).read_bytes()
        return [TransferResult(t) for t in transfers]


def _definition(**fields: Any) -> RunDefinition:
    base: dict[str, Any] = {"run_id": "r1", "experiment": "e", "workspace": {
        "name": "ws", "subscription_id": "s", "resource_group": "g"}, "script": "train.py", "arguments": [],
        "compute_target": "cpu-cluster", "environment": {"name": "env"}, "image": "img:1",
        "snapshot_id": "00000000-0000-4000-8000-000000000000"}
    return RunDefinition(**{**base, **fields})


def test_finalize_stores_regular_files_and_notes_what_it_skipped(folder: RunFolder, secret: Path,
                                                                 tmp_path: Path) -> None:
    logs = folder.control / "azureml-logs"
    (folder.control / DRIVER_LOG).write_text("script output\n")
    (logs / "ok.txt").write_text("ok")
    (logs / "x.txt").symlink_to(secret)
    os.mkfifo(logs / "pipe")
    (folder.wd / "outputs" / "model.pt").write_bytes(b"weights")  # the run's azureml-core stores it, not finalize
    store = _Store()
    runner = LocalRunner(engine=None, store=store, settings=Settings(home=tmp_path))  # type: ignore[arg-type]
    names = _within(10, lambda: runner.finalize(_definition(), folder))
    assert names == [DRIVER_LOG, "azureml-logs/ok.txt"]
    assert set(store.blobs) == {f"ExperimentRun/dcid.r1/{name}" for name in names}
    log = store.blobs[f"ExperimentRun/dcid.r1/{DRIVER_LOG}"].decode()
    assert log.startswith("script output\n")
    assert "Not stored: azureml-logs/x.txt is a symbolic link" in log
    assert "Not stored: azureml-logs/pipe is a FIFO" in log
    assert all(b"token" not in data for data in store.blobs.values())
    assert (folder.control / DRIVER_LOG).read_text() == "script output\n"


class _DroppingStore(_Store):
    """Azurite closing a reused connection once: the first request for each file fails."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: dict[str, int] = {}

    def upload(self, container: str, transfers: list[Transfer], **_: Any) -> list[TransferResult]:
        results = []
        for transfer in transfers:
            self.attempts[transfer.blob] = self.attempts.get(transfer.blob, 0) + 1
            if self.attempts[transfer.blob] == 1:
                results.append(TransferResult(transfer, ConnectionResetError("Connection reset by peer")))
            else:
                results += super().upload(container, [transfer])
        return results


def test_finalize_sends_a_file_whose_connection_was_dropped_again(folder: RunFolder, tmp_path: Path) -> None:
    (folder.control / DRIVER_LOG).write_text("script output\n")
    (folder.control / IMAGE_BUILD_LOG).write_text("Step 1/9\n")
    store = _DroppingStore()
    runner = LocalRunner(engine=None, store=store, settings=Settings(home=tmp_path))  # type: ignore[arg-type]
    assert runner.finalize(_definition(), folder) == [IMAGE_BUILD_LOG, DRIVER_LOG]
    assert store.blobs[f"ExperimentRun/dcid.r1/{IMAGE_BUILD_LOG}"] == b"Step 1/9\n"
    assert store.blobs[f"ExperimentRun/dcid.r1/{DRIVER_LOG}"].startswith(b"script output\n")
    assert set(store.attempts.values()) == {2}


def _notes(folder: RunFolder) -> str:
    return folder.notes.read_text() if folder.notes.exists() else ""


# -- outcome and container ----------------------------------------------------------------------------


def test_a_canceled_run_gets_the_services_line_in_its_driver_log(folder: RunFolder) -> None:
    compute = ComputeDefinition("cpu-cluster", 1)
    outcome = LocalRunner.classify(_definition(), folder, compute, 143, False, "canceled", [])
    assert outcome.status == RunStatus.CANCELED
    assert "The run was canceled. Finalizing run..." in _notes(folder)
    assert classify(_definition(), compute, 0, False, None, []).note is None


def _mount(name: str, host: str, point: str) -> MountSpec:
    return MountSpec(name, "mount", host, point, point, True, False, "ds")


def test_the_same_dataset_under_two_names_is_mounted_twice_with_limits(folder: RunFolder, tmp_path: Path) -> None:
    mounts = [_mount("a", "/cache/v1/data", "/tmp/tmpaaaaaaaa"), _mount("b", "/cache/v1/data", "/tmp/tmpbbbbbbbb")]
    spec = run_container_spec(_definition(), folder, ComputeDefinition("cpu-cluster", 1), mounts, {},
                              Settings(home=tmp_path), host_memory=8 * 1024**3, host_cpus=2)
    kwargs = spec.to_create_kwargs()
    targets = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in kwargs["mounts"]}
    assert targets["/tmp/tmpaaaaaaaa"] == targets["/tmp/tmpbbbbbbbb"] == ("/cache/v1/data", True)
    assert kwargs["pids_limit"] == PIDS_LIMIT
    nproc = within_hard_limit(NPROC_LIMIT, resource.RLIMIT_NPROC)
    nofile = within_hard_limit(NOFILE_LIMIT, resource.RLIMIT_NOFILE)
    assert 0 < nofile <= NOFILE_LIMIT and 0 < nproc <= NPROC_LIMIT
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in kwargs["ulimits"]} == {
        ("nproc", nproc, nproc), ("nofile", nofile, nofile)}
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["user"] == "1000:1000"


def test_two_inputs_at_one_mount_point_are_refused(folder: RunFolder, tmp_path: Path) -> None:
    mounts = [_mount("a", "/cache/x", "/data"), _mount("b", "/cache/y", "/data")]
    with pytest.raises(ValueError, match="input 'b' would be mounted at /data, where input 'a'"):
        run_container_spec(_definition(), folder, ComputeDefinition("cpu-cluster", 1), mounts, {},
                           Settings(home=tmp_path), host_memory=8 * 1024**3, host_cpus=2)


class _Container:
    """A container that runs until it is stopped."""

    def __init__(self) -> None:
        self.stopped = False
        self.attrs: dict[str, Any] = {}

    def stop(self, timeout: int) -> None:
        self.stopped = True

    def wait(self, timeout: float) -> dict[str, int]:
        import requests.exceptions

        if not self.stopped:
            raise requests.exceptions.ReadTimeout()
        return {"StatusCode": 137}

    def reload(self) -> None:
        pass


def test_a_run_that_writes_over_its_disk_limit_is_stopped_and_says_why(folder: RunFolder, tmp_path: Path) -> None:
    from sandbox.local_runner import StartedRun

    (folder.wd / "outputs" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    runner = LocalRunner(engine=None, store=None, settings=Settings(home=tmp_path),  # type: ignore[arg-type]
                         max_run_bytes=1024 * 1024, min_free_bytes=0)
    started = StartedRun(_definition(), folder, _Container(), ComputeDefinition("cpu-cluster", 1))  # type: ignore[arg-type]
    outcome = _within(10, lambda: runner.wait(started, cancel=threading.Event()))
    assert outcome.status == RunStatus.FAILED and started.container.stopped
    assert "over the limit of 0.000976562 GiB per run" in outcome.error["message"]
    assert "over the limit" in _notes(folder)


def test_a_run_making_too_many_empty_files_is_stopped_and_says_why(folder: RunFolder, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.local_runner as local_runner
    from sandbox.local_runner import StartedRun

    monkeypatch.setattr(local_runner, "MAX_RUN_ENTRIES", 100)
    for index in range(150):  # empty files take no blocks: only the count stops them
        (folder.wd / "outputs" / f"empty{index}").write_bytes(b"")
    runner = LocalRunner(engine=None, store=None, settings=Settings(home=tmp_path),  # type: ignore[arg-type]
                         min_free_bytes=0)
    started = StartedRun(_definition(), folder, _Container(), ComputeDefinition("cpu-cluster", 1))  # type: ignore[arg-type]
    outcome = _within(10, lambda: runner.wait(started, cancel=threading.Event()))
    assert outcome.status == RunStatus.FAILED and started.container.stopped
    assert "files and folders, over the limit of 100 per run" in outcome.error["message"]


# -- floods: whatever a run writes, the service's memory and descriptors stay bounded ------------------


def test_a_flood_of_files_and_links_is_scanned_up_to_the_limit_with_a_bounded_note(
        folder: RunFolder, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.run_folder as run_folder

    monkeypatch.setattr(run_folder, "MAX_FILES", 50)
    for index in range(200):
        (folder.control / "azureml-logs" / f"f{index:04d}").write_bytes(b"")
        (folder.control / "azureml-logs" / f"l{index:04d}").symlink_to(secret)
    scan = folder.scan()
    assert len(scan.files) == 50
    assert len(scan.skipped.named) == run_folder.MAX_NAMED_SKIPS and scan.skipped.more > 0
    notes = run_folder.skipped_notes(scan.skipped)
    assert len(notes) == run_folder.MAX_NAMED_SKIPS + 1 and "more entries" in notes[-1]


def test_many_folders_are_walked_with_one_open_folder_per_level(folder: RunFolder) -> None:
    for index in range(300):
        (folder.control / "azureml-logs" / f"d{index}").mkdir()
        (folder.control / "azureml-logs" / f"d{index}" / "x.txt").write_text("x")
    before = len(os.listdir("/proc/self/fd"))
    peak = 0

    for _ in folder._walk("control/azureml-logs", "azureml-logs/", folder.scan().skipped):
        peak = max(peak, len(os.listdir("/proc/self/fd")) - before)
    assert peak <= 6, f"{peak} descriptors open at once while walking 300 folders"
    usage = folder.disk_usage()
    assert usage.entries >= 600


class _ExitedContainer(_Container):
    """A container whose script has already ended with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def wait(self, timeout: float) -> dict[str, int]:
        return {"StatusCode": self.code}


def test_an_error_the_run_posted_fails_a_run_that_exited_zero_with_azures_message(folder: RunFolder,
                                                                                  tmp_path: Path) -> None:
    from sandbox.local_runner import StartedRun

    posted = {"code": "UserError", "message": "bad data", "debug_type": "ValueError", "debug_message": "bad data",
              "debug_stack_trace": "Traceback ...\n"}  # what azureml-core's run.fail() / Run.Error carries
    runner = LocalRunner(engine=None, store=None, settings=Settings(home=tmp_path),  # type: ignore[arg-type]
                         min_free_bytes=0)
    compute = ComputeDefinition("cpu-cluster", 1)
    failed = runner.wait(StartedRun(_definition(), folder, _ExitedContainer(0), compute),  # type: ignore[arg-type]
                         cancel=threading.Event(), reported_error=lambda: posted)
    assert failed.status is RunStatus.FAILED and failed.exit_code == 0
    assert failed.error["message"] == "bad data" and failed.error["type"] == "ValueError"
    completed = runner.wait(StartedRun(_definition(), folder, _ExitedContainer(0), compute),  # type: ignore[arg-type]
                            cancel=threading.Event())
    assert completed.status is RunStatus.COMPLETED and completed.error is None
