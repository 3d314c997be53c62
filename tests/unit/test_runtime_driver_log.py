"""The driver log the runtime writes (PARITY.md 1.2-1.5), from the injector's ``run_script``, without Docker.

Each test runs ``run_script(spec)`` in this process on a tiny ``train.py`` in a temporary working
directory, with a spec as the host writes it; stderr is merged into stdout as the run container's
driver merges them into ``70_driver_log.txt``. Without the ``AZUREML_*`` variables of a run,
azureml-core cannot load the run, so the run history context manager takes its fallback: it prints
the cleanup lines itself (``0 items cleaning up...``), says why ``outputs/`` and ``logs/`` were not
sent, and posts the script's exception with the standard library (checked here against a local
HTTP server). Runs with azureml-core and the stack are tests/integration/test_tutorial.py's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sandbox.runtime.context_manager_injector import run_script

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}"
#: What Python prints for a float (``time.time() - start``), small ones in exponent form included.
SECONDS = r"(?P<seconds>\d+\.\d+(?:e-\d+)?)"
RUN_ID = "tutorial-session-3_1600171983_763c5381"
WORKSPACE = {"name": "dsvm-aml", "subscription_id": "sub-0", "resource_group": "rg-0"}
TUTORIAL_ARGUMENTS = ["--data_path", "$input", "--learning_rate", "0.003", "--momentum", "0.92"]
DATASET_STR = "FileDataset\n" + json.dumps({
    "source": ["('workspaceblobstore', 'datasets/cifar10')"],
    "definition": ["GetDatastoreFiles"],
    "registration": {"id": "0d6a1f5e-1f7e-4b8e-9a53-3c1f0c7f2f11", "name": None, "version": None,
                     "workspace": "Workspace.create(name='dsvm-aml', subscription_id='sub-0', resource_group='rg-0')"},
}, indent=2)
SUCCESS = "The experiment completed successfully. Finalizing run..."
FAILURE = "The experiment failed. Finalizing run..."
NOT_SENT = "aml-sandbox: the run's outputs/ and logs/ were not sent to run history: "
NO_RUN = "azureml-core could not load the run (RunEnvironmentException"
NOT_INSTALLED = ("azureml-core is not installed in this environment; add azureml-core (or azureml-defaults) "
                 "to the environment to keep them")
MOUNT_FAILED = ("Dataset initialization failed: DatasetMountValidationException: Cannot mount dataset. "
                "Source of the dataset is either not accessible or does not contain any data.")
RUN_ENV = {"AZUREML_RUN_TOKEN": "token-0", "AZUREML_RUN_ID": RUN_ID, "AZUREML_ARM_SUBSCRIPTION": "sub-0",
           "AZUREML_ARM_RESOURCEGROUP": "rg-0", "AZUREML_ARM_WORKSPACE_NAME": "dsvm-aml",
           "AZUREML_ARM_PROJECT_NAME": "tutorial-session-3"}
EVENTS_PATH = ("/history/v1.0/subscriptions/sub-0/resourceGroups/rg-0/providers/Microsoft.MachineLearningServices"
               f"/workspaces/dsvm-aml/experiments/tutorial-session-3/runs/{RUN_ID}/events")


@dataclass
class Injected:
    exit_code: int
    lines: list[str]
    seconds: float

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def inject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Injected]]:
    """``inject(script_body, inputs=[...], arguments=[...])``: run_script on ``train.py`` in a temp folder.

    Everything run_script changes for the whole process (os.listdir/scandir, sys.argv/path, the working
    directory, the environment, the azureml logger azureml-core configures) is put back afterwards.
    """
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.chdir(wd)
    monkeypatch.setattr(os, "listdir", os.listdir)
    monkeypatch.setattr(os, "scandir", os.scandir)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    environ = dict(os.environ)
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
        try:
            code = run_script(spec)
        finally:
            monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        seconds = time.perf_counter() - started
        return Injected(code, capsys.readouterr().out.splitlines(), seconds)

    yield run
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)


@pytest.fixture
def without_azureml_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's environment has no azureml-core: its run history context manager cannot be imported."""
    monkeypatch.setitem(sys.modules, "azureml.history._tracking", None)


