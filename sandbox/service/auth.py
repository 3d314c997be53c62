"""The stack's token: made at the first ``up``, readable only by its owner, required by every call that
changes anything (a process that reaches the port without it can start no container)."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "token"


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def ensure_token(home: Path) -> str:
    """Read the token, or create it (mode 0600, owned by the state folder's owner)."""
    path = token_path(home)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    owner = home.stat()
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)
    return token


def read_token(home: Path) -> str | None:
    try:
        return token_path(home).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def token_matches(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())
