"""Trackers: the official decision rules on small hand-made cases, what the sipmask tracker adds
(Hungarian, motion, ageing, new-track threshold, bounded memory, IoU gate), the iou baseline, and
per-video track results (results2json_videoseg rules)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sipmask.data.video_results import VideoTrackResults
from sipmask.tracking import IoUTracker, OfficialTracker, SipMaskTracker, make_tracker

E = 8


def _frame(boxes, labels=None, scores=None, feats=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    if feats is None:  # every object looks the same
        feats = torch.full((n, E), 1.0)
    return {"boxes": boxes,
            "scores": torch.tensor(scores if scores is not None else [0.9] * n, dtype=torch.float32),
            "labels": torch.tensor(labels if labels is not None else [0] * n, dtype=torch.int64),
            "embeddings": torch.as_tensor(feats, dtype=torch.float32).reshape(n, -1 if n else E)}


def _box(x, y=100, size=40):
    return [x, y, x + size, y + size]


def test_make_tracker_names_and_errors():
    assert isinstance(make_tracker(), SipMaskTracker)
    assert isinstance(make_tracker("official"), OfficialTracker)
    assert isinstance(make_tracker("iou", iou_threshold=0.5), IoUTracker)
    assert not make_tracker("iou").needs_embeddings and make_tracker("sipmask").needs_embeddings
    with pytest.raises(ValueError, match="unknown tracker 'kalman'.*official"):
        make_tracker("kalman")
    with pytest.raises(ValueError, match="tracker 'sipmask': bad options"):
        make_tracker("sipmask", max_ages=3)


def test_embedding_trackers_name_the_missing_embeddings():
    frame = _frame([_box(0)])
    del frame["embeddings"]
    for name in ("official", "sipmask"):
        with pytest.raises(ValueError, match=f"tracker '{name}'.*embeddings.*--tracker iou"):
            make_tracker(name).update(frame)
    assert make_tracker("iou").update(frame).tolist() == [0]


def test_official_later_better_detection_takes_the_id():
    """Both detections argmax object 0; the second (IoU 1) beats the first (IoU 0): the official
    det_obj_ids keep 0 on both, the output dict (one per id) keeps the second."""
    tracker = make_tracker("official")
    assert tracker.update(_frame([_box(0)])).tolist() == [0]
    ids = tracker.update(_frame([_box(200), _box(0)]))
    assert tracker.last_raw_ids.tolist() == [0, 0]
    assert ids.tolist() == [-1, 0]
    assert tracker.memory_bboxes[0, :4].tolist() == _box(0)  # overwritten by the later one
    # the other order: the first (better) is accepted, the second loses and is dropped
    tracker.reset()
    tracker.update(_frame([_box(0)]))
    assert tracker.update(_frame([_box(0), _box(200)])).tolist() == [0, -1]
    assert tracker.last_raw_ids.tolist() == [0, -1]


def test_official_new_object_and_label_never_updated():
    tracker = make_tracker("official")
    feats = torch.eye(E)[:2] * 5
    tracker.update(_frame([_box(0)], labels=[3], feats=feats[:1]))
    # an orthogonal embedding: the new-object column wins -> id 1 = memory size
    ids = tracker.update(_frame([_box(0), _box(100)], labels=[3, 3], feats=feats[[0, 1]]))
    assert ids.tolist() == [0, 1] and tracker.memory_size == 2
    comp = tracker.last_comp_scores
    assert comp.shape == (2, 2)
    # the comp formula by hand for detection 0 vs object 0: log_softmax([0, 25]) + log(0.9) + 2 * 1 + 10
    expected = torch.log_softmax(torch.tensor([0.0, 25.0]), 0)[1] + np.log(0.9) + 2.0 + 10.0
    assert comp[0, 1].item() == pytest.approx(expected.item(), abs=1e-5)
    assert tracker.memory_labels.tolist() == [3, 3]


def test_empty_frames():
    for name in ("official", "sipmask", "iou"):
        tracker = make_tracker(name)
        assert tracker.update(_frame([])).tolist() == []
        assert tracker.update(_frame([_box(0)])).tolist() == [0]
        assert tracker.update(_frame([])).dtype == torch.int64


def test_hungarian_keeps_both_where_greedy_drops_one():
    """Two tracks side by side; both detections prefer track 1, detection 1 more: greedy drops detection 0,
    the one-to-one assignment gives it track 0."""
    feats = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    for assignment, expected in (("hungarian", [0, 1]), ("greedy", [-1, 1])):
        tracker = make_tracker("sipmask", assignment=assignment, motion=False, min_iou=0.0)
        tracker.update(_frame([_box(0), _box(30)], feats=feats))
        # detection 0 lies between both boxes, a bit closer to track 1; detection 1 sits on track 1
        ids = tracker.update(_frame([_box(16), _box(30)], feats=torch.tensor([[2.2, 2.2], [0.0, 3.0]])))
        assert ids.tolist() == expected, assignment


def test_motion_keeps_crossing_twins_apart():
    """Two identical objects cross head-on at 15 px / frame: the last-box IoU swaps them, the
    constant-velocity prediction does not."""
    def run(tracker):
        out = []
        for t in range(8):
            a, b = 20 + 15 * t, 225 - 15 * t  # 5 px apart after passing: the swap overlaps more
            out.append(tracker.update(_frame([_box(a, 100), _box(b, 104)])).tolist())
        return out

    assert all(ids == [0, 1] for ids in run(make_tracker("sipmask")))
    assert any(ids != [0, 1] for ids in run(make_tracker("sipmask", motion=False)))
    assert any(ids != [0, 1] for ids in run(make_tracker("iou")))


def test_ageing_gate_and_reappearance():
    tracker = make_tracker("sipmask", max_age=2)
    assert tracker.update(_frame([_box(0)])).tolist() == [0]
    tracker.update(_frame([]))
    tracker.update(_frame([]))
    assert tracker.update(_frame([_box(0)])).tolist() == [0]  # unseen 2 frames: still live
    for _ in range(3):
        tracker.update(_frame([]))
    assert tracker.update(_frame([_box(0)])).tolist() == [1]  # unseen 3 > 2 frames: a new track
    # the IoU gate: a look-alike far away starts a new track instead of taking track 1
    assert tracker.update(_frame([_box(0), _box(300)])).tolist() == [1, 2]
    assert make_tracker("sipmask", min_iou=0.0).update(_frame([_box(0)])).tolist() == [0]


def test_min_new_score_and_bounded_memory():
    tracker = make_tracker("sipmask", min_new_score=0.5, max_tracks=2)
    assert tracker.update(_frame([_box(0), _box(100), _box(200)], scores=[0.9, 0.3, 0.8])).tolist() == [0, -1, 1]
    # a weak detection continues a track
    assert tracker.update(_frame([_box(0)], scores=[0.3])).tolist() == [0]
    # memory full (2): the track unseen longest (1) makes room for a new one
    assert tracker.update(_frame([_box(0), _box(300)])).tolist() == [0, 2]
    assert sorted(tracker.tracks.ids.tolist()) == [0, 2]
    tracker.reset()
    assert tracker.update(_frame([_box(50)])).tolist() == [0]


def test_iou_tracker_links_by_overlap_and_label():
    tracker = make_tracker("iou")
    assert tracker.update(_frame([_box(0), _box(100)], labels=[0, 1])).tolist() == [0, 1]
    # 0: IoU 0.6 with track 0 -> linked; 1: overlaps track 1 but another label -> new; 2: IoU < 0.3 -> new
    ids = tracker.update(_frame([_box(10), _box(100), _box(125)], labels=[0, 2, 1]))
    assert ids.tolist() == [0, 2, 3]


def test_video_results_rules():
    results = VideoTrackResults()
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    masks = torch.from_numpy(np.stack([mask, ~mask]))
    results.add({"track_ids": torch.tensor([7, 3]), "scores": torch.tensor([0.5, 0.25]),
                 "labels": torch.tensor([2, 1]), "masks": masks})
    results.add(None)  # a frame without detections
    results.add({"track_ids": torch.tensor([-1, 7]), "scores": torch.tensor([0.9, 0.75]),
                 "labels": torch.tensor([0, 1]), "masks": masks})
    entries = results.to_ytvis(5, category_ids=[10, 20, 30])
    assert [e["video_id"] for e in entries] == [5, 5] and results.track_ids == [7, 3]
    assert entries[0]["score"] == pytest.approx(0.625) and entries[1]["score"] == pytest.approx(0.25)
    assert entries[0]["category_id"] == 20  # labels 2, 1 tie -> the smallest label, 1
    assert entries[1]["category_id"] == 20
    segs = entries[0]["segmentations"]
    assert len(segs) == 3 and segs[1] is None and isinstance(segs[0]["counts"], str)
    assert segs[0]["size"] == [4, 5]
    assert entries[1]["segmentations"][1:] == [None, None]
    assert results.to_ytvis(1)[0]["category_id"] == 2  # default: label + 1
    assert VideoTrackResults().to_ytvis(1) == []
    with pytest.raises(ValueError, match="twice"):
        results.add({"track_ids": torch.tensor([1, 1]), "scores": torch.ones(2), "labels": torch.zeros(2),
                     "masks": masks})
