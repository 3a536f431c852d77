from __future__ import annotations

from edge_server.metrics import DROP_REASONS, MediaMetrics


def test_forget_session_leaves_no_labelled_series_but_keeps_totals() -> None:
    metrics = MediaMetrics()
    for reason in DROP_REASONS:
        metrics.frames_dropped.labels("ses_a", reason).inc()
        metrics.frames_dropped_all.labels(reason).inc()
    metrics.frames_in.labels("ses_a").inc()
    metrics.reconnects.labels("ses_a").inc()
    for stage in ("decode", "process", "encode"):
        metrics.session_stage_seconds.labels("ses_a", stage).observe(0.01)
    metrics.session_latency_seconds.labels("ses_a").observe(0.03)
    metrics.forget_session("ses_a")
    leftover = [
        sample for family in metrics.registry.collect() for sample in family.samples if sample.labels.get("session") == "ses_a"
    ]
    assert leftover == []
    assert metrics.registry.get_sample_value("hikariedge_frames_dropped_all_total", {"reason": "process_error"}) == 1


def test_forget_viewers_drops_the_sessions_viewer_gauge() -> None:
    metrics = MediaMetrics()
    metrics.whep_viewers.labels("ses_a").set(3)
    metrics.whep_viewers_all.set(3)
    metrics.webrtc_requests.labels("whep", "POST", "201").inc()
    metrics.forget_viewers("ses_a")
    assert metrics.registry.get_sample_value("hikariedge_whep_viewers", {"session": "ses_a"}) is None
    assert metrics.registry.get_sample_value("hikariedge_webrtc_requests_total", {"protocol": "whep", "method": "POST", "status": "201"}) == 1
