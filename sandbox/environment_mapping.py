"""An environment's Python section (Azure's JSON form) -> what pip installs in its offline image.

Azure ML builds an environment with conda: the ``condaDependencies`` list holds conda match specs
(``numpy=1.5``, ``conda-forge::numpy>=1.2``, ``numpy 1.5 py38_0``) and one ``{"pip": [...]}`` list of
pip requirements and pip options (``CondaDependencies.create()`` writes ``--find-links`` and
``--extra-index-url`` lines there). The sandbox has no conda, and one Python (3.11). The resolution
policy (docs/parity.md, "How an environment becomes an image"), applied here:

- conda specs are translated to pip's form with conda's own rules; conda names are mapped to PyPI
  names and conda-only runtime libraries left out (sandbox.conda_names);
- ``python=X`` is recorded; the image runs Python 3.11 whatever it says;
- the Azure ML SDK packages map to what the image can hold (sandbox.azureml_packages);
- every requirement is parsed with ``packaging``; options are passed to pip (``--pre``,
  ``--prefer-binary``) or left out with a note (index and link options: the wheelhouse is filled from
  this machine's own pip configuration and installed with ``--no-index``);
- a pin without a wheel for Python 3.11 is relaxed at build time (sandbox.pin_relaxation).

Each change to what the environment asked for is a :class:`Change`, one note line in the build log;
with ``AML_SANDBOX_STRICT_ENVIRONMENTS=1`` any change fails with :class:`EnvironmentMappingError`
naming each. Anything else without a pip form fails naming the entry and the fix.

Curated environments get their documented offline mapping (``sandbox/curated_environments.json``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from sandbox import conda_names
from sandbox.azureml_packages import AZUREML_CORE, sdk_package
from sandbox.errors import ConfigurationError, EnvironmentMappingError

__all__ = [
    "AZUREML_CORE", "IMAGE_PYTHON", "STRICT_VARIABLE", "Change", "EnvironmentMappingError", "PipInstall",
    "conda_dependencies", "conda_to_pip", "pip_install", "pip_option", "pip_requirement", "requested_python",
    "strict_environments", "strict_error",
]

#: The interpreter of every environment image (Debian bookworm's python3).
IMAGE_PYTHON = "3.11"
#: Marker values of the images' interpreter, so ``; python_version < "3.8"`` is decided for the image.
IMAGE_MARKER_ENVIRONMENT = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": IMAGE_PYTHON,
    "python_full_version": f"{IMAGE_PYTHON}.2",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
}
#: pip options that pass to both ``pip download`` and ``pip install`` (as ``PIP_*`` variables in the image).
PASSED_OPTIONS = ("--pre", "--prefer-binary")
#: pip options about where packages come from: the offline build has one source, the wheelhouse.
INDEX_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--trusted-host", "--no-index")
#: Conda packages that are the environment itself, not something to install.
CONDA_ONLY = conda_names.ENVIRONMENT_ITSELF
#: Set to 1 to fail on any change to what an environment asked for, instead of building with it.
STRICT_VARIABLE = "AML_SANDBOX_STRICT_ENVIRONMENTS"
_PYTHON_NOTE = (f"the image runs the one Python the offline base offers ({IMAGE_PYTHON}, Debian bookworm's "
                "python3); packages are installed for it")

_CONDA_NAME = re.compile(r"^\s*([A-Za-z0-9_][A-Za-z0-9._-]*)\s*(.*)$")
_SPACED_RANGE = re.compile(r"^([<>=!~]=?\s*[^\s]+)(?:\s+\S+)?$")


@dataclass(frozen=True)
class Change:
    """One change to what an environment asked for: ``asked`` -> ``used`` (None: left out), and why."""

    asked: str
    used: str | None
    why: str

    @property
    def note(self) -> str:
        """The build log's line for it."""
        if self.used is None:
            return f"{self.asked} left out: {self.why}"
        return f"{self.asked} -> {self.used}: {self.why}"

    @property
    def short(self) -> str:
        return f"{self.asked} left out" if self.used is None else f"{self.asked} -> {self.used}"

    @property
    def repins(self) -> bool:
        """True when the environment pinned a version and gets another one (or none): what strict mode refuses.

        A rename (``pytorch`` -> ``torch``), an unpinned SDK package mapped to azureml-core and ``python=X``
        are not: they install what was asked for, under the image's names and Python."""
        name = re.split(r"[=<>!~\s]", self.asked.split("::")[-1], maxsplit=1)[0]
        pinned = self.asked.split("::")[-1][len(name):].strip() != ""
        return pinned and canonical(name) != "python" and self.used != self.asked


