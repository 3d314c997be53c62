from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from sandbox.config import (
    AZURITE_ACCOUNT_KEY,
    AZURITE_ACCOUNT_NAME,
    Settings,
    account_key_path,
    ensure_account_key,
)
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


# -- the stack's own account key ------------------------------------------------------------------------

OWN_KEY = base64.b64encode(b"k" * 64).decode()


def test_the_account_key_is_the_variable_then_the_stack_file_then_the_well_known_one(tmp_path: Path) -> None:
    home = {"AML_SANDBOX_HOME": str(tmp_path)}
    assert Settings.from_env(home).account_key == AZURITE_ACCOUNT_KEY  # plain `docker compose up`
    made = ensure_account_key(tmp_path)
    assert made != AZURITE_ACCOUNT_KEY and len(base64.b64decode(made, validate=True)) == 64
    assert Settings.from_env(home).account_key == made
    assert f"AccountKey={made};" in Settings.from_env(home).connection_string
    assert Settings.from_env({**home, "AML_SANDBOX_ACCOUNT_KEY": OWN_KEY}).account_key == OWN_KEY


def test_settings_made_before_up_see_the_key_up_makes(tmp_path: Path) -> None:
    settings = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})
    made = ensure_account_key(tmp_path)
    assert settings.account_key == made
    assert settings.compose_environment()["AML_SANDBOX_ACCOUNT_KEY"] == made


def test_compose_gets_the_key_that_azurite_and_the_service_read(tmp_path: Path) -> None:
    settings = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_ACCOUNT_KEY": OWN_KEY})
    assert settings.compose_environment()["AML_SANDBOX_ACCOUNT_KEY"] == OWN_KEY
    compose = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
    fallback = f"${{AML_SANDBOX_ACCOUNT_KEY:-{AZURITE_ACCOUNT_KEY}}}"
    assert f"AZURITE_ACCOUNTS: {AZURITE_ACCOUNT_NAME}:{fallback}" in compose
    assert f"AML_SANDBOX_ACCOUNT_KEY: {fallback}" in compose


def test_the_key_file_is_made_once_user_only_and_kept(tmp_path: Path) -> None:
    first = ensure_account_key(tmp_path)
    path = account_key_path(tmp_path)
    assert path == tmp_path / "azurite" / "account.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_account_key(tmp_path) == first
    assert Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)}).account_key == first
    assert not [p.name for p in path.parent.iterdir() if p != path], "no temporary file is left behind"


def test_two_stacks_get_different_keys(tmp_path: Path) -> None:
    assert ensure_account_key(tmp_path / "a") != ensure_account_key(tmp_path / "b")


def test_the_key_never_shows_in_repr_or_the_masked_connection_string(tmp_path: Path) -> None:
    made = ensure_account_key(tmp_path)
    settings = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)})
    assert made not in repr(settings) and made not in str(settings)
    assert made not in settings.masked_connection_string
    from_env = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_ACCOUNT_KEY": OWN_KEY})
    assert OWN_KEY not in repr(from_env) and OWN_KEY not in from_env.masked_connection_string


@pytest.mark.parametrize("value", ["not base64!", "a2V5", "a:b", base64.b64encode(b"x" * 64).decode() + ";x"])
def test_a_bad_key_variable_names_the_variable_and_never_echoes_the_value(tmp_path: Path, value: str) -> None:
    # Azurite falls back to the published key when AZURITE_ACCOUNTS does not parse: a bad key must stop here.
    with pytest.raises(ConfigurationError, match="AML_SANDBOX_ACCOUNT_KEY") as caught:
        Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path), "AML_SANDBOX_ACCOUNT_KEY": value})
    assert value not in str(caught.value)


def test_a_damaged_key_file_says_how_to_fix(tmp_path: Path) -> None:
    path = account_key_path(tmp_path)
    path.parent.mkdir()
    path.write_text("short\n")
    with pytest.raises(ConfigurationError, match=r"account\.key.*delete it and run 'aml-sandbox up'"):
        _ = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)}).account_key
    with pytest.raises(ConfigurationError, match="delete it"):
        ensure_account_key(tmp_path)


def test_a_link_in_place_of_the_key_file_is_refused(tmp_path: Path) -> None:
    path = account_key_path(tmp_path)
    path.parent.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text(OWN_KEY)
    path.symlink_to(target)
    with pytest.raises(ConfigurationError, match="link"):
        _ = Settings.from_env({"AML_SANDBOX_HOME": str(tmp_path)}).account_key