@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@pytest.fixture
def run_history(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Posted]]:
    """A local run history answering 200 to every POST; the AZUREML_* variables of a run point at it."""
    posted: list[Posted] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length", "0"))
            posted.append(Posted(self.path, dict(self.headers), json.loads(self.rfile.read(size))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZUREML_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    for name, value in RUN_ENV.items():
        monkeypatch.setenv(name, value)
    try:
        yield posted
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def tail(outcome: str, why: str, mount_point: str | None = None) -> list[str]:
    """PARITY.md 1.4's tail as the fallback prints it, one regex a line; ``why`` may span lines."""
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
        re.escape("0 items cleaning up..."),
        re.escape(NOT_SENT + why) + r"(?s:.*?)\.",
        rf"Cleanup took {SECONDS} seconds",
        re.escape("Enter __exit__ of DatasetContextManager"),
        *(unmount if mount_point else []),
        re.escape("Exit __exit__ of DatasetContextManager"),
        rf"\[{STAMP}\] TimeoutHandler __exit__",
    ]


def split_tail(result: Injected, outcome: str, why: str, mount_point: str | None = None) -> tuple[str, float]:
    """Match the tail at the very end of the log; return what came before it and the ``Cleanup took`` seconds."""
    pattern = r"\n".join(tail(outcome, why, mount_point)) + r"\Z"
    found = re.search(r"(?:\A|\n)" + pattern, result.text)
    assert found, f"the log does not end with the fallback's tail ({outcome!r}, {why!r}):\n{result.text}"
    return result.text[:found.start()], float(found["seconds"])


def after_script_type(before_tail: str) -> list[str]:
    """What the script itself printed: the lines between ``Script type = None`` and the tail."""
    lines = before_tail.split("\n")
    assert "Script type = None" in lines, before_tail
    return lines[lines.index("Script type = None") + 1:]


def test_a_script_that_completes_gets_the_success_tail_and_the_reason_nothing_was_uploaded(
        inject: Callable[..., Injected]) -> None:
    result = inject('print("hello world")\n')
    assert result.exit_code == 0
    before, seconds = split_tail(result, SUCCESS, NO_RUN)
    assert after_script_type(before) == ["hello world"]
    assert 0 <= seconds <= result.seconds
    assert re.fullmatch(rf"\[{STAMP}\] Entering context manager injector\.", result.lines[0])
    assert result.lines[1].startswith("[context_manager_injector.py] Command line Options: Namespace(inject=[")
    assert result.lines[1].endswith("invocation=['train.py'])")
    assert FAILURE not in result.lines


OUTPUTS_SCRIPT = """
    import os
    print(sorted(p for p in ("outputs", os.path.join("logs", "azureml")) if os.path.isdir(p)))
    print(os.environ["AZUREML_OUTPUT_DIRECTORY"])
    """


def test_the_outputs_and_logs_folders_exist_for_the_script_even_without_run_history(
        inject: Callable[..., Injected]) -> None:
    result = inject(OUTPUTS_SCRIPT)
    assert result.exit_code == 0
    before, _ = split_tail(result, SUCCESS, NO_RUN)
    assert after_script_type(before) == [str(["logs/azureml", "outputs"]), "./outputs"], "azureml-core's OUTPUTS_DIR"


def test_without_azureml_core_the_output_directory_variable_is_azures_too(
        inject: Callable[..., Injected], without_azureml_core: None) -> None:
    result = inject(OUTPUTS_SCRIPT)
    before, _ = split_tail(result, SUCCESS, NOT_INSTALLED)
    assert after_script_type(before) == [str(["logs/azureml", "outputs"]), "./outputs"]


def test_a_failing_script_prints_only_its_own_frames_then_the_failure_tail(inject: Callable[..., Injected]) -> None:
    result = inject("""
        def train():
            raise ValueError('boom 42')

        print("epoch 1")
        train()
        """)
    assert result.exit_code == 1
    before, _ = split_tail(result, FAILURE, NO_RUN)
    script = os.path.abspath("train.py")
    assert after_script_type(before) == [
        "epoch 1",
        "Traceback (most recent call last):",
        f'  File "{script}", line 5, in <module>',
        "    train()",
        f'  File "{script}", line 2, in train',
        "    raise ValueError('boom 42')",
        "ValueError: boom 42",
    ]
    assert SUCCESS not in result.lines


def test_a_script_that_does_not_compile_prints_only_the_syntax_error(inject: Callable[..., Injected]) -> None:
    result = inject("print('unclosed'\n")
    assert result.exit_code == 1
    before, _ = split_tail(result, FAILURE, NO_RUN)
    printed = after_script_type(before)
    assert "Traceback (most recent call last):" not in printed
    assert printed[-1].startswith("SyntaxError: ")
    assert any("train.py" in line for line in printed)


@pytest.mark.parametrize(("exit_call", "code"), [("sys.exit(3)", 3), ("raise SystemExit(2)", 2)])
def test_a_script_exiting_with_a_non_zero_code_fails_the_run_with_that_code(
        inject: Callable[..., Injected], exit_call: str, code: int) -> None:
    result = inject(f"import sys\nprint('leaving')\n{exit_call}\nprint('not reached')\n")
    assert result.exit_code == code
    before, _ = split_tail(result, FAILURE, NO_RUN)
    assert after_script_type(before) == ["leaving"], "a SystemExit prints no traceback"


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "sys.exit()", "sys.exit(None)"])
def test_a_script_exiting_with_zero_completes(inject: Callable[..., Injected], exit_call: str) -> None:
    result = inject(f"import sys\nprint('done')\n{exit_call}\nprint('not reached')\n")
    assert result.exit_code == 0
    before, _ = split_tail(result, SUCCESS, NO_RUN)
    assert after_script_type(before) == ["done"]


