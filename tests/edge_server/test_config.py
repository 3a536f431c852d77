from __future__ import annotations

import pytest

from edge_server.config import ConfigError, load_config


def test_defaults_file_loads() -> None:
    config = load_config()
    assert config.http.port == 8080 and config.rtmp.port == 1935 and config.rtmp.app == "live"


def test_environment_overrides(tmp_path) -> None:
    config = load_config(environ={"HIKARIEDGE__HTTP__PORT": "9000", "HIKARIEDGE__AUTH__API_KEYS": "a,b", "HIKARIEDGE__AUTH__TOKEN_SECRET": ""})
    assert config.http.port == 9000 and config.auth.api_keys == ["a", "b"] and config.auth.token_secret is None


def test_bad_keys_and_values_are_clear_errors(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("http:\n  prot: 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="http.port"):
        load_config(environ={"HIKARIEDGE__HTTP__PORT": "eighty"})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError):
        load_config(path, environ={})
