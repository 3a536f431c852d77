"""`hikariedge mask`: the live masking pipeline over a video or image file.

Same processor as a live session (``pipeline.factory.build_processor`` with the node's
``pipeline`` config) except that nothing is dropped for time: ``deadline_ms`` is 0, every
frame is masked however long it takes. Video is re-encoded with libx264 (yuv420p, CRF),
keeping the input's timestamps; audio is copied when the output container takes its
codec, else transcoded to AAC. Images (PNG, JPEG, WebP) are masked as a single frame.
Pictures stored sideways are turned upright before masking (a phone video's display
matrix, a photo's EXIF orientation): the detector and the landmark model expect an upright
head, and a face they see sideways would only be covered, never swapped.

Exit codes: 0 done, 1 failed while writing, 2 bad input (missing or unreadable file,
unknown persona, unsupported output type, conflicting options).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np

from edge_server.config import ConfigError, ServerConfig, check_runtime, load_config
from pipeline.lookahead import Lookahead

log = logging.getLogger(__name__)

MODES = ("anonymize", "persona", "blur", "pixelate")
IMAGE_EXTS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".webp": ".webp"}
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".flv": "flv"}
# audio codecs each output container takes as they are (anything else becomes AAC)
REMUX_AUDIO = {
    "mp4": {"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"},
    "mov": {"aac", "mp3", "alac", "ac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
    "matroska": {"aac", "mp3", "mp2", "opus", "vorbis", "flac", "alac", "ac3", "eac3", "dts", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
    "flv": {"aac", "mp3"},
}
DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"


class FileModeError(Exception):
    """Bad input or options: reported in one line, exit code 2."""


@dataclass
class MaskSummary:
    kind: str  # video | image
    output: Path
    frames: int = 0
    seconds: float = 0.0
    audio: str = "none"  # none | copied <codec> | transcoded <codec> -> aac
    events: Counter[str] = field(default_factory=Counter)
    width: int = 0
    height: int = 0
    turned_deg: int = 0  # degrees the input was turned counterclockwise to stand upright

    def lines(self) -> list[str]:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        out = [f"masked {self.frames} {'frame' if self.frames == 1 else 'frames'} ({self.width}x{self.height}) in {self.seconds:.1f} s ({fps:.1f} fps) -> {self.output}"]
        if self.kind == "video":
            out.append(f"audio: {self.audio}")
        if self.turned_deg:
            out.append(f"turned upright: {self.turned_deg} degrees counterclockwise, as the input's display matrix says")
        if self.events:
            out.append("covered events: " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items())))
        else:
            out.append("covered events: none")
        return out


class Progress:
    """One carriage-return line on stderr: frames done / total, fps, ETA."""

    def __init__(self, total: int | None, stream: TextIO | None, interval: float = 0.25) -> None:
        self.total = total
        self.stream = stream
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0
        self._width = 0

    def update(self, done: int, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-6)
        fps = done / elapsed
        if self.total:
            pct = min(100.0, 100.0 * done / self.total)
            eta = (self.total - done) / fps if fps > 0 and done < self.total else 0.0
            line = f"masking: {done}/{self.total} frames ({pct:3.0f}%)  {fps:5.1f} fps  ETA {_clock(eta)}"
        else:
            line = f"masking: {done} frames  {fps:5.1f} fps  {_clock(elapsed)} elapsed"
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def finish(self, done: int) -> None:
        if self.stream is None:
            return
        if self.total:
            self.total = done  # the estimate from the header is replaced by the real count
        self.update(done, force=True)
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# -- the processor -----------------------------------------------------------------------------


def resolve_persona(persona_id: str, data_dir: str | Path) -> Any:
    """A builtin, or a persona stored under ``<data_dir>/personas`` (any owner: local operator)."""
    from pipeline.persona_store import PersonaStore

    persona = PersonaStore.in_data_dir(data_dir).get(persona_id)
    if persona is None:
        from pipeline.procedural import BUILTIN_PERSONAS

        builtins = ", ".join(b[0] for b in BUILTIN_PERSONAS)
        raise FileModeError(f"unknown persona {persona_id!r}: not a builtin ({builtins}) and not stored under {Path(data_dir) / 'personas'}")
    return persona


def make_processor(config: ServerConfig, mode: str, persona: Any = None) -> Any:
    from pipeline.factory import build_processor

    pipeline = dataclasses.replace(config.pipeline, deadline_ms=0)  # file mode: never drop a frame for time
    if pipeline.processor == "identity":
        log.warning("pipeline.processor is 'identity': the output is NOT masked")
    return build_processor(pipeline, mode, persona)


# -- images ------------------------------------------------------------------------------------


def read_image(src: Path) -> np.ndarray:
    """The image as RGB; FileModeError if it is not a readable PNG, JPEG or WebP."""
    try:
        data = np.fromfile(str(src), np.uint8)
    except OSError as exc:
        raise FileModeError(f"cannot read {src}: {exc}") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise FileModeError(f"cannot read {src}: not a PNG, JPEG or WebP image, or damaged")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def mask_image(src: Path | np.ndarray, dst: Path, processor: Any) -> MaskSummary:
    rgb_in = read_image(src) if isinstance(src, Path) else src
    started = time.monotonic()
    frame = av.VideoFrame.from_ndarray(rgb_in, format="rgb24")
    frame.pts, frame.time_base = 0, Fraction(1, 30)
    out = processor.process(frame)
    rgb = out.to_ndarray(format="rgb24")
    ext = IMAGE_EXTS[dst.suffix.lower()]
    params = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], ".webp": [cv2.IMWRITE_WEBP_QUALITY, 95]}.get(ext, [])
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"could not encode {dst}")
    dst.write_bytes(buf.tobytes())
    return MaskSummary("image", dst, 1, time.monotonic() - started, width=rgb.shape[1], height=rgb.shape[0])


# -- video -------------------------------------------------------------------------------------


def quarter_turns(degrees: float) -> int:
    """Counterclockwise quarter turns (0-3) nearest a display matrix's rotation."""
    turns = round(degrees / 90)
    if abs(degrees - 90 * turns) > 1:
        log.warning("display rotation of %.1f degrees is not a quarter turn: turned by %d", degrees, 90 * turns)
    return turns % 4


