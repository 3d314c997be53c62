"""The stack's token: made at the first ``up``, readable only by its owner, required by every call that
changes anything (a process that reaches the port without it can start no container) and by reads of
run files and run definitions.

The file appears whole or not at all: it is written to a temporary file in the same folder (mode 0600,
fsynced) and linked into place, so no reader sees a half-written token and two processes creating it
at once end with the same token. A token shorter than :data:`MIN_TOKEN_LENGTH` is refused.
"""

from __future__ import annotations

import hmac
import re
import secrets
from pathlib import Path

from sandbox.errors import ConfigurationError
from sandbox.private_files import create_once, read_private

TOKEN_FILE = "token"
MIN_TOKEN_LENGTH = 32
#: Visible ASCII only: the token travels in an HTTP header.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def ensure_token(home: Path) -> str:
    """Read the token, or create it (mode 0600, owned by the state folder's owner); refuse a weak one."""
    path = token_path(home)
    try:
        return _check(path, _read(path))
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    create_once(path, (secrets.token_urlsafe(32) + "\n").encode(), owner=home.stat())
    return _check(path, _read(path))  # the token on disk: another process may have created it first


def read_token(home: Path) -> str | None:
    try:
        return _read(token_path(home)) or None
    except OSError:
        return None


def token_matches(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())


def _read(path: Path) -> str:
    return read_private(path, 4096).decode("utf-8", "replace").strip()


def _check(path: Path, token: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        what = "empty" if not token else (
            f"{len(token)} characters long" if len(token) < MIN_TOKEN_LENGTH else "not printable ASCII")
        raise ConfigurationError(
            f"The stack token in {path} is {what}; it must be at least {MIN_TOKEN_LENGTH} printable ASCII "
            f"characters without spaces. Delete {path} and run 'aml-sandbox up' (it makes a new one), or write "
            f"one yourself: python -c 'import secrets; print(secrets.token_urlsafe(32))' > {path}; chmod 600 {path}")
    return token
