from __future__ import annotations

import pytest

from edge_server.flv import (
    AAC_RAW,
    AAC_SEQUENCE_HEADER,
    AVC_NALU,
    AVC_SEQUENCE_HEADER,
    FlvError,
    parse_audio_specific_config,
    parse_audio_tag,
    parse_video_tag,
)

AVC_CONFIG = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0x00, 0x04, 0x67, 0x42, 0xC0, 0x1E, 0x01, 0x00, 0x02, 0x68, 0xCE])


def test_avc_sequence_header_and_nalu_with_negative_cts() -> None:
    tag = parse_video_tag(bytes([0x17, AVC_SEQUENCE_HEADER, 0, 0, 0]) + AVC_CONFIG)
    assert tag is not None and tag.is_keyframe and tag.packet_type == AVC_SEQUENCE_HEADER and tag.data == AVC_CONFIG
    tag = parse_video_tag(bytes([0x27, AVC_NALU, 0xFF, 0xFF, 0xDF]) + b"\x00\x00\x00\x01\x41")
    assert tag is not None and not tag.is_keyframe and tag.composition_time == -33


def test_video_rejections_say_what_was_sent() -> None:
    with pytest.raises(FlvError, match="VP6"):
        parse_video_tag(bytes([0x14, 0, 0, 0, 0]))
    with pytest.raises(FlvError, match="enhanced"):
        parse_video_tag(bytes([0x90]) + b"hvc1")
    with pytest.raises(FlvError):
        parse_video_tag(b"")
    with pytest.raises(FlvError):
        parse_video_tag(bytes([0x17, 0]))
    with pytest.raises(FlvError):
        parse_video_tag(bytes([0x17, 0, 0, 0, 0, 2, 0]))  # not an AVCDecoderConfigurationRecord
    assert parse_video_tag(bytes([0x57, 0])) is None  # video info/command frame


def test_aac_tags_and_config() -> None:
    config = parse_audio_specific_config(bytes([0x11, 0x90]))  # AAC LC, 48 kHz, stereo
    assert (config.object_type, config.sample_rate, config.channels) == (2, 48000, 2)
    tag = parse_audio_tag(bytes([0xAF, AAC_SEQUENCE_HEADER, 0x12, 0x10]))
    assert tag.packet_type == AAC_SEQUENCE_HEADER
    assert parse_audio_tag(bytes([0xAF, AAC_RAW, 1, 2, 3])).data == b"\x01\x02\x03"
    with pytest.raises(FlvError, match="MP3"):
        parse_audio_tag(bytes([0x2F, 0, 0]))
    with pytest.raises(FlvError):
        parse_audio_tag(bytes([0xAF, AAC_SEQUENCE_HEADER, 0x10]))
