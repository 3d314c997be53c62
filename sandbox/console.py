"""Progress output of the sandbox's own tooling (stack, images, bootstrap): one style everywhere.

Azure ML's own console lines (upload progress, run streaming) are printed by the facade in Azure's
wording instead; these helpers are for the sandbox's machinery only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def step(message: str) -> None:
    """A step starts: ``==> message``."""
    print(f"==> {message}", flush=True)


def detail(message: str) -> None:
    """A detail of the current step, indented."""
    print(f"    {message}", flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def timed(message: str) -> Iterator[None]:
    """``==> message`` now, ``    done in 1.2 s`` when the block ends without error."""
    step(message)
    start = time.monotonic()
    yield
    detail(f"done in {time.monotonic() - start:.1f} s")
