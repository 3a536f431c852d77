"""FLV audio/video tag bodies as carried in RTMP messages: pure parsing, no I/O.

Only H.264 video and AAC audio are accepted on ingest; anything else raises FlvError with a
message that says what was sent, so the publisher's log line explains the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_CODEC_AVC = 7
SOUND_FORMAT_AAC = 10

AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1

FRAME_KEY = 1
FRAME_COMMAND = 5

_VIDEO_CODECS = {2: "Sorenson H.263", 3: "screen video", 4: "VP6", 5: "VP6 alpha", 6: "screen video 2", 7: "H.264", 12: "HEVC"}
_SOUND_FORMATS = {0: "PCM", 1: "ADPCM", 2: "MP3", 3: "PCM LE", 4: "Nellymoser 16k", 5: "Nellymoser 8k", 6: "Nellymoser", 7: "G.711 A-law", 8: "G.711 mu-law", 10: "AAC", 11: "Speex", 14: "MP3 8k"}


class FlvError(ValueError):
    """A tag body is malformed or carries a codec we do not take."""


@dataclass(frozen=True)
class VideoTag:
    frame_type: int
    packet_type: int  # AVC_SEQUENCE_HEADER, AVC_NALU or AVC_END_OF_SEQUENCE
    composition_time: int  # ms, pts = dts + composition_time
    data: bytes  # AVCDecoderConfigurationRecord or length-prefixed NAL units

    @property
    def is_keyframe(self) -> bool:
        return self.frame_type == FRAME_KEY


@dataclass(frozen=True)
class AudioTag:
    packet_type: int  # AAC_SEQUENCE_HEADER or AAC_RAW
    data: bytes  # AudioSpecificConfig or one raw AAC frame


def parse_video_tag(body: bytes) -> VideoTag | None:
    """Return the parsed tag, or None for tags with no picture (video info/command frames)."""
    if len(body) < 1:
        raise FlvError("empty video tag")
    first = body[0]
    if first & 0x80:
        raise FlvError("enhanced RTMP video (HEVC/AV1/VP9 FourCC) is not supported; send H.264")
    frame_type, codec_id = first >> 4, first & 0x0F
    if frame_type == FRAME_COMMAND:
        return None
    if codec_id != VIDEO_CODEC_AVC:
        raise FlvError(f"video codec {_VIDEO_CODECS.get(codec_id, codec_id)} is not supported; send H.264")
    if len(body) < 5:
        raise FlvError("truncated AVC video tag header")
    packet_type = body[1]
    if packet_type not in (AVC_SEQUENCE_HEADER, AVC_NALU, AVC_END_OF_SEQUENCE):
        raise FlvError(f"unknown AVC packet type {packet_type}")
    cts = int.from_bytes(body[2:5], "big", signed=False)
    if cts & 0x800000:
        cts -= 1 << 24
    data = bytes(body[5:])
    if packet_type == AVC_SEQUENCE_HEADER:
        validate_avc_config(data)
    return VideoTag(frame_type, packet_type, cts, data)


def parse_audio_tag(body: bytes) -> AudioTag:
    if len(body) < 2:
        raise FlvError("truncated audio tag")
    sound_format = body[0] >> 4
    if sound_format != SOUND_FORMAT_AAC:
        raise FlvError(f"audio format {_SOUND_FORMATS.get(sound_format, sound_format)} is not supported; send AAC")
    packet_type = body[1]
    if packet_type not in (AAC_SEQUENCE_HEADER, AAC_RAW):
        raise FlvError(f"unknown AAC packet type {packet_type}")
    data = bytes(body[2:])
    if packet_type == AAC_SEQUENCE_HEADER:
        parse_audio_specific_config(data)
    return AudioTag(packet_type, data)


@dataclass(frozen=True)
class AacConfig:
    object_type: int
    sample_rate: int
    channels: int


_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def parse_audio_specific_config(data: bytes) -> AacConfig:
    """The two leading bytes of an AudioSpecificConfig: object type, rate index, channel config."""
    if len(data) < 2:
        raise FlvError("AAC AudioSpecificConfig shorter than 2 bytes")
    bits = int.from_bytes(data[:2], "big")
    object_type = bits >> 11
    rate_index = (bits >> 7) & 0x0F
    channels = (bits >> 3) & 0x0F
    if object_type == 0 or rate_index >= len(_AAC_RATES) or channels == 0:
        raise FlvError("unsupported AAC AudioSpecificConfig (explicit rate or channel layout)")
    return AacConfig(object_type, _AAC_RATES[rate_index], channels)


def validate_avc_config(data: bytes) -> None:
    """Check an AVCDecoderConfigurationRecord enough that the decoder will accept it."""
    if len(data) < 7 or data[0] != 1:
        raise FlvError("malformed AVCDecoderConfigurationRecord")
    if data[5] & 0x1F == 0:
        raise FlvError("AVCDecoderConfigurationRecord carries no SPS")


def avc_dimensions_hint(data: bytes) -> str:
    """Profile/level of an AVCDecoderConfigurationRecord, for log lines."""
    return f"profile {data[1]} level {data[3]}" if len(data) >= 4 else "unknown"


FLV_HEADER_SIZE = 9 + 4  # signature/version/flags/offset, then PreviousTagSize0
TAG_HEADER_SIZE = 11


@dataclass(frozen=True)
class FlvTag:
    tag_type: int  # 8 audio, 9 video, 18 script data: the same numbers as RTMP message types
    timestamp: int
    body: bytes


class FlvTagStream:
    """Splits an FLV byte stream (as a muxer writes it) into tags, whatever the write sizes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header_done = False

    def feed(self, data: bytes) -> list[FlvTag]:
        self._buffer += data
        tags: list[FlvTag] = []
        if not self._header_done:
            if len(self._buffer) < FLV_HEADER_SIZE:
                return tags
            if bytes(self._buffer[:3]) != b"FLV":
                raise FlvError("not an FLV stream")
            offset = int.from_bytes(self._buffer[5:9], "big")
            if len(self._buffer) < offset + 4:
                return tags
            del self._buffer[: offset + 4]
            self._header_done = True
        while len(self._buffer) >= TAG_HEADER_SIZE:
            size = int.from_bytes(self._buffer[1:4], "big")
            end = TAG_HEADER_SIZE + size + 4
            if len(self._buffer) < end:
                break
            timestamp = int.from_bytes(self._buffer[4:7], "big") | (self._buffer[7] << 24)
            tags.append(FlvTag(self._buffer[0] & 0x1F, timestamp, bytes(self._buffer[TAG_HEADER_SIZE : TAG_HEADER_SIZE + size])))
            del self._buffer[:end]
        return tags
