"""The service validates every field of a submitted run definition with Azure's rules (issue 16, item 4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sandbox.run_definition import RunDefinition


def _definition(**changes: Any) -> dict[str, Any]:
    """A definition as the facade submits it for the tutorial's run."""
    data: dict[str, Any] = {
        "run_id": "day1-experiment-data_1796140000_1a2b3c4d",
        "experiment": "day1-experiment-data",
        "workspace": {"name": "aml-sandbox-ws", "subscription_id": "00000000-0000-0000-0000-000000000000",
                      "resource_group": "aml-sandbox-rg", "id": "5b1b2b7e-2a4c-5f1e-9d3c-1f2e3d4c5b6a"},
        "script": "train.py",
        "arguments": ["--data_path", "DatasetConsumptionConfig:input", "--learning_rate", 0.003, "--momentum", 0.92],
        "compute_target": "cpu-cluster",
        "environment": {"name": "AzureML-PyTorch-1.6-CPU", "environmentVariables": {"EXAMPLE_ENV_VAR": "EXAMPLE"}},
        "image": "aml-sandbox/azureml:3f2a9c0d1e2b",
        "snapshot_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "interpreter": "/opt/conda/bin/python",
        "inputs": [{"name": "input", "mode": "mount", "dataset_id": "c6b1", "dataset_str": "FileDataset",
                    "sources": [{"datastore": "workspaceblobstore", "container": "azureml-blobstore-x",
                                 "path": "datasets/cifar10"}], "path_on_compute": None}],
        "environment_variables": {"MY_SETTING": "1"},
        "max_run_duration_seconds": 3600,
        "shm_size": "2g",
        "tags": {"team": "vision"},
        "properties": {"azureml.runsource": "experiment"},
        "submitted_by": "alice@laptop",
    }
    data.update(copy.deepcopy(changes))
    return data


def test_the_tutorials_definition_is_accepted() -> None:
    definition = RunDefinition.from_dict(_definition())
    assert definition.input_specs[0].name == "input"
    assert RunDefinition.from_dict(definition.to_dict()) == definition


def test_mcr_images_with_a_tag_and_a_digest_are_accepted() -> None:
    image = "mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04:20210615.v1@sha256:" + "a" * 64
    assert RunDefinition.from_dict(_definition(image=image)).image == image
    assert RunDefinition.from_dict(_definition(image="localhost:5000/team/img")).image == "localhost:5000/team/img"


