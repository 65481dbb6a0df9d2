"""YouTube-VIS (2019 / 2021) annotations: parse and validate, decode per-frame masks, and a frame dataset
that yields a frame with its instances (and, for training, a reference frame of the same video).

File layout (both years): `videos` [{id, width, height, length, file_names}], `categories` [{id, name}],
`annotations` [{id, video_id, category_id, iscrowd, segmentations, areas, bboxes}] where the three
per-frame lists have one entry per video frame and hold null where the object is absent. A
segmentation is a polygon list, an uncompressed RLE (`counts` a list) or a compressed RLE
(`counts` a string). Test-split files have no `annotations`; that is allowed.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image

from sipmask.data.image_io import read_image
from sipmask.data.json_files import read_json
from sipmask.data.segmentation import decode_segmentation, segmentation_to_rle
from sipmask.data.transforms import rescale_size
from sipmask.errors import AnnotationError, ImageReadError

#: Official SipMask-VIS training scale (configs `img_scale=(640, 360)`, keep ratio): long edge <= 640,
#: short edge <= 360.
VIS_TRAIN_SCALE: tuple[int, int] = (640, 360)
#: Official SipMask-VIS `flip_ratio=0.5`.
VIS_FLIP_RATIO = 0.5
#: A box narrower or lower than one pixel is not a valid training instance (official `w < 1 or h < 1`).
MIN_BOX_SIDE = 1.0


@dataclass(frozen=True)
class VideoInfo:
    """One entry of `videos`: frame files relative to the image root, all frames width x height."""

    id: int
    width: int
    height: int
    file_names: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.file_names)


@dataclass
class TrackAnnotation:
    """One entry of `annotations`: an object through a video; per-frame lists hold None where absent."""

    id: int
    video_id: int
    category_id: int
    iscrowd: bool
    segmentations: list[Any]
    areas: list[float | None] | None
    bboxes: list[list[float] | None] | None


@dataclass
class YTVISAnnotations:
    """A parsed, validated YouTube-VIS annotation file."""

    source: str
    videos: dict[int, VideoInfo]
    categories: list[dict[str, Any]]
    tracks: list[TrackAnnotation]
    tracks_by_video: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tracks_by_video = {vid: [] for vid in self.videos}
        for index, track in enumerate(self.tracks):
            self.tracks_by_video[track.video_id].append(index)
        #: Category ids in ascending order; label i (0-based, contiguous) is category cat_ids[i].
        self.cat_ids: tuple[int, ...] = tuple(sorted(c["id"] for c in self.categories))
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names: tuple[str, ...] = tuple(
            {c["id"]: str(c.get("name", c["id"])) for c in self.categories}[c] for c in self.cat_ids
        )

    def label_to_cat_id(self, label: int) -> int:
        """0-based contiguous label -> dataset category id."""
        return self.cat_ids[int(label)]


# ----------------------------------------------------------------------------- parsing / validation


def _fail(source: str, where: str, reason: str) -> AnnotationError:
    return AnnotationError(f"{source}: {where}: {reason}")


def _check_entry(source: str, where: str, entry: Any, keys: tuple[str, ...]) -> str:
    """An object holding `keys` with an integer 'id', or AnnotationError; returns `where` with the id."""
    if not isinstance(entry, dict):
        raise _fail(source, where, "must be an object")
    for key in keys:
        if key not in entry:
            raise _fail(source, where, f"missing key '{key}'")
    where = f"{where} (id {entry['id']})"
    if not _is_int(entry["id"]):
        raise _fail(source, where, "'id' must be an integer")
    return where


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_segmentation(seg: Any, height: int, width: int) -> str | None:
    """Why `seg` is not a usable per-frame segmentation of a height x width frame, or None if it is."""
    if seg is None:
        return None
    if type(seg) is dict and type(seg.get("counts")) is str and seg.get("size") == [height, width]:
        return None if seg["counts"].isascii() else "RLE 'counts' must be an ASCII string"  # the common case
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return "a polygon must be a list of at least 3 x,y pairs"
            if not all(_is_number(v) for v in poly):
                return "a polygon holds a non-numeric coordinate"
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "an RLE needs 'size' and 'counts'"
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return "RLE 'size' must be [height, width]"
        if list(size) != [height, width]:
            return f"RLE size {size} does not match the video's [height, width] = [{height}, {width}]"
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts) or sum(counts) != height * width:
                return f"uncompressed RLE counts must be non-negative and sum to {height * width}"
        elif not isinstance(counts, str) or not counts.isascii():
            return "RLE 'counts' must be a string (compressed) or a list of ints (uncompressed)"
        return None
    return f"a segmentation must be null, a polygon list or an RLE dict, got {type(seg).__name__}"


def _parse_videos(source: str, entries: Any) -> dict[int, VideoInfo]:
    if not isinstance(entries, list):
        raise _fail(source, "videos", "must be a list")
    videos: dict[int, VideoInfo] = {}
    for i, v in enumerate(entries):
        where = _check_entry(source, f"videos[{i}]", v, ("id", "width", "height", "file_names"))
        if v["id"] in videos:
            raise _fail(source, where, f"duplicate video id {v['id']}")
        if not (_is_int(v["width"]) and _is_int(v["height"]) and v["width"] > 0 and v["height"] > 0):
            raise _fail(source, where, "'width' and 'height' must be positive integers")
        names = v["file_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _fail(source, where, "'file_names' must be a non-empty list of strings")
        if "length" in v and v["length"] != len(names):
            raise _fail(source, where, f"'length' is {v['length']} but there are {len(names)} file_names")
        videos[v["id"]] = VideoInfo(v["id"], v["width"], v["height"], tuple(names))
    return videos


def _parse_categories(source: str, entries: Any) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise _fail(source, "categories", "must be a list")
    seen: set[int] = set()
    for i, c in enumerate(entries):
        if not isinstance(c, dict) or "id" not in c:
            raise _fail(source, f"categories[{i}]", "must be an object with an 'id'")
        if not _is_int(c["id"]):
            raise _fail(source, f"categories[{i}]", "'id' must be an integer")
        if c["id"] in seen:
            raise _fail(source, f"categories[{i}]", f"duplicate category id {c['id']}")
        seen.add(c["id"])
    return entries


def _parse_track(
    source: str, i: int, a: Any, videos: dict[int, VideoInfo], cat_ids: set[int]
) -> TrackAnnotation:
    where = _check_entry(source, f"annotations[{i}]", a, ("id", "video_id", "category_id", "segmentations"))
    video = videos.get(a["video_id"])
    if video is None:
        raise _fail(source, where, f"unknown video_id {a['video_id']!r}")
    if a["category_id"] not in cat_ids:
        raise _fail(source, where, f"unknown category_id {a['category_id']!r}")
    iscrowd = a.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # True/False compare equal to 1/0
        raise _fail(source, where, f"'iscrowd' must be 0 or 1, got {iscrowd!r}")
    segs = a["segmentations"]
    if not isinstance(segs, list) or len(segs) != video.length:
        got = len(segs) if isinstance(segs, list) else type(segs).__name__
        raise _fail(source, where, f"'segmentations' has {got} entries, video {video.id} has {video.length} frames")
    for f, seg in enumerate(segs):
        reason = check_segmentation(seg, video.height, video.width)
        if reason:
            raise _fail(source, f"{where} frame {f}", reason)
    per_frame: dict[str, list | None] = {}
    for key in ("areas", "bboxes"):
        values = a.get(key)
        if values is not None and (not isinstance(values, list) or len(values) != video.length):
            raise _fail(source, where, f"'{key}' must be a list with one entry per frame ({video.length})")
        per_frame[key] = values
    if per_frame["areas"] is not None and not all(x is None or _is_number(x) for x in per_frame["areas"]):
        raise _fail(source, where, "'areas' entries must be numbers or null")
    if per_frame["bboxes"] is not None:
        for f, box in enumerate(per_frame["bboxes"]):
            if box is not None and not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
                raise _fail(source, f"{where} frame {f}", "a bbox must be null or [x, y, w, h]")
    return TrackAnnotation(
        a["id"], a["video_id"], a["category_id"], bool(iscrowd), segs, per_frame["areas"], per_frame["bboxes"]
    )


def parse_ytvis(data: Any, source: str = "<annotations>") -> YTVISAnnotations:
    """Validate a loaded YouTube-VIS dict; raise AnnotationError naming `source` and the entry at fault."""
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: the top level must be a JSON object, got {type(data).__name__}")
    for key in ("videos", "categories"):
        if key not in data:
            hint = " (this looks like a COCO image file)" if "images" in data else ""
            raise AnnotationError(f"{source}: missing key '{key}'{hint}")
    videos = _parse_videos(source, data["videos"])
    categories = _parse_categories(source, data["categories"])
    cat_ids = {c["id"] for c in categories}
    raw_tracks = data.get("annotations", [])
    if not isinstance(raw_tracks, list):
        raise _fail(source, "annotations", "must be a list")
    tracks, seen = [], set()
    for i, a in enumerate(raw_tracks):
        track = _parse_track(source, i, a, videos, cat_ids)
        if track.id in seen:
            raise _fail(source, f"annotations[{i}]", f"duplicate annotation id {track.id}")
        seen.add(track.id)
        tracks.append(track)
    return YTVISAnnotations(source, videos, categories, tracks)


def load_ytvis(path: str | os.PathLike) -> YTVISAnnotations:
    """Read and validate a YouTube-VIS annotation file (AnnotationError names the file and entry)."""
    return parse_ytvis(read_json(path, AnnotationError), str(path))


# ----------------------------------------------------------------------------- dataset


def match_reference_ids(instance_ids: torch.Tensor, ref_instance_ids: torch.Tensor) -> torch.Tensor:
    """Official `gt_pids`: for each current instance, 1 + its index among the reference frame's
    instances, or 0 when it is absent there (a new object). [N] int64, [M] int64 -> [N] int64."""
    if ref_instance_ids.numel() == 0:
        return torch.zeros_like(instance_ids)
    same = instance_ids[:, None] == ref_instance_ids[None, :]  # [N,M]
    return torch.where(same.any(dim=1), same.float().argmax(dim=1) + 1, torch.zeros_like(instance_ids))


def resize_and_flip(
    image: np.ndarray, target: dict[str, torch.Tensor], out_size: tuple[int, int], flip: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Resize a frame to `out_size` (width, height) and optionally flip it horizontally.

    Args:
        image: [H,W,3] uint8 RGB.
        target: boxes float32 [N,4] x1y1x2y2 (continuous pixels), labels int64 [N], masks uint8 [N,H,W],
            instance_ids int64 [N] (other keys are passed through).
    Returns:
        image float32 [3,H',W'] in 0..255 and the target in the new coordinates (masks resized nearest).
    """
    out_w, out_h = out_size
    h, w = image.shape[:2]
    sx, sy = out_w / w, out_h / h
    pil = Image.fromarray(image)
    resized = np.array(pil.resize((out_w, out_h), Image.BILINEAR)) if (out_w, out_h) != (w, h) else image
    img = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()  # [3,H',W'] (a copy)
    masks = target["masks"]
    if masks.shape[0] and (out_w, out_h) != (w, h):
        masks = torch.nn.functional.interpolate(masks[None].float(), size=(out_h, out_w), mode="nearest")[0]
        masks = masks.to(torch.uint8)
    elif not masks.shape[0]:
        masks = torch.zeros((0, out_h, out_w), dtype=torch.uint8)
    boxes = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    if flip:
        img = img.flip(-1)
        masks = masks.flip(-1)
        boxes = torch.stack([out_w - boxes[:, 2], boxes[:, 1], out_w - boxes[:, 0], boxes[:, 3]], dim=1)
    out = dict(target)
    out.update(boxes=boxes.reshape(-1, 4).contiguous(), masks=masks.contiguous())
    return img, out