def test_a_script_exiting_with_a_message_prints_it_and_fails_with_1(inject: Callable[..., Injected]) -> None:
    result = inject("import sys\nsys.exit('no data found')\n")
    assert result.exit_code == 1
    before, _ = split_tail(result, FAILURE, NO_RUN)
    assert after_script_type(before) == ["no data found"]


def test_the_script_sees_argv_name_main_and_its_folder_first_on_the_path(inject: Callable[..., Injected]) -> None:
    result = inject("""
        import os, sys
        print(__name__, sys.argv)
        print(sys.path[0] == os.getcwd())
        """, arguments=["--epochs", "2"])
    assert result.exit_code == 0
    before, _ = split_tail(result, SUCCESS, NO_RUN)
    assert after_script_type(before) == ["__main__ ['train.py', '--epochs', '2']", "True"]


def test_without_azureml_core_the_driver_log_says_it_is_not_installed(
        inject: Callable[..., Injected], without_azureml_core: None) -> None:
    result = inject('print("hello world")\n')
    assert result.exit_code == 0
    before, _ = split_tail(result, SUCCESS, NOT_INSTALLED)
    assert after_script_type(before) == ["hello world"]
    assert NOT_SENT + NOT_INSTALLED + "." in result.lines, "the reason is one line when azureml-core is missing"


