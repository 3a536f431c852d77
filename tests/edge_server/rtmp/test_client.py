"""The egress publish client against our own server connection, in memory (no sockets)."""

from __future__ import annotations

import pytest

from edge_server.flv import FlvError, FlvTagStream
from edge_server.rtmp import amf0
from edge_server.rtmp.client import Published, RtmpClientError, RtmpPublishClient, parse_rtmp_url
from edge_server.rtmp.connection import RtmpServerConnection
from edge_server.rtmp.messages import MetadataReceived, PublishRequested, VideoReceived


@pytest.mark.parametrize(
    ("url", "app", "name", "tc_url"),
    [
        ("rtmp://live.twitch.tv/app/live_123_abc", "app", "live_123_abc", "rtmp://live.twitch.tv/app"),
        ("rtmp://a.rtmp.youtube.com/live2/abcd-efgh", "live2", "abcd-efgh", "rtmp://a.rtmp.youtube.com/live2"),
        ("rtmps://x.example:443/app/key?bandwidthtest=true", "app", "key?bandwidthtest=true", "rtmps://x.example/app"),
        ("rtmp://h:1940/app/inst/key", "app/inst", "key", "rtmp://h:1940/app/inst"),
    ],
)
def test_url_split_like_ffmpeg(url: str, app: str, name: str, tc_url: str) -> None:
    parsed = parse_rtmp_url(url)
    assert (parsed.app, parsed.stream_name, parsed.tc_url) == (app, name, tc_url)


def test_url_without_key_is_refused() -> None:
    for url in ("rtmp://host/app", "http://host/app/key", "rtmp:///app/key"):
        with pytest.raises(RtmpClientError):
            parse_rtmp_url(url)


def converse(client: RtmpPublishClient, server: RtmpServerConnection, accept: bool) -> list:
    """Shuttle bytes both ways until nothing moves; answer the publish request."""
    server_events: list = []
    client_events: list = []
    to_server = client.initial_bytes()
    for _ in range(20):
        events = server.receive_data(to_server) if to_server else []
        for event in events:
            server_events.append(event)
            if isinstance(event, PublishRequested):
                server_events += server.accept_publish(event.stream_id) if accept else server.reject_publish(event.stream_id)
        to_client = server.data_to_send()
        if to_client:
            client_events += client.receive_data(to_client)
        to_server = client.data_to_send()
        if not to_server and not to_client:
            break
    return server_events + client_events


def test_publish_handshake_and_media_reach_the_server() -> None:
    client = RtmpPublishClient(parse_rtmp_url("rtmp://127.0.0.1/live/the-key"))
    server = RtmpServerConnection()
    events = converse(client, server, accept=True)
    requested = [e for e in events if isinstance(e, PublishRequested)]
    assert requested and requested[0].stream_key == "the-key" and requested[0].app == "live"
    assert any(isinstance(e, Published) for e in events) and client.published
    wire = client.media(18, 0, amf0.encode("@setDataFrame", "onMetaData", {"width": 1280.0}))
    wire += client.media(9, 0x1000000 + 5, b"\x17\x01\x00\x00\x00" + b"x" * 10000)  # extended timestamp, many chunks
    got = server.receive_data(wire)
    assert any(isinstance(e, MetadataReceived) and e.metadata["width"] == 1280 for e in got)
    video = [e for e in got if isinstance(e, VideoReceived)]
    assert video and video[0].timestamp == 0x1000005 and len(video[0].payload) == 10005
    assert client.close_stream()  # FCUnpublish + deleteStream go out


def test_refused_publish_raises_with_the_code() -> None:
    client = RtmpPublishClient(parse_rtmp_url("rtmp://127.0.0.1/live/bad"))
    with pytest.raises(RtmpClientError, match="BadName"):
        converse(client, RtmpServerConnection(), accept=False)


def test_flv_tag_stream_any_write_sizes() -> None:
    header = b"FLV\x01\x05\x00\x00\x00\x09" + b"\x00\x00\x00\x00"
    def tag(kind: int, ts: int, body: bytes) -> bytes:
        head = bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([ts >> 24]) + b"\x00\x00\x00"
        return head + body + (11 + len(body)).to_bytes(4, "big")
    data = header + tag(9, 40, b"video") + tag(8, 0x01000002, b"aac")
    for step in (1, 3, 7, len(data)):
        stream = FlvTagStream()
        tags = [t for i in range(0, len(data), step) for t in stream.feed(data[i : i + step])]
        assert [(t.tag_type, t.timestamp, t.body) for t in tags] == [(9, 40, b"video"), (8, 0x01000002, b"aac")]
    with pytest.raises(FlvError):
        FlvTagStream().feed(b"NOTFLV" + b"\x00" * 20)
