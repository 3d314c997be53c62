from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from sandbox import azurite
from sandbox.images import DebianBaseRecipe, DockerfileRecipe, PythonImageRecipe

REPO = Path(azurite.__file__).resolve().parents[2]


def test_recipe_hash_is_stable_and_tags_the_image(tmp_path: Path) -> None:
    """The hash is the recipe's content only: not its folder's path, its files' times, nor the process."""
    here = azurite.recipe()
    context = tmp_path / "elsewhere"
    shutil.copytree(here.context, context)
    for path in context.rglob("*"):
        os.utime(path, (0, 0))
    moved = DockerfileRecipe(name=here.name, repository=here.repository, context=context, base=here.base,
                             build_args=here.build_args)
    assert moved.hash == here.hash, "the hash depends on where the recipe folder is or on file times"
    other = subprocess.run([sys.executable, "-c", "from sandbox import azurite; print(azurite.recipe().hash)"],
                           capture_output=True, text=True, check=True, cwd=REPO,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert other == here.hash, "another process computes another hash"
    assert re.fullmatch(r"[0-9a-f]{32}", here.hash)
    assert here.reference == f"aml-sandbox/azurite:{here.hash}"


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


def test_curated_environment_installs_its_documented_offline_mapping() -> None:
    from sandbox import curated
    from sandbox.images import environment_recipe, pip_requirements

    definition = curated.catalog()["AzureML-PyTorch-1.6-CPU"].definition
    assert pip_requirements(definition) == ("torch==2.14.1", "torchvision==0.29.1", "azureml-core==1.61.0.post4",
                                            "mlflow-skinny==3.17.2")
    recipe = environment_recipe(definition)
    assert recipe.venv.startswith("/azureml-envs/azureml_") and recipe.constraints is not None
    renamed = {**definition, "name": "my-copy", "version": "9"}
    # the name and version do not shape the image (Azure's hash ignores them), the packages do
    assert environment_recipe(renamed).reference == recipe.reference
    changed = json.loads(json.dumps(definition))
    changed["python"]["condaDependencies"]["dependencies"][1]["pip"].append("six==1.17.0")
    assert "torch==1.6.0" in environment_recipe(changed).requirements  # no longer curated: installed as written


def test_user_environments_install_as_written_with_azureml_defaults_as_azureml_core() -> None:
    from sandbox.images import pip_requirements, requested_python

    definition = {"name": "mine", "python": {"condaDependencies": {"dependencies": [
        "python=3.8.13", "numpy=1.26.4", "pip", {"pip": ["azureml-defaults", "six==1.17.0"]}]}}}
    # conda's single '=' is a prefix match (1.26.4, 1.26.4.1, ...); pip's form of it is '==1.26.4.*'
    assert pip_requirements(definition) == ("numpy==1.26.4.*", "azureml-core==1.61.0.post4", "six==1.17.0")
    assert requested_python(definition) == "3.8.13"


def test_the_service_side_imports_the_image_names_it_needs_without_packaging() -> None:
    """The service image has no ``packaging``: only the host side maps environments (sandbox.environment_mapping)."""
    import subprocess
    import sys

    code = "import sys; sys.modules['packaging'] = None; import sandbox.local_runner, sandbox.image_builder"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
