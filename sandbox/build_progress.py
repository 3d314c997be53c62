"""What an image build shows: one line per stage on the console, every line of output in the build log.

On a terminal the current stage is one line rewritten in place (``\\r``) with its elapsed time and a
spinner; elsewhere (CI logs, pipes) the stage line is printed when it starts, a ``... 30 s`` line
every ``heartbeat`` seconds, and ``done in N s`` when it ends. The raw output of debootstrap,
``docker build`` and pip goes to the build log file only (and to a mirror, e.g. the text that becomes
the run's ``azureml-logs/20_image_build_log.txt``); a failed build keeps its last lines for the error.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import TextIO

SPINNER = "|/-\\"
TAIL_LINES = 20


class BuildProgress:
    """The console and log side of one recipe's build. Use as a context manager."""

    def __init__(
        self,
        label: str,
        log_path: Path,
        *,
        mirror: TextIO | None = None,
        console: TextIO | None = None,
        tty: bool | None = None,
        quiet: bool = False,
        heartbeat: float = 30.0,
        tick: float = 0.25,
    ) -> None:
        self.label = label
        self.log_path = log_path
        self.mirror = mirror
        self._console = console
        self._tty = tty
        self.quiet = quiet
        self.heartbeat = heartbeat
        self.tick = tick
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._file: TextIO | None = None
        self._stage: str | None = None
        self._stage_start = 0.0
        self._last_beat = 0.0
        self._frame = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> BuildProgress:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.log_path, "w", encoding="utf-8")  # closed in __exit__
        if not self.quiet:
            self._ticker = threading.Thread(target=self._run_ticker, name=f"build-progress-{self.label}", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._end_stage(failed=exc is not None)
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- what the builder calls -------------------------------------------------------------

    def stage(self, number: int, total: int, title: str) -> None:
        """A new stage starts (the previous one ends): ``==> label [number/total] title``."""
        self.output(f"==> [{number}/{total}] {title}")
        with self._lock:
            self._end_stage(failed=False)
            self._stage = f"{self.label} [{number}/{total}] {title}"
            self._stage_start = self._last_beat = time.monotonic()
            if not self.quiet and not self.tty:
                self._print(f"==> {self._stage}")
            self._draw()

    def note(self, message: str) -> None:
        """A line for the console (indented) and the log."""
        self.output(message)
        if not self.quiet:
            with self._lock:
                self._clear()
                self._print(f"    {message}")
                self._draw()

    def output(self, line: str) -> None:
        """A line of the build's own output: the log (and mirror) only, never the console."""
        line = line.rstrip("\n")
        with self._lock:
            self.tail.append(line)
            for sink in (self._file, self.mirror):
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()

    def last_lines(self) -> str:
        """The last lines of output, for an error message."""
        with self._lock:
            return "\n".join(self.tail)

    # -- console ------------------------------------------------------------------------------

    @property
    def console(self) -> TextIO:
        return self._console if self._console is not None else sys.stdout

    @property
    def tty(self) -> bool:
        if self._tty is None:
            isatty = getattr(self.console, "isatty", None)
            self._tty = bool(isatty and isatty())
        return self._tty

    def _elapsed(self) -> float:
        return time.monotonic() - self._stage_start

    def _end_stage(self, *, failed: bool) -> None:
        """Close the current stage's line (called with the lock held)."""
        if self._stage is None:
            return
        stage, elapsed = self._stage, self._elapsed()
        self._stage = None
        if self.quiet:
            return
        outcome = f"failed after {elapsed:.0f} s" if failed else f"{elapsed:.0f} s"
        if self.tty:
            self._print(f"\r\x1b[K==> {stage} ... {outcome}")
        else:
            self._print(f"    {'failed after' if failed else 'done in'} {elapsed:.0f} s")

    def _run_ticker(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                if self._stage is None:
                    continue
                if self.tty:
                    self._frame += 1
                    self._draw()
                elif time.monotonic() - self._last_beat >= self.heartbeat:
                    self._last_beat = time.monotonic()
                    self._print(f"    ... {self._elapsed():.0f} s")

    def _draw(self) -> None:
        """The live line of the current stage (terminal only; called with the lock held)."""
        if self.quiet or not self.tty or self._stage is None:
            return
        suffix = f" ... {self._elapsed():.0f} s {SPINNER[self._frame % len(SPINNER)]}"
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        text = f"==> {self._stage}"
        if len(text) + len(suffix) > width:
            text = text[: max(0, width - len(suffix) - 3)] + "..."
        self.console.write(f"\r\x1b[K{text}{suffix}")
        self.console.flush()

    def _clear(self) -> None:
        if not self.quiet and self.tty and self._stage is not None:
            self.console.write("\r\x1b[K")

    def _print(self, text: str) -> None:
        self.console.write(text + "\n")
        self.console.flush()
