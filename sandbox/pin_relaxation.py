"""Relaxing a pin that has no wheel for the image's Python to the nearest version that has one.

Public examples pin 2020 releases (``pillow==6.2.1``, ``scikit-learn==0.22.1``) that have no wheel for
Python 3.11. The rule: keep a requirement that some installable version satisfies; else use the
nearest installable version of the same major version (the first one above the pin, else the last
one below it), and where that major has none, the newest. Pure functions: the caller lists the
installable versions (``pip index versions --json`` with the build's ``--only-binary=:all:
--implementation cp --python-version 3.11 --platform ...`` options) and writes the notes to the
build log. Under ``AML_SANDBOX_STRICT_ENVIRONMENTS=1`` :func:`relax_all` fails instead, naming each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from sandbox.environment_mapping import IMAGE_PYTHON, Change, strict_environments, strict_error
from sandbox.errors import EnvironmentMappingError


def relax(requirement: str, available_versions: Sequence[str], python: str = IMAGE_PYTHON) -> tuple[str, str | None]:
    """``requirement`` -> (what to install, build log note or None when it stays as written).

    ``available_versions`` are the versions with a wheel for ``python`` on the image's platform.
    Raises ``EnvironmentMappingError`` when there is none at all.
    """
    change = _relax(requirement, available_versions, python)
    if change is None:
        return requirement, None
    assert change.used is not None
    return change.used, change.note


def relax_all(requirements: Iterable[str], available: Mapping[str, Sequence[str]], *, python: str = IMAGE_PYTHON,
              strict: bool | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every requirement relaxed where it needs to be -> (requirements, build log notes).

    ``available`` maps a package name to its installable versions; a package not in it stays as written.
    ``strict`` (default: ``AML_SANDBOX_STRICT_ENVIRONMENTS``) raises naming each pin that would be relaxed.
    """
    versions = {canonicalize_name(name): list(found) for name, found in available.items()}
    result: list[str] = []
    changes: list[Change] = []
    for text in requirements:
        found = versions.get(canonicalize_name(_parse(text).name))
        change = None if found is None else _relax(text, found, python)
        result.append(text if change is None or change.used is None else change.used)
        if change is not None:
            changes.append(change)
    if changes and (strict_environments() if strict is None else strict):
        raise strict_error(changes)
    return tuple(result), tuple(change.note for change in changes)


def _parse(text: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise EnvironmentMappingError(text, f"is not a valid pip requirement ({str(exc).splitlines()[0]})",
                                      "Write it as pip does, e.g. 'numpy==1.26.4'.") from None


def _relax(text: str, available_versions: Sequence[str], python: str) -> Change | None:
    requirement = _parse(text)
    if not requirement.specifier:
        return None  # pip picks an installable version itself
    reference = _reference_version(requirement.specifier)
    candidates = sorted(v for v in _versions(available_versions)
                        if (not v.is_prerelease or reference.is_prerelease) and (not v.local or reference.local))
    tag = f"cp{python.replace('.', '')}"
    if not candidates:
        raise EnvironmentMappingError(
            text, f"has no release with a wheel for Python {python} ({tag}, manylinux)",
            f"Remove {requirement.name} from the environment, or replace it by a package that supports "
            f"Python {python}.")
    if any(requirement.specifier.contains(v, prereleases=True) for v in candidates):
        return None
    same_major = [v for v in candidates if v.major == reference.major]
    if same_major:
        above = [v for v in same_major if v > reference]
        chosen = above[0] if above else same_major[-1]
        why = (f"no version it allows has a wheel for Python {python} ({tag}); {chosen} is the nearest "
               f"{reference.major}.x that has one")
    else:
        chosen = candidates[-1]
        why = (f"no {requirement.name} {reference.major}.x has a wheel for Python {python} ({tag}); "
               f"{chosen} is the newest that has one")
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return Change(text, f"{requirement.name}{extras}=={chosen}", why)


def _versions(texts: Iterable[str]) -> Iterable[Version]:
    for text in texts:
        try:
            yield Version(text)
        except InvalidVersion:
            continue


def _reference_version(specifier: SpecifierSet) -> Version:
    """The version a specifier aims at: its pin (``==``, ``===``, ``~=``), else its upper bound, else its lower."""
    by_operator: dict[str, list[Version]] = {}
    for spec in specifier:
        try:
            version = Version(spec.version.removesuffix(".*"))
        except InvalidVersion:
            continue
        by_operator.setdefault(spec.operator, []).append(version)
    for operators, pick in ((("==", "===", "~="), min), (("<", "<="), max), ((">", ">=", "!="), max)):
        found = [v for op in operators for v in by_operator.get(op, [])]
        if found:
            return pick(found)
    raise EnvironmentMappingError(str(specifier), "names no version to relax",
                                  "Write the requirement with a version, e.g. 'numpy==1.26.4'.")
