"""Image builds show one line per stage; the raw output goes to the build log file (no Docker: a fake build)."""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.build_progress import BuildProgress
from sandbox.config import Settings
from sandbox.errors import ImageBuildError
from sandbox.image_builder import ImageBuilder, build_log_path
from sandbox.image_recipes import Recipe

RAW_LINES = 3000


@dataclass
class FakeImage:
    id: str = "sha256:fake"
    tags: tuple[str, ...] = ()


class FakeEngine:
    """Just what ImageBuilder.resolve needs: no image until the fake build made one."""

    def __init__(self) -> None:
        self.images: dict[str, FakeImage] = {}

    def get_image(self, reference: str) -> FakeImage | None:
        return self.images.get(reference)

    def tag(self, image: FakeImage, reference: str) -> None:
        self.images[reference] = image


@dataclass(frozen=True)
class NoisyRecipe(Recipe):
    """A build of two stages whose second prints thousands of lines, as pip and debootstrap do."""

    name: str = "noisy"
    repository: str = "aml-sandbox-test/noisy"
    exit_code: int = 0

    def fingerprint(self) -> str:
        return f"noisy-{self.exit_code}"

    def build(self, builder: ImageBuilder) -> Any:
        builder.progress.stage(1, 2, "preparing")
        builder.progress.output("raw line of stage one")
        builder.progress.stage(2, 2, "installing Python packages")
        script = (f"for i in range({RAW_LINES}): print(f'Collecting package-{{i}}')\n"
                  f"raise SystemExit({self.exit_code})")
        builder._stream_process([sys.executable, "-c", script], self.reference)
        image = FakeImage()
        builder.engine.images[self.reference] = image  # type: ignore[attr-defined]
        return image


def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path / "home")})


def test_a_build_prints_one_line_per_stage_and_keeps_every_raw_line_in_its_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = io.StringIO()
    recipe = NoisyRecipe()
    resolved = ImageBuilder(FakeEngine(), settings(tmp_path), log=mirror).resolve(recipe)  # type: ignore[arg-type]

    assert resolved.how == "built"
    out = capsys.readouterr().out
    assert "Collecting package-" not in out and "raw line of stage one" not in out
    assert len(out.splitlines()) < 12, out
    assert "==> noisy [1/2] preparing" in out and "==> noisy [2/2] installing Python packages" in out
    assert "done in" in out
    path = build_log_path(settings(tmp_path), recipe)
    assert str(path) in out
    log = path.read_text(encoding="utf-8")
    assert log.count("Collecting package-") == RAW_LINES and "raw line of stage one" in log
    assert mirror.getvalue().count("Collecting package-") == RAW_LINES  # the run's 20_image_build_log.txt


def test_a_failed_build_names_its_log_and_shows_only_the_last_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = NoisyRecipe(exit_code=3)
    with pytest.raises(ImageBuildError) as error:
        ImageBuilder(FakeEngine(), settings(tmp_path)).resolve(recipe)  # type: ignore[arg-type]

    message = str(error.value)
    path = build_log_path(settings(tmp_path), recipe)
    assert str(path) in message and "exited with 3" in message
    assert f"Collecting package-{RAW_LINES - 1}" in message and "Collecting package-100\n" not in message
    assert 15 <= error.value.log_tail.count("\n") + 1 <= 25
    out = capsys.readouterr().out
    assert "Collecting package-" not in out
    assert "failed after" in out
    assert path.read_text(encoding="utf-8").count("Collecting package-") == RAW_LINES


def test_on_a_terminal_the_stage_line_is_rewritten_in_place_with_its_elapsed_time(tmp_path: Path) -> None:
    console = io.StringIO()
    with BuildProgress("env", tmp_path / "build.log", console=console, tty=True, tick=0.02) as progress:
        progress.stage(1, 2, "downloading wheels")
        for i in range(500):
            progress.output(f"Saved wheel-{i}.whl")
        time.sleep(0.15)
        progress.stage(2, 2, "installing Python packages")
        time.sleep(0.1)
    text = console.getvalue()
    assert "Saved wheel-" not in text
    assert text.count("\r\x1b[K==> env [1/2] downloading wheels ... ") >= 3  # redrawn while it runs
    lines = text.split("\n")
    assert lines[-1] == ""
    finished = [line.rsplit("\r\x1b[K", 1)[-1] for line in lines[:-1]]
    assert finished == ["==> env [1/2] downloading wheels ... 0 s", "==> env [2/2] installing Python packages ... 0 s"]


def test_without_a_terminal_a_long_stage_prints_plain_periodic_lines(tmp_path: Path) -> None:
    console = io.StringIO()
    with BuildProgress("env", tmp_path / "build.log", console=console, tty=False, heartbeat=0.05,
                       tick=0.01) as progress:
        progress.stage(1, 1, "installing Python packages")
        progress.output("Collecting torch")
        time.sleep(0.3)
    lines = console.getvalue().splitlines()
    assert "\r" not in console.getvalue()
    assert lines[0] == "==> env [1/1] installing Python packages"
    assert lines[-1] == "    done in 0 s"
    assert sum(line == "    ... 0 s" for line in lines) >= 2
    assert not any("Collecting" in line for line in lines)
