"""A synthetic YouTube-VIS dataset: textured shapes that move, cross, touch, occlude each other and
enter or leave the frame, with exact visible-part masks.

Layout written (as YouTube-VIS is laid out):
    OUT/train/JPEGImages/<video>/<frame>.jpg     OUT/val/JPEGImages/<video>/<frame>.jpg
    OUT/annotations/instances_train.json         OUT/annotations/instances_val.json

Each video (size x size pixels) holds 2-4 objects of four classes, plus their twins. An object
moves on a straight line with a slow rotation; some start outside the frame and enter, some leave it,
some appear late or vanish early (null segmentations there), and some get a twin of the same class
that moves alongside, touching or nearly touching it, and some get a look-alike (same class, size, speed and
nearly the same colours) whose path crosses theirs in the middle of the video. Objects are drawn in a fixed order: later
objects occlude earlier ones and every mask is the *visible* part (compressed RLE), null where
nothing of the object is visible. Category ids are non-contiguous (2, 4, 5, 9) on purpose, to
exercise the id <-> label mapping. Deterministic by seed.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sipmask.data.segmentation import encode_mask
from sipmask.errors import ConfigError

#: (category id, name): non-contiguous ids on purpose.
CATEGORIES: tuple[tuple[int, str], ...] = ((2, "disc"), (4, "box"), (5, "triangle"), (9, "ring"))
#: Objects per video (before twins).
MIN_OBJECTS, MAX_OBJECTS = 2, 4
#: Object half-size as a fraction of the frame side.
MIN_EXTENT, MAX_EXTENT = 0.08, 0.18
#: Probabilities of: a twin of the same class alongside, a late start, an early end, entering from outside.
P_TWIN, P_LATE, P_EARLY, P_ENTER = 0.3, 0.25, 0.25, 0.35
#: Probability that a video gets a look-alike crossing the path of its first object (identity switches).
P_CROSS = 0.6
#: Colour difference of a look-alike (0-255 per channel): hard to tell apart by appearance alone.
LOOKALIKE_COLOR_JITTER = 12.0
#: JPEG quality of the written frames.
JPEG_QUALITY = 92


@dataclass
class MovingShape:
    """A shape moving on a straight line (centre + velocity * t), rotating, alive in frames first..last."""

    kind: int  # index into CATEGORIES
    cx: float
    cy: float
    vx: float
    vy: float
    rx: float
    ry: float
    angle: float
    spin: float
    first: int
    last: int
    colors: np.ndarray  # [2,3] stripe colours
    period: float
    stripe_angle: float


def _shape_mask(obj: MovingShape, t: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Full (unoccluded) mask of `obj` at frame t on the pixel-centre grid. Returns [H,W] bool."""
    cx, cy, angle = obj.cx + obj.vx * t, obj.cy + obj.vy * t, obj.angle + obj.spin * t
    cos, sin = math.cos(angle), math.sin(angle)
    u = (xs - cx) * cos + (ys - cy) * sin  # object-aligned coordinates
    v = -(xs - cx) * sin + (ys - cy) * cos
    name = CATEGORIES[obj.kind][1]
    if name == "disc":
        return (u / obj.rx) ** 2 + (v / obj.ry) ** 2 <= 1.0
    if name == "box":
        return (np.abs(u) <= obj.rx) & (np.abs(v) <= obj.ry)
    if name == "ring":
        r2 = (u / obj.rx) ** 2 + (v / obj.rx) ** 2
        return (r2 <= 1.0) & (r2 >= 0.3)
    corners = [(0.0, -obj.ry), (obj.rx, obj.ry), (-obj.rx, obj.ry)]  # triangle, apex up
    inside = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _texture(obj: MovingShape, t: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Stripes that travel with the object. Returns [H,W,3] float32."""
    cx, cy = obj.cx + obj.vx * t, obj.cy + obj.vy * t
    phase = ((xs - cx) * math.cos(obj.stripe_angle) + (ys - cy) * math.sin(obj.stripe_angle)) / obj.period
    stripe = (np.floor(phase) % 2).astype(np.float32)[..., None]  # [H,W,1]
    return obj.colors[0] * (1 - stripe) + obj.colors[1] * stripe


def _random_object(rng: np.random.Generator, size: int, frames: int) -> MovingShape:
    rx = rng.uniform(MIN_EXTENT, MAX_EXTENT) * size
    ry = rx * rng.uniform(0.6, 1.0)
    speed = rng.uniform(0.2, 0.8) * size / max(frames, 1)  # crosses 0.2-0.8 of the frame per video
    if rng.random() < P_ENTER:  # start just outside one border, heading into the frame
        side = int(rng.integers(4))
        along = rng.uniform(0.2, 0.8) * size
        cx, cy = [(-rx, along), (size + rx, along), (along, -rx), (along, size + rx)][side]
        heading = [0.0, math.pi, math.pi / 2, -math.pi / 2][side] + rng.uniform(-0.5, 0.5)
        speed = max(speed, 2.5 * rx / max(frames, 1))  # far enough to come in
    else:
        cx, cy = rng.uniform(0.15, 0.85, size=2) * size
        heading = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(heading), speed * math.sin(heading)
    late, early = rng.random() < P_LATE, rng.random() < P_EARLY
    first = int(rng.integers(1, max(2, frames // 2))) if late and frames >= 3 else 0
    last = int(rng.integers(max(first + 1, frames // 2), frames)) if early and frames >= 3 else frames - 1
    base = rng.uniform(30, 225, size=3)
    colors = np.stack([base, np.clip(base + rng.uniform(-80, 80, size=3), 0, 255)]).astype(np.float32)
    return MovingShape(
        kind=int(rng.integers(len(CATEGORIES))), cx=float(cx), cy=float(cy), vx=vx, vy=vy, rx=rx, ry=ry,
        angle=rng.uniform(0, math.pi), spin=rng.uniform(-0.05, 0.05), first=first, last=last,
        colors=colors, period=rng.uniform(3, 8), stripe_angle=rng.uniform(0, math.pi),
    )


def _twin(rng: np.random.Generator, obj: MovingShape) -> MovingShape:
    """An object of the same class moving alongside `obj`, next to it: centres two half-sizes apart, so
    the two touch, slightly overlap or leave a thin gap depending on shape and direction."""
    side = rng.uniform(0, 2 * math.pi)
    gap = 2 * max(obj.rx, obj.ry)
    base = rng.uniform(30, 225, size=3)
    colors = np.stack([base, np.clip(base + rng.uniform(-80, 80, size=3), 0, 255)]).astype(np.float32)
    return MovingShape(
        kind=obj.kind, cx=obj.cx + gap * math.cos(side), cy=obj.cy + gap * math.sin(side), vx=obj.vx, vy=obj.vy,
        rx=obj.rx, ry=obj.ry, angle=obj.angle, spin=obj.spin, first=obj.first, last=obj.last,
        colors=colors, period=obj.period, stripe_angle=rng.uniform(0, math.pi),
    )


def _crosser(rng: np.random.Generator, obj: MovingShape, frames: int) -> MovingShape:
    """A look-alike of `obj` (same class, size, speed, texture; colours within a few levels) whose
    straight path crosses `obj`'s at the middle frame, coming from another direction."""
    t_cross = (frames - 1) / 2
    speed = max(math.hypot(obj.vx, obj.vy), 1e-3)
    heading = math.atan2(obj.vy, obj.vx) + rng.choice([-1.0, 1.0]) * rng.uniform(math.pi / 3, 2 * math.pi / 3)
    vx, vy = speed * math.cos(heading), speed * math.sin(heading)
    meet_x, meet_y = obj.cx + obj.vx * t_cross, obj.cy + obj.vy * t_cross
    colors = np.clip(obj.colors + rng.uniform(-LOOKALIKE_COLOR_JITTER, LOOKALIKE_COLOR_JITTER, size=3), 0, 255)
    return MovingShape(
        kind=obj.kind, cx=meet_x - vx * t_cross, cy=meet_y - vy * t_cross, vx=vx, vy=vy, rx=obj.rx, ry=obj.ry,
        angle=obj.angle, spin=obj.spin, first=0, last=frames - 1, colors=colors.astype(np.float32),
        period=obj.period, stripe_angle=obj.stripe_angle,
    )


def render_video(
    rng: np.random.Generator, size: int, frames: int
) -> tuple[list[np.ndarray], list[tuple[int, list[np.ndarray | None]]]]:
    """Render one video.

    Returns:
        frames: F arrays [size,size,3] uint8 RGB;
        objects: (category index, per-frame visible masks [size,size] bool or None where not visible),
            one per object that is visible in at least one frame, in drawing order.
    """
    objects: list[MovingShape] = []
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        obj = _random_object(rng, size, frames)
        objects.append(obj)
        if rng.random() < P_TWIN:
            objects.append(_twin(rng, obj))
    if rng.random() < P_CROSS:
        objects.append(_crosser(rng, objects[0], frames))
    gradient = rng.uniform(40, 200, size=3) + np.linspace(-30, 30, size, dtype=np.float32)[:, None, None]
    background = np.clip(gradient + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.float32)
    images, visible = draw_frames(objects, background, frames, rng)
    tracks = [(o.kind, masks) for o, masks in zip(objects, visible) if any(m is not None for m in masks)]
    return images, tracks


def draw_frames(
    objects: list[MovingShape], background: np.ndarray, frames: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    """Paint `objects` in order over `background` ([H,W,3] float32) for each frame, later ones on top.

    Returns:
        F frames [H,W,3] uint8 and, per object, per frame, its visible mask [H,W] bool (its shape minus
        the shapes of all objects drawn after it) or None where nothing of it is visible.
    """
    height, width = background.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    images: list[np.ndarray] = []
    visible: list[list[np.ndarray | None]] = [[None] * frames for _ in objects]
    for t in range(frames):
        canvas = background.copy()
        covered = np.zeros((height, width), dtype=bool)  # pixels taken by later objects
        full = [
            _shape_mask(o, t, xs, ys) if o.first <= t <= o.last else np.zeros((height, width), bool) for o in objects
        ]
        for i, o in enumerate(objects):
            if full[i].any():
                canvas[full[i]] = _texture(o, t, xs, ys)[full[i]]
        for i in range(len(objects) - 1, -1, -1):  # visible part = own mask minus everything drawn later
            mask = full[i] & ~covered
            covered |= full[i]
            if mask.any():
                visible[i][t] = mask
        noise = rng.normal(0, 6, size=canvas.shape)
        images.append(np.clip(canvas + noise, 0, 255).astype(np.uint8))
    return images, visible


def _write_split(out: Path, split: str, num_videos: int, frames: int, size: int, seed: int) -> Path:
    videos, annotations = [], []
    for v in range(num_videos):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, v])
        images, tracks = render_video(rng, size, frames)
        name = f"video_{v:04d}"
        folder = out / split / "JPEGImages" / name
        folder.mkdir(parents=True, exist_ok=True)
        file_names = []
        for t, image in enumerate(images):
            file_names.append(f"{name}/{t * 5:05d}.jpg")  # YouTube-VIS names frames every 5th index
            Image.fromarray(image).save(out / split / "JPEGImages" / file_names[-1], quality=JPEG_QUALITY)
        video_id = v + 1
        videos.append({"id": video_id, "width": size, "height": size, "length": frames, "file_names": file_names})
        for kind, masks in tracks:
            segs, areas, boxes = [], [], []
            for mask in masks:
                if mask is None:
                    segs.append(None), areas.append(None), boxes.append(None)
                    continue
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                segs.append(encode_mask(mask))
                areas.append(int(mask.sum()))
                x, y = float(cols[0]), float(rows[0])
                boxes.append([x, y, float(cols[-1] + 1) - x, float(rows[-1] + 1) - y])
            annotations.append({
                "id": len(annotations) + 1, "video_id": video_id, "category_id": CATEGORIES[kind][0],
                "iscrowd": 0, "segmentations": segs, "areas": areas, "bboxes": boxes, "height": size, "width": size,
            })
    data = {
        "info": {"description": f"sipmask synthetic YouTube-VIS ({split}, seed {seed})"},
        "videos": videos,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES],
        "annotations": annotations,
    }
    path = out / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_synthetic_ytvis(
    out: str | os.PathLike, num_videos: int, frames: int, size: int, seed: int, val_videos: int | None = None
) -> dict[str, Path]:
    """Write train and val splits (`num_videos` train videos, `val_videos` val videos, default the same
    number) of `frames` frames of size x size.

    Returns:
        {"train_images", "val_images"}: the JPEGImages folders; {"train_ann", "val_ann"}: the JSON files.
    """
    if num_videos < 1 or frames < 1 or size < 16:
        raise ConfigError(
            "synthetic YouTube-VIS needs num_videos >= 1, frames >= 1 and size >= 16, "
            f"got {num_videos}, {frames}, {size}"
        )
    out = Path(out)
    train_ann = _write_split(out, "train", num_videos, frames, size, seed)
    val_ann = _write_split(out, "val", num_videos if val_videos is None else val_videos, frames, size, seed)
    return {
        "train_images": out / "train" / "JPEGImages",
        "val_images": out / "val" / "JPEGImages",
        "train_ann": train_ann,
        "val_ann": val_ann,
    }