def display_turns(src: Path) -> int:
    """The quarter turns that make ``src``'s stored picture upright: phones record sideways
    and say how to turn it in the display matrix, which the decoder leaves to the player."""
    try:
        with av.open(str(src)) as c:
            for frame in c.decode(video=0):
                return quarter_turns(frame.rotation)
    except (av.error.FFmpegError, OSError):
        pass  # the transcode itself reports an unreadable input
    return 0


def _upright(frame: av.VideoFrame, turns: int) -> av.VideoFrame:
    if not turns:
        return frame
    rgb = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), turns))
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def _frame_total(stream: Any, container: Any) -> int | None:
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    if rate and duration:
        return int(round(duration * float(rate)))
    return None


def mask_video(
    src: Path,
    dst: Path,
    processor: Any,
    *,
    max_frames: int | None = None,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress_stream: TextIO | None = None,
    lookahead_frames: int = 1,
) -> MaskSummary:
    """Mask every frame of ``src`` into ``dst``; each masked frame is held back
    ``lookahead_frames`` frames, as live (``pipeline/lookahead.py``)."""
    fmt = VIDEO_FORMATS[dst.suffix.lower()]
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise FileModeError(f"cannot read {src}: {exc}") from None
    summary = MaskSummary("video", dst)
    try:
        if not inp.streams.video:
            raise FileModeError(f"{src} has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        total = _frame_total(vin, inp)
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        rate = vin.average_rate or vin.guessed_rate or Fraction(30)
        tb = vin.time_base or Fraction(1, 90000)
        turns = display_turns(src)
        summary.turned_deg = 90 * turns
        out = av.open(str(dst), "w", format=fmt)
        try:
            lookahead: Lookahead[None] = Lookahead(lookahead_frames)
            _transcode(inp, vin, ain, out, fmt, processor, lookahead, summary, rate, tb, total, max_frames, crf, preset, progress_stream, turns)
        except BaseException:
            out.close()
            dst.unlink(missing_ok=True)  # no half-written output left behind
            raise
        out.close()
    finally:
        inp.close()
    return summary


def _transcode(
    inp: Any, vin: Any, ain: Any, out: Any, fmt: str, processor: Any, lookahead: Lookahead[None], summary: MaskSummary,
    rate: Fraction, tb: Fraction, total: int | None, max_frames: int | None, crf: int, preset: str,
    progress_stream: TextIO | None, turns: int = 0,
) -> None:
    width, height = vin.codec_context.width, vin.codec_context.height
    if turns % 2:
        width, height = height, width  # written upright, with no display matrix of its own
    width, height = width - width % 2, height - height % 2  # yuv420p needs even sides
    if width < 2 or height < 2:
        raise FileModeError(f"video size {vin.codec_context.width}x{vin.codec_context.height} is too small")
    vout = out.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001))
    vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
    vout.time_base = tb
    vout.codec_context.time_base = tb
    vout.options = {"crf": str(crf), "preset": preset}
    if fmt == "flv":  # FLV has no edit list: B-frames would shift every timestamp by their delay
        vout.options = {**vout.options, "bf": "0"}
    summary.width, summary.height = width, height

    aout = None
    a_dec_enc = False  # True: decode the audio and encode AAC
    if ain is not None:
        codec = ain.codec_context.name
        adts_in_ts = codec == "aac" and "mpegts" in inp.format.name and fmt != "matroska"
        if codec in REMUX_AUDIO[fmt] and not adts_in_ts:
            aout = out.add_stream_from_template(ain)
            summary.audio = f"copied {codec}"
        else:
            rate_hz = ain.codec_context.sample_rate or 48000
            aout = out.add_stream("aac", rate=rate_hz)
            aout.layout = ain.codec_context.layout.name if ain.codec_context.layout else "stereo"
            a_dec_enc = True
            summary.audio = f"transcoded {codec} -> aac"

    progress = Progress(total, progress_stream)
    started = time.monotonic()
    last_pts: int | None = None
    end_time: float | None = None  # set once max_frames is reached: audio stops there too
    frame_dur = float(1 / rate) if rate else 1 / 30

    def encode(frame: av.VideoFrame | None) -> None:
        for packet in vout.encode(frame):
            out.mux(packet)

    def put_video(frame: av.VideoFrame) -> None:
        nonlocal last_pts
        pts = frame.pts
        if pts is None:  # no timestamps in the input: number the frames at its rate
            pts = int(round(summary.frames * frame_dur / tb))
        if last_pts is not None and pts <= last_pts:
            pts = last_pts + 1  # the encoder needs strictly rising timestamps
        last_pts = pts
        frame = _upright(frame, turns)
        frame.pts, frame.time_base = pts, tb
        masked = processor.process(frame)
        masked.pts, masked.time_base = pts, tb
        for held, _ in lookahead.push_processed(processor, masked, None):  # as a live stream does
            put_masked(held)
        summary.frames += 1
        progress.update(summary.frames)

    def put_masked(masked: av.VideoFrame) -> None:
        if masked.width != width or masked.height != height or masked.format.name != "yuv420p":
            pts = masked.pts
            masked = masked.reformat(width=width, height=height, format="yuv420p")
            masked.pts, masked.time_base = pts, tb
        masked.pict_type = av.video.frame.PictureType.NONE
        encode(masked)

    def finish_video() -> None:
        for held, _ in lookahead.flush():
            put_masked(held)
        encode(None)

    def put_audio_frames(frames: list[Any]) -> None:
        for af in frames:
            for packet in aout.encode(af):
                out.mux(packet)

    streams = [vin] + ([ain] if ain is not None else [])
    try:
        for packet in inp.demux(*streams):
            if packet.stream is vin:
                if end_time is not None:
                    if packet.pts is not None and float(packet.pts * tb) > end_time + 2.0:
                        break  # well past the cut: no more audio can be due
                    continue
                for frame in packet.decode():
                    put_video(frame)
                    if max_frames is not None and summary.frames >= max_frames:
                        end_time = float(frame.pts * tb) + frame_dur
                        break
            elif ain is not None and packet.stream is ain:
                if packet.size == 0 and not a_dec_enc:
                    continue  # the demuxer's flush packet (decoding it flushes the decoder)
                if end_time is not None and packet.pts is not None and float(packet.pts * ain.time_base) >= end_time:
                    break  # the video was cut here: so is the audio
                if a_dec_enc:
                    put_audio_frames(list(packet.decode()))
                else:
                    packet.stream = aout
                    out.mux(packet)
        # demux() ends each stream with an empty packet: decoding it flushed the decoders
        finish_video()
        if a_dec_enc:
            for packet in aout.encode(None):
                out.mux(packet)
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        if summary.frames == 0:
            raise FileModeError(f"cannot decode {inp.name}: {exc}") from None
        log.warning("input damaged after %d frames (%s); output ends there", summary.frames, exc)
        finish_video()
    finally:
        summary.seconds = time.monotonic() - started
        progress.finish(summary.frames)


