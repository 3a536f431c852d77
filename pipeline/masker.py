"""FaceMasker: the FrameProcessor that replaces every face in a frame, fail closed.

Per frame: detect (every ``detect_every`` frames, and on every frame while nothing is
tracked or a face is held; the whole frame at least every ``full_detect_every`` frames,
in between only where the picture changed, ``pipeline/scan.py``, and where its last run saw
a near miss, on the next frame; a candidate the frame's edge cuts is looked at again at
once, twice as fine; with ``parallel_detect``
on its own thread, beside the landmarks of the faces already tracked) -> landmarks for each tracked face (crop from
its previous landmarks; a new face's from its detection) -> One Euro smoothing ->
person segmentation -> swap each face with its persona (or cover it, in blur/pixelate
mode) -> cover what the privacy guard says.
The frame stays yuv420p: RGB is made only around the faces and, small, for the detector
and the segmenter (``pipeline/frame_io.py``), and only the regions that change are
converted back, so an untouched pixel leaves exactly as it came in.
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
import time
from collections import Counter
from functools import lru_cache
from typing import Any, Callable

import av
import cv2
import numpy as np

from pipeline.backends import Backend, backend_for
from pipeline.cover import cover, cover_i420
from pipeline.frame_io import FullRgb, LazyRgb, copy_frame, even_box, plane_views, write_rgb_planes
from pipeline.geometry import NeutralShape, yaw_degrees
from pipeline.guard import DeadlineExceeded, DeadlineRunner, heads_without_faces, picture_changed
from pipeline.persona import Persona, face_mesh_topology
from pipeline.scan import FULL_PLAN, ChangeScanner, ScanPlan, merge_rects
from pipeline.tracking import FaceTracker, grow_box, inside_share, iou
from pipeline.types import FaceDetection, PersonMask

log = logging.getLogger(__name__)

SWAP_MODES = ("persona", "anonymize")
COVER_MODES = ("blur", "pixelate")
SWAP_MARGIN = 0.3  # region around a face box handed to a swapper that does not say its footprint
HELD_MARGIN = 0.3  # a lost face is covered this much bigger than its last box
SCAN_LUMA_WIDTH = 256  # the change scanner's luma (blocks of 40x40 px at 1280x720, as guard rule 4's)
CONFIRM_GROW = 0.5  # a partial scan's new face is looked at again in its box grown this much on every side ...
CONFIRM_IOU = 0.3  # ... and kept if found there again, overlapping this much
NEAR_MISS_IOU = 0.3  # a near miss overlapping one of the run before this much is the same one, not new
EDGE_TOUCH = 0.1  # a candidate box this close to the frame's edge (share of its own side) runs out of the picture ...
EDGE_LOOK_SCALE = 2.0  # ... and is looked at again at this many times the detector's scale (the frame's own at most) ...
EDGE_LOOK_GROW = 0.3  # ... in its box grown this much on every side, and a face found there only ...
EDGE_LOOK_MARGIN = 0.1  # ... if it scores this much over the detector's line (lp_s18's blurred background made 0.51 once)
SCAN_ALIGN = 32  # px of the detector's input: scanned areas are whole multiples (YuNet pads to them anyway)
REPEAT_MAX_S = 0.5  # after an error, repeat the last masked frame if it is this recent
YAW_HYSTERESIS_DEG = 5.0  # a turned face goes back to its persona only this far under max_yaw_deg
SHARE_HYSTERESIS = 0.8  # a face leaves the sculpted band, or its cover for size, only this far past the line


def latch(members: set[int], track_id: int, *, enter: bool, stay: bool) -> bool:
    """Hysteresis over a set of track ids: a track joins when ``enter`` holds and leaves only
    when ``stay`` no longer does, so a face near a line does not flip looks frame to frame."""
    if track_id in members:
        if not stay:
            members.discard(track_id)
    elif enter:
        members.add(track_id)
    return track_id in members


def rendition_scale(frame_hw: tuple[int, int], rendition: int) -> float:
    """How much a platform's ``rendition`` (e.g. 360 for "360p"; 0 = none) shrinks a stream of
    ``frame_hw``: the stream fitted into a 16:9 box that many px tall, never enlarged.

    Platforms that name renditions by their height show a portrait stream that tall (a
    480x908 stream's 360p is 190x360), and an ultra-wide one is bounded by the box's width;
    platforms that count the shorter side show portrait streams larger. The smaller of the
    two is taken, so the size rule fails closed (``bench/mask_eval.py --view-size`` fits the
    same way)."""
    if rendition <= 0:
        return 1.0
    h, w = frame_hw
    return min(1.0, rendition / max(h, 1), rendition * 16 / 9 / max(w, 1))


class FaceMasker:
    """Replaces or covers every face; never returns an unmasked frame (see pipeline/guard.py)."""

    name = "mask"

    def __init__(
        self,
        config: Any,
        *,
        mode: str = "anonymize",
        persona: Persona | None = None,
        backend: Backend | None = None,
        swapper: Any = None,
        on_cover: Callable[[str], None] | None = None,
        on_timings: Callable[[dict[str, float]], None] | None = None,
        seed: int | None = None,
        neutralize: bool = True,
    ) -> None:
        if mode not in SWAP_MODES + COVER_MODES:
            raise ValueError(f"unknown masking mode {mode!r}")
        cv2.setNumThreads(1)
        self.config = config
        self.mode = mode
        self.persona = persona
        self.backend = backend or backend_for(config)
        if swapper is None and mode in SWAP_MODES:
            from pipeline.swap import MeshSwapper

            if not 1.0 <= config.face_grow <= 1.5:
                raise ValueError(f"pipeline.face_grow must be in 1.0..1.5, got {config.face_grow!r}")
            if not config.face_grow <= config.small_face_grow <= 1.5:
                raise ValueError(
                    f"pipeline.small_face_grow must be in face_grow..1.5, got {config.small_face_grow!r}"
                )
            swapper = MeshSwapper(grow=config.face_grow, small_grow=config.small_face_grow)
        if not 0.0 <= config.near_miss_score <= config.detect_score:
            raise ValueError(f"pipeline.near_miss_score must be in 0..detect_score (0: off), got {config.near_miss_score!r}")
        if not 0.0 <= config.edge_look_score <= config.detect_score:
            raise ValueError(f"pipeline.edge_look_score must be in 0..detect_score (0: off), got {config.edge_look_score!r}")
        if not 0.0 <= config.persona_shape <= 1.0:
            raise ValueError(f"pipeline.persona_shape must be in 0..1, got {config.persona_shape!r}")
        if not 10.0 <= config.max_yaw_deg <= 90.0:
            raise ValueError(f"pipeline.max_yaw_deg must be in 10..90 (90: never), got {config.max_yaw_deg!r}")
        if not config.smoothing_min_cutoff > 0.0:
            raise ValueError(f"pipeline.smoothing_min_cutoff must be above 0 Hz, got {config.smoothing_min_cutoff!r}")
        if not 0.0 <= config.sculpted_anonymize_min_share <= config.sculpted_anonymize_max_share <= 1.0:
            raise ValueError("pipeline.sculpted_anonymize_min_share and pipeline.sculpted_anonymize_max_share must be "
                             f"0 <= min <= max <= 1 (min 0: never), got {config.sculpted_anonymize_min_share!r} "
                             f"and {config.sculpted_anonymize_max_share!r}")
        for key in ("smoothing_beta", "smoothing_position_beta", "smoothing_feature_beta", "sculpted_anonymize_max_side",
                    "smallest_rendition"):
            if not getattr(config, key) >= 0.0:
                raise ValueError(f"pipeline.{key} must be 0 or more, got {getattr(config, key)!r}")
        self.swapper = swapper
        self.on_cover = on_cover
        self.on_timings = on_timings
        self.cover_style = config.cover_style if mode in SWAP_MODES else mode
        self.tracker = FaceTracker(
            config.smoothing_min_cutoff,
            config.smoothing_beta,
            config.hold_s,
            position_beta=config.smoothing_position_beta,
            features=_lids_and_lips(),
            feature_beta=config.smoothing_feature_beta,
        )
        self.events: Counter[str] = Counter()
        self.frames = 0
        self.last_timings: dict[str, float] = {}
        self._seed = secrets.randbits(62) if seed is None else seed  # anonymize: per session, never stored
        # throwaway personas by (face slot, sculpted): see _ephemeral, _follow_stream_size, _wears_sculpted
        self._personas: dict[tuple[int, bool], Persona] = {}
        self._painter = ThreadPoolExecutor(1, thread_name_prefix="persona-painter")
        self._painting: dict[tuple[int, bool], Future[Persona]] = {}
        self._detect_pool = ThreadPoolExecutor(1, thread_name_prefix="face-detector") if config.parallel_detect else None
        self._detected_once = False
        self._scanner = ChangeScanner(config.full_detect_every)
        self._faceless_heads: list[np.ndarray] = []  # the person rule's covers on the last segmented frame
        # the detector's candidates just under its line on its last run: looked at again on its next
        # run, changed or not, and a new one brings that run forward to the next frame (_note_near_misses)
        self._near_misses: list[np.ndarray] = []
        self._near_miss_new = False
        self._holder: int | None = None
        self._last_mask: tuple[PersonMask, int, np.ndarray] | None = None  # mask, frame number, its luma
        self._shapes: dict[int, NeutralShape] = {}
        self._turned: set[int] = set()  # tracks covered because the head is turned away
        self._in_band: set[int] = set()  # tracks whose throwaway face is sculpted in a large stream (_wears_sculpted)
        self._small: set[int] = set()  # tracks covered for their size (_too_small)
        self.neutralize = neutralize
        self._last_output: tuple[av.VideoFrame, float] | None = None
        self._rgb_buffer: np.ndarray | None = None  # reused frame to frame (LazyRgb)
        self._low_resolution = False  # the stream's shorter side is at most sculpted_anonymize_max_side
        self._size_known = False  # _follow_stream_size has seen a frame
        if mode in SWAP_MODES:
            self._ephemeral(0, False, wait=True)  # the first face should not wait for its persona,
            if config.sculpted_anonymize_min_share > 0:
                self._ephemeral(0, True, wait=True)  # nor a talking head's sculpted one (built off the event loop)
            elif config.sculpted_anonymize_max_side > 0:
                self._paint(0, True)  # nor in a small stream (the size is known at the first frame)
            for slot in (1, 2):
                self._ephemeral(slot)  # and the next ones are painted in the background
        self._warm_up()
        self.new_face_boxes: tuple[np.ndarray, ...] | None = None  # see process()
        self._last_rects: list[tuple[int, int, int, int]] = []  # what the last masked frame changed
        self._last_faces: list[np.ndarray] = []  # the faces it masked (tracked and held)
        self._runner: DeadlineRunner[tuple[av.VideoFrame, tuple[np.ndarray, ...]]] | None = None
        if config.deadline_ms and config.deadline_ms > 0:
            self._runner = DeadlineRunner(self._mask, config.deadline_ms / 1000.0, name="face-masker")

    def _warm_up(self) -> None:
        """One inference per model now, so the first live frame does not blow its deadline."""
        from pipeline.types import CropRoi

        blank = np.zeros((64, 64, 3), np.uint8)
        self.backend.detector.detect(blank)
        self.backend.landmarker.landmarks(blank, CropRoi(32, 32, 48))
        if self.backend.segmenter is not None:
            sh, sw = self.backend.segmenter.input_hw
            self.backend.segmenter.segment(np.zeros((sh, sw, 3), np.uint8), (sh, sw))

    # -- FrameProcessor ---------------------------------------------------------------

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        """The masked frame. Afterwards ``new_face_boxes`` holds the places (frame px, grown
        as a held face's cover) of the faces this frame masks that the frame before did not
        know: a face found late was raw there (``pipeline/lookahead.py`` covers it in the
        frames still held back). None when the frame fell back (nothing of it is raw)."""
        self.new_face_boxes = None
        try:
            if self._runner is not None:
                out, self.new_face_boxes = self._runner.run(frame)
            else:
                out, self.new_face_boxes = self._mask(frame)
            return out
        except DeadlineExceeded as exc:
            log.warning("masking missed its deadline (%s); covering the frame", exc)
            return self._fallback(frame, "deadline")
        except Exception:
            log.exception("masking failed; covering the frame")
            return self._fallback(frame, "error")

    def take_over(self, previous: object) -> bool:
        """Continue from ``previous``, the masker this one replaces in a live face switch:
        its tracked and held faces (kept in their persona slots), the detector's scan state,
        the last person mask and masked frame. The faces stay followed, and covered where
        they were covered, across the switch instead of waiting for a fresh detection.

        Call it between frames, before this masker's first one. False (and this masker
        starts afresh, covered as at a stream's start) if ``previous`` is not a FaceMasker
        or a late frame is still running in it: that frame owns its state.
        """
        if not isinstance(previous, FaceMasker) or self.frames:
            return False
        if previous._runner is not None and previous._runner.busy:
            return False
        self.tracker = previous.tracker
        self._scanner = previous._scanner
        self._detected_once = previous._detected_once
        self._faceless_heads = list(previous._faceless_heads)
        self._near_misses = list(previous._near_misses)
        self._near_miss_new = previous._near_miss_new
        self._last_mask = previous._last_mask
        self._last_output = previous._last_output
        self._last_rects = list(previous._last_rects)
        self._last_faces = list(previous._last_faces)
        self._turned = set(previous._turned)
        self._in_band = set(previous._in_band)
        self._small = set(previous._small)
        self._holder = previous._holder
        self.frames = previous.frames  # the scan's and the person mask's frame numbers go on
        # not the learnt face shapes: they are measured against the old persona's layout
        return True

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        self._painter.shutdown(wait=False, cancel_futures=True)
        if self._detect_pool is not None:
            self._detect_pool.shutdown(wait=False, cancel_futures=True)
        self._personas.clear()

    # -- the pipeline -----------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.events[reason] += 1
        if self.on_cover is not None:
            self.on_cover(reason)

    def _ephemeral_seed(self, slot: int) -> int:
        return (self._seed + slot * 7919) % (2**63)

    def _ephemeral(self, slot: int, sculpted: bool | None = None, wait: bool = False) -> Persona | None:
        """The session's throwaway persona for a face slot, flat or sculpted (default: the
        stream size's style); None while it is still being painted.

        Painting takes 15-100 ms, too long for the frame in which a new face appears: it runs
        on a helper thread and the face is covered meanwhile (``persona_pending``).
        """
        key = (slot, self._low_resolution if sculpted is None else sculpted)
        persona = self._personas.get(key)
        if persona is not None:
            return persona
        future = self._paint(*key)
        if not wait and not future.done():
            return None
        persona = self._personas[key] = future.result()
        del self._painting[key]
        return persona

    def _paint(self, slot: int, sculpted: bool) -> Future[Persona]:
        from pipeline.procedural import ephemeral_persona

        key = (slot, sculpted)
        if key not in self._painting:
            self._painting[key] = self._painter.submit(ephemeral_persona, self._ephemeral_seed(slot), sculpted)
        return self._painting[key]

    def _follow_stream_size(self, height: int, width: int) -> None:
        """Anonymized faces are painted in the style that suits the stream's size (see
        ``procedural.LOW_RESOLUTION_STYLE``). At the first frame, and whenever the size crosses
        the line, faces of the style no longer used are dropped and this one's painted in the
        background (a small stream's first face has been painting since the masker was built);
        faces wait covered. A large stream keeps sculpted faces for its large faces
        (``_wears_sculpted``)."""
        low = 0 < min(height, width) <= self.config.sculpted_anonymize_max_side
        if self.mode not in SWAP_MODES or (low == self._low_resolution and self._size_known):
            return
        self._size_known = True
        self._low_resolution = low
        unused = {False} if low else (set() if self.config.sculpted_anonymize_min_share > 0 else {True})
        for key in [k for k in self._painting if k[1] in unused]:
            self._painting.pop(key).cancel()
        for key in [k for k in self._personas if k[1] in unused]:
            del self._personas[key]
        for slot in (0, 1, 2):
            self._ephemeral(slot)

    def _wears_sculpted(self, track: Any, frame_hw: tuple[int, int]) -> bool:
        """Whether a throwaway face is drawn in the sculpted style: every face in a small
        stream, and in a larger one a face whose box is ``sculpted_anonymize_min_share`` to
        ``_max_share`` of the shorter side, 72-187 px in a platform's 360p rendition. There a
        flat face leaves the recognizer the creator's hair and outline; a crowd's smaller faces,
        where the relief scores closer to the people under it, and close-ups, which flat faces
        cover at that size too, stay flat (docs/benchmarks.md, "Faces in a platform's 360p
        rendition"). With hysteresis, so a face near an edge does not switch between two looks."""
        if self._low_resolution:
            return True
        low, high = float(self.config.sculpted_anonymize_min_share), float(self.config.sculpted_anonymize_max_share)
        if low <= 0.0:
            return False
        share = track.size / max(min(frame_hw), 1)
        return latch(self._in_band, track.id, enter=low <= share < high,
                     stay=low * SHARE_HYSTERESIS <= share < high / SHARE_HYSTERESIS)

    def _too_small(self, track: Any, frame_hw: tuple[int, int]) -> bool:
        """Whether a face is covered instead of swapped for its size: under ``min_face_px`` in
        the stream, or in the smallest rendition viewers may watch (``rendition_scale``; a
        1080p stream's faces under 120 px, a 720p one's under 80). There a throwaway face is a
        few pixels of shading inside the person's own hair and outline, and the recognizer
        matches it to them more often than it matches two strangers; a cover does not
        (docs/benchmarks.md, "Small faces in a 360p rendition"). Fail closed: a face covered
        for its size is swapped again only once it is 1/0.8 of the line."""
        line = float(self.config.min_face_px) / rendition_scale(frame_hw, self.config.smallest_rendition)
        return latch(self._small, track.id, enter=track.size < line, stay=track.size < line / SHARE_HYSTERESIS)

    def _persona_holder(self) -> int | None:
        """Persona mode: the id of the track wearing the session's persona, the largest face.

        The persona moves to another face only when that one is 25% larger, so two faces of
        about the same size do not swap identities back and forth.
        """
        tracks = self.tracker.tracks
        if self.mode != "persona" or self.persona is None or not tracks:
            return None
        largest = max(tracks, key=lambda t: t.size)
        current = next((t for t in tracks if t.id == self._holder), None)
        if current is None or largest.size > 1.25 * current.size:
            self._holder = largest.id
        return self._holder

    def _is_turned(self, track: Any) -> bool:
        """Privacy over looks: past ``max_yaw_deg`` the frontal persona covers only part of a
        three-quarter face and its live profile, ear and hair still identify it (crowd_1080p's
        remaining leaks were such faces, at 51-55 degrees; talking heads stay under 27). The
        face is covered instead, until it turns back under the limit less a margin."""
        limit = float(self.config.max_yaw_deg)
        if limit >= 90.0:
            return False
        yaw = abs(yaw_degrees(track.landmarks))
        return latch(self._turned, track.id, enter=yaw > limit, stay=yaw >= limit - YAW_HYSTERESIS_DEG)

    def _scan_boxes(
        self, regions: tuple[tuple[int, int, int, int], ...], frame_hw: tuple[int, int], finer: float = 1.0
    ) -> list[tuple[tuple[int, int, int, int], tuple[int, int]]]:
        """Each region to scan as (even frame box, its size at the detector's scale): grown
        to whole SCAN_ALIGN px of the detector's input (the scale of a whole-frame pass, so
        a face is found at the same size, or ``finer`` times it for a closer look), merged
        where one run costs less than two (``pipeline.scan_call_px``)."""
        fh, fw = frame_hw
        dw, dh = self.backend.detector.input_size(fh, fw)
        dw, dh = round(dw * finer), round(dh * finer)
        sx, sy = dw / fw, dh / fh
        a = SCAN_ALIGN
        cells = []
        for x0, y0, x1, y1 in regions:
            cx0, cy0 = int(x0 * sx) // a * a, int(y0 * sy) // a * a
            cx1, cy1 = min(dw, -(-int(np.ceil(x1 * sx)) // a) * a), min(dh, -(-int(np.ceil(y1 * sy)) // a) * a)
            cells.append([max(0, min(cx0, cx1 - a)), max(0, min(cy0, cy1 - a)), cx1, cy1])
        out = []
        for cx0, cy0, cx1, cy1 in merge_rects(cells, slack=max(0, self.config.scan_call_px)):
            bx0, by0 = int(cx0 / sx) & ~1, int(cy0 / sy) & ~1
            bx1, by1 = min(fw, (int(np.ceil(cx1 / sx)) + 1) & ~1), min(fh, (int(np.ceil(cy1 / sy)) + 1) & ~1)
            out.append(((bx0, by0, bx1, by1), (cx1 - cx0, cy1 - cy0)))
        return out

    def _detect_crop(
        self, crop: np.ndarray, box: tuple[int, int, int, int], tracked: list[np.ndarray], min_score: float | None = None
    ) -> list[FaceDetection]:
        """Faces in ``crop`` (the frame's ``box`` at the detector's scale), in frame px, less
        those that are mostly a tracked face (a crop's edge can cut one: not a new face)."""
        x0, y0, x1, y1 = box
        shift = np.array([x0, y0, x0, y0], np.float32)
        found = [
            FaceDetection(d.box + shift, d.score, d.keypoints + shift[:2])
            for d in self.backend.detector.detect(crop, (y1 - y0, x1 - x0), min_score)
        ]
        return [d for d in found if not any(inside_share(d.box, t) >= 0.5 for t in tracked)]

    def _confirmed(
        self, img: LazyRgb | FullRgb, found: list[FaceDetection], tracked: list[np.ndarray], frame_hw: tuple[int, int],
        near_misses: list[np.ndarray] | None = None,
    ) -> list[FaceDetection]:
        """A face a partial scan found, looked at again with its surroundings: kept (as the
        second look saw it) only if the detector finds it there again. A crop's edge can
        cut a tracked face into something new-looking, and a crop without context can make
        a face of the background: neither is one a whole-frame pass would report. A face
        where the run before saw a near miss (``near_misses``) is kept as found: the detector
        saw it there already, and the second look's small crop can lose a small face (a
        57 px face in crowd_1080p, found at 0.71 and lost in its 64x64 crop)."""
        kept = []
        for d in found:
            if any(iou(d.box, b) >= NEAR_MISS_IOU for b in near_misses or ()):
                kept.append(d)
                continue
            again = self._found_again(img, d.box, CONFIRM_GROW, tracked, frame_hw)
            if again is not None:
                kept.append(again)
        return kept

    def _found_again(
        self, img: LazyRgb | FullRgb, box: np.ndarray, grow: float, tracked: list[np.ndarray], frame_hw: tuple[int, int],
        finer: float = 1.0, max_px: int | None = None, score: float = 0.0,
    ) -> FaceDetection | None:
        """The face the detector finds in ``box`` grown by ``grow`` (at ``finer`` times its
        scale), overlapping ``box`` CONFIRM_IOU and scoring ``score`` or more, if any; None as
        well where that look would take more than ``max_px`` of detector input."""
        region = tuple(int(v) for v in grow_box(box, grow, frame_hw))
        for crop_box, (cw, ch) in self._scan_boxes((region,), frame_hw, finer):
            if max_px is not None and cw * ch > max_px:
                continue
            again = self._detect_crop(img.scaled(cw, ch, box=crop_box), crop_box, tracked)
            best = max(again, key=lambda e: iou(e.box, box), default=None)
            if best is not None and iou(best.box, box) >= CONFIRM_IOU and best.score >= score:
                return best
        return None

    def _near_miss_floor(self) -> tuple[float | None, float]:
        """(the score the detector is asked to report down to, or None; the line for a face)."""
        line = float(getattr(self.backend.detector, "score_threshold", self.config.detect_score))
        floor = self.config.near_miss_score
        return (floor if 0.0 < floor < line else None), line

    @staticmethod
    def _split_near_misses(
        found: list[FaceDetection], line: float, followed: list[np.ndarray], floor: float | None = None
    ) -> tuple[list[FaceDetection], list[np.ndarray]]:
        """(the faces of ``found``, at ``line`` and up; the near misses' boxes): candidates the
        detector scored just under its line, apart from the faces ``followed`` (tracked or
        held, as they were when the detector's run began) and the faces found. A
        held face is covered and looked at again anyway: taking its own weak detection for a
        new face let a crowd_1080p hold lapse and uncover a face beside it. A face coming into
        view (from behind a pole, out of a turn) scores so on the frame before it is found;
        looked at again on the next frame, changed or not, it is found a frame sooner, while
        the lookahead can still cover the frame it was missed on."""
        faces = [d for d in found if d.score >= line]
        known = followed + [d.box for d in faces]
        near = [
            d.box for d in found
            if (floor is None or d.score >= floor) and d.score < line and not any(inside_share(d.box, k) >= 0.5 for k in known)
        ]
        return faces, near

    @staticmethod
    def _edge_candidates(
        found: list[FaceDetection], line: float, floor: float, known: list[np.ndarray], frame_hw: tuple[int, int]
    ) -> list[np.ndarray]:
        """Boxes of the candidates in ``found`` from ``floor`` up to ``line`` that run out of
        the frame (within EDGE_TOUCH of their own size of an edge: the detector's box for a cut
        face can stop short of it), apart from the faces ``known``."""
        fh, fw = frame_hw

        def cut(b: np.ndarray) -> bool:
            mx, my = EDGE_TOUCH * (b[2] - b[0]), EDGE_TOUCH * (b[3] - b[1])
            return bool(b[0] <= mx or b[1] <= my or b[2] >= fw - mx or b[3] >= fh - my)

        return [
            d.box for d in found
            if floor <= d.score < line and cut(d.box) and not any(inside_share(d.box, k) >= 0.5 for k in known)
        ]

    def _look_closer(
        self, img: LazyRgb | FullRgb, boxes: list[np.ndarray], tracked: list[np.ndarray], frame_hw: tuple[int, int],
        line: float,
    ) -> list[FaceDetection]:
        """Each of ``boxes`` looked at again, with its surroundings, at EDGE_LOOK_SCALE times
        the detector's scale: the face found there (EDGE_LOOK_MARGIN over the detector's
        ``line``, overlapping the box CONFIRM_IOU), if any. Nothing where the detector already
        sees the frame at its own size, and no look that would cost more than a whole-frame
        pass (a crowd's low candidates include boxes a third of the frame)."""
        fh, fw = frame_hw
        dw, dh = self.backend.detector.input_size(fh, fw)
        finer = min(EDGE_LOOK_SCALE, fw / dw)
        kept: list[FaceDetection] = []
        if finer <= 1.0:
            return kept
        for b in boxes:
            again = self._found_again(
                img, b, EDGE_LOOK_GROW, tracked, frame_hw, finer, max_px=dw * dh, score=line + EDGE_LOOK_MARGIN
            )
            if again is not None and not any(iou(again.box, k.box) >= CONFIRM_IOU for k in kept):
                kept.append(again)
        return kept

    def _note_near_misses(self, near: list[np.ndarray]) -> None:
        """Keep this run's near misses for the next; one the last run did not see brings that
        run forward to the next frame."""
        self._near_miss_new = any(all(iou(b, old) < NEAR_MISS_IOU for old in self._near_misses) for b in near)
        self._near_misses = near

    def _frame_time(self, frame: av.VideoFrame) -> float:
        """Seconds on the stream's clock (smoothing follows media time, not wall time)."""
        if frame.pts is None or frame.time_base is None:
            return self.frames / 30.0
        return float(frame.pts * frame.time_base)

    def _mask(self, frame: av.VideoFrame) -> tuple[av.VideoFrame, tuple[np.ndarray, ...]]:
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        cfg = self.config
        now = self._frame_time(frame)
        h, w = frame.height, frame.width
        self._follow_stream_size(h, w)
        yuv_path = frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0
        t = time.perf_counter()
        out_planes = None
        if yuv_path:
            out, out_planes = copy_frame(frame)
            img: LazyRgb | FullRgb = LazyRgb(plane_views(frame), self._rgb_buffer)
            self._rgb_buffer = img.rgb
        else:
            img = FullRgb(frame.to_ndarray(format="rgb24"))
        rgb = img.rgb
        timings["convert"] = time.perf_counter() - t

        tracker = self.tracker
        detected = self.frames % max(1, cfg.detect_every) == 0 or tracker.needs_detection() or self._near_miss_new
        self.frames += 1

        detector = self.backend.detector
        small = None
        lumas: dict[tuple[int, int], np.ndarray] = {}

        def luma(lw: int, lh: int) -> np.ndarray:
            if (lw, lh) not in lumas:
                lumas[(lw, lh)] = img.luma(lw, lh)
            return lumas[(lw, lh)]

        scan_wh = (SCAN_LUMA_WIDTH, max(2, 2 * round(SCAN_LUMA_WIDTH * h / w / 2)))
        plan: ScanPlan = FULL_PLAN
        crops: list[tuple[np.ndarray, tuple[int, int, int, int]]] = []
        tracked: list[np.ndarray] = []
        held: list[np.ndarray] = []
        if detected:
            t = time.perf_counter()
            # Between whole-frame passes, only where the picture changed (pipeline/scan.py).
            tracked = [tr.box for tr in tracker.tracks]
            held = [hf.box for hf in tracker.held]  # taken here: with parallel_detect the landmarks change the tracker meanwhile
            # lost faces, and heads the person rule covered on the last segmented frame: a
            # face the detector missed there is looked for on every run, changed or not
            revisit = held + self._faceless_heads + self._near_misses
            plan = self._scanner.plan(luma(*scan_wh), tracked, revisit, (h, w), self.frames - 1)
            # made from the planes, so before or after any stage writes into rgb alike
            if plan.full:
                small = img.scaled(*detector.input_size(h, w))
            else:
                crops = [(img.scaled(cw, ch, box=box), box) for box, (cw, ch) in self._scan_boxes(plan.regions, (h, w))]
            timings["detect"] = time.perf_counter() - t

        def detect() -> tuple[list, float]:
            t0 = time.perf_counter()
            floor, line = self._near_miss_floor()
            edge_floor = cfg.edge_look_score if 0.0 < cfg.edge_look_score < line else None
            ask = min((f for f in (floor, edge_floor) if f is not None), default=None)
            if plan.full:
                candidates = detector.detect(small, (h, w), ask)
            else:
                candidates = [d for crop, box in crops for d in self._detect_crop(crop, box, tracked, ask)]
            found, near = self._split_near_misses(candidates, line, tracked + held, line if floor is None else floor)
            if not plan.full:
                found = self._confirmed(img, found, tracked, (h, w), self._near_misses)  # the last run's
            if edge_floor is not None:
                cut = self._edge_candidates(candidates, line, edge_floor, tracked + held + [d.box for d in found], (h, w))
                found += self._look_closer(img, cut, tracked, (h, w), line)
            self._note_near_misses(near)
            return found, time.perf_counter() - t0

        def follow(tracks: list) -> float:
            t0 = time.perf_counter()
            lm = self.backend.landmarker
            for track in tracks:
                crop = img.warp(lm.crop_matrix(track.roi), lm.input_size)
                tracker.update(track, lm.landmarks_from_crop(crop, track.roi), now)
            return time.perf_counter() - t0

        # With parallel_detect the detector runs beside the landmarks of the faces already
        # tracked (onnxruntime and OpenCV release the GIL): a detector frame costs the larger
        # of the two, not their sum. Faces it finds anew get their landmarks once it is done.
        job = self._detect_pool.submit(detect) if detected and self._detect_pool is not None else None
        timings["landmarks"] = follow(list(tracker.tracks))
        detections = []
        new_faces: list[np.ndarray] = []  # faces first masked on this frame
        if detected:
            detections, took = job.result() if job is not None else detect()
            timings["detect"] += took
            self._scanner.scanned(plan, luma(*scan_wh), self.frames - 1)
            self._detected_once = True
            tracker.refresh_holds(detections, now)
            known = {tr.id for tr in tracker.tracks}
            tracker.apply_detections(detections, now)
            started = [tr for tr in tracker.tracks if tr.id not in known]
            # A new track is a new face unless it is one the frame before masked (a track or
            # a held face, the same face by the tracker's own rule), lost and found again.
            # Not by covered area: a face stepping out from behind a masked head overlaps
            # that head's cover and was still raw on the frame before.
            new_faces = [
                grow_box(tr.box, HELD_MARGIN, (h, w)) for tr in started
                if all(iou(tr.box, b) < tracker.match_iou for b in self._last_faces)
            ]
            timings["landmarks"] += follow(started)

        t = time.perf_counter()
        tracker.dedupe()
        tracker.expire(now)
        live_ids = {tr.id for tr in tracker.tracks}
        self._shapes = {k: v for k, v in self._shapes.items() if k in live_ids}
        self._turned &= live_ids
        self._in_band &= live_ids
        self._small &= live_ids
        timings["landmarks"] += time.perf_counter() - t

        uncovered_heads: list[np.ndarray] = []
        if self.backend.segmenter is not None:
            t = time.perf_counter()
            sh, sw = self.backend.segmenter.input_hw
            seg_luma = luma(sw, sh)
            last = self._last_mask
            # The person mask is reused for up to segment_every - 1 frames (one more on the
            # detector's frame, p95), and only while the picture outside the tracked faces
            # has not changed since the mask's own frame (guard rule 4). A changed detector
            # frame segments too, though that costs p95 (docs/benchmarks.md): the detector
            # alone may miss a head that cuts in on that very frame.
            age = self.frames - last[1] if last is not None else None
            if (
                age is not None
                and last[0].frame_hw == (h, w)
                and age < max(1, cfg.segment_every) + detected
                and not picture_changed(last[2], seg_luma, [tr.box for tr in tracker.tracks], (h, w))
            ):
                mask = last[0]
            else:
                small_seg = img.scaled(sw, sh, cv2.INTER_LINEAR)  # AREA costs 0.7 ms more here
                mask = self.backend.segmenter.segment(small_seg, (h, w))
                self._last_mask = (mask, self.frames, seg_luma)
            faces = [tr.box for tr in tracker.tracks] + [hf.box for hf in tracker.held] + [d.box for d in detections]
            uncovered_heads = heads_without_faces(mask, faces)
            self._faceless_heads = uncovered_heads
            last_rects = [np.asarray(r, np.float32) for r in self._last_rects]
            new_faces += [hd for hd in uncovered_heads if not any(inside_share(hd, r) >= 0.5 for r in last_rects)]
            timings["segment"] = time.perf_counter() - t

        rects: list[tuple[int, int, int, int]] = []

        def region(box: np.ndarray) -> tuple[int, int, int, int] | None:
            r = even_box(box, h, w)
            if r is not None:
                img.ensure(*r)
                rects.append(r)
            return r

        def cover_box(box: np.ndarray, reason: str | None) -> None:
            r = region(box)
            if r is not None:
                x0, y0, x1, y1 = r
                rgb[y0:y1, x0:x1] = cover(rgb[y0:y1, x0:x1], self.cover_style)
            if reason is not None:
                self._count(reason)

        t = time.perf_counter()
        holder = self._persona_holder()
        for track in tracker.tracks:
            if self.mode in COVER_MODES:
                cover_box(grow_box(track.box, 0.2, (h, w)), None)  # the session's chosen style
                continue
            if track.landmarks is None or self._too_small(track, (h, w)):
                cover_box(grow_box(track.box, 0.2, (h, w)), "small_face")
                continue
            if self._is_turned(track):
                cover_box(grow_box(track.box, HELD_MARGIN, (h, w)), "turned_face")
                continue
            if track.id == holder and self.persona is not None:
                persona = self.persona
            else:
                persona = self._ephemeral(track.slot, self._wears_sculpted(track, (h, w)))
            if persona is None:
                cover_box(grow_box(track.box, 0.2, (h, w)), "persona_pending")
                continue
            points = track.landmarks[:, :2]
            if self.neutralize:
                shape = self._shapes.setdefault(track.id, NeutralShape(alpha=cfg.persona_shape))
                points = shape.target(track.landmarks, persona.landmarks, now)
            # Only what the swap can change is converted, swapped in place and written back.
            footprint = getattr(self.swapper, "footprint", None)
            r = region(np.asarray(footprint(points)) if footprint is not None else grow_box(track.box, SWAP_MARGIN, (h, w)))
            if r is None:
                continue
            x0, y0, x1, y1 = r
            self.swapper.swap(rgb[y0:y1, x0:x1], points - np.array([x0, y0], np.float32), persona)
        timings["swap"] = time.perf_counter() - t

        t = time.perf_counter()
        for held in tracker.held:
            cover_box(grow_box(held.box, HELD_MARGIN, (h, w)), held.reason)
        for head in uncovered_heads:
            cover_box(head, "person_no_face")
        timings["cover"] = time.perf_counter() - t

        t = time.perf_counter()
        if not self._detected_once:  # unreachable unless the detector raised; kept as the rule says
            self._count("no_detection_yet")
            out = self._covered(frame)
        elif out_planes is not None:
            for x0, y0, x1, y1 in rects:
                write_rgb_planes(out_planes, x0, y0, rgb[y0:y1, x0:x1])
        else:
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=frame.format.name)
        _keep_timing(out, frame)
        timings["convert"] += time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        self.last_timings = {k: v * 1000.0 for k, v in timings.items()}
        if self.on_timings is not None:
            self.on_timings(self.last_timings)
        if out_planes is not None:
            self._last_output = (out, time.monotonic())
        self._last_rects = rects if self._detected_once else [(0, 0, w, h)]
        self._last_faces = [tr.box.copy() for tr in tracker.tracks] + [hf.box.copy() for hf in tracker.held]
        return out, tuple(new_faces)

    # -- fail closed ------------------------------------------------------------------

    def _covered(self, frame: av.VideoFrame) -> av.VideoFrame:
        h, w = frame.height, frame.width
        if frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0:
            yuv = frame.to_ndarray()
            cover_i420(yuv, h, w, self.cover_style)
            out = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        else:
            rgb = frame.to_ndarray(format="rgb24")
            out = av.VideoFrame.from_ndarray(cover(rgb, "blur"), format="rgb24").reformat(format=frame.format.name)
        _keep_timing(out, frame)
        return out

    def _fallback(self, frame: av.VideoFrame, reason: str) -> av.VideoFrame:
        """Rule 3: the last masked frame again (if recent and the same size), else a covered frame."""
        self._count(reason)
        last = self._last_output
        if last is not None and time.monotonic() - last[1] <= REPEAT_MAX_S and (last[0].height, last[0].width) == (frame.height, frame.width):
            out, _ = copy_frame(last[0])
            _keep_timing(out, frame)
            return out
        return self._covered(frame)


def _keep_timing(out: av.VideoFrame, frame: av.VideoFrame) -> None:
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base


@lru_cache(maxsize=1)
def _lids_and_lips() -> np.ndarray:
    """Face-mesh indices of the eye loops (the lids) and the lip loops: smoothed lightly."""
    return face_mesh_topology().points("left_eye", "right_eye", "lips_outer", "lips_inner")
