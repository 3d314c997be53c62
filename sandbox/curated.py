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
    """The curated entry whose Python dependencies ``definition`` has, else None.

    Like Azure's image hash, this ignores the name and version: a renamed copy of a curated environment
    gets the same offline mapping and the same image.
    """
    got = ((definition.get("python") or {}).get("condaDependencies") or {}).get("dependencies")
    for entry in catalog().values():
        if got == entry.definition["python"]["condaDependencies"]["dependencies"]:
            return entry
    return None
