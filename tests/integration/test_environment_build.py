"""An environment made with ``CondaDependencies.create()`` builds offline and runs (issue 16, items 13 and 15)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import target
from tests.integration.conftest import SandboxEnv
from tests.integration.helpers import driver_log, submit_with, write_script


@pytest.mark.local_only
def test_an_environment_from_conda_dependencies_create_builds_with_stage_lines_and_runs(
        workspace_env: SandboxEnv, tmp_path: Path, no_leftover_containers: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    from azureml.core.conda_dependencies import CondaDependencies

    from sandbox.aml.environment import definition_of
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import environment_recipe

    aml = target.connect("local")
    env = aml.Environment(f"conda-create-{os.getpid()}")
    # azureml-core writes '--find-links ...' and '--extra-index-url ...' into the pip list, and the conda
    # spec 'numpy>=1.2' used to become 'numpy>==1.2': every such environment failed to build.
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=["six==1.16.0"],
                                                             conda_packages=["numpy>=1.2"])
    recipe = environment_recipe(definition_of(env))
    engine = DockerEngine()
    if engine.get_image(recipe.reference) is not None:  # an earlier session built it: build it again
        engine.client.images.remove(recipe.reference, force=True)
    write_script(tmp_path / "src", "versions.py", """
        import numpy, six
        print("six", six.__version__, "numpy sum", numpy.ones(3).sum())
        """)
    run = submit_with(tmp_path / "src", "versions.py", env, "conda-create")
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Completed", (details.get("error"), driver_log(run)[-3000:])

    assert "six 1.16.0 numpy sum 3.0" in driver_log(run)
    console = capsys.readouterr()
    assert "==> azureml [1/6] downloading wheels" in console.out
    assert "==> azureml [5/6] pip install from the wheelhouse" in console.out
    assert "Collecting" not in console.out and "Successfully installed" not in console.out
    assert "image-builds/azureml-" in console.out  # the build log's path
    for option in ("--find-links", "--extra-index-url"):
        assert sum(option in line for line in console.err.splitlines()) == 1, console.err
    build_log = run._client.read_file(run.id, "azureml-logs/20_image_build_log.txt")[0].decode()
    assert "Successfully installed" in build_log and "six-1.16.0" in build_log and "numpy-" in build_log
