"""Images without a container registry: resolve each recipe to a local image, cached by content hash.

Resolution order for every recipe: an image tagged with the recipe's content hash is already
present -> pull the official image (when the recipe names one) -> build it offline from the
package registries. A recipe's hash covers everything that shapes the image (its files, build
arguments, package lists and the hash of the image it builds on), so an unchanged recipe is never
built twice. Offline builds run on the host side, where debootstrap and the wheelhouse live.

Three kinds of recipe:

- :class:`DebianBaseRecipe`: ``debian:bookworm-slim``, else ``debootstrap --variant=minbase`` and
  ``docker import``;
- :class:`DockerfileRecipe`: a folder with a Dockerfile (``sandbox/azurite/``) built FROM the base
  with the classic builder; the host's CA bundle is placed in the context for TLS-inspecting proxies;
- :class:`PythonImageRecipe`: the base plus Debian's Python and a virtual environment filled from a
  wheelhouse downloaded on the host and bind-mounted into a build container, then committed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sandbox import console
from sandbox.config import Settings
from sandbox.docker_engine import MANAGED_LABEL, RECIPE_HASH_LABEL, RECIPE_LABEL, DockerEngine
from sandbox.errors import ImageBuildError, ImageNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from docker.models.images import Image

#: Bumped when the way recipes are built changes, so every image is rebuilt once.
BUILDER_VERSION = "1"
#: Bumped when only the way Python images are built changes (2: no VOLUME from the build's binds).
PYTHON_IMAGE_FORMAT = "2"
HASH_LENGTH = 32
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BUILD_COMMAND_HINT = "Run 'aml-sandbox images build' on the host to build it."


def content_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:HASH_LENGTH]


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (pip's ``cert`` setting, else OpenSSL's default file)."""
    candidates = [os.environ.get(var) for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    candidates.append(ssl.get_default_verify_paths().cafile)
    candidates.append("/etc/ssl/certs/ca-certificates.crt")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


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

    def fingerprint(self) -> str:
        constraints = self.constraints.read_text(encoding="utf-8") if self.constraints else ""
        return json.dumps(
            {
                "requirements": list(self.requirements),
                "venv": self.venv,
                "apt": list(self.apt_packages),
                "env": list(self.environment),
                "constraints": constraints,
                "base": self.base.hash,
                "script": _PYTHON_BUILD_SCRIPT,
                "format": PYTHON_IMAGE_FORMAT,
            }
        )

    def build(self, builder: ImageBuilder) -> Image:
        return builder.python_image(self)


_PYTHON_BUILD_SCRIPT = r"""
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


# -- resolution ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedImage:
    recipe: str
    reference: str
    image_id: str
    how: str  # "present", "pulled" or "built"


class ImageBuilder:
    """Resolves recipes to images: present -> pulled -> built offline. Writes a build log."""

    def __init__(
        self,
        engine: DockerEngine,
        settings: Settings,
        *,
        allow_pull: bool = True,
        allow_build: bool = True,
        log: TextIO | None = None,
        quiet: bool = False,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.allow_pull = allow_pull and os.environ.get("AML_SANDBOX_NO_PULL", "") not in {"1", "true"}
        self.allow_build = allow_build
        self.log = log
        self.quiet = quiet
        self._resolved: dict[str, ResolvedImage] = {}

    # -- output ----------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if not self.quiet:
            console.detail(message)
        self._log(message)

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line.rstrip("\n") + "\n")
            self.log.flush()

    # -- resolution ------------------------------------------------------------------------

    def resolve(self, recipe: Recipe) -> ResolvedImage:
        """Make sure ``recipe.reference`` exists locally; return how it got there."""
        if recipe.reference in self._resolved:
            return self._resolved[recipe.reference]
        with self._lock(recipe):
            resolved = self._resolve_locked(recipe)
        self._resolved[recipe.reference] = resolved
        return resolved

    def _resolve_locked(self, recipe: Recipe) -> ResolvedImage:
        image = self.engine.get_image(recipe.reference)
        if image is not None:
            self._ensure_alias(recipe, image)
            self._say(f"{recipe.name}: {recipe.reference} present")
            return ResolvedImage(recipe.name, recipe.reference, image.id, "present")

        if recipe.official and self.allow_pull:
            self._say(f"{recipe.name}: pulling {recipe.official}")
            ok, reason = self.engine.pull(recipe.official)
            if ok:
                image = self.engine.get_image(recipe.official)
                assert image is not None
                self.engine.tag(image, recipe.reference)
                self._ensure_alias(recipe, image)
                self._say(f"{recipe.name}: pulled {recipe.official} -> {recipe.reference}")
                return ResolvedImage(recipe.name, recipe.reference, image.id, "pulled")
            self._say(f"{recipe.name}: pull failed ({reason}); building offline instead")

        if not self.allow_build:
            raise ImageNotFoundError(recipe.reference, BUILD_COMMAND_HINT)
        start = time.monotonic()
        self._say(f"{recipe.name}: building {recipe.reference} offline")
        image = recipe.build(self)
        self.engine.tag(image, recipe.reference)
        self._ensure_alias(recipe, image)
        self._say(f"{recipe.name}: built {recipe.reference} in {time.monotonic() - start:.0f} s")
        return ResolvedImage(recipe.name, recipe.reference, image.id, "built")

    def _ensure_alias(self, recipe: Recipe, image: Image) -> None:
        if recipe.alias and recipe.alias not in image.tags:
            self.engine.tag(image, recipe.alias)

    @contextmanager
    def _lock(self, recipe: Recipe) -> Iterator[None]:
        """One build of a recipe at a time across processes (two submits must not build twice)."""
        lock_dir = self.settings.home / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"image-{recipe.hash}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- offline builds --------------------------------------------------------------------

    def debootstrap(self, recipe: DebianBaseRecipe) -> Image:
        if shutil.which("debootstrap") is None:
            from sandbox.bootstrap import install_debian_packages

            self._say("base: installing debootstrap from Debian's packages")
            install_debian_packages(["debootstrap"], why="Building the Debian base image offline")
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if os.geteuid() != 0:
            raise ImageBuildError(
                recipe.reference,
                "debootstrap needs root; run 'sudo .venv/bin/aml-sandbox images build' once",
            )
        with tempfile.TemporaryDirectory(prefix="aml-sandbox-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            command = [debootstrap, "--variant=minbase", recipe.suite, str(rootfs), recipe.mirror]
            self._say(f"base: {' '.join(command)} (about 30 s)")
            self._stream_process(command, recipe.reference)
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (rootfs / leftover).glob("*"):
                    if path.is_file():
                        path.unlink()
            archive = Path(tmp) / "rootfs.tar"
            self._say("base: docker import")
            with tarfile.open(archive, "w") as tar:
                tar.add(rootfs, arcname=".")
            repository, _, tag = recipe.reference.rpartition(":")
            self.engine.client.api.import_image_from_file(
                str(archive), repository=repository, tag=tag,
                changes=['CMD ["bash"]', "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         f"LABEL {MANAGED_LABEL}=true {RECIPE_LABEL}=base {RECIPE_HASH_LABEL}={recipe.hash}"],
            )
        return self._built(recipe, "docker import")

    def dockerfile(self, recipe: DockerfileRecipe) -> Image:
        import docker.errors

        base = self.resolve(recipe.base)
        with tempfile.TemporaryDirectory(prefix=f"aml-sandbox-{recipe.name}-") as tmp:
            context = Path(tmp) / "context"
            shutil.copytree(recipe.context, context, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
            ca = host_ca_bundle()
            (context / "ca-bundle.crt").write_bytes(ca.read_bytes() if ca else b"")
            args = {"BASE_IMAGE": base.reference, **dict(recipe.build_args)}
            self._say(f"{recipe.name}: docker build ({', '.join(f'{k}={v}' for k, v in args.items())})")
            try:
                stream = self.engine.client.api.build(
                    path=str(context), tag=recipe.reference, buildargs=args, rm=True, forcerm=True,
                    decode=True, labels={MANAGED_LABEL: "true", RECIPE_LABEL: recipe.name,
                                         RECIPE_HASH_LABEL: recipe.hash},
                )
                tail: list[str] = []
                for chunk in stream:
                    if "error" in chunk:
                        raise ImageBuildError(recipe.reference, chunk["error"].strip(), "\n".join(tail[-20:]))
                    text = chunk.get("stream", "")
                    for line in text.splitlines():
                        if line.strip():
                            tail.append(line)
                            self._progress(line)
            except docker.errors.APIError as exc:
                raise ImageBuildError(recipe.reference, str(exc)) from exc
        return self._built(recipe, "docker build")

    def python_image(self, recipe: PythonImageRecipe) -> Image:
        import docker.errors
        from docker.types import Mount

        base = self.resolve(recipe.base)
        self.fill_wheelhouse(recipe)
        with tempfile.TemporaryDirectory(prefix=f"aml-sandbox-{recipe.name}-") as tmp:
            script = Path(tmp) / "build.sh"
            script.write_text(_PYTHON_BUILD_SCRIPT, encoding="utf-8")
            os.chmod(tmp, 0o755)
            script.chmod(0o644)
            env = {
                "VENV": recipe.venv,
                "REQUIREMENTS": " ".join(recipe.requirements),
                "APT_PACKAGES": " ".join(recipe.apt_packages),
            }
            container = self.engine.client.containers.create(
                base.reference,
                command=["bash", "/aml-build/build.sh"],
                environment=env,
                # Mounts, not ``volumes=``: docker-py lists ``volumes`` targets in the container's
                # Config.Volumes, which a commit turns into VOLUME lines, and every container of the
                # image would then leave two anonymous volumes behind.
                mounts=[Mount("/wheelhouse", str(self.settings.wheelhouse), type="bind", read_only=True),
                        Mount("/aml-build", tmp, type="bind", read_only=True)],
                labels={MANAGED_LABEL: "true", RECIPE_LABEL: f"{recipe.name}-build"},
            )
            try:
                container.start()
                tail: list[str] = []
                for raw in container.logs(stream=True, follow=True):
                    for line in raw.decode("utf-8", "replace").splitlines():
                        tail.append(line)
                        self._progress(line)
                status = container.wait()
                code = status.get("StatusCode", -1)
                if code != 0:
                    raise ImageBuildError(recipe.reference, f"the build script exited with {code}",
                                          "\n".join(tail[-25:]))
                path_value = f"{recipe.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                changes = [f"ENV PATH={path_value}", 'CMD ["python"]', "WORKDIR /"]
                changes += [f"ENV {key}={value}" for key, value in recipe.environment]
                labels = {MANAGED_LABEL: "true", RECIPE_LABEL: recipe.name, RECIPE_HASH_LABEL: recipe.hash,
                          **dict(recipe.labels)}
                changes.append("LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()))
                self._say(f"{recipe.name}: committing the image (large layers take a minute)")
                repository, _, tag = recipe.reference.rpartition(":")
                image = container.commit(repository=repository, tag=tag, changes=changes)
            except docker.errors.APIError as exc:
                raise ImageBuildError(recipe.reference, str(exc)) from exc
            finally:
                try:
                    container.remove(force=True, v=True)
                except docker.errors.APIError:
                    pass
        return image

    def fill_wheelhouse(self, recipe: PythonImageRecipe) -> None:
        """Download the wheels of ``recipe`` for the engine's platform into the wheelhouse."""
        wheelhouse = self.settings.wheelhouse
        wheelhouse.mkdir(parents=True, exist_ok=True)
        arch = self.engine.info().get("Architecture") or platform.machine()
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                   "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
                   "-d", str(wheelhouse)]
        # Debian bookworm has glibc 2.36: every manylinux tag up to 2_36 runs there.
        tags = [f"manylinux_2_{minor}" for minor in range(36, 4, -1)]
        tags += ["manylinux2014", "manylinux2010", "manylinux1", "linux"]
        for tag in tags:
            command += ["--platform", f"{tag}_{arch}"]
        if recipe.constraints:
            command += ["-c", str(recipe.constraints)]
        command += list(recipe.requirements)
        self._say(f"{recipe.name}: downloading wheels into {wheelhouse} (large wheels take a minute)")
        self._stream_process(command, recipe.reference, show=("Saved", "File was already", "ERROR"))

    # -- helpers ---------------------------------------------------------------------------

    def _built(self, recipe: Recipe, step: str) -> Image:
        image = self.engine.get_image(recipe.reference)
        if image is None:
            raise ImageBuildError(recipe.reference, f"{step} finished but the image is not there")
        return image

    def _progress(self, line: str) -> None:
        self._log(line)
        if not self.quiet:
            print(f"      {line}", flush=True)

    def _stream_process(self, command: list[str], image: str, show: tuple[str, ...] | None = None) -> None:
        tail: list[str] = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as process:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                if show is None or line.startswith(show):
                    self._progress(line)
                else:
                    self._log(line)
        if process.returncode != 0:
            raise ImageBuildError(image, f"'{command[0]} ...' exited with {process.returncode}",
                                  "\n".join(tail[-20:]))


