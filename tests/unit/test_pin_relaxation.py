"""A pin without a wheel for the image's Python -> the nearest version that has one (same major, else newest)."""

from __future__ import annotations

import pytest

from sandbox.environment_mapping import STRICT_VARIABLE, EnvironmentMappingError
from sandbox.pin_relaxation import relax, relax_all

#: What ``pip index versions --only-binary=:all: --python-version 3.11 --platform manylinux...`` lists.
PILLOW_CP311 = ["12.2.0", "12.1.1", "11.3.0", "10.4.0", "9.5.0", "9.2.0"]
SKLEARN_CP311 = ["1.9.1", "1.5.2", "1.1.3"]
TORCH_CP311 = ["2.15.0", "2.14.1", "2.13.0+cpu", "2.0.0", "1.13.1", "1.13.0", "3.0.0rc1"]


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_VARIABLE, raising=False)


@pytest.mark.parametrize(("requirement", "available", "relaxed"), [
    ("pillow==6.2.1", PILLOW_CP311, "pillow==12.2.0"),              # no 6.x for cp311: the newest
    ("scikit-learn==0.22.1", SKLEARN_CP311, "scikit-learn==1.9.1"),  # no 0.x: the newest
    ("torch==1.6.0", TORCH_CP311, "torch==1.13.0"),                  # the nearest 1.x above the pin
    ("torch==1.99", TORCH_CP311, "torch==1.13.1"),                   # no 1.x above: the nearest below
    ("torch[opt-einsum]==1.6.0", TORCH_CP311, "torch[opt-einsum]==1.13.0"),
    ("numpy<1.20", ["2.0.0", "1.26.4", "1.23.2"], "numpy==1.23.2"),  # a range aims at its bound
    ("pillow==6.2.*", PILLOW_CP311, "pillow==12.2.0"),
])
def test_a_pin_without_a_wheel_for_python_311_is_relaxed_with_a_note(
        requirement: str, available: list[str], relaxed: str) -> None:
    new, note = relax(requirement, available)
    assert new == relaxed
    assert note is not None and note.startswith(f"{requirement} -> {relaxed}: ") and "Python 3.11 (cp311)" in note


@pytest.mark.parametrize(("requirement", "available"), [
    ("pillow==9.5.0", PILLOW_CP311),
    ("pillow>=9,<11", PILLOW_CP311),
    ("pillow", PILLOW_CP311),
    ("torch==2.13.0+cpu", TORCH_CP311),
])
def test_a_requirement_that_an_installable_version_satisfies_stays_as_written(
        requirement: str, available: list[str]) -> None:
    assert relax(requirement, available) == (requirement, None)


def test_prereleases_local_builds_and_unparseable_versions_are_never_chosen() -> None:
    assert relax("torch==2.99", ["3.0.0rc1", "2.13.0+cpu", "not-a-version", "2.0.0"])[0] == "torch==2.0.0"


def test_a_package_with_no_wheel_for_the_python_at_all_fails_naming_it_and_the_fix() -> None:
    with pytest.raises(EnvironmentMappingError, match=r"'fusepy==3.0.1' has no release with a wheel for Python "
                                                      r"3.11 \(cp311, manylinux\)\. Remove fusepy"):
        relax("fusepy==3.0.1", [])


def test_the_python_named_appears_in_the_note() -> None:
    assert "Python 3.12 (cp312)" in (relax("pillow==6.2.1", PILLOW_CP311, python="3.12")[1] or "")


def test_relax_all_relaxes_the_2020_pins_and_leaves_the_rest() -> None:
    requirements, notes = relax_all(
        ("azureml-core==1.61.0.post4", "scikit-learn==0.22.1", "pillow==6.2.1", "six"),
        {"Scikit_Learn": SKLEARN_CP311, "pillow": PILLOW_CP311})
    assert requirements == ("azureml-core==1.61.0.post4", "scikit-learn==1.9.1", "pillow==12.2.0", "six")
    assert [note.split(":")[0] for note in notes] == ["scikit-learn==0.22.1 -> scikit-learn==1.9.1",
                                                      "pillow==6.2.1 -> pillow==12.2.0"]


def test_strict_mode_fails_the_2020_pins_naming_each_and_the_version_it_would_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_VARIABLE, "1")
    with pytest.raises(EnvironmentMappingError) as error:
        relax_all(("scikit-learn==0.22.1", "pillow==6.2.1"), {"scikit-learn": SKLEARN_CP311, "pillow": PILLOW_CP311})
    message = str(error.value)
    assert "\n  - scikit-learn==0.22.1 -> scikit-learn==1.9.1: " in message
    assert "\n  - pillow==6.2.1 -> pillow==12.2.0: " in message
    assert f"Unset {STRICT_VARIABLE}" in message
    assert relax_all(("pillow==9.5.0",), {"pillow": PILLOW_CP311}) == (("pillow==9.5.0",), ())