@dataclass(frozen=True)
class PipInstall:
    """What pip installs for an environment: requirements, options it gets, options left out (with why).

    ``python`` is the ``python=X`` the environment asked for (the image runs 3.11 whatever it is);
    ``changes`` are the packages renamed, left out or re-pinned, each a line of ``notes`` for the build
    log (``20_image_build_log.txt``), and :attr:`warning` the one console line that sums them up.
    """

    requirements: tuple[str, ...]
    options: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    python: str | None = None
    changes: tuple[Change, ...] = ()
    #: Build log lines: one per change, then (curated environments) the documented mapping.
    notes: tuple[str, ...] = ()

    @property
    def warning(self) -> str | None:
        """One console line summing up the changes, or None when the environment is used as written."""
        if not self.changes:
            return None
        shown = [change.short for change in self.changes[:6]]
        more = f" and {len(self.changes) - 6} more" if len(self.changes) > 6 else ""
        return (f"the environment was adapted to the sandbox's image (Python {IMAGE_PYTHON}): "
                f"{'; '.join(shown)}{more}. One line each in azureml-logs/20_image_build_log.txt; "
                f"{STRICT_VARIABLE}=1 fails instead.")


def conda_dependencies(definition: dict[str, Any]) -> list[Any]:
    """The ``condaDependencies.dependencies`` list of an environment definition (empty if none)."""
    python = definition.get("python") or {}
    return list(((python.get("condaDependencies") or {}).get("dependencies")) or [])


def requested_python(definition: dict[str, Any]) -> str | None:
    """The Python an environment's conda dependencies ask for (``python=3.6.2`` -> ``3.6.2``), if any.

    A range is returned as written (``python>=3.6,<3.9`` -> ``>=3.6,<3.9``); a bare ``python`` is None.
    """
    for dependency in conda_dependencies(definition):
        if isinstance(dependency, str):
            name, rest = _split_conda(dependency)
            if name.lower() == "python" and rest:
                if rest[0] in "<>!~":
                    return rest.replace(" ", "")
                return rest.split()[0].lstrip("=").split("=")[0]  # '=3.6.2=h1234' and '3.6.2 h1234': the version
    return None


