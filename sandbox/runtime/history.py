"""Append-only run history records (``/azureml-run/history.jsonl``), read by the host while the run goes.

One JSON object per line, written with a single ``write`` on an O_APPEND descriptor, so lines from
several threads or processes never interleave. Kinds: metric, tags, properties, file, error. The host
reads lines of at most 64 KiB (``sandbox.run_history.MAX_LINE``) and skips longer ones with a note.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any


class HistoryWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "time": time.time(), **fields}
        line = (json.dumps(record, default=_jsonable) + "\n").encode("utf-8")
        with self._lock:
            try:  # a script that put a FIFO or a link here loses its history, never its run
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as exc:
                print(f"aml-sandbox: run history record {kind!r} not written to {self.path}: {exc}", file=sys.stderr)
                return
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def _jsonable(value: Any) -> Any:
    """numpy and torch scalars and arrays become plain numbers and lists."""
    for attr in ("item", "tolist"):
        method = getattr(value, attr, None)
        if callable(method):
            try:
                return method()
            except (TypeError, ValueError):
                continue
    return str(value)
