"""Images without a container registry: an environment (or a stack service) -> a local image, cached by hash.

Resolution order for every recipe: an image tagged with the recipe's content hash is already
present -> pull the official image (when the recipe names one) -> build it offline from the
package registries. The parts, one module each:

- sandbox.image_recipes: what an image is made of (``DebianBaseRecipe``, ``DockerfileRecipe``,
  ``PythonImageRecipe``) and its content hash;
- sandbox.image_builder: ``ImageBuilder`` resolves recipes (present -> pulled -> built), one build at a
  time, with one console line per stage and the full output in a build log file;
- sandbox.environment_mapping: an environment's conda and pip dependencies -> pip requirements and options.

This module turns run environments into recipes and keeps the names the rest of the sandbox imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandbox.environment_mapping import IMAGE_PYTHON, pip_install, requested_python
from sandbox.image_builder import BUILD_COMMAND_HINT, ImageBuilder, ResolvedImage, image_summary
from sandbox.image_recipes import DebianBaseRecipe, DockerfileRecipe, PythonImageRecipe, Recipe, content_hash

__all__ = [
    "BUILD_COMMAND_HINT",
    "ENVIRONMENT_REPOSITORY",
    "IMAGE_PYTHON",
    "DebianBaseRecipe",
    "DockerfileRecipe",
    "ImageBuilder",
    "PythonImageRecipe",
    "Recipe",
    "ResolvedImage",
    "content_hash",
    "curated_recipes",
    "environment_recipe",
    "image_summary",
    "pip_requirements",
    "requested_python",
]

ENVIRONMENT_REPOSITORY = "aml-sandbox/azureml"
ENVIRONMENT_CONSTRAINTS = Path(__file__).resolve().parent / "environment-constraints.txt"


def pip_requirements(definition: dict[str, Any]) -> tuple[str, ...]:
    """The pip requirements of an environment definition (see sandbox.environment_mapping)."""
    return pip_install(definition).requirements


def environment_recipe(definition: dict[str, Any]) -> PythonImageRecipe:
    """The image recipe of a run environment; its hash ignores the environment's name and version (as Azure's).

    Raises ``EnvironmentMappingError`` naming a dependency that has no pip form.
    """
    from sandbox import curated

    install = pip_install(definition)
    shape = list(install.requirements) + ([{"pip_options": list(install.options)}] if install.options else [])
    env_hash = content_hash(json.dumps(shape))
    return PythonImageRecipe(
        name="azureml",
        repository=ENVIRONMENT_REPOSITORY,
        requirements=install.requirements,
        venv=f"/azureml-envs/azureml_{env_hash}",
        constraints=ENVIRONMENT_CONSTRAINTS if curated.match(definition) is not None else None,
        environment=(("AZUREML_CONDA_ENVIRONMENT_PATH", f"/azureml-envs/azureml_{env_hash}"),),
        pip_options=install.options,
        build_warnings=install.dropped,
        build_notes=install.notes,
        build_summary=install.warning,
    )


def curated_recipes() -> list[PythonImageRecipe]:
    """The curated environments' images, which ``aml-sandbox images build`` prepares ahead of time."""
    from sandbox import curated

    return [environment_recipe(entry.definition) for entry in curated.catalog().values()]
