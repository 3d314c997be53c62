"""What a test session starts, recorded with its owner's pid so that a later session can remove it.

A session that is killed (Ctrl-C twice, an OOM kill, the machine or the Docker engine stopping) never
reaches its teardown; its compose stacks and testcontainers would then come back with the engine and
stay. Each one is claimed in a small file under the system's temporary folder; the next session
removes whatever a dead session claimed (containers with their anonymous volumes, compose projects with
their volumes) and leaves the claims of live sessions alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

OWNERS = Path(tempfile.gettempdir()) / "aml-sandbox-test-owners"


def claim(kind: str, name: str, pid: int | None = None) -> None:
    """Record that this process (or ``pid``) owns the compose project or container ``name`` (project|container)."""
    OWNERS.mkdir(parents=True, exist_ok=True)
    record = {"kind": kind, "name": name, "pid": pid or os.getpid()}
    (OWNERS / f"{kind}-{name}").write_text(json.dumps(record))


def release(kind: str, name: str) -> None:
    (OWNERS / f"{kind}-{name}").unlink(missing_ok=True)


def remove(kind: str, name: str) -> None:
    """Remove a compose project (containers, its runs' containers, volumes) or a container with its volumes."""
    if kind == "project":
        subprocess.run(["docker", "compose", "-p", name, "down", "--volumes", "--remove-orphans"],
                       capture_output=True, timeout=300, check=False)
        remove_run_containers(name)
    else:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)
    release(kind, name)


def remove_run_containers(project: str) -> list[str]:
    """Remove the run containers of a stack (with their volumes); return their ids."""
    runs = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=aml-sandbox.project={project}"],
                          capture_output=True, text=True, check=False).stdout.split()
    if runs:
        subprocess.run(["docker", "rm", "-f", "-v", *runs], capture_output=True, check=False)
    return runs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Remove what dead test sessions left; return what was removed (``kind name``)."""
    removed: list[str] = []
    if not OWNERS.is_dir():
        return removed
    for path in sorted(OWNERS.iterdir()):
        try:
            record = json.loads(path.read_text())
            kind, name, pid = record["kind"], record["name"], int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if not _alive(pid):
            remove(kind, name)
            removed.append(f"{kind} {name}")
    return removed
