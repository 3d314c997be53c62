"""Resolving image recipes to local images: present -> pulled -> built offline, one build at a time.

Offline builds run on the host side, where debootstrap and the wheelhouse live. Each build writes
its full output to a log file (``<home>/logs/image-builds/<recipe>-<hash>.log``) and shows one line
per stage on the console (sandbox.build_progress); a failed build raises :class:`ImageBuildError`
with the last lines and the log's path.
"""

from __future__ import annotations

import fcntl
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
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sandbox import console
from sandbox.build_progress import TAIL_LINES, BuildProgress
from sandbox.config import Settings
from sandbox.docker_engine import MANAGED_LABEL, RECIPE_HASH_LABEL, RECIPE_LABEL, DockerEngine
from sandbox.errors import ImageBuildError, ImageNotFoundError
from sandbox.image_recipes import (
    PYTHON_BUILD_SCRIPT,
    PYTHON_BUILD_STAGES,
    SCRIPT_STAGE,
    DebianBaseRecipe,
    DockerfileRecipe,
    PythonImageRecipe,
    Recipe,
)

if TYPE_CHECKING:  # pragma: no cover
    from docker.models.images import Image

BUILD_COMMAND_HINT = "Run 'aml-sandbox images build' on the host to build it."
DOCKER_BUILD_STEP = "Step "


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (pip's ``cert`` setting, else OpenSSL's default file)."""
    candidates = [os.environ.get(var) for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    candidates.append(ssl.get_default_verify_paths().cafile)
    candidates.append("/etc/ssl/certs/ca-certificates.crt")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_log_path(settings: Settings, recipe: Recipe) -> Path:
    """Where the full output of ``recipe``'s last build is kept."""
    return settings.home / "logs" / "image-builds" / f"{recipe.name}-{recipe.hash}.log"


@dataclass(frozen=True)
class ResolvedImage:
    recipe: str
    reference: str
    image_id: str
    how: str  # "present", "pulled" or "built"


