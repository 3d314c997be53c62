"""The Azure ML SDK packages an environment names -> what its image installs on Python 3.11."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from sandbox.azureml_packages import SDK_PACKAGES
from sandbox.environment_mapping import (
    STRICT_VARIABLE,
    EnvironmentMappingError,
    PipInstall,
    pip_install,
    pip_requirement,
)

AZUREML_CORE = "azureml-core==1.61.0.post4"


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_VARIABLE, raising=False)


def install_pip(*entries: str) -> PipInstall:
    return pip_install({"python": {"condaDependencies": {"dependencies": [{"pip": list(entries)}]}}})


@pytest.mark.parametrize(("entry", "installed", "changed"), [
    ("azureml-sdk", AZUREML_CORE, True),
    ("azureml-sdk[notebooks,automl]==1.13.0", AZUREML_CORE, True),
    ("azureml-defaults~=1.47.0", AZUREML_CORE, True),
    ("azureml-core", AZUREML_CORE, False),
    ("azureml-core>=1.50", AZUREML_CORE, False),
    ("azureml-core==1.13.0", AZUREML_CORE, True),
    ("azureml-mlflow", "azureml-mlflow", False),
    ("azureml-mlflow==1.50.0", "azureml-mlflow==1.50.0", False),
    ("azureml-dataset-runtime", "azureml-dataset-runtime<1.63,>=1.61.0", False),
    ("azureml-dataset-runtime[fuse,pandas]", "azureml-dataset-runtime[pandas]<1.63,>=1.61.0", True),
    ("azureml-dataset-runtime==1.13.0", "azureml-dataset-runtime<1.63,>=1.61.0", True),
    ("azureml-dataprep==2.0.2", "azureml-dataprep<5.6,>=5.4.5", True),
    ("azureml-dataprep>=5", "azureml-dataprep<5.6,>=5,>=5.4.5", False),
    ("azureml-train-core==1.13.0", "azureml-train-core~=1.61.0", True),
    ("azureml-widgets~=1.47.0", "azureml-widgets~=1.61.0", True),
    ("azureml-telemetry", "azureml-telemetry~=1.61.0", False),
    ("azureml-pipeline-core==1.61.0", "azureml-pipeline-core==1.61.0,~=1.61.0", False),
    ("azureml-explain-model==1.0.85", "azureml-explain-model~=1.61.0", True),
    ("azureml-train-automl-runtime==1.0.85.5", None, True),
    ("azureml-opendatasets", None, True),
    ("azureml-contrib-gbdt", None, True),
    ("azureml-inference-server-http==1.5.1", "azureml-inference-server-http==1.5.1", False),  # not SDK 1.x
])
def test_each_sdk_package_maps_to_what_installs_with_the_images_azureml_core(
        entry: str, installed: str | None, changed: bool) -> None:
    assert pip_requirement(entry) == installed
    install = install_pip(entry)
    assert install.requirements == ((installed,) if installed else ())
    assert len(install.notes) == int(changed)
    if changed:
        expected = f"{entry} left out: " if installed is None else f"{entry} -> {installed}: "
        assert install.notes[0].startswith(expected)


def test_an_uninstallable_extra_is_named_in_the_note() -> None:
    install = install_pip("azureml-dataset-runtime[fuse,pandas]")
    assert "extra [fuse] left out: fusepy" in install.notes[0]


def test_strict_mode_names_every_sdk_package_it_would_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_VARIABLE, "1")
    with pytest.raises(EnvironmentMappingError) as error:
        install_pip("azureml-defaults==1.13.0", "azureml-train-core==1.13.0", "azureml-mlflow", "azureml-opendatasets")
    message = str(error.value)
    assert f"azureml-defaults==1.13.0 -> {AZUREML_CORE}" in message
    assert "azureml-train-core==1.13.0 -> azureml-train-core~=1.61.0" in message
    # unpinned packages install what was asked for (or cannot install at all): strict mode refuses only pins
    assert "azureml-opendatasets" not in message and "azureml-mlflow" not in message


@pytest.mark.parametrize("name", sorted(SDK_PACKAGES))
def test_every_decision_in_the_table_has_a_reason_and_a_parseable_result(name: str) -> None:
    rule = SDK_PACKAGES[name]
    assert len(rule.why) > 20
    if rule.use is None and not rule.keep:
        assert rule.why.startswith("left out: ")
    result = pip_requirement(name)
    if result is not None:
        Requirement(result)
