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


def test_webrtc_section_and_booleans_from_the_environment() -> None:
    config = load_config(environ={})
    assert config.webrtc.enabled and config.webrtc.ice_servers == [] and not config.webrtc.allow_loopback
    assert config.auth.play_token_ttl_s == 300
    config = load_config(environ={"HIKARIEDGE__WEBRTC__ALLOW_LOOPBACK": "true", "HIKARIEDGE__WEBRTC__ENABLED": "0",
                                  "HIKARIEDGE__WEBRTC__ICE_SERVERS": "stun:a.example:3478,stun:b.example:3478",
                                  "HIKARIEDGE__WEBRTC__PUBLIC_IP": "198.51.100.7"})
    assert config.webrtc.allow_loopback is True and config.webrtc.enabled is False
    assert config.webrtc.ice_servers == ["stun:a.example:3478", "stun:b.example:3478"] and config.webrtc.public_ip == "198.51.100.7"
    with pytest.raises(ConfigError, match="webrtc.allow_loopback"):
        load_config(environ={"HIKARIEDGE__WEBRTC__ALLOW_LOOPBACK": "maybe"})


@pytest.mark.parametrize(("provider", "needs"), [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_an_execution_provider_this_machine_lacks_is_refused_at_start(provider, needs) -> None:
    import onnxruntime as ort

    from edge_server.config import check_runtime

    check_runtime(load_config(environ={}))  # cpu, the default
    config = load_config(environ={"HIKARIEDGE__PIPELINE__EXECUTION_PROVIDER": provider})
    if needs in ort.get_available_providers():
        check_runtime(config)  # a GPU build: accepted
    else:
        with pytest.raises(ConfigError, match=f"{needs}.*onnxruntime-gpu"):
            check_runtime(config)
    identity = load_config(environ={"HIKARIEDGE__PIPELINE__EXECUTION_PROVIDER": "cuda", "HIKARIEDGE__PIPELINE__PROCESSOR": "identity"})
    check_runtime(identity)  # no models run: nothing to refuse


@pytest.mark.parametrize("frames", [-1, 4])
def test_a_lookahead_out_of_range_is_refused_at_start(frames):
    from edge_server.config import check_runtime

    config = load_config(environ={"HIKARIEDGE__PIPELINE__LOOKAHEAD_FRAMES": str(frames)})
    assert config.pipeline.lookahead_frames == frames
    with pytest.raises(ConfigError, match="lookahead_frames"):
        check_runtime(config)
    check_runtime(load_config(environ={"HIKARIEDGE__PIPELINE__LOOKAHEAD_FRAMES": "0"}))  # off: fine
