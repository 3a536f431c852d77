"""Node configuration: a YAML file with environment overrides, parsed into dataclasses."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

ENV_PREFIX = "HIKARIEDGE__"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "server.yaml"


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


@dataclass
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = 1 << 20


@dataclass
class RtmpConfig:
    host: str = "0.0.0.0"
    port: int = 1935
    app: str = "live"
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0


@dataclass
class PublicConfig:
    host: str = "127.0.0.1"
    http_scheme: str = "http"


@dataclass
class AuthConfig:
    api_keys: list[str] = field(default_factory=list)
    token_secret: str | None = None
    publish_token_ttl_s: int = 86400
    play_token_ttl_s: int = 300  # WHEP play tokens: default lifetime (POST .../play-tokens may ask for another)
    play_token_max_ttl_s: int = 86400


@dataclass
class LimitsConfig:
    max_sessions: int = 32
    max_live_sessions: int = 4
    max_targets: int = 8
    max_duration_s: int = 43200


@dataclass
class EncoderConfig:
    preset: str = "ultrafast"
    bitrate_kbps: int = 4500
    gop_seconds: float = 2.0
    default_fps: int = 30
    threads: int = 1


@dataclass
class EgressConfig:
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    queue_seconds: float = 2.0
    io_timeout_s: float = 5.0


@dataclass
class PipelineConfig:
    """The masking pipeline's knobs (see pipeline/masker.py for what each one does)."""

    processor: str = "mask"  # "mask" (the product) or "identity" (relay only, faces NOT masked)
    detect_every: int = 5  # run the face detector every N frames (and whenever tracking is lost)
    full_detect_every: int = 30  # the detector scans the whole frame at least every N frames; its runs in
    # between scan only where the picture changed outside the tracked faces, and held faces (pipeline/scan.py); 1 = always whole
    scan_call_px: int = 12_000  # what one detector run costs beyond its area, as px of the detector's input
    # (about 0.45 ms a run on the 2-core machine): partial scans whose joint box costs less than two runs are
    # scanned in one run (docs/benchmarks.md); 0 = only overlapping scans are joined
    detect_width: int = 640  # the detector sees the frame scaled to this width (at most halved)
    parallel_detect: bool = False  # detector on its own thread beside the landmarks: p95 0.85-0.91x, but the
    # node's CPU per stream rose in the relay bench (docs/benchmarks.md); off until that is understood
    detect_score: float = 0.5  # YuNet confidence to accept a face (lower = fewer misses, more false covers)
    # candidates from this score up to detect_score are near misses: the detector looks there again on the next
    # frame, changed or not, so a face coming into view is found a frame sooner (docs/benchmarks.md); 0 = off
    near_miss_score: float = 0.3
    # a candidate from this score up to detect_score whose box runs out of the frame is looked at again, at once,
    # at a finer scale: the detector scores a face the frame's edge cuts in half far lower at its own scale (a half
    # face in a group: 0.11-0.46 at 640 px wide, 0.80-0.90 at 1280) while a single creator's is the person rule's; 0 = off
    edge_look_score: float = 0.1
    face_grow: float = 1.15  # the persona's face outline is drawn this much bigger than the live one (>= 1)
    small_face_grow: float = 1.5  # ... and a face of 120 px or less this much, fading to face_grow by 240 px: a small
    # face is mostly hair and outline to a recognizer (a tight group's throwaway faces: 67 -> 17 leaks of 422)
    persona_shape: float = 1.0  # how far the persona's own proportions replace the creator's (0..1)
    # faces smaller than this (box side, frame px) are covered, not swapped: below 40 px a
    # persona is a few pixels of shading that a recognizer reads as any face, the input included
    min_face_px: int = 40
    # the height of the smallest rendition the audience may watch (a platform's 360p; the stream fitted into a
    # 16:9 box that tall, pipeline.masker.rendition_scale): min_face_px holds there too, so a 1080p stream covers
    # faces under 120 px (docs/benchmarks.md, "Small faces in a 360p rendition"; 160 for Twitch's 160p, "The size
    # cover, measured further"); 0 = only the stream's own size counts
    smallest_rendition: int = 360
    # anonymized faces in a stream whose shorter side is this many px or less are drawn in the sculpted
    # style: there the flat ones leave the recognizer the hair and outline around them
    # (docs/benchmarks.md, "Anonymize mode in small streams"); 0 = never
    sculpted_anonymize_max_side: int = 400
    # and in a larger stream, a face whose box is min_share to max_share of the shorter side: 72-187 px in the
    # platform's 360p rendition, where flat faces leak the same way; a crowd's smaller faces and close-ups
    # stay flat (docs/benchmarks.md, "Faces in a platform's 360p rendition"); min_share 0 = never
    sculpted_anonymize_min_share: float = 0.2
    sculpted_anonymize_max_share: float = 0.52
    max_yaw_deg: float = 40.0  # a head turned further than this (left or right) is covered, not swapped:
    # a frontal persona cannot cover a three-quarter face, and its live profile still identifies it
    hold_s: float = 1.0  # a lost face stays covered at its last place this long
    deadline_ms: float = 150.0  # a frame not masked in time is replaced by a covered one
    # masked frames held back this many frames (0..3) so that a face the detector finds a frame late
    # is covered in them too (pipeline/lookahead.py); each frame held adds one frame interval of latency
    lookahead_frames: int = 1
    segmentation: bool = True  # person mask: covers heads whose face was not found
    # where onnxruntime runs the models: cpu, cuda (onnxruntime-gpu and a CUDA GPU) or tensorrt (and
    # TensorRT: engines built from the same ONNX files, trt_engines/build_engines.py); neither GPU path
    # has run on this project's machines. Checked at start: a provider this onnxruntime lacks is refused
    execution_provider: str = "cpu"
    segment_every: int = 3  # a person mask is reused for up to N - 1 frames, and only while the picture
    # outside the tracked faces has not changed since its frame (a new person re-runs the segmenter at once)
    cover_style: str = "blur"  # how the privacy guard covers: blur | pixelate (blur leaves less; docs/benchmarks.md)
    smoothing_min_cutoff: float = 1.0  # One Euro filter on landmarks (Hz)
    smoothing_beta: float = 0.05  # the points about the face's centre: expression, turning (jitter)
    smoothing_position_beta: float = 1.0  # the face's centre: how closely a moving head is followed
    smoothing_feature_beta: float = 0.5  # the eyelids and lips about it: blinks and speech


