from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.config import AZURITE_ACCOUNT_KEY, Settings
from sandbox.errors import ConfigurationError


def test_defaults_match_the_compose_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})
    assert settings.blob_endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    assert f"AccountKey={AZURITE_ACCOUNT_KEY};" in settings.connection_string
    assert "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;" in settings.connection_string
    compose = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
    assert "${AML_SANDBOX_AZURITE_PORT:-10000}" in compose
    assert settings.proxy_port == 8791
    assert '"127.0.0.1:${AML_SANDBOX_PROXY_PORT:-8791}:8791"' in compose
    assert settings.compose_environment()["AML_SANDBOX_PROXY_PORT"] == "8791"


def test_the_proxy_port_is_kept_in_the_stack_file_and_a_bad_one_names_its_variable(tmp_path: Path) -> None:
    Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_PROXY_PORT": "18791"}).write_stack_file()
    assert Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)}).proxy_port == 18791
    with pytest.raises(ConfigurationError, match="AML_SANDBOX_PROXY_PORT='proxy'"):
        Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_PROXY_PORT": "proxy"})


def test_masked_connection_string_hides_the_key(tmp_path: Path) -> None:
    settings = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})
    assert AZURITE_ACCOUNT_KEY not in settings.masked_connection_string
    assert "aml-sandbox status --show-secrets" in settings.masked_connection_string
    assert AZURITE_ACCOUNT_KEY not in repr(settings)


@pytest.mark.parametrize("value", ["ten", "0", "70000"])
def test_bad_port_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"AML_SANDBOX_AZURITE_PORT.*{value}"):
        Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_AZURITE_PORT": value})


def test_relative_home_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="AML_SANDBOX_HOME='state' must be an absolute path"):
        Settings.from_env({"AML_SANDBOX_HOME": "state"})


def test_stack_file_is_read_back_and_env_wins(tmp_path: Path) -> None:
    Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_AZURITE_PORT": "12345"}).write_stack_file()
    assert json.loads((tmp_path / "stack.json").read_text())["azurite_port"] == 12345
    assert Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)}).azurite_port == 12345
    env = {"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_AZURITE_PORT": "12346"}
    assert Settings.from_env(env).azurite_port == 12346


def test_corrupt_stack_file_says_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="delete it and run 'aml-sandbox up'"):
        Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})


def test_workspace_id_is_stable_and_depends_on_the_workspace(tmp_path: Path) -> None:
    a = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})
    b = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})
    c = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_WORKSPACE_NAME": "other"})
    assert a.workspace_id == b.workspace_id != c.workspace_id
