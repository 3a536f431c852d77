"""`hikariedge mask`: the masking pipeline over files, with real clips, real codecs and real
faces (../shared/eval; those cases skip with a message where it is absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edge_server.cli import main as cli_main
from edge_server.config import ServerConfig
from edge_server.filemode import FileModeError, mask_file
from pipeline.backends.onnx import YuNetDetector
from pipeline.persona_store import PersonaStore
from tests.helpers import analyse_flv, ffmpeg_exe, have_shared_eval, make_sync_clip

REPO = Path(__file__).resolve().parents[2]


def eval_root() -> Path:
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: checking that a real face was masked needs real footage")
    return root


@pytest.fixture(scope="module")
def sync_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sync_clip(tmp_path_factory.mktemp("media") / "sync.flv", seconds=2, size="640x360")


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        info = {
            "codecs": [s.codec_context.name for s in c.streams],
            "types": [s.type for s in c.streams],
            "duration": c.duration / av.time_base if c.duration else None,
        }
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        info["frames"] = len(frames)
        info["pts"] = [round(float(f.pts * f.time_base), 3) for f in frames]
        info["size"] = (frames[0].width, frames[0].height)
    return info


def test_clip_with_audio_keeps_frames_timestamps_and_sync(sync_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "masked.mp4"
    summary = mask_file(sync_clip, out, config=ServerConfig())
    src, dst = probe(sync_clip), probe(out)
    assert dst["codecs"] == ["h264", "aac"] and dst["types"] == ["video", "audio"]
    assert abs(dst["frames"] - src["frames"]) <= 1 and summary.frames == src["frames"]
    assert abs(dst["duration"] - src["duration"]) <= 0.1
    assert dst["pts"] == src["pts"]  # the input's timestamps, frame for frame
    assert dst["size"] == src["size"]
    assert summary.audio == "copied aac"
    # A/V sync: each second's flash and beep keep their offset (within a frame)
    a, b = analyse_flv(sync_clip), analyse_flv(out)
    assert len(b.flash_ms) == len(a.flash_ms) >= 2 and len(b.beep_ms) == len(a.beep_ms) >= 2
    for fa, fb, ba, bb in zip(a.flash_ms, b.flash_ms, a.beep_ms, b.beep_ms):
        assert abs((bb - fb) - (ba - fa)) <= 34


def test_cli_entry_mkv_and_progress(sync_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "masked.mkv"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_server.cli", "mask", str(sync_clip), "-o", str(out), "--mode", "pixelate", "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, timeout=120,
    )
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "masked 60 frames (640x360)" in stdout and "audio: copied aac" in stdout and "covered events" in stdout
    assert "\rmasking: " in stderr and "fps" in stderr and "ETA" in stderr  # one line, redrawn
    assert stderr.rstrip().rsplit("\r", 1)[-1].startswith("masking: 60/60 frames (100%)")
    info = probe(out)
    assert info["codecs"] == ["h264", "aac"] and info["frames"] == 60


def test_audio_transcoded_when_the_container_cannot_take_it(tmp_path: Path) -> None:
    src = tmp_path / "pcm.mov"
    subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=500:sample_rate=44100", "-t", "1", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", str(src)],
        check=True,
    )
    out = tmp_path / "out.flv"
    summary = mask_file(src, out, config=ServerConfig(), mode="blur")
    assert summary.audio == "transcoded pcm_s16le -> aac"
    info = probe(out)
    assert info["codecs"] == ["h264", "aac"] and info["frames"] == 25
    assert abs(info["duration"] - 1.0) <= 0.1


def _inner(box: np.ndarray) -> tuple[slice, slice]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return slice(int(y0 + 0.2 * h), int(y1 - 0.15 * h)), slice(int(x0 + 0.15 * w), int(x1 - 0.15 * w))


def test_real_clip_face_is_replaced(tmp_path: Path) -> None:
    src = eval_root() / "videos" / "lp_s18.mp4"
    out = tmp_path / "lp.mp4"
    summary = mask_file(src, out, config=ServerConfig(), persona_id="builtin-soft", max_frames=45)
    assert summary.frames == 45
    detector = YuNetDetector(detect_width=1280)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert [s.type for s in b.streams] == ["video", "audio"]
        assert abs(b.duration / av.time_base - 1.5) <= 0.1  # audio cut with the video
        pairs = zip(a.decode(video=0), b.decode(video=0))
        diffs = []
        for i, (fa, fb) in enumerate(pairs):
            assert fa.pts == fb.pts
            if i % 5:
                continue
            ra, rb = fa.to_ndarray(format="rgb24"), fb.to_ndarray(format="rgb24")
            faces = detector.detect(ra)
            assert faces, "the reference detector must see the face in the input"
            ys, xs = _inner(faces[0].box)
            diffs.append(np.abs(ra[ys, xs].astype(np.int16) - rb[ys, xs]).mean())
            # far from the face the picture is the input's (up to the re-encode)
            assert np.abs(ra[:80, :80].astype(np.int16) - rb[:80, :80]).mean() < 4
    assert len(diffs) == 9 and min(diffs) > 12, diffs


def _stored_sideways(src: Path, dst: Path, turn: str, display_rotation: int, seconds: float) -> Path:
    """A phone-style recording: the picture stored turned (``transpose``), with a display
    matrix saying how to turn it back, as phones write it."""
    raw = dst.with_suffix(".raw.mp4")
    ff = ffmpeg_exe()
    subprocess.run([ff, "-v", "error", "-y", "-i", str(src), "-t", str(seconds), "-vf", turn, "-c:v", "libx264", "-crf", "16", "-an", str(raw)], check=True)
    subprocess.run([ff, "-v", "error", "-y", "-display_rotation", str(display_rotation), "-i", str(raw), "-c", "copy", str(dst)], check=True)
    return dst


@pytest.mark.parametrize(("turn", "display_rotation", "turned"), [("transpose=clock", 90, 90), ("transpose=cclock", -90, 270)])
def test_a_video_stored_sideways_is_masked_upright(tmp_path: Path, turn: str, display_rotation: int, turned: int) -> None:
    src = eval_root() / "videos" / "lp_s18.mp4"
    sideways = _stored_sideways(src, tmp_path / "phone.mp4", turn, display_rotation, seconds=0.5)
    with av.open(str(sideways)) as c:
        first = next(c.decode(video=0))
        assert (first.width, first.height) == (720, 1280) and first.rotation == display_rotation
    out = tmp_path / "out.mp4"
    summary = mask_file(sideways, out, config=ServerConfig(), mode="anonymize")
    assert summary.turned_deg == turned and (summary.width, summary.height) == (1280, 720)
    # seen upright, the face is swapped; seen sideways it would only have been covered
    assert summary.events["no_landmarks"] == 0, summary.events
    detector = YuNetDetector(detect_width=1280)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        outs = list(b.decode(video=0))
        assert outs and all(f.rotation == 0 and (f.width, f.height) == (1280, 720) for f in outs)
        for fa, fb in zip(a.decode(video=0), outs[::5]):
            ra, rb = fa.to_ndarray(format="rgb24"), fb.to_ndarray(format="rgb24")
            ys, xs = _inner(detector.detect(ra)[0].box)
            assert np.abs(ra[ys, xs].astype(np.int16) - rb[ys, xs]).mean() > 12
            assert np.abs(ra[:80, :80].astype(np.int16) - rb[:80, :80]).mean() < 6  # upright: the corner is the source's
            break


def test_a_photo_with_an_exif_orientation_is_read_upright(tmp_path: Path) -> None:
    upright = np.zeros((48, 64, 3), np.uint8)  # BGR
    upright[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    upright[:, :, 1] = np.arange(48, dtype=np.uint8)[:, None] * 5
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(np.rot90(upright, 1)), [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    # EXIF orientation 6: the stored picture is to be turned 90 degrees clockwise to view it
    tiff = b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + bytes.fromhex("0112 0003 00000001 0006 0000") + bytes(4)
    app1 = b"Exif\x00\x00" + tiff
    src = tmp_path / "phone.jpg"
    src.write_bytes(jpeg[:2].tobytes() + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg[2:].tobytes())
    out = tmp_path / "out.png"
    mask_file(src, out, config=ServerConfig())
    got = cv2.imread(str(out))  # BGR, as the picture was written
    assert got.shape == upright.shape
    assert np.abs(got.astype(np.int16) - upright).mean() < 4


def test_image_in_image_out_with_a_stored_persona(tmp_path: Path) -> None:
    src = eval_root() / "images" / "face_recognition" / "obama.jpg"
    store = PersonaStore.in_data_dir(tmp_path / "data")
    persona = store.create_procedural(99, "ink", owner="key_x")
    config = ServerConfig()
    config.data_dir = str(tmp_path / "data")
    out = tmp_path / "out.png"
    summary = mask_file(src, out, config=config, persona_id=persona.id)
    assert summary.kind == "image" and summary.frames == 1
    rgb_in = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)
    rgb_out = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert rgb_out.shape == rgb_in.shape
    face = YuNetDetector(detect_width=1024).detect(rgb_in)[0]
    ys, xs = _inner(face.box)
    assert np.abs(rgb_in[ys, xs].astype(np.int16) - rgb_out[ys, xs]).mean() > 12
    assert np.array_equal(rgb_in[:60, :60], rgb_out[:60, :60])  # PNG out: untouched pixels stay exact


def test_image_without_faces_passes_unchanged(tmp_path: Path) -> None:
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[:, :, 0] = np.arange(320, dtype=np.uint8)[None, :] // 2
    rgb[:, :, 1] = 90
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.webp"
    mask_file(src, out, config=ServerConfig())
    got = cv2.imread(str(out))
    assert got is not None and got.shape == (240, 320, 3)


def test_bad_inputs_exit_2(tmp_path: Path, sync_clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.mp4"
    assert cli_main(["mask", str(missing), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    assert cli_main(["mask", str(junk), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli_main(["mask", str(sync_clip), "-o", str(tmp_path / "o.mp4"), "--persona", "p_nobody_0000000000000000", "--data-dir", str(tmp_path)]) == 2
    assert "unknown persona" in capsys.readouterr().err
    assert cli_main(["mask", str(sync_clip), "-o", str(tmp_path / "o.avi")]) == 2
    assert "unsupported video container" in capsys.readouterr().err
    assert cli_main(["mask", str(sync_clip), "-o", str(tmp_path / "o.mp4"), "--mode", "persona"]) == 2
    assert "needs --persona" in capsys.readouterr().err
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    with pytest.raises(FileModeError, match="image output"):
        mask_file(image, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize(("provider", "needs"), [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_a_gpu_provider_this_machine_lacks_exits_2_before_any_work(
    tmp_path: Path, sync_clip: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, provider: str, needs: str
) -> None:
    """`hikariedge serve` and `hikariedge mask` refuse a GPU provider this onnxruntime lacks
    at once, saying what it has and what to install, and write nothing."""
    import onnxruntime as ort

    if needs in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has {needs}: nothing to refuse")
    monkeypatch.setenv("HIKARIEDGE__PIPELINE__EXECUTION_PROVIDER", provider)
    out = tmp_path / "o.mp4"
    assert cli_main(["mask", str(sync_clip), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert needs in err and "CPUExecutionProvider" in err and "install onnxruntime-gpu" in err
    assert not out.exists()
    assert cli_main(["serve", "--http-port", "0", "--rtmp-port", "0"]) == 2
    assert needs in capsys.readouterr().err