class ImageBuilder:
    """Resolves recipes to images: present -> pulled -> built offline.

    ``log`` receives a copy of every line (the run's ``20_image_build_log.txt``); ``quiet`` keeps the
    console silent (the build log file is written either way).
    """

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
        self._progress: BuildProgress | None = None

    # -- output ----------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.note(message)
            return
        if not self.quiet:
            console.detail(message)
        if self.log is not None:
            self.log.write(message + "\n")
            self.log.flush()

    @property
    def progress(self) -> BuildProgress:
        if self._progress is None:
            raise RuntimeError("offline builds run through ImageBuilder.resolve(recipe)")
        return self._progress

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
        image = self._build(recipe)
        self.engine.tag(image, recipe.reference)
        self._ensure_alias(recipe, image)
        return ResolvedImage(recipe.name, recipe.reference, image.id, "built")

    def _build(self, recipe: Recipe) -> Image:
        """Build offline with one console line per stage; the full output goes to the build log file."""
        path = build_log_path(self.settings, recipe)
        self._say(f"{recipe.name}: building {recipe.reference} offline (full log: {path})")
        start = time.monotonic()
        outer = self._progress
        try:
            with BuildProgress(recipe.name, path, mirror=self.log, quiet=self.quiet) as progress:
                self._progress = progress
                try:
                    image = recipe.build(self)
                except ImageBuildError as exc:
                    if exc.image != recipe.reference or str(path) in exc.reason:
                        raise
                    raise ImageBuildError(exc.image, f"{exc.reason} (full log: {path})",
                                          exc.log_tail or progress.last_lines()) from exc
        finally:
            self._progress = outer
        self._say(f"{recipe.name}: built {recipe.reference} in {time.monotonic() - start:.0f} s")
        return image

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
        progress = self.progress
        install = shutil.which("debootstrap") is None
        total = 3 if install else 2
        if install:
            from sandbox.bootstrap import install_debian_packages

            progress.stage(1, total, "installing debootstrap from Debian's packages")
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
            progress.stage(total - 1, total, f"debootstrap --variant=minbase {recipe.suite} (a few minutes)")
            progress.output(" ".join(command))
            self._stream_process(command, recipe.reference)
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (rootfs / leftover).glob("*"):
                    if path.is_file():
                        path.unlink()
            archive = Path(tmp) / "rootfs.tar"
            progress.stage(total, total, "docker import")
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

        progress = self.progress
        base = self.resolve(recipe.base)
        with tempfile.TemporaryDirectory(prefix=f"aml-sandbox-{recipe.name}-") as tmp:
            context = Path(tmp) / "context"
            shutil.copytree(recipe.context, context, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
            ca = host_ca_bundle()
            (context / "ca-bundle.crt").write_bytes(ca.read_bytes() if ca else b"")
            args = {"BASE_IMAGE": base.reference, **dict(recipe.build_args)}
            progress.output(f"docker build ({', '.join(f'{k}={v}' for k, v in args.items())})")
            try:
                stream = self.engine.client.api.build(
                    path=str(context), tag=recipe.reference, buildargs=args, rm=True, forcerm=True,
                    decode=True, labels={MANAGED_LABEL: "true", RECIPE_LABEL: recipe.name,
                                         RECIPE_HASH_LABEL: recipe.hash},
                )
                for chunk in stream:
                    if "error" in chunk:
                        raise ImageBuildError(recipe.reference, chunk["error"].strip(), progress.last_lines())
                    for line in chunk.get("stream", "").splitlines():
                        if line.strip():
                            self._docker_build_line(line)
            except docker.errors.APIError as exc:
                raise ImageBuildError(recipe.reference, str(exc), progress.last_lines()) from exc
        return self._built(recipe, "docker build")

    def _docker_build_line(self, line: str) -> None:
        """``Step 3/7 : RUN ...`` starts a stage; every line goes to the log."""
        if line.startswith(DOCKER_BUILD_STEP) and " : " in line:
            counter, _, instruction = line[len(DOCKER_BUILD_STEP):].partition(" : ")
            number, _, total = counter.partition("/")
            if number.isdigit() and total.isdigit():
                self.progress.stage(int(number), int(total), instruction.strip())
                return
        self.progress.output(line)

    def python_image(self, recipe: PythonImageRecipe) -> Image:
        import docker.errors
        from docker.types import Mount

        progress = self.progress
        total = PYTHON_BUILD_STAGES + 2
        base = self.resolve(recipe.base)
        for warning in recipe.build_warnings:
            progress.output(f"warning: {warning}")
            if not self.quiet:
                console.warn(warning)
        requirements, relaxed = self.installable(recipe)
        for note in (*recipe.build_notes, *relaxed):
            progress.output(f"note: {note}")
        summary = recipe.build_summary if not relaxed else (
            f"{len(relaxed)} pinned package(s) have no wheel for Python 3.11 and were relaxed "
            f"({'; '.join(n.split(':', 1)[0] for n in relaxed[:6])}); "
            + (recipe.build_summary or "one line each in azureml-logs/20_image_build_log.txt"))
        if summary and not self.quiet:
            console.warn(summary)
        progress.stage(1, total, f"downloading wheels into {self.settings.wheelhouse}")
        self.fill_wheelhouse(recipe, requirements)
        with tempfile.TemporaryDirectory(prefix=f"aml-sandbox-{recipe.name}-") as tmp:
            script = Path(tmp) / "build.sh"
            script.write_text(PYTHON_BUILD_SCRIPT, encoding="utf-8")
            os.chmod(tmp, 0o755)
            script.chmod(0o644)
            env = {
                "VENV": recipe.venv,
                "REQUIREMENTS": " ".join(requirements),
                "APT_PACKAGES": " ".join(recipe.apt_packages),
                **{_pip_variable(option): "1" for option in recipe.pip_options},
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
                for raw in container.logs(stream=True, follow=True):
                    for line in raw.decode("utf-8", "replace").splitlines():
                        stage = SCRIPT_STAGE.match(line)
                        if stage:
                            progress.stage(1 + int(stage.group(1)), total, stage.group(3))
                        else:
                            progress.output(line)
                status = container.wait()
                code = status.get("StatusCode", -1)
                if code != 0:
                    raise ImageBuildError(recipe.reference, f"the build script exited with {code}",
                                          progress.last_lines())
                path_value = f"{recipe.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                changes = [f"ENV PATH={path_value}", 'CMD ["python"]', "WORKDIR /"]
                changes += [f"ENV {key}={value}" for key, value in recipe.environment]
                labels = {MANAGED_LABEL: "true", RECIPE_LABEL: recipe.name, RECIPE_HASH_LABEL: recipe.hash,
                          **dict(recipe.labels)}
                changes.append("LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()))
                progress.stage(total, total, "committing the image (large layers take a minute)")
                repository, _, tag = recipe.reference.rpartition(":")
                image = container.commit(repository=repository, tag=tag, changes=changes)
            except docker.errors.APIError as exc:
                raise ImageBuildError(recipe.reference, str(exc), progress.last_lines()) from exc
            finally:
                try:
                    container.remove(force=True, v=True)
                except docker.errors.APIError:
                    pass
        return image

    def installable(self, recipe: PythonImageRecipe) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The recipe's requirements with each pin that has no wheel for the image relaxed to the nearest one that
        has (``pin_relaxation``), and a build log note per relaxed pin. Curated recipes are pinned to what installs.

        Under ``AML_SANDBOX_STRICT_ENVIRONMENTS=1`` a pin that would be relaxed fails the build, naming each."""
        from packaging.requirements import Requirement

        from sandbox.pin_relaxation import relax_all

        if recipe.constraints:
            return recipe.requirements, ()
        pinned = {Requirement(text).name for text in recipe.requirements if Requirement(text).specifier}
        available = {name: self._installable_versions(name, recipe) for name in sorted(pinned)}
        return relax_all(recipe.requirements, available)

    def _installable_versions(self, name: str, recipe: PythonImageRecipe) -> list[str]:
        """The versions of ``name`` with a wheel for the image's Python and platform (``pip index versions``)."""
        command = [sys.executable, "-m", "pip", "index", "versions", "--json", "--disable-pip-version-check",
                   *self._target_options(), *[o for o in recipe.pip_options if o == "--pre"], name]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise ImageBuildError(recipe.reference, f"listing the versions of {name} on the package index took "
                                                    "over 120 s") from None
        if result.returncode != 0:
            return []  # no release has a wheel here: relax names the package
        try:
            return [str(v) for v in json.loads(result.stdout).get("versions", [])]
        except (json.JSONDecodeError, AttributeError):
            return []

    def _target_options(self) -> list[str]:
        """pip's options for wheels that run in the images: CPython 3.11 on Debian bookworm's glibc (2.36)."""
        arch = self.engine.info().get("Architecture") or platform.machine()
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
        options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11"]
        tags = [f"manylinux_2_{minor}" for minor in range(36, 4, -1)]
        tags += ["manylinux2014", "manylinux2010", "manylinux1", "linux"]
        for tag in tags:
            options += ["--platform", f"{tag}_{arch}"]
        return options

    def fill_wheelhouse(self, recipe: PythonImageRecipe, requirements: tuple[str, ...] | None = None) -> None:
        """Download the wheels of ``requirements`` (default: the recipe's) for the engine's platform into the
        wheelhouse."""
        wheelhouse = self.settings.wheelhouse
        wheelhouse.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
                   *self._target_options(), "-d", str(wheelhouse)]
        if recipe.constraints:
            command += ["-c", str(recipe.constraints)]
        command += list(recipe.pip_options)
        command += list(recipe.requirements if requirements is None else requirements)
        self.progress.output(" ".join(command))
        self._stream_process(command, recipe.reference)

    # -- helpers ---------------------------------------------------------------------------

    def _built(self, recipe: Recipe, step: str) -> Image:
        image = self.engine.get_image(recipe.reference)
        if image is None:
            raise ImageBuildError(recipe.reference, f"{step} finished but the image is not there")
        return image

    def _stream_process(self, command: list[str], image: str) -> None:
        """Run ``command``; its output goes to the build log; a non-zero exit raises with the last lines."""
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as process:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                self.progress.output(line)
        if process.returncode != 0:
            shown = " ".join([Path(command[0]).name, *command[1:4]])
            raise ImageBuildError(image, f"'{shown} ...' exited with {process.returncode}", "\n".join(tail))


def _pip_variable(option: str) -> str:
    """pip reads every option from a ``PIP_<NAME>`` variable (``--pre`` -> ``PIP_PRE``)."""
    return "PIP_" + option.lstrip("-").upper().replace("-", "_")


def image_summary(engine: DockerEngine, recipes: list[Recipe]) -> list[tuple[str, str, bool]]:
    """(recipe name, reference, present) for each recipe; no pulls, no builds."""
    return [(r.name, r.reference, engine.get_image(r.reference) is not None) for r in recipes]
