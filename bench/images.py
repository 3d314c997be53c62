"""6. Image resolution: warm (the image is there: what every submit and ``aml-sandbox up`` do) and cold builds.

Warm: ``ImageBuilder.resolve`` with a fresh Docker client, for the curated environment's image (what
``submit()`` checks) and for the stack's three images, beside the floor of any check, one
``docker image inspect``. Cold (not in --quick): the same recipes built into throw-away repositories
(``aml-sandbox-bench/...``), so the images the stack runs on are never touched: the curated
environment's image on the existing Debian base, and the stack's base (debootstrap), Azurite (npm) and
workspace service (pip) images from nothing. The wheelhouse (~2.9 GB of wheels downloaded once by the
first ``aml-sandbox images build``) is kept: a first build on a new machine adds that download.
Every throw-away image is removed afterwards.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from typing import Any

from bench.common import ENVIRONMENT, Context, Row, Section, fmt_s, interleave, median, noise, spread

BENCH_REPOSITORY = "aml-sandbox-bench"


def _curated_recipe() -> Any:
    from sandbox import curated
    from sandbox.images import environment_recipe

    return environment_recipe(curated.catalog()[ENVIRONMENT].definition)


def _resolve(ctx: Context, recipes: list[Any]) -> float:
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import ImageBuilder

    start = time.perf_counter()
    builder = ImageBuilder(DockerEngine(), ctx.settings, quiet=True)
    for recipe in recipes:
        resolved = builder.resolve(recipe)
        if resolved.how != "present":
            raise RuntimeError(f"{recipe.name} was {resolved.how}, not present: a warm resolution built an image")
    return time.perf_counter() - start


def _inspect(reference: str) -> float:
    start = time.perf_counter()
    subprocess.run(["docker", "image", "inspect", reference], capture_output=True, check=True)
    return time.perf_counter() - start


def _remove_image(reference: str) -> None:
    subprocess.run(["docker", "rmi", reference], capture_output=True, check=False)


def _cold_build(ctx: Context, recipe: Any) -> float:
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import ImageBuilder

    ctx.on_cleanup(f"image {recipe.reference}", lambda: _remove_image(recipe.reference))
    log_path = ctx.tmp / f"build-{recipe.name}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        start = time.perf_counter()
        resolved = ImageBuilder(DockerEngine(), ctx.settings, quiet=True, log=log).resolve(recipe)
        elapsed = time.perf_counter() - start
    if resolved.how != "built":
        raise RuntimeError(f"{recipe.reference} was {resolved.how}, not built")
    return elapsed


def run(ctx: Context) -> Section:
    from sandbox import stack

    section = Section(6, "Image resolution: warm (cache hit) and cold builds")
    curated = _curated_recipe()
    stack_recipes = stack.recipes()
    reps = 3 if ctx.quick else 5
    samples = interleave({
        "warm resolve, curated environment": lambda: _resolve(ctx, [curated]),
        "warm resolve, stack images (3)": lambda: _resolve(ctx, stack_recipes),
        "docker image inspect": lambda: _inspect(curated.reference),
    }, reps, ctx.log)
    section.samples.update({f"6 {k}": v for k, v in samples.items()})
    inspect = samples["docker image inspect"]
    for key, label in (("warm resolve, curated environment", "6a warm resolution, the curated environment's image "
                        "(what every submit checks)"),
                       ("warm resolve, stack images (3)", "6b warm resolution, the stack's 3 images (`aml-sandbox "
                        "up` with nothing changed)")):
        values = samples[key]
        section.rows.append(Row(label, spread(values), f"one `docker image inspect` (CLI): {spread(inspect)}",
                                f"{median(values) / median(inspect):.1f}x the time", noise(values, inspect),
                                "< 1 s", median(values) < 1.0))
    if ctx.quick:
        section.notes.append("Cold builds are skipped in --quick mode.")
        return section

    ctx.log("6: cold build of the curated environment's image into a throw-away repository (about 3 min)")
    bench_curated = replace(curated, repository=f"{BENCH_REPOSITORY}/azureml")
    curated_s = _cold_build(ctx, bench_curated)
    _remove_image(bench_curated.reference)
    section.samples["6 cold build, curated environment"] = [curated_s]
    section.rows.append(Row(
        "6c cold build, the curated environment's image (6.3 GB: Debian's Python, torch, torchvision, azureml-core)",
        spread([curated_s]), "—", "—", "—", note="Base image present, wheelhouse filled (pip download only checks "
        "it). Azure's published time for a first job (image build included) is in the published table."))

    ctx.log("6: cold builds of the stack's images (base by debootstrap, azurite by npm, service by pip)")
    base, azurite_recipe, service = stack_recipes
    bench_base = replace(base, repository=f"{BENCH_REPOSITORY}/debian", alias=None)
    bench_azurite = replace(azurite_recipe, repository=f"{BENCH_REPOSITORY}/azurite", alias=None, base=bench_base)
    bench_service = replace(service, repository=f"{BENCH_REPOSITORY}/service", alias=None, base=bench_base)
    times = {}
    for recipe in (bench_base, bench_azurite, bench_service):
        ctx.log(f"6: building {recipe.reference}")
        times[recipe.name] = _cold_build(ctx, recipe)
    for recipe in (bench_service, bench_azurite, bench_base):
        _remove_image(recipe.reference)
    total = sum(times.values())
    section.samples.update({f"6 cold build, {name}": [value] for name, value in times.items()})
    section.rows.append(Row(
        "6d cold build, the stack's 3 images (" + ", ".join(f"{k} {fmt_s(v)}" for k, v in times.items()) + ")",
        spread([total]), "—", "—", "—", note="Registries unreachable here, so every image is built offline: the "
        "pull attempts that fail first are included."))
    return section
