"""Opus <-> AAC with PyAV: a beep each second must come out at the same milliseconds."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from edge_server.flv import parse_audio_specific_config
from edge_server.webrtc.audio import OPUS_RATE, AacDecoder, AacEncoder, AacToOpus, OpusEncoder


def beep_frames(rate: int, channels: int, seconds: float, frame: int, start_ms: int = 1000):
    """(frame, ms) pairs: 1 kHz for the first 100 ms of every second, silence otherwise."""
    layout = "stereo" if channels == 2 else "mono"
    for i in range(int(seconds * rate / frame)):
        t = (np.arange(frame) + i * frame) / rate
        tone = (np.sin(2 * np.pi * 1000 * t) * 8000 * (np.mod(t, 1) < 0.1)).astype(np.int16)
        data = np.repeat(tone[:, None], channels, axis=1).reshape(1, -1).copy()
        out = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
        out.sample_rate = rate
        yield out, start_ms + i * frame * 1000 / rate


def onsets(frames_with_ms) -> list[int]:
    found, silent = [], True
    for frame, ms in frames_with_ms:
        samples = np.abs(frame.to_ndarray().astype(np.float32))
        if frame.format.name.startswith("s16"):
            samples /= 32768
        level = samples.max(axis=0)
        loud = np.nonzero(level > 0.05)[0]
        if silent and loud.size:
            found.append(round(ms + loud[0] * 1000 / frame.sample_rate))
        silent = level[-64:].max() < 0.05 if level.size else silent
    return found


def test_webrtc_audio_to_aac_keeps_its_milliseconds() -> None:
    encoder = AacEncoder(48000, 2, 128000)
    config = parse_audio_specific_config(encoder.extradata)
    assert (config.sample_rate, config.channels) == (48000, 2)
    packets = [p for frame, ms in beep_frames(48000, 2, 4, 960) for p in encoder.encode(frame, ms)]
    stamps = [p.pts_ms for p in packets]
    assert stamps == sorted(set(stamps)) and 170 <= len(packets) <= 190  # 4 s of 1024-sample frames
    decoder = AacDecoder(encoder.extradata)
    decoded = [(f, p.pts_ms) for p in packets for f in decoder.decode(p.data)]
    assert [abs(o - want) <= 2 for o, want in zip(onsets(decoded), (1000, 2000, 3000, 4000))] == [True] * 4


def test_rtmp_aac_to_opus_for_viewers_keeps_its_milliseconds() -> None:
    aac = AacEncoder(44100, 2, 128000)  # what an RTMP publisher may send
    source = [p for frame, ms in beep_frames(44100, 2, 4, 1024) for p in aac.encode(frame, ms)]
    transcoder = AacToOpus(aac.extradata)
    opus = [o for p in source for o in transcoder.feed(p.data, p.pts_ms)]
    assert all(b.pts - a.pts == 960 for a, b in zip(opus, opus[1:])), "20 ms packets, no gaps, no repeats"
    decoder = av.CodecContext.create("libopus", "r")
    decoded = []
    for packet in opus:
        raw = av.Packet(packet.data)
        raw.pts, raw.time_base = packet.pts, Fraction(1, OPUS_RATE)
        decoded += [(f, packet.ms) for f in decoder.decode(raw)]
    # within Opus's own algorithmic delay (6.5 ms at 20 ms frames, which WebRTC receivers do not
    # skip) plus the 44.1 -> 48 kHz resampler's filter
    assert [0 <= o - want <= 12 for o, want in zip(onsets(decoded), (1000, 2000, 3000, 4000))] == [True] * 4
    assert transcoder.feed(b"\x00\x01garbage", 5000) == []  # a corrupt access unit costs only itself


def test_opus_encoder_takes_any_rate_and_never_goes_back() -> None:
    encoder = OpusEncoder()
    frames = list(beep_frames(16000, 1, 1, 320))
    out = [o for frame, ms in frames for o in encoder.encode(frame, ms)]
    assert len(out) >= 45 and all(b.pts > a.pts for a, b in zip(out, out[1:]))
    again = frames[0][0]
    again.pts = None
    assert all(o.pts > out[-1].pts for o in encoder.encode(again, 1000))  # an old timestamp cannot go backwards
