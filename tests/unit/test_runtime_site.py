"""The run's ``sitecustomize`` (sandbox/runtime/site): every Python process of a run flushes its run records at exit.

Each test starts a new interpreter with ``PYTHONPATH=<site>:<fake>`` as the run container sets it, where
``<fake>`` holds a stand-in ``azureml._run_impl.run_base`` whose ``_RunBase._kill(timeout)`` writes a line
to a file (the pid, the timeout, the kill handlers it takes off the queue) and prints Azure's cleanup line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parents[2] / "sandbox" / "runtime" / "site"
FAKE_RUN_BASE = '''
import os
import queue


class _RunBase:
    _registered_kill_handlers = queue.Queue()

    @classmethod
    def _kill(cls, timeout=40):
        if os.environ.get("FAKE_KILL_FAILS"):
            raise RuntimeError("the service is down")
        handlers = []  # azureml-core's _kill takes every handler off the queue
        while not cls._registered_kill_handlers.empty():
            handlers.append(cls._registered_kill_handlers.get_nowait())
        with open(os.environ["FAKE_KILL_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {timeout} {handlers}\\n")
        print(f"Cleaning up all outstanding Run operations, waiting {timeout} seconds")
'''


@dataclass
class Child:
    code: int
    stdout: str
    stderr: str
    kills: list[str]


@pytest.fixture
def fake_azureml(tmp_path: Path) -> Path:
    package = tmp_path / "fake" / "azureml" / "_run_impl"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "run_base.py").write_text(FAKE_RUN_BASE)
    return package.parent.parent


def run_child(tmp_path: Path, fake: Path, script: str, *,
              more_path: tuple[Path, ...] = (), fails: bool = False) -> Child:
    log = tmp_path / "kills.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in [SITE, fake, *more_path]), FAKE_KILL_LOG=str(log),
               PYTHONUNBUFFERED="1")
    if fails:
        env["FAKE_KILL_FAILS"] = "1"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    kills = log.read_text().splitlines() if log.exists() else []
    return Child(done.returncode, done.stdout, done.stderr, kills)


def test_a_process_that_used_azureml_core_flushes_its_runs_at_exit_without_printing(
        tmp_path: Path, fake_azureml: Path) -> None:
    child = run_child(tmp_path, fake_azureml, """
        import os
        from azureml._run_impl import run_base
        run_base._RunBase._registered_kill_handlers.put("run")
        print(os.getpid())
        """)
    assert child.code == 0, child.stderr
    pid = child.stdout.split()[0]
    assert child.stdout == f"{pid}\n", "the cleanup lines are the main process's job wrapper's, not every process's"
    assert child.kills == [f"{pid} 40.0 ['run']"]
    assert child.stderr == ""


def test_a_process_that_never_imported_azureml_core_does_not_load_it(tmp_path: Path, fake_azureml: Path) -> None:
    child = run_child(tmp_path, fake_azureml, """
        import sys
        print(sorted(name for name in sys.modules if name.startswith("azureml")))
        """)
    assert (child.code, child.stdout, child.kills) == (0, "[]\n", []), child.stderr


def test_a_forked_worker_flushes_only_the_runs_it_made_itself(tmp_path: Path, fake_azureml: Path) -> None:
    child = run_child(tmp_path, fake_azureml, """
        import multiprocessing, os
        from azureml._run_impl import run_base

        def work():
            run_base._RunBase._registered_kill_handlers.put("worker run")
            print("worker", os.getpid(), flush=True)

        if __name__ == "__main__":
            run_base._RunBase._registered_kill_handlers.put("parent run")
            worker = multiprocessing.get_context("fork").Process(target=work)
            worker.start()
            worker.join()
            print("parent", os.getpid(), worker.exitcode, flush=True)
        """)
    assert child.code == 0, child.stderr
    pids = dict(line.split()[:2] for line in child.stdout.splitlines())
    assert child.stdout.splitlines()[-1].endswith(" 0"), child.stdout
    flushed = sorted(line for line in child.kills if not line.endswith(" []"))
    assert flushed == sorted([f"{pids['worker']} 40.0 ['worker run']", f"{pids['parent']} 40.0 ['parent run']"]), \
        "each run is flushed once, by the process that made it"
    assert "Cleaning up" not in child.stdout


def test_another_sitecustomize_later_on_the_path_still_runs(tmp_path: Path, fake_azureml: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("print('the image sitecustomize ran')\n")
    child = run_child(tmp_path, fake_azureml, """
        from azureml._run_impl import run_base
        print("script done")
        """, more_path=(other,))
    assert child.code == 0, child.stderr
    assert child.stdout.splitlines() == ["the image sitecustomize ran", "script done"]
    assert len(child.kills) == 1, "chaining keeps the flush"


def test_a_flush_that_fails_is_named_and_the_process_keeps_its_exit_code(tmp_path: Path, fake_azureml: Path) -> None:
    child = run_child(tmp_path, fake_azureml, """
        import sys
        from azureml._run_impl import run_base
        sys.exit(5)
        """, fails=True)
    assert child.code == 5
    assert child.stderr == ("aml-sandbox: this process's run records could not all be sent: "
                            "RuntimeError: the service is down\n")
