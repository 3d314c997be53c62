"""Image recipes: what an image is made of, hashed into its tag. Building them is sandbox.image_builder's job.

A recipe's hash covers everything that shapes the image (its files, build arguments, package lists
and the hash of the image it builds on), so an unchanged recipe is never built twice. Three kinds:

- :class:`DebianBaseRecipe`: ``debian:bookworm-slim``, else ``debootstrap --variant=minbase`` and
  ``docker import``;
- :class:`DockerfileRecipe`: a folder with a Dockerfile (``sandbox/azurite/``) built FROM the base
  with the classic builder;
- :class:`PythonImageRecipe`: the base plus Debian's Python and a virtual environment filled from a
  wheelhouse downloaded on the host.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from docker.models.images import Image

    from sandbox.image_builder import ImageBuilder

#: Bumped when the way recipes are built changes, so every image is rebuilt once.
BUILDER_VERSION = "1"
#: Bumped when only the way Python images are built changes (2: no VOLUME from the build's binds).
PYTHON_IMAGE_FORMAT = "2"
HASH_LENGTH = 32
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def content_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:HASH_LENGTH]


# -- recipes -------------------------------------------------------------------------------------


class Recipe(ABC):
    """What an image is made of, and how to make it offline."""

    #: Short name (``base``, ``azurite``, ``service``, ``azureml``).
    name: str
    #: Local repository the hash tag goes on (``aml-sandbox/azurite``).
    repository: str
    #: The official image to pull, if there is one.
    official: str | None = None
    #: A stable extra tag (``aml-sandbox/azurite:3.35.0``) that docker-compose.yml refers to.
    alias: str | None = None

    @abstractmethod
    def fingerprint(self) -> str:
        """Everything that shapes the image, as one string (hashed into the tag)."""

    @abstractmethod
    def build(self, builder: ImageBuilder) -> Image:
        """Build the image offline; the builder tags it."""

    @property
    def hash(self) -> str:
        return content_hash(BUILDER_VERSION, self.name, self.fingerprint())

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.hash}"


@dataclass(frozen=True)
class DebianBaseRecipe(Recipe):
    """Debian bookworm: the official slim image when it can be pulled, else debootstrap."""

    name: str = "base"
    repository: str = "aml-sandbox/debian"
    official: str | None = "debian:bookworm-slim"
    alias: str | None = "aml-sandbox/debian:bookworm"
    suite: str = DEBIAN_SUITE
    mirror: str = DEBIAN_MIRROR

    def fingerprint(self) -> str:
        return json.dumps({"suite": self.suite, "mirror": self.mirror, "variant": "minbase"})

    def build(self, builder: ImageBuilder) -> Image:
        return builder.debootstrap(self)


@dataclass(frozen=True)
class DockerfileRecipe(Recipe):
    """A Dockerfile folder built FROM the base image (``ARG BASE_IMAGE``) with the classic builder."""

    name: str
    repository: str
    context: Path
    base: Recipe = field(default_factory=DebianBaseRecipe)
    build_args: tuple[tuple[str, str], ...] = ()
    official: str | None = None
    alias: str | None = None

    def fingerprint(self) -> str:
        files = sorted(p for p in self.context.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        digest = hashlib.sha256()
        for path in files:
            if path.suffix == ".py":
                continue  # helper code beside the recipe does not shape the image
            digest.update(str(path.relative_to(self.context)).encode())
            digest.update(path.read_bytes())
        return json.dumps({"files": digest.hexdigest(), "args": list(self.build_args), "base": self.base.hash})

    def build(self, builder: ImageBuilder) -> Image:
        return builder.dockerfile(self)


@dataclass(frozen=True)
class PythonImageRecipe(Recipe):
    """Debian's Python 3.11 with a virtual environment at ``venv`` holding ``requirements``.

    Wheels are downloaded on the host (``pip download`` for the engine's platform) into the
    wheelhouse and installed in a build container from a read-only bind mount.
    """

    name: str
    repository: str
    requirements: tuple[str, ...]
    venv: str
    base: Recipe = field(default_factory=DebianBaseRecipe)
    apt_packages: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    constraints: Path | None = None
    alias: str | None = None
    official: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    #: pip options for both ``pip download`` and ``pip install`` (``--pre``): they shape the image.
    pip_options: tuple[str, ...] = ()
    #: Warnings printed when the image is built (pip options left out); they do not shape the image.
    build_warnings: tuple[str, ...] = field(default=(), compare=False)
    #: How the environment was adapted (``environment_mapping``): a build log line each, and one console line.
    build_notes: tuple[str, ...] = field(default=(), compare=False)
    build_summary: str | None = field(default=None, compare=False)

    def fingerprint(self) -> str:
        constraints = self.constraints.read_text(encoding="utf-8") if self.constraints else ""
        shape = {
            "requirements": list(self.requirements),
            "venv": self.venv,
            "apt": list(self.apt_packages),
            "env": list(self.environment),
            "constraints": constraints,
            "base": self.base.hash,
            "script": PYTHON_BUILD_SCRIPT,
            "format": PYTHON_IMAGE_FORMAT,
        }
        if self.pip_options:  # only when present, so the hashes of images built before options existed hold
            shape["pip_options"] = list(self.pip_options)
        return json.dumps(shape)

    def build(self, builder: ImageBuilder) -> Image:
        return builder.python_image(self)


#: The build container's script. Its ``[k/n] title`` lines mark the stages shown on the console.
PYTHON_BUILD_SCRIPT = r"""
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
echo "[1/4] Debian packages: python3 python3-venv $APT_PACKAGES"
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates $APT_PACKAGES >/dev/null
rm -rf /var/lib/apt/lists/*
echo "[2/4] user azureuser (uid 1000) for runs"
id -u 1000 >/dev/null 2>&1 || useradd --uid 1000 --user-group --create-home --shell /bin/bash azureuser
echo "[3/4] virtual environment $VENV"
python3 -m venv "$VENV"
echo "[4/4] pip install from the wheelhouse (offline): $REQUIREMENTS"
"$VENV/bin/pip" install --no-index --find-links /wheelhouse --no-cache-dir --disable-pip-version-check \
    --progress-bar off $REQUIREMENTS
"$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null 2>&1 || true
chmod -R a+rX "$VENV"
echo "build finished"
"""

#: A stage line of the build script (``[2/4] user azureuser ...``).
SCRIPT_STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.+)$")
#: How many stages the build script has.
PYTHON_BUILD_STAGES = len(re.findall(r'^echo "\[\d+/\d+\]', PYTHON_BUILD_SCRIPT, flags=re.MULTILINE))
