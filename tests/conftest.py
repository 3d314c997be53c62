"""Suite-wide rules: every integration test carries exactly one parity marker (STYLE.md 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

PARITY_MARKERS = ("parity", "local_only")
INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    offenders = []
    for item in items:
        if INTEGRATION_DIR not in Path(str(item.fspath)).parents:
            continue
        marks = [m for m in PARITY_MARKERS if item.get_closest_marker(m) is not None]
        if len(marks) != 1:
            offenders.append(f"{item.nodeid} has {marks or 'no parity marker'}")
    if offenders:
        raise pytest.UsageError(
            "every integration test needs exactly one of @pytest.mark.parity / @pytest.mark.local_only:\n  "
            + "\n  ".join(offenders)
        )
