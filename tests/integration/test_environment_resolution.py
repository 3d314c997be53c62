"""2020 pins in an environment build and run here, relaxed and logged; strict mode refuses them (issue 18, item 1).

Public Azure ML v1 examples pin releases of 2020 (``scikit-learn==0.22.1``, ``pillow==6.2.1``) that have no wheel
for the images' Python 3.11. The build relaxes each to the nearest release that installs (same major version
where one exists, else the newest), says so once on the console and once per package in
``20_image_build_log.txt``; ``AML_SANDBOX_STRICT_ENVIRONMENTS=1`` fails instead, naming each package.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import target
from sandbox.errors import EnvironmentMappingError
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, submit_with, write_script

SCRIPT = """
import PIL, sklearn
print("versions", "scikit-learn", sklearn.__version__, "pillow", PIL.__version__)
"""


def _environment(aml: object, name: str, scikit_learn: str = "0.22.1", pillow: str = "6.2.1") -> object:
    from azureml.core.conda_dependencies import CondaDependencies

    env = aml.Environment(name)  # type: ignore[attr-defined]
    dependencies = CondaDependencies()
    dependencies.add_conda_package(f"scikit-learn=={scikit_learn}")
    dependencies.add_pip_package(f"pillow=={pillow}")
    env.python.conda_dependencies = dependencies
    return env


@pytest.mark.local_only
def test_2020_pins_are_relaxed_to_releases_that_install_logged_once_each_and_the_run_completes(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox.aml.environment import definition_of
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import environment_recipe

    aml = target.connect("local")
    env = _environment(aml, f"pins-2020-{os.getpid()}")
    reference = environment_recipe(definition_of(env)).reference
    engine = DockerEngine()
    if engine.get_image(reference) is not None:  # an earlier session built it: build it again
        engine.client.images.remove(reference, force=True)
    write_script(tmp_path / "src", "versions.py", SCRIPT)
    run = submit_with(tmp_path / "src", "versions.py", env, "pins-2020")
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Completed", (details.get("error"), driver_log(run)[-3000:])
    log = driver_log(run)
    assert "versions scikit-learn 1." in log and "pillow" in log, log[-2000:]  # same major where one exists

    build_log = run._client.read_file(run.id, "azureml-logs/20_image_build_log.txt")[0].decode()
    for pin in ("scikit-learn==0.22.1 -> scikit-learn==", "pillow==6.2.1 -> pillow=="):
        assert sum(pin in line and line.startswith("note: ") for line in build_log.splitlines()) == 1, build_log
    console = capsys.readouterr().err
    assert sum("were relaxed" in line for line in console.splitlines()) == 1, console
    assert "scikit-learn==0.22.1" in console and "pillow==6.2.1" in console


@pytest.mark.local_only
def test_strict_mode_refuses_the_same_pins_naming_each_and_what_would_have_been_used(
        workspace_env: SandboxEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AML_SANDBOX_STRICT_ENVIRONMENTS", "1")
    aml = target.connect("local")
    # Other 2020 pins than the test above: its image (built from the relaxed pins) would be reused as it is.
    env = _environment(aml, f"pins-2020-strict-{os.getpid()}", scikit_learn="0.22.2", pillow="7.0.0")
    write_script(tmp_path / "src", "versions.py", SCRIPT)
    with pytest.raises(EnvironmentMappingError) as error:
        submit_with(tmp_path / "src", "versions.py", env, "pins-2020-strict")
    message = str(error.value)
    assert "scikit-learn==0.22.2 -> scikit-learn==1." in message and "pillow==7.0.0 -> pillow==" in message, message
    assert "AML_SANDBOX_STRICT_ENVIRONMENTS" in message