@dataclass
class WebRtcConfig:
    """WHIP ingest and WHEP playback (aiortc)."""

    enabled: bool = True
    ice_servers: list[str] = field(default_factory=list)  # e.g. stun:stun.example.com:3478; none by default
    ice_username: str | None = None  # for turn: URLs in ice_servers
    ice_credential: str | None = None
    public_ip: str | None = None  # advertised as an extra host candidate when the node sits behind 1:1 NAT
    host_addresses: list[str] = field(default_factory=list)  # gather only on these local addresses; empty = all
    allow_loopback: bool = False  # offer 127.0.0.1 candidates (tests, same-host clients)
    max_viewers_per_session: int = 50
    max_viewers: int = 200  # WHEP viewers on this node, all sessions
    connect_timeout_s: float = 15.0  # a peer not connected this long after its 201 is dropped
    idle_timeout_s: float = 10.0  # a WHIP publisher that sends no video this long is closed
    frame_on_marker: bool = True  # a WHIP video frame is decoded once its last packet (RTP marker) is in,
    # not when the next frame begins (aiortc's rule): one frame interval less latency (edge_server/webrtc/jitter.py)
    audio_bitrate_kbps: int = 128  # AAC made from WHIP's Opus for the RTMP targets
    opus_bitrate_kbps: int = 96  # Opus made from RTMP's AAC for WHEP viewers
    cors_allow_origin: str = "*"  # WHIP/WHEP answers to browsers on other origins (tokens, no cookies)


@dataclass
class ServerConfig:
    http: HttpConfig = field(default_factory=HttpConfig)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    public: PublicConfig = field(default_factory=PublicConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    egress: EgressConfig = field(default_factory=EgressConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    data_dir: str = "./data"
    log_level: str = "INFO"


def check_runtime(config: ServerConfig) -> None:
    """What the YAML alone cannot tell: that this machine can run the pipeline asked for
    (the execution provider is there), and values the pipeline refuses. Raises ConfigError."""
    if config.pipeline.processor != "mask":
        return
    from pipeline.lookahead import MAX_DEPTH
    from pipeline.onnx_models import providers_for

    if not 0 <= config.pipeline.lookahead_frames <= MAX_DEPTH:
        raise ConfigError(f"pipeline.lookahead_frames must be 0..{MAX_DEPTH}, got {config.pipeline.lookahead_frames!r}")
    try:
        providers_for(config.pipeline.execution_provider)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Read the YAML file (default: configs/server.yaml), then apply HIKARIEDGE__* overrides."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or config_path.exists():
        try:
            raw = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {config_path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config {config_path} must be a mapping")
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            _apply_override(raw, key[len(ENV_PREFIX):].lower().split("__"), value)
    return _build(ServerConfig, raw, "")


def _apply_override(raw: dict[str, Any], path: list[str], value: str) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)} conflicts with a scalar")
    node[path[-1]] = yaml.safe_load(value) if value != "" else None


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {where or 'top level'}")
    kwargs: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in raw.items():
        kind = hints[name]
        nested = _DATACLASSES.get(kind) if isinstance(kind, str) else None
        if nested is not None:
            kwargs[name] = _build(nested, value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(kind, value, f"{where}{name}")
    return cls(**kwargs)


def _coerce(kind: Any, value: Any, where: str) -> Any:
    kind = str(kind)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{where} must not be empty")
    try:
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool"):
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if kind.startswith("str"):
            return str(value)
        if kind.startswith("list"):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return [str(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad value {value!r} for {kind}") from exc
    return value


_DATACLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (HttpConfig, RtmpConfig, PublicConfig, AuthConfig, LimitsConfig, EncoderConfig, EgressConfig, PipelineConfig, WebRtcConfig)
}