def canonical(name: str) -> str:
    """A package name in ``packaging``'s canonical form."""
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def strict_environments(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``AML_SANDBOX_STRICT_ENVIRONMENTS`` asks to fail on any change instead of building with it."""
    value = (os.environ if environ is None else environ).get(STRICT_VARIABLE, "").strip().lower()
    if value in {"", "0", "false", "no"}:
        return False
    if value in {"1", "true", "yes"}:
        return True
    raise ConfigurationError(f"{STRICT_VARIABLE}={value!r} is not a switch. Set it to 1 to fail on any change to "
                             "what an environment asks for, or unset it (or 0) to build with the changes.")


def strict_error(changes: Iterable[Change]) -> EnvironmentMappingError:
    """The error of strict mode, naming each package and what would have been used instead."""
    changes = tuple(changes)
    lines = "".join(f"\n  - {change.note}" for change in changes)
    error = EnvironmentMappingError(
        ", ".join(change.asked for change in changes),
        f"cannot be used as written, and {STRICT_VARIABLE}=1 forbids changing it; without it the image would "
        f"get:{lines}",
        f"Unset {STRICT_VARIABLE} to build with these changes, or change the environment to ask for what the "
        "image can hold (the right side of each line).")
    error.changes = changes  # type: ignore[attr-defined]
    return error


def pip_install(definition: dict[str, Any], *, strict: bool | None = None) -> PipInstall:
    """What to pip-install for an environment definition (Azure's JSON form).

    A curated environment gets its documented offline mapping; any other gets its conda packages
    (translated to pip's form and PyPI's names) and its pip list, each parsed with ``packaging``.
    ``strict`` (default: ``AML_SANDBOX_STRICT_ENVIRONMENTS``) raises instead of changing anything.
    """
    from sandbox import curated

    python = requested_python(definition)
    entry = curated.match(definition)
    if entry is not None:
        mapping = tuple(f"{asked}: {used}" for asked, used in entry.mapping.items())
        return PipInstall(entry.offline_pip, python=python, notes=mapping)
    requirements: list[str] = []
    options: list[str] = []
    dropped: list[str] = []
    changes: list[Change] = []
    for dependency in conda_dependencies(definition):
        if isinstance(dependency, dict):
            for item in dependency.get("pip") or []:
                text = str(item).strip()
                if not text or text.startswith("#"):
                    continue
                if text.startswith("-"):
                    kept, note = pip_option(text)
                    if kept:
                        options.append(kept)
                    if note:
                        dropped.append(note)
                    continue
                requirement, change = _map_pip(text)
                if requirement:
                    requirements.append(requirement)
                if change:
                    changes.append(change)
        elif isinstance(dependency, str):
            requirement, change = _map_conda(dependency)
            if requirement:
                requirements.append(requirement)
            if change:
                changes.append(change)
    if python is not None and not _runs_on_image_python(python):
        changes.append(Change(f"python={python}" if python[0].isdigit() else f"python{python}",
                              f"Python {IMAGE_PYTHON}", _PYTHON_NOTE))
    strict = strict_environments() if strict is None else strict  # a bad value is named even with nothing to refuse
    refused = [change for change in changes if change.repins]
    if refused and strict:
        raise strict_error(refused)
    return PipInstall(tuple(dict.fromkeys(requirements)), tuple(dict.fromkeys(options)), tuple(dropped),
                      python=python, changes=tuple(changes), notes=tuple(change.note for change in changes))


def pip_requirement(text: str) -> str | None:
    """One pip list entry in ``packaging``'s normal form, as the image installs it.

    None if its marker excludes the image's Python or the image leaves it out; an Azure ML SDK package
    becomes what the image can hold (``azureml-defaults`` -> ``azureml-core==1.61.0.post4``).
    """
    return _map_pip(text)[0]


def _map_pip(text: str) -> tuple[str | None, Change | None]:
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise EnvironmentMappingError(
            text, f"is not a valid pip requirement ({str(exc).splitlines()[0]})",
            "Write it as pip does, e.g. 'numpy>=1.2' or 'numpy==1.26.4', in pip_packages=[...].") from None
    if requirement.url:
        raise EnvironmentMappingError(
            text, "installs from a URL, which the offline build cannot reach",
            f"Name the package and version instead, e.g. '{requirement.name}==<version>'.")
    if requirement.marker is not None:
        if not requirement.marker.evaluate(dict(IMAGE_MARKER_ENVIRONMENT)):
            return None, None
        requirement.marker = None
    return _map_sdk(requirement, text)


def _map_sdk(requirement: Requirement, asked: str) -> tuple[str | None, Change | None]:
    mapped = sdk_package(requirement)
    if mapped is None:
        return str(requirement), None
    used, why, changed = mapped
    return used, (Change(asked.strip(), used, why) if changed else None)


def pip_option(text: str) -> tuple[str | None, str | None]:
    """A pip list entry that is an option -> (option passed to pip or None, note on what was left out or None)."""
    name = re.split(r"[\s=]", text, maxsplit=1)[0]
    if name in PASSED_OPTIONS and name == text:
        return name, None
    if name in INDEX_OPTIONS:
        return None, (f"pip option {text!r} left out: the offline build installs only from the wheelhouse, which is "
                      "filled with this machine's own pip configuration (pip.conf, PIP_INDEX_URL)")
    raise EnvironmentMappingError(
        text, "is a pip option the offline build does not support",
        f"Remove it from the pip list; supported options: {', '.join(PASSED_OPTIONS)}; index and link options "
        f"({', '.join(INDEX_OPTIONS)}) are left out with a warning.")


def conda_to_pip(spec: str) -> str | None:
    """A conda match spec as the pip requirement the image installs; None for what it does not install.

    Versions follow conda's own rules: ``numpy`` -> ``numpy``; ``numpy=1.5`` -> ``numpy==1.5.*`` (conda's
    single ``=`` is a prefix match); ``numpy==1.5`` and ``numpy=1.5=build`` and ``numpy 1.5 build`` ->
    ``numpy==1.5`` (the build string is conda's own, dropped); ``numpy>=1.2,<2`` and ``~=`` as written;
    ``conda-forge::numpy`` -> ``numpy``. Names follow PyPI (``pytorch=1.6`` -> ``torch==1.6.*``); python,
    pip and conda-only libraries (``cudatoolkit``, ``mkl``) give None.
    """
    return _map_conda(spec)[0]


def _split_conda(spec: str) -> tuple[str, str]:
    """A conda spec's (name, version part), without its channel prefix."""
    text = spec.strip()
    if "::" in text:
        text = text.rsplit("::", 1)[1]  # channel (and subdir) prefix: the wheelhouse has one source
    match = _CONDA_NAME.match(text)
    if not match:
        raise EnvironmentMappingError(spec, "is not a conda package spec",
                                      "Write it as 'name', 'name=1.5', 'name>=1.2' or 'name==1.5'.")
    return match.group(1), match.group(2).strip()


def _map_conda(spec: str) -> tuple[str | None, Change | None]:
    name, rest = _split_conda(spec)
    if name.lower() in conda_names.ENVIRONMENT_ITSELF:
        return None, None
    why_left_out = conda_names.conda_only(name)
    if why_left_out:
        return None, Change(spec.strip(), None, why_left_out)
    if "[" in rest or "|" in rest:
        raise EnvironmentMappingError(
            spec, "uses a conda form pip has no equivalent for (brackets or '|')",
            f"Write one pip version range instead, e.g. '{name}>=1.2,<2', in conda_packages or pip_packages.")
    renamed = conda_names.pypi_name(name)
    pypi = renamed[0] if renamed else name
    text = spec.strip().rsplit("::", 1)[-1].strip()
    version = _conda_version(rest, spaced=text[len(name):].startswith(" "))
    try:
        requirement = Requirement(f"{pypi}{version}")
    except InvalidRequirement as exc:
        raise EnvironmentMappingError(
            spec, f"has no pip equivalent ({str(exc).splitlines()[0]})",
            f"Write it as '{name}', '{name}=1.5', '{name}==1.5' or '{name}>=1.2'.") from None
    if renamed:
        return str(requirement), Change(spec.strip(), str(requirement), renamed[1])
    return _map_sdk(requirement, spec)


def _runs_on_image_python(python: str) -> bool:
    """Whether a requested ``python`` (``3.6.2``, ``3.11``, ``>=3.8``) includes the image's 3.11 (any patch)."""
    try:
        if python[0].isdigit():
            return Version(python).release[:2] == Version(IMAGE_PYTHON).release[:2]
        specifier = SpecifierSet(_conda_version(python, spaced=False))
    except (InvalidSpecifier, InvalidVersion):
        return False
    return any(specifier.contains(v) for v in (IMAGE_PYTHON, IMAGE_MARKER_ENVIRONMENT["python_full_version"]))


def _conda_version(rest: str, *, spaced: bool) -> str:
    """Conda's version part (``=1.5``, ``==1.5=b``, ``1.5 b``, ``>=1.2``) as a pip specifier."""
    if not rest:
        return ""
    if spaced and rest[0] not in "=<>!~":
        version = rest.split()[0]  # 'numpy 1.5 py38_0': an exact version, then a build string
        return f"=={_wildcard(version)}"
    if rest.startswith("=") and not rest.startswith("=="):
        version, _, build = rest[1:].partition("=")
        if build or version.endswith("*"):
            return f"=={_wildcard(version)}"
        return f"=={version}.*"  # conda's fuzzy '=1.5' matches 1.5, 1.5.1, ...
    if rest.startswith("=="):
        version, _, _build = rest[2:].partition("=")
        return f"=={_wildcard(version)}"
    if spaced:  # 'numpy >=1.2 py38_0' or 'numpy >= 1.2': the range, without conda's build string
        ranged = _SPACED_RANGE.match(rest)
        return ranged.group(1).replace(" ", "") if ranged else rest
    return rest


def _wildcard(version: str) -> str:
    """Conda's ``1.5*`` is pip's ``1.5.*``."""
    if version.endswith("*") and not version.endswith(".*"):
        return version[:-1].rstrip(".") + ".*"
    return version
