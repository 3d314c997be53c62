"""An environment's conda and pip dependencies -> the pip requirements and options of its offline image."""

from __future__ import annotations

import json
from typing import Any

import pytest
from packaging.requirements import Requirement

from sandbox.environment_mapping import EnvironmentMappingError, conda_to_pip, pip_install, pip_requirement
from sandbox.images import environment_recipe


def environment(*dependencies: Any) -> dict[str, Any]:
    return {"name": "mine", "python": {"condaDependencies": {"dependencies": list(dependencies)}}}


@pytest.mark.parametrize(("conda", "pip"), [
    ("numpy", "numpy"),
    ("numpy>=1.2", "numpy>=1.2"),            # was 'numpy>==1.2', which pip refuses
    ("numpy=1.5", "numpy==1.5.*"),           # conda's single '=' matches 1.5, 1.5.1, ...
    ("numpy=1.5.*", "numpy==1.5.*"),
    ("numpy=1.5*", "numpy==1.5.*"),
    ("numpy=1.5=py38_0", "numpy==1.5"),      # a build string makes the version exact; the build is conda's own
    ("numpy==1.5", "numpy==1.5"),
    ("numpy==1.5=py38_0", "numpy==1.5"),
    ("numpy~=1.5", "numpy~=1.5"),
    ("numpy>=1.8,<2", "numpy<2,>=1.8"),
    ("numpy!=1.5", "numpy!=1.5"),
    ("numpy 1.5", "numpy==1.5"),             # conda's space form: an exact version
    ("numpy 1.5 py38_0", "numpy==1.5"),
    ("numpy >=1.2", "numpy>=1.2"),
    ("conda-forge::numpy", "numpy"),
    ("conda-forge::numpy>=1.2", "numpy>=1.2"),
    ("conda-forge/linux-64::numpy=1.5", "numpy==1.5.*"),
])
def test_each_conda_spec_becomes_the_pip_requirement_with_the_same_meaning(conda: str, pip: str) -> None:
    assert conda_to_pip(conda) == pip
    Requirement(pip)  # pip's own parser accepts it


@pytest.mark.parametrize("conda", ["python=3.8.13", "python", "pip", "pip=23.0"])
def test_python_and_pip_themselves_are_not_installed(conda: str) -> None:
    assert conda_to_pip(conda) is None


@pytest.mark.parametrize(("entry", "expected"), [
    ("six==1.16.0", "six==1.16.0"),
    ("six >= 1.16 , < 2", "six<2,>=1.16"),
    ("requests[socks]>=2", "requests[socks]>=2"),
    ("azureml-defaults", "azureml-core==1.61.0.post4"),
    ("azureml_defaults==1.13.0", "azureml-core==1.61.0.post4"),
    ('dataclasses; python_version < "3.7"', None),    # the images run Python 3.11
    ('tomli>=1; python_version < "3.12"', "tomli>=1"),
    ('colorama; sys_platform == "win32"', None),
])
def test_pip_entries_are_parsed_and_markers_decided_for_the_images_python(entry: str, expected: str | None) -> None:
    assert pip_requirement(entry) == expected


def test_pip_options_from_the_pip_list_are_never_requirements() -> None:
    install = pip_install(environment("python=3.10", {"pip": [
        "--find-links https://pypi.python.org/simple/index.html",
        "--extra-index-url https://pypi.python.org/simple",
        "--index-url=https://mirror.example/simple",
        "-f /some/folder",
        "--pre",
        "six==1.16.0",
    ]}, "numpy>=1.2"))
    assert install.requirements == ("six==1.16.0", "numpy>=1.2")
    assert install.options == ("--pre",)
    assert len(install.dropped) == 4
    for option in ("--find-links https://pypi.python.org/simple/index.html",
                   "--extra-index-url https://pypi.python.org/simple", "--index-url=https://mirror.example/simple",
                   "-f /some/folder"):
        assert sum(option in note for note in install.dropped) == 1, option


def test_an_environment_from_conda_dependencies_create_maps_to_parseable_requirements() -> None:
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    env = Environment("conda-create")
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=["six==1.16.0"],
                                                             conda_packages=["numpy>=1.2"])
    definition = json.loads(json.dumps(Environment._serialize_to_dict(env)))
    pip_list = next(d["pip"] for d in definition["python"]["condaDependencies"]["dependencies"] if isinstance(d, dict))
    assert any(entry.startswith("--find-links") for entry in pip_list)  # what azureml-core writes today

    recipe = environment_recipe(definition)
    assert recipe.requirements == ("six==1.16.0", "numpy>=1.2")
    assert not any(r.startswith("-") for r in recipe.requirements)
    assert recipe.pip_options == ()
    assert [w.split("'")[1].split()[0] for w in recipe.build_warnings] == ["--find-links", "--extra-index-url"]
    # the dropped options do not shape the image: the same packages without them give the same image
    plain = environment("python=3.10", {"pip": ["six==1.16.0"]}, "numpy>=1.2")
    assert environment_recipe(plain).reference == recipe.reference


def test_a_passed_option_changes_the_image() -> None:
    plain = environment({"pip": ["six==1.16.0"]})
    pre = environment({"pip": ["--pre", "six==1.16.0"]})
    assert environment_recipe(pre).pip_options == ("--pre",)
    assert environment_recipe(pre).reference != environment_recipe(plain).reference


@pytest.mark.parametrize(("dependencies", "named", "fix"), [
    (["numpy>==1.2"], "numpy>==1.2", "'numpy>=1.2'"),
    ([{"pip": ["numpy>==1.2"]}], "numpy>==1.2", "pip_packages"),
    ([{"pip": ["six=1.16.0"]}], "six=1.16.0", "'numpy==1.26.4'"),
    (["numpy=1.11.1|1.11.3"], "numpy=1.11.1|1.11.3", "one pip version range"),
    ([{"pip": ["-r requirements.txt"]}], "-r requirements.txt", "Remove it"),
    ([{"pip": ["-e ./mypackage"]}], "-e ./mypackage", "Remove it"),
    ([{"pip": ["mypkg @ https://example.com/mypkg-1.0-py3-none-any.whl"]}], "mypkg @ https://", "mypkg==<version>"),
])
def test_a_dependency_without_a_pip_form_fails_with_its_name_and_the_fix(
        dependencies: list[Any], named: str, fix: str) -> None:
    with pytest.raises(EnvironmentMappingError) as error:
        environment_recipe(environment(*dependencies))
    message = str(error.value)
    assert named in message and fix in message
    assert isinstance(error.value, ValueError)
