"""Prometheus metrics for the media plane, on a registry of its own (one per server).

Per-session series carry a `session` label and are removed when the publish ends; the
`*_all` totals without it keep counting across sessions.
"""

from __future__ import annotations

from pipeline.guard import COVER_REASONS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5)
DROP_REASONS = ("decode_error", "slot", "backlog", "process_error", "egress_skip")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class MediaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.active_sessions = Gauge("hikariedge_live_sessions", "Sessions with a publisher streaming", registry=r)
        self.frames_in = Counter("hikariedge_frames_in", "Video frames decoded", ["session"], registry=r)
        self.frames_out = Counter("hikariedge_frames_out", "Video frames encoded and sent on", ["session"], registry=r)
        self.frames_dropped = Counter("hikariedge_frames_dropped", "Frames dropped, by reason", ["session", "reason"], registry=r)
        self.frames_in_all = Counter("hikariedge_frames_in_all", "Video frames decoded, all sessions", registry=r)
        self.frames_out_all = Counter("hikariedge_frames_out_all", "Video frames sent on, all sessions", registry=r)
        self.frames_dropped_all = Counter("hikariedge_frames_dropped_all", "Frames dropped, all sessions", ["reason"], registry=r)
        self.bytes_in = Counter("hikariedge_bytes_in", "Media bytes received from publishers", ["session"], registry=r)
        self.bytes_out = Counter("hikariedge_bytes_out", "Media bytes written to targets", ["session"], registry=r)
        self.bytes_in_all = Counter("hikariedge_bytes_in_all", "Media bytes received, all sessions", registry=r)
        self.bytes_out_all = Counter("hikariedge_bytes_out_all", "Media bytes written, all sessions", registry=r)
        self.reconnects = Counter("hikariedge_egress_reconnects", "Target reconnects", ["session"], registry=r)
        self.reconnects_all = Counter("hikariedge_egress_reconnects_all", "Target reconnects, all sessions", registry=r)
        self.stage_seconds = Histogram(
            "hikariedge_stage_seconds", "Time per frame in decode, process and encode", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.session_stage_seconds = Histogram(
            "hikariedge_session_stage_seconds", "Time per frame by stage, per session", ["session", "stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.latency_seconds = Histogram(
            "hikariedge_ingest_to_egress_seconds",
            "From a video message reaching the node to its encoded frame being handed to the target muxer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.session_latency_seconds = Histogram(
            "hikariedge_session_ingest_to_egress_seconds", "Ingest-to-egress latency per session", ["session"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.covered = Counter(
            "hikariedge_covered", "Faces or frames covered by the privacy guard, by reason", ["session", "reason"], registry=r
        )
        self.covered_all = Counter("hikariedge_covered_all", "Covered events, all sessions, by reason", ["reason"], registry=r)
        self.pipeline_stage_seconds = Histogram(
            "hikariedge_pipeline_stage_seconds", "Masking pipeline time per frame, by stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.face_switches = Counter(
            "hikariedge_face_switches", "Live face switches (a new mode or persona while live), by result: switched, failed", ["result"], registry=r
        )
        self.rejected_publishes = Counter("hikariedge_rejected_publishes", "Publish attempts refused, by reason", ["reason"], registry=r)
        self.whep_viewers = Gauge("hikariedge_whep_viewers", "WHEP viewers of a session", ["session"], registry=r)
        self.whep_viewers_all = Gauge("hikariedge_whep_viewers_all", "WHEP viewers, all sessions", registry=r)
        self.webrtc_requests = Counter(
            "hikariedge_webrtc_requests", "WHIP/WHEP HTTP requests by protocol, method and status", ["protocol", "method", "status"], registry=r
        )

    def count_cover(self, session_id: str, reason: str) -> None:
        """One cover by the privacy guard (``COVER_REASONS``), for the session and for all."""
        self.covered.labels(session_id, reason).inc()
        self.covered_all.labels(reason).inc()

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's labelled series so that the registry does not grow forever."""
        for metric in (self.frames_in, self.frames_out, self.bytes_in, self.bytes_out, self.reconnects, self.session_latency_seconds):
            _remove(metric, session_id)
        for metric, labels in ((self.frames_dropped, DROP_REASONS), (self.covered, COVER_REASONS + ("blur", "pixelate")), (self.session_stage_seconds, ("decode", "process", "encode"))):
            for label in labels:
                _remove(metric, session_id, label)


    def forget_viewers(self, session_id: str) -> None:
        """The session has no viewers and no publish any more."""
        _remove(self.whep_viewers, session_id)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
