"""Per-stage speed of the masker under two pipeline configs, interleaved in one run.

The machine is shared and noisy, and two benchmark runs minutes apart differ by more than
most changes do. So both configs run in the same process on the same frames (real faces
from ``../shared/eval``, fitted into 1280x720), alternating clip by clip and round by round;
only the ratios are meant to be compared.

    .venv/bin/python bench/pipeline_ab.py --a face_grow=1.0 --b "" --rounds 3

Prints p50/p95 per stage for A and B and B/A, and writes JSON (default
``bench/out/pipeline_ab.json``). Frames are offered back to back (no pacing), one thread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench import eval_lib as L  # noqa: E402
from bench.mask_eval import BENCH_SIZE, iter_frames, pipeline_config  # noqa: E402

DEFAULT_CLIPS = "lp_s18,lp_s32,vr_2,Twitch1,lp_d3,WDA_KatieHill_000"
SKIP = 5  # frames per pass left out (model warm-up, the first detections)


def _overrides(text: str) -> list[str]:
    return [kv.strip() for kv in text.split(",") if kv.strip()]


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95))} if a.size else {"n": 0}


def _processor(overrides: list[str], seed: int, models_dir: str | None):
    from pipeline.backends import backend_for
    from pipeline.factory import build_processor

    config = pipeline_config(overrides + ["deadline_ms=0"])
    if models_dir is None:
        return build_processor(config, "anonymize", seed=seed)
    return build_processor(config, "anonymize", seed=seed, backend=backend_for(config, models_dir))


def run(
    eval_dir: Path, clips: list[str], configs: dict[str, list[str]], rounds: int, frames_per_clip: int, seed: int,
    models: dict[str, str | None] | None = None,
) -> dict:
    models = models or {}

    frames = {c: list(iter_frames(eval_dir / "videos" / f"{c}.mp4", frames_per_clip, BENCH_SIZE)) for c in clips}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
    for r in range(rounds):
        for clip in clips:
            order = list(configs) if (r + clips.index(clip)) % 2 == 0 else list(configs)[::-1]
            for name in order:
                proc = _processor(configs[name], seed, models.get(name))
                try:
                    for i, frame in enumerate(frames[clip]):
                        t = time.perf_counter()
                        proc.process(frame)
                        wall = (time.perf_counter() - t) * 1000.0
                        if i < SKIP:
                            continue
                        samples[name].setdefault("wall", []).append(wall)
                        for stage, ms in proc.last_timings.items():
                            samples[name].setdefault(stage, []).append(ms)
                finally:
                    proc.close()
    return {name: {stage: _stats(v) for stage, v in s.items()} for name, s in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="face_grow=1.0", help="config A: KEY=VALUE,... (PipelineConfig)")
    p.add_argument("--b", default="", help="config B (default: the shipped defaults)")
    p.add_argument("--models-a", default=None, help="model folder for A (with its MANIFEST.json; default pipeline/models)")
    p.add_argument("--models-b", default=None, help="model folder for B")
    p.add_argument("--clips", default=DEFAULT_CLIPS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=60, help="frames per clip and pass")
    p.add_argument("--seed", type=int, default=0, help="anonymize seed (the same faces for A and B)")
    p.add_argument("--out", default="bench/out/pipeline_ab.json")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        eval_dir = L.resolve_eval_dir()
    except L.EvalMediaMissing as exc:
        print(f"pipeline_ab skipped: {exc}")
        return 0
    configs = {"A": _overrides(args.a), "B": _overrides(args.b)}
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    t0 = time.time()
    models = {"A": args.models_a, "B": args.models_b}
    result = run(eval_dir, clips, configs, args.rounds, args.frames, args.seed, models)
    stages = [s for s in ("wall", "total", "detect", "landmarks", "segment", "swap", "convert", "cover") if s in result["A"]]
    for name in ("A", "B"):
        if models[name]:
            print(f"{name} models: {models[name]}")
    print(f"A = {configs['A'] or 'defaults'}; B = {configs['B'] or 'defaults'}; {len(clips)} clips x {args.frames} frames x {args.rounds} rounds at 1280x720")
    print(f"{'stage':<10}{'A p50':>8}{'A p95':>8}{'B p50':>8}{'B p95':>8}{'B/A p50':>9}{'B/A p95':>9}")
    for s in stages:
        a, b = result["A"][s], result["B"][s]
        print(f"{s:<10}{a['p50']:>8.2f}{a['p95']:>8.2f}{b['p50']:>8.2f}{b['p95']:>8.2f}{b['p50'] / a['p50']:>9.2f}{b['p95'] / a['p95']:>9.2f}")
    out = REPO_ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["pipeline_ab.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "configs": configs, "models": models, "clips": clips, "rounds": args.rounds, "frames": args.frames, "skip": SKIP,
        "ms": result, "elapsed_s": round(time.time() - t0, 1),
    }, indent=1))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
