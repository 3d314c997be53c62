"""The run container's main process: runs the injector and writes everything it prints to the driver log.

Output is copied byte for byte as it arrives (progress bars without newlines included) to
``/azureml-run/azureml-logs/70_driver_log.txt`` and to the container's own stdout. SIGTERM (a
cancel, ``docker stop``) is passed on to the script. The exit code is the script's; a script killed
by a signal is recorded with the signal's name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

BOOTSTRAP = ("import sys; sys.path.insert(0, {setup!r}); "
             "from aml_sandbox_runtime.context_manager_injector import main; sys.exit(main())")


def main() -> int:
    control_dir = os.environ.get("AML_SANDBOX_CONTROL_DIR", "/azureml-run")
    setup_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log_dir = os.path.join(control_dir, "azureml-logs")
    os.makedirs(log_dir, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-c", BOOTSTRAP.format(setup=setup_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    assert child.stdout is not None
    out = sys.stdout.buffer
    with open(os.path.join(log_dir, "70_driver_log.txt"), "ab", buffering=0) as log:
        fd = child.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:  # pragma: no cover - retried by Python since 3.5
                continue
            if not chunk:
                break
            log.write(chunk)
            out.write(chunk)
            out.flush()
    code = child.wait()
    if code < 0:  # killed by a signal: the shell's convention, as Azure reports it
        return 128 - code
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