# -- entry -------------------------------------------------------------------------------------


def mask_file(
    src: str | Path,
    dst: str | Path,
    *,
    config: ServerConfig | None = None,
    mode: str | None = None,
    persona_id: str | None = None,
    max_frames: int | None = None,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress_stream: TextIO | None = None,
) -> MaskSummary:
    """Mask ``src`` into ``dst``. Raises FileModeError for bad input or options."""
    src, dst = Path(src), Path(dst)
    config = config or ServerConfig()
    if not src.exists():
        raise FileModeError(f"input {src} does not exist")
    if not src.is_file():
        raise FileModeError(f"input {src} is not a file")
    if src.resolve() == dst.resolve():
        raise FileModeError("output must not overwrite the input")
    if mode is None:
        mode = "persona" if persona_id else "anonymize"
    if mode not in MODES:
        raise FileModeError(f"mode must be one of {', '.join(MODES)}")
    if mode == "persona" and not persona_id:
        raise FileModeError("--mode persona needs --persona ID (a builtin or a stored persona)")
    if persona_id and mode != "persona":
        raise FileModeError(f"--persona applies to mode persona, not {mode}")
    if max_frames is not None and max_frames < 1:
        raise FileModeError("--max-frames must be at least 1")
    in_image = src.suffix.lower() in IMAGE_EXTS
    out_ext = dst.suffix.lower()
    if in_image and out_ext not in IMAGE_EXTS:
        raise FileModeError(f"an image input needs an image output (.png, .jpg or .webp), not {dst.name!r}")
    if not in_image and out_ext not in VIDEO_FORMATS:
        kinds = ", ".join(sorted(VIDEO_FORMATS))
        raise FileModeError(f"output {dst.name!r}: unsupported video container (use {kinds})")
    if not dst.parent.exists():
        raise FileModeError(f"output folder {dst.parent} does not exist")
    image = read_image(src) if in_image else None  # fail on an unreadable input before loading the models
    if not in_image:
        _probe(src)
    persona = resolve_persona(persona_id, config.data_dir) if persona_id else None
    processor = make_processor(config, mode, persona)
    try:
        if in_image:
            summary = mask_image(image, dst, processor)
        else:
            summary = mask_video(
                src, dst, processor, max_frames=max_frames, crf=crf, preset=preset, progress_stream=progress_stream,
                lookahead_frames=config.pipeline.lookahead_frames,
            )
    finally:
        events = getattr(processor, "events", None)
        processor.close()
    if isinstance(events, Counter):
        summary.events = Counter(events)
    return summary


