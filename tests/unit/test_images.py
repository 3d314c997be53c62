from __future__ import annotations

import shutil
from pathlib import Path

from sandbox import azurite
from sandbox.images import DebianBaseRecipe, DockerfileRecipe, PythonImageRecipe


def test_recipe_hash_is_stable_and_tags_the_image() -> None:
    assert azurite.recipe().hash == azurite.recipe().hash
    assert azurite.recipe().reference == f"aml-sandbox/azurite:{azurite.recipe().hash}"
    assert len(azurite.recipe().hash) == 32


def test_dockerfile_change_changes_the_hash(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    shutil.copytree(Path(azurite.__file__).parent, context)
    recipe = DockerfileRecipe(name="azurite", repository="r", context=context)
    before = recipe.hash
    (context / "__init__.py").write_text("# helper code does not shape the image\n")
    assert recipe.hash == before
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\nENV X=1\n")
    assert recipe.hash != before


def test_base_change_propagates_to_images_built_on_it() -> None:
    other_base = DebianBaseRecipe(mirror="http://mirror.example/debian")
    assert azurite.recipe(other_base).hash != azurite.recipe().hash


def test_python_recipe_hash_covers_requirements() -> None:
    a = PythonImageRecipe(name="env", repository="r", requirements=("torch==2.14.1",), venv="/v")
    b = PythonImageRecipe(name="env", repository="r", requirements=("torch==2.14.1",), venv="/v")
    c = PythonImageRecipe(name="env", repository="r", requirements=("torch==2.13.0",), venv="/v")
    assert a.hash == b.hash != c.hash
