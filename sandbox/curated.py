"""The curated environments the sandbox serves, as Azure ML defined them, and what each installs offline.

Data lives in ``curated_environments.json`` (PARITY.md section 5); plain dicts, no azureml shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).with_name("curated_environments.json")


@dataclass(frozen=True)
class CuratedEnvironment:
    definition: dict[str, Any]
    offline_pip: tuple[str, ...]
    mapping: dict[str, str]

    @property
    def name(self) -> str:
        return self.definition["name"]


@cache
def catalog() -> dict[str, CuratedEnvironment]:
    data = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    return {
        entry["definition"]["name"]: CuratedEnvironment(
            entry["definition"], tuple(entry["offline"]["pip"]), dict(entry["offline"]["mapping"]))
        for entry in data["environments"]
    }


def match(definition: dict[str, Any]) -> CuratedEnvironment | None:
    """The curated entry ``definition`` is, unchanged (same name and Python dependencies), else None."""
    entry = catalog().get(definition.get("name", ""))
    if entry is None:
        return None
    wanted = entry.definition["python"]["condaDependencies"]["dependencies"]
    got = (definition.get("python") or {}).get("condaDependencies") or {}
    return entry if got.get("dependencies") == wanted else None
