"""`sipmask bench` on a video model: the tracking branch's share of the network and the trackers' cost a frame."""
from __future__ import annotations

import pytest

from sipmask.inference.benchmark import (
    BENCH_LIVE_TRACKS, BenchOptions, format_report, run_benchmark, tracker_bench_frames, tracker_update_ms,
)
from sipmask.tracking import TRACKERS


def test_video_model_bench_reports_the_tracking_branch_and_the_trackers():
    report = run_benchmark(BenchOptions(config="tiny_vis", size=128, device="cpu", runs=2, warmup=0, threads=1,
                                        detections=20, maskrcnn=False))
    median = report["median_s"]
    assert 0 < median["tracking_branch"] < median["head"] < median["network"]
    assert report["ratios"]["tracking_branch_over_network"] == median["tracking_branch"] / median["network"]
    per_frame = report["tracker_ms_per_frame"]
    assert per_frame["live_tracks"] == BENCH_LIVE_TRACKS == 20
    assert set(per_frame) - {"live_tracks"} == set(TRACKERS)
    assert all(ms > 0 for name, ms in per_frame.items() if name != "live_tracks")
    assert report["acceptance"]["tracker_le_2ms_at_20_tracks"] == (max(v for k, v in per_frame.items()
                                                                       if k != "live_tracks") <= 2.0)
    assert "tracker update at 20 live tracks: sipmask" in format_report(report)


def test_image_model_bench_has_no_tracking_rows():
    report = run_benchmark(BenchOptions(config="tiny_classic", size=128, device="cpu", runs=1, warmup=0, threads=1,
                                        detections=20, maskrcnn=False))
    assert "tracking_branch" not in report["median_s"] and report["tracker_ms_per_frame"] is None


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_timed_frames_continue_every_live_track(name):
    """The frames the tracker timing runs keep the same 20 tracks alive: none dropped, none new."""
    from sipmask.tracking import make_tracker

    tracker = make_tracker(name)
    for result in tracker_bench_frames(calls=15, dim=8):
        ids = tracker.update(result)
        assert ids.tolist() == list(range(BENCH_LIVE_TRACKS))
    assert tracker_update_ms(name, tracks=5, calls=15, dim=8) > 0
