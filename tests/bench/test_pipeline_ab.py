"""bench/pipeline_ab.py: two pipeline configs interleaved on real faces (needs ../shared/eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import eval_lib as L
from bench import pipeline_ab


def test_both_configs_are_timed_stage_by_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        L.resolve_eval_dir()
    except L.EvalMediaMissing as exc:
        pytest.skip(str(exc))
    out = tmp_path / "ab.json"
    code = pipeline_ab.main(["--a", "segment_every=1", "--b", "segment_every=1000", "--clips", "lp_s18",
                             "--frames", "12", "--rounds", "1", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["configs"] == {"A": ["segment_every=1"], "B": ["segment_every=1000"]}
    a, b = report["ms"]["A"], report["ms"]["B"]
    assert a["wall"]["n"] == b["wall"]["n"] == 12 - pipeline_ab.SKIP
    # A segments every frame but the detector's; B reuses its mask while the picture holds
    # still (the change check itself costs a fraction of a millisecond): the stage clock shows it
    assert a["segment"]["p50"] > 0.5 and b["segment"]["p50"] < 0.3 * a["segment"]["p50"]
    assert "B/A p50" in capsys.readouterr().out


def test_two_model_folders_compared(tmp_path: Path) -> None:
    try:
        L.resolve_eval_dir()
    except L.EvalMediaMissing as exc:
        pytest.skip(str(exc))
    import shutil

    from pipeline.onnx_models import MODELS_DIR

    copy = tmp_path / "models"
    shutil.copytree(MODELS_DIR, copy)
    out = tmp_path / "ab.json"
    assert pipeline_ab.main(["--models-b", str(copy), "--clips", "lp_s18", "--frames", "8", "--rounds", "1",
                             "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["models"] == {"A": None, "B": str(copy)}
    assert report["ms"]["B"]["landmarks"]["n"] == 8 - pipeline_ab.SKIP
    (copy / "face_landmark.onnx").write_bytes(b"tampered")
    with pytest.raises(Exception, match="face_landmark"):
        pipeline_ab.main(["--models-b", str(copy), "--clips", "lp_s18", "--frames", "8", "--rounds", "1",
                          "--out", str(out)])
