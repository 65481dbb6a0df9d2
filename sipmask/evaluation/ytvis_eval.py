"""Video AP exactly as YouTube-VIS defines it (the youtubevos fork of cocoapi, `YTVOSeval`).

Differences from image COCO AP, all reproduced here:
- the IoU of a predicted and a ground-truth track is spatio-temporal: the per-frame intersections
  summed over the video divided by the per-frame unions summed over the video (a frame where only one
  of the two has a mask adds that mask's area to the union; frames where neither has one add
  nothing; a zero union gives IoU 0). Crowd ground truth uses this same IoU (the fork has no
  crowd-specific IoU); crowd only makes the track "ignore" and matchable many times;
- the area of a track is the mean of its non-zero per-frame areas (ground truth: the file's `areas`
  list; predictions: their mask areas), with the YouTube-VIS area ranges small < 128^2 <= medium
  < 256^2 <= large (bounds inclusive on both sides as in COCO);
- max detections per video 1 / 10 / 100.
Matching, accumulation and summary are faster-coco-eval's C++ port of pycocotools' `COCOeval` (the
code the fork copied), fed with videos in place of images and the precomputed track IoUs; they agree
with the fork to ~2e-16 (one ulp in some precision cells), tested against saved official numbers.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import pycocotools.mask as mask_utils
from faster_coco_eval import COCOeval_faster

from sipmask.data.segmentation import segmentation_to_rle
from sipmask.data.ytvis import YTVISAnnotations, load_ytvis
from sipmask.evaluation.ytvis_results import load_results, validate_results

#: YouTube-VIS area ranges (youtubevos cocoapi `Params.setDetParams`): all, small, medium, large.
YTVIS_AREA_RANGES: tuple[tuple[float, float], ...] = (
    (0**2, 1e5**2), (0**2, 128**2), (128**2, 256**2), (256**2, 1e5**2)
)
YTVIS_AREA_LABELS: tuple[str, ...] = ("all", "small", "medium", "large")
#: Max detections per video (youtubevos cocoapi); AR1 and AR10 are reported.
YTVIS_MAX_DETS: tuple[int, ...] = (1, 10, 100)
#: Reported metrics, in the order of `COCOeval.stats[:8]`.
YTVIS_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")

#: pycocotools `area` builds a scratch `np.array((n,), dtype=np.uint8)`, which numpy 2 refuses for
#: n > 255: areas of long lists are therefore taken 255 masks at a time.
_AREA_CHUNK = 255

Track = Sequence[dict | None]  # one compressed RLE (or None where absent) per frame


def _frame_areas(tracks: Sequence[Track], num_frames: int) -> np.ndarray:
    """Per-frame mask areas of each track: [N,T] int64 (0 where absent)."""
    return np.stack(_areas_per_track(tracks)) if len(tracks) else np.zeros((0, num_frames), np.int64)


def track_iou(
    dt_tracks: Sequence[Track],
    gt_tracks: Sequence[Track],
    dt_area: np.ndarray | None = None,
    gt_area: np.ndarray | None = None,
) -> np.ndarray:
    """Spatio-temporal IoU between predicted and ground-truth tracks of one video.

    Args:
        dt_tracks: D tracks, gt_tracks: G tracks; each a list of T compressed RLEs (None where absent),
            all at the video's size.
        dt_area, gt_area: optional precomputed per-frame mask areas, [D,T] and [G,T] int64.
    Returns:
        [D,G] float64: sum_t |d_t & g_t| / sum_t |d_t | g_t|, 0 where the union is empty.

    Intersections are exact integers: per frame, one pycocotools `iou` call with every ground truth
    flagged crowd returns |d & g| / |d| for all pairs at once, times |d| rounded back to an integer.
    """
    num_dt, num_gt = len(dt_tracks), len(gt_tracks)
    if num_dt == 0 or num_gt == 0:
        return np.zeros((num_dt, num_gt), dtype=np.float64)
    num_frames = len(dt_tracks[0])
    dt_area = _frame_areas(dt_tracks, num_frames) if dt_area is None else dt_area  # [D,T]
    gt_area = _frame_areas(gt_tracks, num_frames) if gt_area is None else gt_area  # [G,T]
    dt_on, gt_on = dt_area > 0, gt_area > 0
    inter = np.zeros((num_dt, num_gt), dtype=np.int64)
    for f in np.flatnonzero(dt_on.any(axis=0) & gt_on.any(axis=0)).tolist():
        di = np.flatnonzero(dt_on[:, f])
        gi = np.flatnonzero(gt_on[:, f])
        ratio = mask_utils.iou(
            [dt_tracks[d][f] for d in di.tolist()], [gt_tracks[g][f] for g in gi.tolist()], [1] * len(gi)
        )  # [d,g] = |d & g| / |d|
        inter[np.ix_(di, gi)] += np.rint(np.asarray(ratio) * dt_area[di, f][:, None]).astype(np.int64)
    union = dt_area.sum(axis=1)[:, None] + gt_area.sum(axis=1)[None, :] - inter  # [D,G]
    return np.divide(inter, union, out=np.zeros((num_dt, num_gt)), where=union > 0)


def _areas_per_track(tracks: list[list[dict | None]]) -> list[np.ndarray]:
    """Per-frame areas of many tracks (of any lengths) with a single pycocotools call: [T_i] int64 each."""
    flat = [rle for track in tracks for rle in track if rle is not None]
    chunks = [flat[i:i + _AREA_CHUNK] for i in range(0, len(flat), _AREA_CHUNK)]
    values = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(mask_utils.area(c), dtype=np.int64) for c in chunks])
    out, start = [], 0
    for track in tracks:
        present = np.fromiter((rle is not None for rle in track), dtype=bool, count=len(track))
        areas = np.zeros(len(track), dtype=np.int64)
        count = int(present.sum())
        areas[present] = values[start:start + count]
        start += count
        out.append(areas)
    return out


def _mean_nonzero(areas: Sequence[float | None]) -> float:
    """The fork's track area: mean of the entries that are neither null nor 0 (0 when none)."""
    kept = [a for a in areas if a]
    return float(np.array(kept).mean()) if kept else 0.0