def test_the_reason_azureml_core_could_not_load_the_run_fits_on_one_line(inject: Callable[..., Injected]) -> None:
    result = inject('print("hello world")\n')
    reasons = [line for line in result.lines if line.startswith(NOT_SENT)]
    assert len(reasons) == 1
    assert reasons[0].endswith(").")


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
    head = [
        "Initialize DatasetContextManager.",
        f"Starting the daemon thread to refresh tokens in background for process with pid = {os.getpid()}",
        "Enter __enter__ of DatasetContextManager",
    ]
    expected = [
        "Processing 'input'.",
        *DATASET_STR.replace("FileDataset\n", "Processing dataset FileDataset\n", 1).splitlines(),
        f"Mounting input to {mount}.",
        f"Mounted input to {mount} as folder.",
        "Exit __enter__ of DatasetContextManager",
        "Entering Run History Context Manager.",
    ]
    assert result.lines[2:5] == head
    assert re.fullmatch(r"SDK version: azureml-core==\S+ azureml-dataprep==\S+\. Session id: \(telemetry disabled\)\. "
                        + re.escape(f"Run id: {RUN_ID}."), result.lines[5])
    assert result.lines[6:6 + len(expected)] == expected
    before, _ = split_tail(result, SUCCESS, NO_RUN, mount_point=str(mount))
    script_lines = [
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
    lines = before.split("\n")
    start = lines.index(script_lines[0])
    assert lines[start:] == script_lines
    # between the two: only azureml-core's own note on stderr that it could not load the run
    assert "\n".join(lines[6 + len(expected):start]).startswith("aml-sandbox: " + NO_RUN)


def test_listings_inside_a_mount_are_in_name_order_as_blobfuse_gives_them(
        inject: Callable[..., Injected], tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    mount.mkdir()
    names = ["b", "a", "c", "B", "_z", "0"]
    for name in names:
        (mount / name).write_text(name)
    inputs = [{"name": "input", "mode": "mount", "path": str(mount), "mount_point": str(mount),
               "single_file": False, "dataset_str": DATASET_STR}]
    result = inject(f"""
        import os
        print(os.listdir({str(mount)!r}))
        with os.scandir({str(mount)!r}) as entries:
            print([e.name for e in entries])
        """, inputs=inputs)
    assert result.exit_code == 0
    before, _ = split_tail(result, SUCCESS, NO_RUN, mount_point=str(mount))
    assert after_script_type(before)[:2] == [str(sorted(names))] * 2


@pytest.mark.parametrize("content", ["missing", "empty"])
def test_an_input_with_no_data_fails_before_the_script_and_posts_azures_mount_error(
        inject: Callable[..., Injected], run_history: list[Posted], tmp_path: Path, content: str) -> None:
    mount = tmp_path / "mnt"
    if content == "empty":
        mount.mkdir()
    inputs = [{"name": "input", "mode": "mount", "path": str(mount), "mount_point": str(mount),
               "single_file": False, "dataset_str": DATASET_STR}]
    result = inject("print('the script ran')\n", inputs=inputs)
    assert result.exit_code == 1
    assert result.lines[-2:] == [f"Mounting input to {mount}.", "UserError: " + MOUNT_FAILED]
    assert "the script ran" not in result.lines and "Script type = None" not in result.lines
    assert [p.path for p in run_history] == [EVENTS_PATH]
    assert run_history[0].headers["Authorization"] == "Bearer token-0"
    body = run_history[0].body
    assert body["name"] == "Microsoft.MachineLearning.Run.Error"
    assert body["data"]["RunId"] == RUN_ID
    assert body["data"]["ErrorResponse"]["error"] == {
        "code": "UserError", "message": MOUNT_FAILED, "debug_type": "DatasetMountValidationException"}


def test_without_azureml_core_the_scripts_exception_is_posted_as_the_runs_error(
        inject: Callable[..., Injected], without_azureml_core: None, run_history: list[Posted]) -> None:
    result = inject("""
        def train():
            raise ValueError("boom")

        train()
        """)
    assert result.exit_code == 1
    split_tail(result, FAILURE, NOT_INSTALLED)
    assert [p.path for p in run_history] == [EVENTS_PATH]
    posted = run_history[0]
    assert posted.headers["Authorization"] == "Bearer token-0"
    assert posted.headers["Content-Type"].startswith("application/json")
    assert posted.body["name"] == "Microsoft.MachineLearning.Run.Error"
    assert posted.body["data"]["RunId"] == RUN_ID
    error = posted.body["data"]["ErrorResponse"]["error"]
    assert {k: error[k] for k in ("code", "message", "debug_type", "debug_message")} == {
        "code": "UserError", "message": "User program failed with ValueError: boom", "debug_type": "ValueError",
        "debug_message": "boom"}
    assert 'line 2, in train\n    raise ValueError("boom")' in error["debug_stack_trace"]


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "print('fine')"])
def test_a_run_that_completes_posts_no_error(inject: Callable[..., Injected], without_azureml_core: None,
                                            run_history: list[Posted], exit_call: str) -> None:
    result = inject(f"import sys\n{exit_call}\n")
    assert result.exit_code == 0
    assert run_history == []


def test_an_unreachable_run_history_is_named_and_the_run_keeps_the_scripts_exit_code(
        inject: Callable[..., Injected], without_azureml_core: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AZUREML_SERVICE_ENDPOINT", f"http://127.0.0.1:{port}")
    for name, value in RUN_ENV.items():
        monkeypatch.setenv(name, value)
    result = inject("raise ValueError('boom')\n")
    assert result.exit_code == 1
    assert any(line.startswith("aml-sandbox: the run's error could not be recorded in run history: ")
               for line in result.lines), result.text
