"""The driver log the runtime writes (PARITY.md 1.2-1.5), from the injector's ``run_script``, without Docker.

Each test runs ``run_script`` in this process on a tiny script in a temporary working directory, with
a temporary control folder and a spec as the host writes it; stderr is merged into stdout as the run
container's driver merges them into ``70_driver_log.txt``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.runtime.context_manager_injector import run_script
from sandbox.runtime.history import HistoryWriter

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}"
RUN_ID = "tutorial-session-3_1600171983_763c5381"
WORKSPACE = {"name": "dsvm-aml", "subscription_id": "sub-0", "resource_group": "rg-0"}
TUTORIAL_ARGUMENTS = ["--data_path", "$input", "--learning_rate", "0.003", "--momentum", "0.92"]
DATASET_STR = "FileDataset\n" + json.dumps({
    "source": ["('workspaceblobstore', 'datasets/cifar10')"],
    "definition": ["GetDatastoreFiles"],
    "registration": {"id": "0d6a1f5e-1f7e-4b8e-9a53-3c1f0c7f2f11", "name": None, "version": None,
                     "workspace": "Workspace.create(name='dsvm-aml', subscription_id='sub-0', resource_group='rg-0')"},
}, indent=2)


@dataclass
class Injected:
    exit_code: int
    lines: list[str]
    seconds: float
    control: Path


@pytest.fixture
def inject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Injected]]:
    """``inject(script_body, inputs=[...], arguments=[...])``: run_script on ``train.py`` in a temp folder.

    Everything run_script changes for the whole process (os.listdir, Run.get_context, the azureml
    logger, AZUREML_OUTPUT_DIRECTORY) is put back afterwards.
    """
    from azureml.core import run as run_module

    wd, control = tmp_path / "wd", tmp_path / "control"
    wd.mkdir()
    control.mkdir()
    monkeypatch.chdir(wd)
    monkeypatch.setattr(os, "listdir", os.listdir)
    monkeypatch.setattr(os, "scandir", os.scandir)
    monkeypatch.setattr(run_module.Run, "get_context", run_module.Run.__dict__["get_context"])
    monkeypatch.setenv("AZUREML_OUTPUT_DIRECTORY", "./outputs")
    logger = logging.getLogger("azureml")
    handlers = list(logger.handlers)
    monkeypatch.setattr(logger, "handlers", list(handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)

    def run(body: str, *, inputs: list[dict[str, Any]] | None = None,
            arguments: list[str] | None = None) -> Injected:
        (wd / "train.py").write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
        display = arguments or []
        spec = {"run_id": RUN_ID, "experiment": "tutorial-session-3", "workspace": WORKSPACE, "script": "train.py",
                "arguments_template": [a.replace("$input", "DatasetConsumptionConfig:input") for a in display],
                "arguments_display": display, "inputs": inputs or [], "cleanup_timeout": 300.0}
        capsys.readouterr()
        monkeypatch.setattr(sys, "stderr", sys.stdout)  # the driver merges them (stderr=STDOUT)
        started = time.perf_counter()
        code = run_script(spec, str(control), HistoryWriter(str(control / "history.jsonl")))
        seconds = time.perf_counter() - started
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        return Injected(code, capsys.readouterr().out.splitlines(), seconds, control)

    yield run
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()


def tail(items: int, outcome: str, mount_point: str | None = None) -> list[str]:
    """PARITY.md 1.4's tail, one regex a line: the finalizing lines, the cleanup, the dataset exit."""
    unmount = [re.escape(f"Unmounting {mount_point}."), re.escape(f"Finishing unmounting {mount_point}.")]
    return [
        re.escape(f"Starting the daemon thread to refresh tokens in background for process with pid = {os.getpid()}"),
        "",
        "",
        re.escape(outcome),
        re.escape("Logging experiment finalizing status in history service."),
        rf"\[{STAMP}\] TimeoutHandler __init__",
        rf"\[{STAMP}\] TimeoutHandler __enter__",
        re.escape("Cleaning up all outstanding Run operations, waiting 300.0 seconds"),
        re.escape(f"{items} items cleaning up..."),
        r"Cleanup took (?P<seconds>(0|[1-9]\d*)\.\d+) seconds",
        re.escape("Enter __exit__ of DatasetContextManager"),
        *(unmount if mount_point else []),
        re.escape("Exit __exit__ of DatasetContextManager"),
        rf"\[{STAMP}\] TimeoutHandler __exit__",
    ]


def match_lines(lines: list[str], patterns: list[str], start: int) -> dict[str, str]:
    groups: dict[str, str] = {}
    assert len(lines) >= start + len(patterns), "the log is too short:\n" + "\n".join(lines)
    for offset, pattern in enumerate(patterns):
        line = lines[start + offset]
        found = re.fullmatch(pattern, line)
        assert found, f"driver log line {start + offset}: {line!r} !~ {pattern!r}\n" + "\n".join(lines)
        groups.update({k: v for k, v in found.groupdict().items() if v is not None})
    return groups


