"""An environment's Python section (Azure's JSON form) -> what pip installs in its offline image.

Azure ML builds an environment with conda: the ``condaDependencies`` list holds conda match specs
(``numpy=1.5``, ``conda-forge::numpy>=1.2``, ``numpy 1.5 py38_0``) and one ``{"pip": [...]}`` list of
pip requirements and pip options (``CondaDependencies.create()`` writes ``--find-links`` and
``--extra-index-url`` lines there). The sandbox has no conda: conda specs are translated to pip's
form with conda's own rules, every requirement is parsed with ``packaging``, and options are either
passed to pip (``--pre``, ``--prefer-binary``) or dropped with a note (index and link options: the
wheelhouse is filled from this machine's own pip configuration and installed with ``--no-index``).
Anything else fails with :class:`EnvironmentMappingError` naming the entry and the fix.

Curated environments get their documented offline mapping (``sandbox/curated_environments.json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sandbox.errors import EnvironmentMappingError

#: What a training run needs of ``azureml-defaults`` (the rest is the inferencing HTTP server).
AZUREML_CORE = "azureml-core==1.61.0.post4"
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
CONDA_ONLY = {"python", "pip"}

_CONDA_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")
_SPACED_RANGE = re.compile(r"^([<>=!~]=?\s*[^\s]+)(?:\s+\S+)?$")


@dataclass(frozen=True)
class PipInstall:
    """What pip installs for an environment: requirements, options it gets, options left out (with why)."""

    requirements: tuple[str, ...]
    options: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


def conda_dependencies(definition: dict[str, Any]) -> list[Any]:
    """The ``condaDependencies.dependencies`` list of an environment definition (empty if none)."""
    python = definition.get("python") or {}
    return list(((python.get("condaDependencies") or {}).get("dependencies")) or [])


def requested_python(definition: dict[str, Any]) -> str | None:
    """The ``python=X.Y`` an environment's conda dependencies ask for, if any."""
    for dependency in conda_dependencies(definition):
        if isinstance(dependency, str) and dependency.replace(" ", "").startswith("python="):
            return dependency.split("=", 1)[1].strip("=")
    return None


def pip_install(definition: dict[str, Any]) -> PipInstall:
    """What to pip-install for an environment definition (Azure's JSON form).

    A curated environment gets its documented offline mapping; any other gets its conda packages
    (translated to pip's form) and its pip list, each parsed with ``packaging``.
    """
    from sandbox import curated

    entry = curated.match(definition)
    if entry is not None:
        return PipInstall(entry.offline_pip)
    requirements: list[str] = []
    options: list[str] = []
    dropped: list[str] = []
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
                else:
                    requirement = pip_requirement(text)
                    if requirement:
                        requirements.append(requirement)
        elif isinstance(dependency, str):
            requirement = conda_to_pip(dependency)
            if requirement:
                requirements.append(requirement)
    return PipInstall(tuple(requirements), tuple(dict.fromkeys(options)), tuple(dropped))


def pip_requirement(text: str) -> str | None:
    """One pip list entry in ``packaging``'s normal form; None if its marker excludes the image's Python."""
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
            return None
        requirement.marker = None
    if canonicalize_name(requirement.name) == "azureml-defaults":
        # azureml-core adds azureml-defaults to every default environment; a training run needs azureml-core.
        return AZUREML_CORE
    return str(requirement)


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
    """A conda match spec as a pip requirement (conda's own rules); None for python and pip themselves.

    ``numpy`` -> ``numpy``; ``numpy=1.5`` -> ``numpy==1.5.*`` (conda's single ``=`` is a prefix match);
    ``numpy==1.5`` and ``numpy=1.5=build`` and ``numpy 1.5 build`` -> ``numpy==1.5`` (the build string is
    conda's own, dropped); ``numpy>=1.2,<2`` and ``~=`` as written; ``conda-forge::numpy`` -> ``numpy``.
    """
    text = spec.strip()
    if "::" in text:
        text = text.rsplit("::", 1)[1]  # channel (and subdir) prefix: the wheelhouse has one source
    match = _CONDA_NAME.match(text)
    if not match:
        raise EnvironmentMappingError(spec, "is not a conda package spec",
                                      "Write it as 'name', 'name=1.5', 'name>=1.2' or 'name==1.5'.")
    name, rest = match.group(1), match.group(2).strip()
    if name.lower() in CONDA_ONLY:
        return None
    if "[" in rest or "|" in rest:
        raise EnvironmentMappingError(
            spec, "uses a conda form pip has no equivalent for (brackets or '|')",
            f"Write one pip version range instead, e.g. '{name}>=1.2,<2', in conda_packages or pip_packages.")
    version = _conda_version(rest, spaced=text[len(name):].startswith(" "))
    try:
        return str(Requirement(f"{name}{version}"))
    except InvalidRequirement as exc:
        raise EnvironmentMappingError(
            spec, f"has no pip equivalent ({str(exc).splitlines()[0]})",
            f"Write it as '{name}', '{name}=1.5', '{name}==1.5' or '{name}>=1.2'.") from None


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
