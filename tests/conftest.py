from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from edge_server.config import ServerConfig
from edge_server.node import Node
from tests.helpers import API_KEY, make_sync_clip


def node_config(tmp_path: Path, **overrides: object) -> ServerConfig:
    config = ServerConfig()
    config.http.host = config.rtmp.host = "127.0.0.1"
    config.http.port = config.rtmp.port = 0
    config.rtmp.handshake_timeout_s = 2.0
    config.auth.api_keys = [API_KEY]
    config.data_dir = str(tmp_path / "data")
    config.egress.reconnect_initial_s = 0.2
    config.egress.reconnect_max_s = 1.0
    config.encoder.bitrate_kbps = 2500
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        setattr(getattr(config, section), key, value)
    return config


@pytest_asyncio.fixture
async def node(tmp_path: Path):
    node = Node(node_config(tmp_path))
    await node.start()
    yield node
    await node.stop()


@pytest.fixture(scope="session")
def clip_720p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sync_clip(tmp_path_factory.mktemp("media") / "sync_720p30.flv", seconds=6)


@pytest.fixture(scope="session")
def clip_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sync_clip(tmp_path_factory.mktemp("media") / "sync_360p30.flv", seconds=6, size="640x360")