def cleanup_seconds(lines: list[str], items: int, outcome: str, mount_point: str | None = None) -> float:
    expected = tail(items, outcome, mount_point)
    return float(match_lines(lines, expected, len(lines) - len(expected))["seconds"])


SUCCESS = "The experiment completed successfully. Finalizing run..."
FAILURE = "The experiment failed. Finalizing run..."


def test_a_script_that_never_asks_for_its_run_reports_one_cleanup_item(inject: Callable[..., Injected]) -> None:
    result = inject('print("hello world")\n')
    assert result.exit_code == 0
    seconds = cleanup_seconds(result.lines, 1, SUCCESS)
    assert 0 <= seconds <= result.seconds
    assert result.lines[-len(tail(1, SUCCESS)) - 1] == "hello world"


def test_a_script_that_logs_metrics_reports_two_items_and_the_time_their_flush_took(
        inject: Callable[..., Injected], monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        time.sleep(0.05)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    result = inject("""
        from azureml.core import Run
        run = Run.get_context()
        run.log("loss", 0.5)
        assert Run.get_context() is run  # one run object for the script, however often it asks
        run.log("loss", 0.25)
        print("Finished Training")
        """)
    assert result.exit_code == 0
    seconds = cleanup_seconds(result.lines, 2, SUCCESS)
    history = result.control / "history.jsonl"
    assert synced == [str(history), str(history)], "each run object's flush syncs the run's history records"
    assert 0.1 <= seconds <= result.seconds, "Cleanup took must time the flushes (2 x 50 ms here)"
    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["name"], r["value"]) for r in records if r["kind"] == "metric"] == [("loss", 0.5), ("loss", 0.25)]


@pytest.mark.parametrize(("uses_run", "items"), [(True, 2), (False, 1)], ids=["with-run", "without-run"])
def test_a_failing_script_prints_its_traceback_then_the_failure_tail(
        inject: Callable[..., Injected], uses_run: bool, items: int) -> None:
    body = "from azureml.core import Run\nRun.get_context().log('loss', 1.0)\n" if uses_run else ""
    result = inject(body + "raise ValueError('boom 42')\n")
    assert result.exit_code == 1
    cleanup_seconds(result.lines, items, FAILURE)
    end_of_traceback = len(result.lines) - len(tail(items, FAILURE)) - 1
    assert result.lines[end_of_traceback] == "ValueError: boom 42"
    assert "Traceback (most recent call last):" in result.lines
    assert SUCCESS not in result.lines
    errors = [json.loads(line) for line in (result.control / "history.jsonl").read_text().splitlines()]
    assert [(e["type"], e["message"]) for e in errors if e["kind"] == "error"] == [("ValueError", "boom 42")]


def test_a_mounted_input_gives_the_tutorials_lines_of_parity_1_2_in_order(
        inject: Callable[..., Injected], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "tmp9kituvp3"
    (mount / "cifar-10-batches-py").mkdir(parents=True)
    (mount / "cifar-10-python.tar.gz").write_bytes(b"")
    monkeypatch.setenv("input", str(mount))  # the runner sets $input (and INPUT, AZUREML_DATAREFERENCE_input)
    inputs = [{"name": "input", "mode": "mount", "path": str(mount), "mount_point": str(mount),
               "single_file": False, "dataset_str": DATASET_STR}]
    result = inject("""
        import argparse, os
        parser = argparse.ArgumentParser()
        parser.add_argument('--data_path', type=str)
        parser.add_argument('--learning_rate', type=float)
        parser.add_argument('--momentum', type=float)
        args = parser.parse_args()
        print("===== DATA =====")
        print("DATA PATH: " + args.data_path)
        print("LIST FILES IN DATA PATH...")
        print(os.listdir(args.data_path))
        print("================")
        """, inputs=inputs, arguments=TUTORIAL_ARGUMENTS)
    assert result.exit_code == 0
    expected = [
        "Processing 'input'.",
        *DATASET_STR.replace("FileDataset\n", "Processing dataset FileDataset\n", 1).splitlines(),
        f"Mounting input to {mount}.",
        f"Mounted input to {mount} as folder.",
        "Exit __enter__ of DatasetContextManager",
        "Entering Run History Context Manager.",
        f"Current directory:  {os.getcwd()}",
        "Preparing to call script [ train.py ] with arguments: ['--data_path', '$input', '--learning_rate', "
        "'0.003', '--momentum', '0.92']",
        f"After variable expansion, calling script [ train.py ] with arguments: ['--data_path', '{mount}', "
        "'--learning_rate', '0.003', '--momentum', '0.92']",
        "",
        "Script type = None",
        "===== DATA =====",
        f"DATA PATH: {mount}",
        "LIST FILES IN DATA PATH...",
        "['cifar-10-batches-py', 'cifar-10-python.tar.gz']",
        "================",
    ]
    assert re.fullmatch(rf"\[{STAMP}\] Entering context manager injector\.", result.lines[0])
    start = result.lines.index("Processing 'input'.")
    assert result.lines[start:start + len(expected)] == expected
    cleanup_seconds(result.lines, 1, SUCCESS, mount_point=str(mount))
    assert start + len(expected) + len(tail(1, SUCCESS, str(mount))) == len(result.lines)
