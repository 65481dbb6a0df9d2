"""`--tracker official` against the official SipMask-VIS tracker on the golden tracking sequence, and the
YouTube-VIS results entries built from its per-frame outputs (official results2json_videoseg)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sipmask.data.video_results import VideoTrackResults
from sipmask.tracking import make_tracker
from tests.reference_packs import pack_file

#: The golden video's YouTube-VIS id (dataset index 3 + 1) and its 40 categories (label + 1).
VIDEO_ID = 4


@pytest.fixture(scope="module")
def pack() -> dict:
    return torch.load(pack_file("golden/vis_r50_gn_track.pt"), weights_only=True)


def _result(frame: dict) -> dict:
    """The tracker's input as the model gives it: boxes, scores, labels, embeddings."""
    det = frame["det_bboxes"]
    return {"boxes": det[:, :4], "scores": det[:, 4], "labels": frame["det_labels"],
            "embeddings": frame["embeddings"]}


def test_official_tracker_matches_every_frame(pack):
    frames = pack["tracking"]["frames"]
    tracker = make_tracker("official")
    assert tracker.needs_embeddings
    competitions = 0
    for t, frame in enumerate(frames):
        ids = tracker.update(_result(frame))
        assert tracker.last_raw_ids.tolist() == frame["det_obj_ids"].tolist(), f"frame {t}"
        # one detection per id: the ids kept are the keys of the official output dict, each on the
        # detection whose box the official output holds
        kept = {int(i): d for d, i in enumerate(ids.tolist()) if i >= 0}
        assert sorted(kept) == sorted(frame["output"]), f"frame {t}"
        for obj, d in kept.items():
            assert torch.equal(frame["det_bboxes"][d], frame["output"][obj]["bbox"]), f"frame {t} id {obj}"
            assert int(frame["det_labels"][d]) == frame["output"][obj]["label"]
        if frame["comp_scores"] is None:
            assert t == 0 and tracker.last_comp_scores is None
        else:
            torch.testing.assert_close(tracker.last_comp_scores, frame["comp_scores"], atol=1e-5, rtol=1e-6)
        competitions += int((ids < 0).sum())
        assert tracker.memory_size == frame["memory_size"]
        assert torch.equal(tracker.memory_bboxes, frame["memory_bboxes"])
        assert torch.equal(tracker.memory_labels, frame["memory_labels"])
        assert torch.equal(tracker.memory_feats, frame["memory_feats"])
    assert competitions == pack["tracking"]["summary"]["dropped"] == 2


def test_reset_starts_the_ids_again(pack):
    frames = pack["tracking"]["frames"]
    tracker = make_tracker("official")
    for frame in frames[:3]:
        tracker.update(_result(frame))
    tracker.reset()
    assert tracker.memory_size == 0
    ids = tracker.update(_result(frames[4]))
    assert ids.tolist() == list(range(len(frames[4]["det_labels"])))


def test_results_json_from_the_official_outputs(pack):
    results = VideoTrackResults()
    for frame in pack["tracking"]["frames"]:
        ids = list(frame["output"])
        masks = np.stack([mask_utils.decode(frame["masks_rle"][i]) for i in ids]).astype(bool)
        results.add({"track_ids": torch.tensor(ids),
                     "scores": torch.stack([frame["output"][i]["bbox"][4] for i in ids]),
                     "labels": torch.tensor([frame["output"][i]["label"] for i in ids]),
                     "masks": torch.from_numpy(masks)})
    entries = results.to_ytvis(VIDEO_ID, category_ids=list(range(1, 41)))
    assert len(entries) == 13
    assert entries == pack["results_json"]  # video id, float32 mean scores, categories, RLE strings, None


def test_tracked_detections_give_the_official_json(pack):
    """The official tracker's own one-per-id output, with the golden masks, gives the same entries."""
    tracker = make_tracker("official")
    results = VideoTrackResults()
    for frame in pack["tracking"]["frames"]:
        ids = tracker.update(_result(frame))
        rle = frame["masks_rle"]
        masks = [mask_utils.decode(rle[int(i)]).astype(bool) if i >= 0 else np.zeros((240, 368), bool)
                 for i in ids.tolist()]
        det = frame["det_bboxes"]
        results.add({"track_ids": ids, "scores": det[:, 4], "labels": frame["det_labels"],
                     "masks": torch.from_numpy(np.stack(masks))})
    assert results.to_ytvis(VIDEO_ID) == pack["results_json"]