def _probe(src: Path) -> None:
    try:
        with av.open(str(src)) as c:
            if not c.streams.video:
                raise FileModeError(f"{src} has no video stream")
    except av.error.FFmpegError as exc:
        raise FileModeError(f"cannot read {src}: not a video file or damaged ({exc})") from None


def add_parser(commands: Any) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "mask",
        help="mask every face in a video or image file",
        description="Run the masking pipeline over a video (mp4, mkv, mov, flv ...) or an image (png, jpg, webp).",
    )
    p.add_argument("input", help="video or image file")
    p.add_argument("-o", "--output", required=True, help="output file; its extension picks the container (.mp4 .mkv .mov .flv) or image type")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--persona", metavar="ID", help="give the largest face this persona (a builtin id or one stored in the data dir)")
    who.add_argument("--mode", choices=MODES, help="anonymize (default), blur or pixelate; persona needs --persona")
    p.add_argument("--config", help="YAML config file (default: configs/server.yaml); its pipeline section is used")
    p.add_argument("--data-dir", help="where stored personas live (default: the config's data_dir)")
    p.add_argument("--max-frames", type=int, help="stop after this many video frames (audio is cut to match)")
    p.add_argument("--crf", type=int, default=DEFAULT_CRF, help=f"x264 quality, lower is better (default {DEFAULT_CRF})")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"x264 preset (default {DEFAULT_PRESET})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line and no summary")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        check_runtime(config)
    except ConfigError as exc:
        print(f"hikariedge: {exc}", file=sys.stderr)
        return 2
    if args.data_dir:
        config.data_dir = args.data_dir
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = mask_file(
            args.input,
            args.output,
            config=config,
            mode=args.mode,
            persona_id=args.persona,
            max_frames=args.max_frames,
            crf=args.crf,
            preset=args.preset,
            progress_stream=None if args.quiet else sys.stderr,
        )
    except FileModeError as exc:
        print(f"hikariedge mask: {exc}", file=sys.stderr)
        return 2
    except (av.error.FFmpegError, OSError, RuntimeError) as exc:
        print(f"hikariedge mask: failed: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("\n".join(summary.lines()))
    return 0


__all__ = ["mask_file", "mask_video", "mask_image", "MaskSummary", "FileModeError", "add_parser", "run"]
