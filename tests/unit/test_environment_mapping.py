"""An environment's conda and pip dependencies -> the pip requirements and options of its offline image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from sandbox.environment_mapping import (
    STRICT_VARIABLE,
    EnvironmentMappingError,
    conda_to_pip,
    pip_install,
    pip_requirement,
    requested_python,
)
from sandbox.errors import ConfigurationError
from sandbox.images import environment_recipe

AZUREML_CORE = "azureml-core==1.61.0.post4"

#: The day-1 tutorial's conda file (get-started: "pytorch-env.yml"), with the pip list its later parts add.
DAY1_TUTORIAL_CONDA = """\
name: pytorch-env
channels:
    - defaults
    - pytorch
dependencies:
    - python=3.6.2
    - pytorch
    - torchvision
    - pip:
        - azureml-defaults
"""


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_VARIABLE, raising=False)


def environment(*dependencies: Any) -> dict[str, Any]:
    return {"name": "mine", "python": {"condaDependencies": {"dependencies": list(dependencies)}}}


def as_azure_json(env: Any) -> dict[str, Any]:
    """The definition azureml-core sends to Azure for ``env`` (what the service receives)."""
    from azureml.core import Environment

    return json.loads(json.dumps(Environment._serialize_to_dict(env)))


def day1_tutorial(tmp_path: Path) -> dict[str, Any]:
    from azureml.core import Environment

    (tmp_path / "pytorch-env.yml").write_text(DAY1_TUTORIAL_CONDA, encoding="utf-8")
    return as_azure_json(Environment.from_conda_specification("pytorch-env", str(tmp_path / "pytorch-env.yml")))


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


# -- the resolution policy (issue 18) --------------------------------------------------------------


def test_the_day1_tutorial_conda_file_maps_to_pypi_names_with_a_note_per_change(tmp_path: Path) -> None:
    install = pip_install(day1_tutorial(tmp_path))
    assert install.requirements == ("torch", "torchvision", AZUREML_CORE)
    assert install.python == "3.6.2"
    assert install.notes == (
        "pytorch -> torch: conda's name for PyPI's torch",
        f"azureml-defaults -> {AZUREML_CORE}: azureml-core is what a training run needs of azureml-defaults "
        "(the rest is the inferencing HTTP server)",
        "python=3.6.2 -> Python 3.11: the image runs the one Python the offline base offers (3.11, Debian "
        "bookworm's python3); packages are installed for it",
    )
    warning = install.warning
    assert warning is not None and "\n" not in warning
    for shown in ("pytorch -> torch", f"azureml-defaults -> {AZUREML_CORE}", "python=3.6.2 -> Python 3.11",
                  "20_image_build_log.txt", f"{STRICT_VARIABLE}=1"):
        assert shown in warning


def test_strict_mode_fails_2020_pins_naming_each_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_VARIABLE, "1")
    with pytest.raises(EnvironmentMappingError) as error:
        pip_install(environment("python=3.6.2", "pytorch", {"pip": ["azureml-defaults==1.13.0", "torch==1.6.0"]}))
    message = str(error.value)
    assert f"\n  - azureml-defaults==1.13.0 -> {AZUREML_CORE}" in message
    assert f"Unset {STRICT_VARIABLE}" in message and "change the environment" in message
    # a rename and python=X install what was asked for, under the image's names and Python: not refused
    assert [change.asked for change in error.value.changes] == ["azureml-defaults==1.13.0"]


def test_strict_mode_keeps_the_day1_tutorial_which_pins_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_VARIABLE, "1")
    install = pip_install(day1_tutorial(tmp_path))
    assert [change.asked for change in install.changes] == ["pytorch", "azureml-defaults", "python=3.6.2"]


def test_strict_mode_passes_an_environment_the_image_holds_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_VARIABLE, "1")
    install = pip_install(environment("python=3.11", "torch==2.14.1", {"pip": [AZUREML_CORE, "azureml-mlflow"]}))
    assert install.requirements == ("torch==2.14.1", AZUREML_CORE, "azureml-mlflow")
    assert install.changes == () and install.notes == () and install.warning is None


def test_the_strict_argument_overrides_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = environment({"pip": ["azureml-core==1.13.0"]})
    monkeypatch.setenv(STRICT_VARIABLE, "1")
    assert pip_install(pinned, strict=False).requirements == (AZUREML_CORE,)
    monkeypatch.delenv(STRICT_VARIABLE)
    with pytest.raises(EnvironmentMappingError, match=f"azureml-core==1.13.0 -> {AZUREML_CORE}"):
        pip_install(pinned, strict=True)


def test_a_strict_variable_that_is_not_a_switch_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_VARIABLE, "always")
    with pytest.raises(ConfigurationError, match=f"{STRICT_VARIABLE}='always'.*Set it to 1"):
        pip_install(environment({"pip": ["azureml-core==1.13.0"]}))


def test_conda_dependencies_create_with_scikit_learn_keeps_it_and_notes_what_the_sdk_added() -> None:
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    env = Environment("sklearn")
    env.python.conda_dependencies = CondaDependencies.create(conda_packages=["scikit-learn"])
    definition = as_azure_json(env)
    install = pip_install(definition)
    assert install.requirements == (AZUREML_CORE, "scikit-learn")
    assert install.python == requested_python(definition) and install.python is not None
    assert not any("scikit-learn" in note for note in install.notes)
    assert [change.asked for change in install.changes] == ["azureml-defaults", f"python={install.python}"]


def test_2020_pins_pass_the_mapping_as_written_for_relaxation_at_build_time() -> None:
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    dependencies = CondaDependencies()
    dependencies.add_conda_package("scikit-learn==0.22.1")
    dependencies.add_pip_package("pillow==6.2.1")
    env = Environment("pins-2020")
    env.python.conda_dependencies = dependencies
    install = pip_install(as_azure_json(env))
    assert set(install.requirements) == {AZUREML_CORE, "scikit-learn==0.22.1", "pillow==6.2.1"}
    assert not any("scikit-learn" in note or "pillow" in note for note in install.notes)


@pytest.mark.parametrize(("conda", "pip", "why"), [
    ("pytorch", "torch", "conda's name for PyPI's torch"),
    ("pytorch=1.6.0", "torch==1.6.0.*", "torch"),
    ("pytorch::pytorch=1.11.0", "torch==1.11.0.*", "torch"),
    ("pytorch-cpu==1.0.1", "torch==1.0.1", "CPU"),
    ("py-xgboost<=1.3.3", "xgboost<=1.3.3", "xgboost"),
    ("tensorflow-gpu=2.2", "tensorflow==2.2.*", "stub"),
    ("opencv", "opencv-python-headless", "headless"),
    ("conda-forge::py-opencv", "opencv-python-headless", "headless"),
    ("matplotlib-base>=3.3", "matplotlib>=3.3", "matplotlib"),
    ("pytables", "tables", "tables"),
])
def test_conda_names_become_pypi_names_with_a_note(conda: str, pip: str, why: str) -> None:
    assert conda_to_pip(conda) == pip
    install = pip_install(environment(conda))
    assert install.requirements == (pip,)
    assert len(install.notes) == 1 and install.notes[0].startswith(f"{conda} -> {pip}: ") and why in install.notes[0]


@pytest.mark.parametrize("conda", ["scikit-learn", "pillow", "lightgbm", "pyyaml", "protobuf", "torchvision"])
def test_names_that_are_the_same_on_pypi_are_not_changed(conda: str) -> None:
    install = pip_install(environment(f"{conda}>=1"))
    assert install.requirements == (f"{conda}>=1",) and install.notes == ()


@pytest.mark.parametrize(("conda", "why"), [
    ("cudatoolkit=10.1.243", "CUDA"), ("cudnn", "CUDA"), ("nccl", "CUDA"), ("mkl", "BLAS"), ("nomkl", "BLAS"),
    ("mkl-service", "BLAS"), ("blas=*=mkl", "BLAS"), ("intel-openmp", "OpenMP"), ("openmp", "OpenMP"),
    ("libgcc", "runtime"), ("libstdcxx-ng", "runtime"), ("_libgcc_mutex=0.1=main", "runtime"),
    ("ffmpeg", "program"), ("cpuonly", "metapackage"),
])
def test_conda_only_runtime_libraries_are_left_out_with_a_note_each(conda: str, why: str) -> None:
    assert conda_to_pip(conda) is None
    install = pip_install(environment("numpy", conda))
    assert install.requirements == ("numpy",)
    assert len(install.notes) == 1 and install.notes[0].startswith(f"{conda} left out: ") and why in install.notes[0]


@pytest.mark.parametrize(("spec", "recorded", "changed"), [
    ("python=3.6.2", "3.6.2", True),
    ("python=3.11", "3.11", False),
    ("python=3.11.4", "3.11.4", False),
    ("python==3.8", "3.8", True),
    ("python 3.7.1 h0371630_7", "3.7.1", True),
    ("python=3.6.2=h1234", "3.6.2", True),
    ("python>=3.8", ">=3.8", False),
    ("python>=3.6,<3.9", ">=3.6,<3.9", True),
    ("conda-forge::python=3.10", "3.10", True),
    ("python", None, False),
])
def test_the_requested_python_is_recorded_and_noted_when_the_image_runs_another(
        spec: str, recorded: str | None, changed: bool) -> None:
    install = pip_install(environment(spec, "numpy"))
    assert install.python == recorded == requested_python(environment(spec))
    assert install.requirements == ("numpy",)
    python_notes = [note for note in install.notes if note.startswith("python")]
    assert len(python_notes) == int(changed)
    if changed:
        assert "-> Python 3.11: the image runs the one Python the offline base offers" in python_notes[0]


def test_the_warning_names_the_first_six_changes_and_counts_the_rest() -> None:
    install = pip_install(environment("mkl", "nomkl", "cudnn", "nccl", "libgcc", "ffmpeg", "cpuonly", "openmp"))
    assert install.requirements == () and len(install.notes) == 8
    assert install.warning is not None and "ffmpeg left out" in install.warning
    assert "cpuonly" not in install.warning and "and 2 more" in install.warning


def test_the_same_requirement_from_two_entries_is_installed_once() -> None:
    install = pip_install(environment({"pip": ["azureml-core", "azureml-defaults", "azureml-sdk"]}))
    assert install.requirements == (AZUREML_CORE,)
    assert [change.asked for change in install.changes] == ["azureml-defaults", "azureml-sdk"]


def test_a_curated_environment_records_its_python_and_its_documented_mapping_as_notes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import curated

    monkeypatch.setenv(STRICT_VARIABLE, "1")  # the curated mapping is the documented equivalent, not a change
    install = pip_install(curated.catalog()["AzureML-PyTorch-1.6-CPU"].definition)
    assert install.python == "3.6.2" and install.warning is None
    assert any(note.startswith("torch==1.6.0: torch==2.14.1") for note in install.notes)
