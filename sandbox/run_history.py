"""Follows a run's history records (``control/history.jsonl``) without trusting the file.

The run writes the file, so it may be a link, a FIFO, one endless line or lines that are not records.
It is read only when it is a regular file reached without following a link, opened non-blocking, at most
``MAX_READ`` bytes per call; a line longer than ``MAX_LINE`` is skipped up to its newline without being
kept; a line that is not a JSON object with a ``kind`` is skipped. Each skip is one line in the run's
driver log (the service's notes), up to ``MAX_NOTES`` of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from sandbox.run_folder import HISTORY, RunFolder, open_regular

#: Bytes read from the history per call; the rest waits for the next call.
MAX_READ = 1024 * 1024
#: The longest record line kept (the runtime writes far shorter ones).
MAX_LINE = 64 * 1024
#: Skipped lines reported one by one in the driver log; later ones are skipped silently.
MAX_NOTES = 20


class HistoryFollower:
    """Reads the new complete records of a run's history since the last call, at most ``MAX_READ`` bytes at a time."""

    def __init__(self, folder: RunFolder, offset: int = 0, *, report: bool = True) -> None:
        self.folder = folder
        self.offset = offset
        self.report = report  # False: skip bad lines without a note (a second pass over lines already reported)
        #: True when the last call stopped at ``MAX_READ``: more is already there.
        self.more = False
        self._skipping = False  # inside a line longer than MAX_LINE: drop bytes up to its newline
        self._notes = 0
        self._refused = False

    def read_new(self) -> list[dict[str, Any]]:
        handle = open_regular(self.folder.root, HISTORY)
        if handle is None:
            self.more = False
            if os.path.lexists(self.folder.root / HISTORY) and not self._refused:
                self._refused = True
                self.note("history.jsonl is not a regular file; the run's metrics, tags and properties from "
                           "it are not read.")
            return []
        with handle:
            data = os.pread(handle.fileno(), MAX_READ, self.offset)
        self.more = len(data) == MAX_READ
        records: list[dict[str, Any]] = []
        pos = 0
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                self.offset += len(data)
                return []
            pos, self._skipping = newline + 1, False
        while (newline := data.find(b"\n", pos)) >= 0:
            record = self._parse(data[pos:newline], self.offset + pos)
            if record is not None:
                records.append(record)
            pos = newline + 1
        if len(data) - pos > MAX_LINE:
            self.note(f"history.jsonl line at byte {self.offset + pos} skipped: longer than {MAX_LINE} bytes.")
            pos, self._skipping = len(data), True
        self.offset += pos
        return records

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """Every batch of records up to the end of the file (for a run that has ended)."""
        while True:
            records = self.read_new()
            if records:
                yield records
            if not self.more:
                return

    def _parse(self, line: bytes, at: int) -> dict[str, Any] | None:
        if len(line) > MAX_LINE:
            self.note(f"history.jsonl line at byte {at} skipped: longer than {MAX_LINE} bytes.")
            return None
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            self.note(f"history.jsonl line at byte {at} skipped: not JSON ({type(exc).__name__}: {exc}).")
            return None
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            self.note(f"history.jsonl line at byte {at} skipped: not a record (a JSON object with a \"kind\").")
            return None
        return record

    def note(self, message: str) -> None:
        """A line in the run's driver log about its history (the first ``MAX_NOTES`` of them)."""
        if not self.report:
            return
        self._notes += 1
        if self._notes <= MAX_NOTES:
            self.folder.note(f"Run history: {message}")
        elif self._notes == MAX_NOTES + 1:
            self.folder.note(f"Run history: more than {MAX_NOTES} bad lines; later ones are skipped without a note.")