BAD_FIELDS = [
    ("run_id", "../../etc", "run_id='../../etc'"),
    ("run_id", "a" * 300, "run_id="),
    ("experiment", "my experiment", "experiment='my experiment'"),
    ("experiment", "exp/../x", "Experiment name must be between 1 and 255 characters long"),
    ("workspace", {"name": "ws", "subscription_id": "s", "resource_group": "rg"}, "workspace.name='ws'"),
    ("workspace", {"name": "aml-ws", "subscription_id": "../x", "resource_group": "rg"},
     "workspace.subscription_id='../x'"),
    ("workspace", {"name": "aml-ws", "subscription_id": "s", "resource_group": "r g"},
     "workspace.resource_group='r g'"),
    ("workspace", {"name": "aml-ws", "subscription_id": "s", "resource_group": "rg", "extra": 1},
     "workspace has unknown"),
    ("snapshot_id", "../../../tmp/x", "snapshot_id='../../../tmp/x'"),
    ("snapshot_id", "0F8FAD5B-D9CB-469F-A165-70867728950E", "snapshot_id="),
    ("script", "/etc/passwd", "script='/etc/passwd'"),
    ("script", "../outside.py", "script='../outside.py'"),
    ("arguments", "--lr 1", "arguments='--lr 1'"),
    ("arguments", [{"a": 1}], "arguments[0]={'a': 1}"),
    ("image", "Bad Image!", "image='Bad Image!'"),
    ("image", "a" * 300, "image="),
    ("image", "alpine --privileged", "image='alpine --privileged'"),
    ("interpreter", "python; rm -rf /", "interpreter="),
    ("shm_size", "2 g", "shm_size='2 g'"),
    ("shm_size", "4096g", "shm_size='4096g'"),
    ("shm_size", 2, "shm_size=2"),
    ("environment_variables", {"BAD-NAME": "x"}, "variable name 'BAD-NAME'"),
    ("environment_variables", {"X": 1}, "environment_variables['X']=1"),
    ("environment_variables", {f"V{i}": "x" for i in range(1001)}, "environment_variables="),
    ("environment", {"environmentVariables": {"A=B": "x"}}, "environment.environmentVariables: variable name 'A=B'"),
    ("environment", "conda", "environment='conda'"),
    ("max_run_duration_seconds", -1, "max_run_duration_seconds=-1"),
    ("max_run_duration_seconds", 10 ** 12, "max_run_duration_seconds=1000000000000"),
    ("max_run_duration_seconds", "60", "max_run_duration_seconds='60'"),
    ("max_run_duration_seconds", True, "max_run_duration_seconds=True"),
    ("tags", {"k": {"nested": 1}}, "tags['k']={'nested': 1}"),
    ("tags", {"": "v"}, "tags: key ''"),
    ("properties", {"k": "x" * 40000}, "properties['k']="),
    ("submitted_by", "a\nb", "submitted_by='a\\nb'"),
    ("created_utc", "yesterday", "created_utc='yesterday'"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_a_bad_field_is_refused_with_a_message_naming_the_field_and_the_value(field: str, value: Any,
                                                                                named: str) -> None:
    with pytest.raises(ValueError) as error:
        RunDefinition.from_dict(_definition(**{field: value}))
    assert named in str(error.value)


BAD_INPUTS = [
    ({"name": "../../escape"}, "inputs[0].name='../../escape'"),
    ({"name": "in put"}, "inputs[0].name='in put'"),
    ({"name": "1input"}, "inputs[0].name='1input'"),
    ({"mode": "upload"}, "inputs[0].mode='upload'"),
    ({"sources": []}, "inputs[0].sources=[]"),
    ({"sources": [{"datastore": "ws", "container": "c"}]}, "inputs[0].sources[0]="),
    ({"path_on_compute": "/data:/host"}, "inputs[0].path_on_compute='/data:/host'"),
    ({"path_on_compute": "data/../../x"}, "inputs[0].path_on_compute='data/../../x'"),
    ({"dataset_id": None}, "inputs[0].dataset_id=None"),
    ({"mount_options": "rw"}, "inputs[0] has unknown fields ['mount_options']"),
]


@pytest.mark.parametrize(("change", "named"), BAD_INPUTS, ids=[n.split("=")[0] for _, n in BAD_INPUTS])
def test_a_bad_input_is_refused_naming_it(change: dict[str, Any], named: str) -> None:
    base = _definition()["inputs"][0]
    with pytest.raises(ValueError) as error:
        RunDefinition.from_dict(_definition(inputs=[{**base, **change}]))
    assert named in str(error.value)


def test_two_inputs_with_one_name_are_refused_but_one_dataset_under_two_names_is_accepted() -> None:
    base = _definition()["inputs"][0]
    with pytest.raises(ValueError, match=r"inputs\[1\]\.name='input' is used by two inputs"):
        RunDefinition.from_dict(_definition(inputs=[base, dict(base)]))
    definition = RunDefinition.from_dict(_definition(inputs=[base, {**base, "name": "input_2"}]))
    assert [s.name for s in definition.input_specs] == ["input", "input_2"]


def test_unknown_and_missing_fields_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown run definition fields \['privileged'\]"):
        RunDefinition.from_dict(_definition(privileged=True))
    data = _definition()
    del data["snapshot_id"]
    with pytest.raises(ValueError, match=r"run definition lacks \['snapshot_id'\]"):
        RunDefinition.from_dict(data)


def test_long_values_are_cut_in_the_message() -> None:
    with pytest.raises(ValueError) as error:
        RunDefinition.from_dict(_definition(experiment="x y" * 10_000))
    assert len(str(error.value)) < 400