class _VideoCOCOeval(COCOeval_faster):
    """faster-coco-eval's COCOeval (C++ matching + accumulation, the pycocotools algorithm) over
    videos: `imgIds` are video ids, track records are given ready-made and IoUs come from `track_iou`."""

    def __init__(self, gts: dict, dts: dict, video_tracks: dict, vid_ids: list[int], cat_ids: list[int]):
        super().__init__(iouType="segm", print_function=_quiet, rle_iou_max_workers=1)  # IoUs are ours
        self.params.imgIds = vid_ids
        self.params.catIds = cat_ids
        self.params.areaRng = [list(r) for r in YTVIS_AREA_RANGES]
        self.params.areaRngLbl = list(YTVIS_AREA_LABELS)
        self.params.maxDets = list(YTVIS_MAX_DETS)
        self._video_gts, self._video_dts = gts, dts  # (vid, cat) -> records, in file order
        self._video_tracks = video_tracks  # vid -> (dt RLE tracks, gt RLE tracks, dt areas, gt areas)
        self._video_iou: dict[int, np.ndarray] = {}

    def _prepare(self) -> None:
        self.gt_dataset.clean()
        self.dt_dataset.clean()
        for (vid, cat), records in self._video_gts.items():
            for record in records:
                self.gt_dataset.append_ref(vid, cat, record)
        for (vid, cat), records in self._video_dts.items():
            for record in records:
                self.dt_dataset.append_ref(vid, cat, record)
        self._nonempty_iou_pairs = set(self._video_gts) & set(self._video_dts)

    def computeIoU(self, vid: int, cat: int) -> np.ndarray | list:  # noqa: N802 (COCOeval API)
        """[D,G] IoUs of the (vid, cat) predictions sorted by score (stable) and capped at maxDets[-1],
        against its ground truth in file order, as the fork's `computeIoU` orders them."""
        gt, dt = self._video_gts.get((vid, cat), []), self._video_dts.get((vid, cat), [])
        if not gt or not dt:
            return []  # nothing to match, as pycocotools returns
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")[: self.params.maxDets[-1]]
        if vid not in self._video_iou:
            dt_tracks, gt_tracks, dt_area, gt_area = self._video_tracks[vid]
            self._video_iou[vid] = track_iou(dt_tracks, gt_tracks, np.stack(dt_area), np.stack(gt_area))
        rows = [dt[i]["track"] for i in order]
        cols = [g["track"] for g in gt]
        return self._video_iou[vid][np.ix_(rows, cols)]


def _quiet(*_: Any, **__: Any) -> None:
    """faster-coco-eval logs progress through a print function; scoring stays silent."""


def evaluate_ytvis(gt: YTVISAnnotations, results: list[dict[str, Any]], validate: bool = True) -> dict[str, float]:
    """Video AP of a results list (see `ytvis_results`) against YouTube-VIS annotations.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10"} as fractions, -1.0 where no ground
        truth falls in the setting (e.g. APl without large objects), exactly as the fork reports.
    """
    if validate:
        validate_results(results, gt)
    # Per video: the RLE tracks and their per-frame areas, indexed by the "track" field of the records.
    gt_rles, dt_rles = [], []
    for track in gt.tracks:
        video = gt.videos[track.video_id]
        gt_rles.append([segmentation_to_rle(s, video.height, video.width) for s in track.segmentations])
    for entry in results:
        video = gt.videos[entry["video_id"]]
        dt_rles.append([segmentation_to_rle(s, video.height, video.width) for s in entry["segmentations"]])
    gt_areas, dt_areas = _areas_per_track(gt_rles), _areas_per_track(dt_rles)
    video_tracks: dict[int, tuple[list, list, list, list]] = {vid: ([], [], [], []) for vid in gt.videos}
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    dts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for track, rles, areas in zip(gt.tracks, gt_rles, gt_areas):
        dt_list, gt_list, _, gt_area_list = video_tracks[track.video_id]
        file_areas = track.areas if track.areas is not None else areas.tolist()
        gts[track.video_id, track.category_id].append(
            {"id": track.id, "track": len(gt_list), "area": _mean_nonzero(file_areas),
             "iscrowd": int(track.iscrowd), "ignore": int(track.iscrowd)}
        )
        gt_list.append(rles)
        gt_area_list.append(areas)
    for number, (entry, rles, areas) in enumerate(zip(results, dt_rles, dt_areas), start=1):
        # the fork numbers results from 1 in file order
        dt_list, _, dt_area_list, _ = video_tracks[entry["video_id"]]
        dts[entry["video_id"], entry["category_id"]].append(
            {"id": number, "track": len(dt_list), "score": float(entry["score"]), "iscrowd": 0,
             "area": _mean_nonzero(areas.tolist())}
        )
        dt_list.append(rles)
        dt_area_list.append(areas)
    evaluator = _VideoCOCOeval(gts, dts, video_tracks, sorted(gt.videos), sorted(gt.cat_ids))
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {name: float(evaluator.stats[i]) for i, name in enumerate(YTVIS_METRICS)}


def score_ytvis_files(ann_path: str | os.PathLike, results_path: str | os.PathLike) -> dict[str, float]:
    """Read a YouTube-VIS annotation file and a results file, validate both, and score them."""
    gt = load_ytvis(ann_path)
    return evaluate_ytvis(gt, load_results(results_path, gt), validate=False)
