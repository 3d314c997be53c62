"""The stack's token (issue 16, item 7): refused when empty or short, created whole or not at all."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sandbox.errors import ConfigurationError
from sandbox.service.auth import MIN_TOKEN_LENGTH, ensure_token, read_token


@pytest.mark.parametrize("content", ["", "\n", "short-token\n", "x" * (MIN_TOKEN_LENGTH - 1),
                                     "x" * 20 + " " + "y" * 20])
def test_an_empty_or_short_token_is_refused_naming_the_file_and_the_fix(tmp_path: Path, content: str) -> None:
    (tmp_path / "token").write_text(content)
    with pytest.raises(ConfigurationError) as error:
        ensure_token(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "token") in message and f"at least {MIN_TOKEN_LENGTH}" in message
    assert "aml-sandbox up" in message and "secrets.token_urlsafe" in message
    assert content.strip() == "" or content.strip() not in message, "the message must not print the token"


def test_a_new_token_is_long_private_and_left_without_temporary_files(tmp_path: Path) -> None:
    token = ensure_token(tmp_path / "home")
    path = tmp_path / "home" / "token"
    assert len(token) >= MIN_TOKEN_LENGTH and path.read_text() == token + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]
    assert ensure_token(tmp_path / "home") == token == read_token(tmp_path / "home")


def test_processes_creating_the_token_at_once_all_get_the_one_on_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    results: list[str] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        results.append(ensure_token(home))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == {(home / "token").read_text().strip()}


def test_a_token_file_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("z" * 43)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").symlink_to(tmp_path / "elsewhere")
    assert read_token(tmp_path / "home") is None
    with pytest.raises(OSError):
        ensure_token(tmp_path / "home")
