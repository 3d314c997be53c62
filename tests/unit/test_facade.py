"""The local facade's objects and errors, and the local/azure seam (issue 4). No services needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandbox import aml
from sandbox.aml.exceptions import UserErrorException
from sandbox.target import TargetConfigurationError, connect

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> aml.Workspace:
    monkeypatch.setenv("AML_SANDBOX_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return aml.Workspace.from_config()


def _load_control(name: str) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), REPO / "control" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_workspace_repr_and_default_datastore(ws: aml.Workspace) -> None:
    assert repr(ws) == ("Workspace.create(name='aml-sandbox-ws', subscription_id='00000000-0000-0000-0000-000000000000'"
                        ", resource_group='aml-sandbox-rg')")
    store = ws.get_default_datastore()
    assert store.name == "workspaceblobstore"
    assert store.container_name.startswith("azureml-blobstore-")
    assert set(ws.datastores) == {"workspaceblobstore"}
    assert json.loads(repr(store))["container_name"] == store.container_name


def test_config_json_names_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AML_SANDBOX_HOME", str(tmp_path / "home"))
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(json.dumps(
        {"subscription_id": "sub-1", "resource_group": "rg-1", "workspace_name": "dsvm-aml"}))
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert repr(aml.Workspace.from_config()) == \
        "Workspace.create(name='dsvm-aml', subscription_id='sub-1', resource_group='rg-1')"


def test_dataset_str_is_azures_json_form_and_gains_registration_when_saved(ws: aml.Workspace) -> None:
    dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), "datasets/cifar10"))
    assert str(dataset) == ('FileDataset\n{\n  "source": [\n    "(\'workspaceblobstore\', \'datasets/cifar10\')"\n'
                            '  ],\n  "definition": [\n    "GetDatastoreFiles"\n  ]\n}')
    dataset_id = dataset._ensure_saved(ws)
    registration = json.loads(str(dataset).split("\n", 1)[1])["registration"]
    assert registration == {"id": dataset_id, "name": None, "version": None, "workspace": repr(ws)}
    assert list(json.loads(str(dataset).split("\n", 1)[1])) == ["source", "definition", "registration"]


def test_from_files_accepts_tuple_list_and_datapath(ws: aml.Workspace) -> None:
    store = ws.get_default_datastore()
    forms = [(store, "a"), [(store, "a"), (store, "b")], aml.DataPath(store, "a"), [aml.DataPath(store, "b")]]
    sources = [json.loads(str(aml.Dataset.File.from_files(path=f)).split("\n", 1)[1])["source"] for f in forms]
    assert sources == [["('workspaceblobstore', 'a')"], ["('workspaceblobstore', 'a')", "('workspaceblobstore', 'b')"],
                       ["('workspaceblobstore', 'a')"], ["('workspaceblobstore', 'b')"]]
    with pytest.raises(UserErrorException, match="Invalid path"):
        aml.Dataset.File.from_files(path=42)
    with pytest.raises(NotImplementedError, match="URLs are not supported"):
        aml.Dataset.File.from_files(path="https://example.org/x.csv")


def test_consumption_config_modes_names_and_rules(ws: aml.Workspace) -> None:
    dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), "datasets/cifar10"))
    named = dataset.as_named_input("input")
    assert (named.name, named.mode, named.arg_val) == ("input", "direct", "DatasetConsumptionConfig:input")
    mounted = named.as_mount()
    assert (mounted.name, mounted.mode, mounted.path_on_compute) == ("input", "mount", None)
    downloaded = named.as_download("/tmp/data")
    assert (downloaded.mode, downloaded.path_on_compute) == ("download", "/tmp/data")
    assert dataset.as_mount().name.startswith("input__")
    for bad in ("1input", "in-put", "in put", "ünicode"):
        with pytest.raises(UserErrorException, match=f'Invalid input name "{bad}"'):
            dataset.as_named_input(bad)
    with pytest.raises(UserErrorException, match="Invalid mode 'sideways'"):
        aml.DatasetConsumptionConfig("x", dataset, mode="sideways")


def test_environments_from_the_curated_catalog(ws: aml.Workspace) -> None:
    env = ws.environments["AzureML-PyTorch-1.6-CPU"]
    assert env.version == "4"
    assert env.docker.base_image == "mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu16.04:20200821.v1"
    assert "torch==1.6.0" in list(env.python.conda_dependencies.pip_packages)
    assert env.environment_variables == {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE"}
    same = aml.Environment.get(ws, "AzureML-PyTorch-1.6-CPU")
    assert same.name == env.name and same.version == env.version
    with pytest.raises(KeyError, match=r"Known environments: \['AzureML-PyTorch-1.6-CPU'\]"):
        ws.environments["AzureML-PyTorch-9.9-CPU"]
    with pytest.raises(KeyError, match=r"AzureML-PyTorch-1\.6-CPU"):
        aml.Environment.get(ws, "nope")


def test_pip_and_conda_environments_and_register(ws: aml.Workspace, tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("six==1.17.0\n")
    env = aml.Environment.from_pip_requirements("mine", str(tmp_path / "req.txt"))
    assert "six==1.17.0" in list(env.python.conda_dependencies.pip_packages)
    (tmp_path / "env.yml").write_text("name: x\ndependencies:\n  - python=3.11\n  - pip:\n    - six==1.17.0\n")
    conda = aml.Environment.from_conda_specification("conda-env", str(tmp_path / "env.yml"))
    assert "six==1.17.0" in list(conda.python.conda_dependencies.pip_packages)
    registered = env.register(ws)
    assert registered.version == "1"
    assert aml.Environment.get(ws, "mine").version == "1"
    assert "mine" in ws.environments
    with pytest.raises(UserErrorException, match="reserved"):
        aml.Environment("AzureML-mine").register(ws)


def test_compute_targets_and_experiment_names(ws: aml.Workspace) -> None:
    assert {"cpu-cluster", "local"} <= set(ws.compute_targets)
    assert ws.compute_targets["cpu-cluster"].max_nodes == 4
    for bad in ("", "-starts-with-dash", "has space", "x" * 256, "semi;colon"):
        with pytest.raises(UserErrorException, match="Experiment name must be between 1 and 255 characters"):
            aml.Experiment(ws, bad)
    assert aml.Experiment(ws, "day1-experiment-data").name == "day1-experiment-data"


def _config(ws: aml.Workspace, tmp_path: Path, arguments: list, compute: str = "cpu-cluster",
            env: str = "AzureML-PyTorch-1.6-CPU") -> object:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    config = aml.ScriptRunConfig(source_directory=str(tmp_path / "src"), script="train.py",
                                 compute_target=compute, arguments=arguments)
    config.run_config.environment = ws.environments[env]
    return config


def test_raw_dataset_in_arguments_raises_azures_error_at_submit(ws: aml.Workspace, tmp_path: Path) -> None:
    dataset = aml.Dataset.File.from_files(path=(ws.get_default_datastore(), "datasets/cifar10"))
    config = _config(ws, tmp_path, ["--data_path", dataset])
    with pytest.raises(UserErrorException, match="Dataset cannot be used directly in a run"):
        aml.Experiment(ws, "exp").submit(config)


def test_data_reference_in_arguments_is_not_serializable(ws: aml.Workspace, tmp_path: Path) -> None:
    config = _config(ws, tmp_path, ["--data", ws.get_default_datastore().path("x")])
    with pytest.raises(TypeError, match="Object of type 'DataReference' is not JSON serializable"):
        aml.Experiment(ws, "exp").submit(config)


def test_unknown_compute_target_names_the_known_ones(ws: aml.Workspace, tmp_path: Path) -> None:
    config = _config(ws, tmp_path, [], compute="gpu-cluster")
    with pytest.raises(UserErrorException, match=r"Compute target 'gpu-cluster' was not found.*'cpu-cluster'") as error:
        aml.Experiment(ws, "exp").submit(config)
    assert "AML_SANDBOX_COMPUTE_TARGETS" in error.value.message, "the message does not say how to add a target"


def test_missing_script_is_refused_at_submit(ws: aml.Workspace, tmp_path: Path) -> None:
    config = _config(ws, tmp_path, [])
    config.script = "nope.py"
    with pytest.raises(UserErrorException, match=r"The script 'nope\.py' was not found in source_directory") as error:
        aml.Experiment(ws, "exp").submit(config)
    assert str(tmp_path / "src") in error.value.message, "the message does not name the source directory"


def test_target_azure_without_configuration_gives_one_clear_message(tmp_path: Path) -> None:
    for script in ("upload-data.py", "run-pytorch-data.py"):
        result = subprocess.run([sys.executable, str(REPO / "control" / script), "--target", "azure"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert result.stderr.startswith("error: --target azure needs your workspace's config.json")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(TargetConfigurationError):
        connect("elsewhere")


def test_target_azure_builds_the_real_script_run_config_with_the_same_arguments(
        ws: aml.Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the first network call, --target azure takes the same path with azureml-core's own classes."""
    from azureml.core import Environment as AzureEnvironment
    from azureml.core import ScriptRunConfig as AzureScriptRunConfig
    from azureml.data.azure_storage_datastore import AzureBlobDatastore as AzureBlobStore
    from azureml.data.dataset_consumption_config import DatasetConsumptionConfig as AzureConsumption

    from sandbox import curated

    control = _load_control("run-pytorch-data")
    (tmp_path / "config.json").write_text(json.dumps(
        {"subscription_id": "s", "resource_group": "rg", "workspace_name": "ws"}))
    azure = connect("azure")
    assert azure.ScriptRunConfig is AzureScriptRunConfig
    # The two calls that would go to Azure (workspace lookups) answered offline by azureml-core objects.
    stub = SimpleNamespace(name="ws", subscription_id="s", resource_group="rg", _auth=None)
    azure_ws = SimpleNamespace(
        get_default_datastore=lambda: AzureBlobStore(stub, "workspaceblobstore", "azureml-blobstore-x", "acct",
                                                      account_key="a2V5"),
        environments={"AzureML-PyTorch-1.6-CPU": AzureEnvironment._deserialize_and_add_to_object(
            json.loads(json.dumps(curated.catalog()["AzureML-PyTorch-1.6-CPU"].definition)))},
    )
    remote = control.make_config(azure, azure_ws)
    local = control.make_config(connect("local"), ws)

    assert type(remote) is AzureScriptRunConfig and type(local) is AzureScriptRunConfig
    assert isinstance(remote.arguments[1], AzureConsumption)
    assert isinstance(local.arguments[1], aml.DatasetConsumptionConfig)
    for config in (remote, local):
        assert (config.arguments[1].name, config.arguments[1].mode) == ("input", "mount")
        assert config.arguments[0::2] == ["--data_path", "--learning_rate", "--momentum"]
        assert config.arguments[3:] == [0.003, "--momentum", 0.92]
        assert (config.script, config.run_config.target) == ("train.py", "cpu-cluster")
        assert config.run_config.environment.name == "AzureML-PyTorch-1.6-CPU"