def augment_pair(
    image: np.ndarray,
    target: dict[str, torch.Tensor],
    ref_image: np.ndarray,
    ref_target: dict[str, torch.Tensor],
    rng: np.random.Generator,
    scale: tuple[int, int] = VIS_TRAIN_SCALE,
    flip_ratio: float = VIS_FLIP_RATIO,
) -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    """The official VIS training augmentation: one keep-ratio scale and one flip decision, applied to
    the current frame and to its reference frame alike (both resized to the current frame's size)."""
    h, w = image.shape[:2]
    (out_h, out_w), _ = rescale_size(h, w, scale)
    flip = bool(rng.random() < flip_ratio)
    img, tgt = resize_and_flip(image, target, (out_w, out_h), flip)
    ref_img, ref_tgt = resize_and_flip(ref_image, ref_target, (out_w, out_h), flip)
    return img, tgt, ref_img, ref_tgt


def _empty_target(height: int, width: int) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros((0, 4), dtype=torch.float32),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, height, width), dtype=torch.uint8),
        "instance_ids": torch.zeros((0,), dtype=torch.int64),
    }


class YTVISFrameDataset:
    """Frames of a YouTube-VIS split with their instances.

    `dataset[i]` is a dict: `image` [H,W,3] uint8 RGB, `target` (boxes float32 [N,4] x1y1x2y2 with
    x2 = x + w, labels int64 [N] 0-based, masks uint8 [N,H,W], instance_ids int64 [N] = annotation
    ids; crowd instances left out), `video_id`, `frame_index`, `file_name`; with `reference=True` also
    `ref_image`, `ref_target`, `ref_frame_index` and `gt_pids` (official matching targets, see
    `match_reference_ids`). The reference frame is drawn uniformly among the video's other frames
    that have at least one instance (official `sample_ref`); a video with a single annotated frame
    uses that frame as its own reference (the official loader asserts there) and is reported once.

    Training (`reference=True`) indexes only frames with at least one instance, as the official
    loader does; otherwise every frame is indexed. Frames whose file is missing are reported by name
    and left out of the index; frames that fail to decode are reported and replaced by the next index
    (`skipped` lists both). A frame whose size differs from the video's annotated size is reported
    and resized to it, so masks and boxes stay aligned.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike | YTVISAnnotations,
        image_root: str | os.PathLike,
        reference: bool = False,
        seed: int = 0,
    ) -> None:
        self.ann = ann_file if isinstance(ann_file, YTVISAnnotations) else load_ytvis(ann_file)
        self.image_root = Path(image_root)
        self.reference = reference
        self.skipped: list[str] = []
        self._rng = np.random.default_rng(seed)
        self._warned_single: set[int] = set()
        #: per video, per frame: indices into ann.tracks of valid (non-crowd, present) instances
        self._frame_tracks: dict[int, list[list[int]]] = {}
        self.index: list[tuple[int, int]] = []
        for vid, video in self.ann.videos.items():
            per_frame: list[list[int]] = [[] for _ in range(video.length)]
            for t in self.ann.tracks_by_video[vid]:
                track = self.ann.tracks[t]
                if track.iscrowd:
                    continue
                for f in range(video.length):
                    if self._box(track, f, video) is not None:
                        per_frame[f].append(t)
            self._frame_tracks[vid] = per_frame
            for f, name in enumerate(video.file_names):
                if reference and not per_frame[f]:
                    continue
                if not (self.image_root / name).is_file():
                    self._report(f"{self.image_root / name}: frame file not found (video {vid}, frame {f}); skipped")
                    per_frame[f] = []
                    continue
                self.index.append((vid, f))

    def _report(self, message: str) -> None:
        self.skipped.append(message)
        warnings.warn(message, stacklevel=3)

    @staticmethod
    def _box(track: TrackAnnotation, f: int, video: VideoInfo) -> list[float] | None:
        """[x1,y1,x2,y2] of a track at frame f, or None when absent or smaller than a pixel."""
        seg = track.segmentations[f]
        if seg is None or (isinstance(seg, list) and not seg):
            return None
        box = track.bboxes[f] if track.bboxes is not None else None
        if box is None:
            rle = segmentation_to_rle(seg, video.height, video.width)
            box = [float(v) for v in mask_utils.toBbox(rle)]
        x, y, w, h = box
        if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
            return None
        return [x, y, x + w, y + h]

    def __len__(self) -> int:
        return len(self.index)

    def load_frame(self, video_id: int, frame: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """Read one frame and build its target; raises ImageReadError when the file is unusable."""
        video = self.ann.videos[video_id]
        path = self.image_root / video.file_names[frame]
        image = read_image(path)
        if image.shape[:2] != (video.height, video.width):
            self._report(
                f"{path}: frame is {image.shape[1]}x{image.shape[0]} but video {video_id} is annotated at "
                f"{video.width}x{video.height}; resized to the annotated size"
            )
            image = np.array(Image.fromarray(image).resize((video.width, video.height), Image.BILINEAR))
        tracks = [self.ann.tracks[t] for t in self._frame_tracks[video_id][frame]]
        if not tracks:
            return image, _empty_target(video.height, video.width)
        boxes = [self._box(t, frame, video) for t in tracks]
        masks = np.stack([decode_segmentation(t.segmentations[frame], video.height, video.width) for t in tracks])
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.ann.cat_id_to_label[t.category_id] for t in tracks], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "instance_ids": torch.tensor([t.id for t in tracks], dtype=torch.int64),
        }
        return image, target

    def sample_reference(self, video_id: int, frame: int, rng: np.random.Generator | None = None) -> int:
        """Official `sample_ref`: a uniformly random other frame of the video with >= 1 instance
        (drawn from `rng`, default the dataset's own generator)."""
        per_frame = self._frame_tracks[video_id]
        candidates = [f for f, tracks in enumerate(per_frame) if tracks and f != frame]
        if not candidates:
            if video_id not in self._warned_single:
                self._warned_single.add(video_id)
                self._report(f"video {video_id}: only one annotated frame; it is its own reference frame")
            return frame
        return int(candidates[(rng or self._rng).integers(len(candidates))])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        for attempt in range(len(self.index)):
            vid, frame = self.index[(idx + attempt) % len(self.index)]
            try:
                return self._sample(vid, frame)
            except ImageReadError as err:
                self._report(f"{err}; skipped")
        raise ImageReadError(f"{self.image_root}: no readable frame left in the dataset")

    def _sample(self, vid: int, frame: int) -> dict[str, Any]:
        image, target = self.load_frame(vid, frame)
        sample: dict[str, Any] = {
            "image": image,
            "target": target,
            "video_id": vid,
            "frame_index": frame,
            "file_name": self.ann.videos[vid].file_names[frame],
        }
        if self.reference:
            ref = self.sample_reference(vid, frame)
            try:
                ref_image, ref_target = self.load_frame(vid, ref) if ref != frame else (image, target)
            except ImageReadError as err:
                self._report(f"{err}; reference frame replaced by the current frame")
                ref, ref_image, ref_target = frame, image, target
            sample.update(
                ref_image=ref_image,
                ref_target=ref_target,
                ref_frame_index=ref,
                gt_pids=match_reference_ids(target["instance_ids"], ref_target["instance_ids"]),
            )
        return sample