def image_summary(engine: DockerEngine, recipes: list[Recipe]) -> list[tuple[str, str, bool]]:
    """(recipe name, reference, present) for each recipe; no pulls, no builds."""
    return [(r.name, r.reference, engine.get_image(r.reference) is not None) for r in recipes]


# -- run environments ----------------------------------------------------------------------------

ENVIRONMENT_REPOSITORY = "aml-sandbox/azureml"
AZUREML_CORE = "azureml-core==1.61.0.post4"
IMAGE_PYTHON = "3.11"


def requested_python(definition: dict) -> str | None:
    """The ``python=X.Y`` an environment's conda dependencies ask for, if any."""
    conda = ((definition.get("python") or {}).get("condaDependencies") or {}).get("dependencies") or []
    for dependency in conda:
        if isinstance(dependency, str) and dependency.replace(" ", "").startswith("python="):
            return dependency.split("=", 1)[1].strip("=")
    return None


def pip_requirements(definition: dict) -> tuple[str, ...]:
    """What to pip-install for an environment definition (Azure's JSON form).

    A curated environment gets its documented offline mapping (sandbox/curated_environments.json);
    any other gets its pip list as written, plus its conda packages (``name=1.2`` becomes ``name==1.2``).
    """
    from sandbox import curated

    entry = curated.match(definition)
    if entry is not None:
        return entry.offline_pip
    conda = ((definition.get("python") or {}).get("condaDependencies") or {}).get("dependencies") or []
    requirements: list[str] = []
    for dependency in conda:
        if isinstance(dependency, dict):
            for package in (str(p) for p in dependency.get("pip", [])):
                # azureml-core adds azureml-defaults to every default environment; what a training run
                # needs of it is azureml-core (the rest is the inferencing server).
                if package.split("=")[0].split("<")[0].split(">")[0].strip() == "azureml-defaults":
                    package = AZUREML_CORE
                requirements.append(package)
        elif isinstance(dependency, str):
            name = dependency.split("=")[0].strip()
            if name in {"python", "pip"}:
                continue
            requirements.append(dependency.replace("==", "=").replace("=", "==", 1) if "=" in dependency else name)
    return tuple(requirements)


def environment_recipe(definition: dict) -> PythonImageRecipe:
    """The image recipe of a run environment; its hash ignores the environment's name and version (as Azure's)."""
    from sandbox import curated

    requirements = pip_requirements(definition)
    env_hash = content_hash(json.dumps(list(requirements)))
    constraints = None
    if curated.match(definition) is not None:
        constraints = Path(__file__).resolve().parent / "environment-constraints.txt"
    return PythonImageRecipe(
        name="azureml",
        repository=ENVIRONMENT_REPOSITORY,
        requirements=requirements,
        venv=f"/azureml-envs/azureml_{env_hash}",
        constraints=constraints,
        environment=(("AZUREML_CONDA_ENVIRONMENT_PATH", f"/azureml-envs/azureml_{env_hash}"),),
    )


def curated_recipes() -> list[PythonImageRecipe]:
    """The curated environments' images, which ``aml-sandbox images build`` prepares ahead of time."""
    from sandbox import curated

    return [environment_recipe(entry.definition) for entry in curated.catalog().values()]
