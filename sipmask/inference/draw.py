"""Draw instance segmentation results (masks, outlines, boxes, class names, scores) on an image."""
from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_instances", "instance_colors", "track_colors"]

MASK_ALPHA = 0.5  # mask colour weight in the blend: the image stays visible under the mask
GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # hue step giving well separated successive colours
FONT_FRACTION = 0.018  # label font height as a fraction of the longer image side
MIN_FONT_PX, MAX_FONT_PX = 8, 160  # keep labels legible on 64 px thumbnails and sane on 8K frames
LINE_FRACTION = 1 / 400  # box line width as a fraction of the longer image side (>= 1 px)
OUTLINE_DARKEN = 0.55  # outline colour = instance colour scaled by this (visible on the blend)


def instance_colors(count: int) -> np.ndarray:
    """Distinct, deterministic RGB colours [count, 3] uint8 (golden-ratio hue steps)."""
    return track_colors(np.arange(count))


def track_colors(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The colour of each id [N, 3] uint8: the same id gets the same colour in every frame (colour k
    of `instance_colors`)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    hues = (ids * GOLDEN_RATIO_CONJUGATE + 0.1) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues]
    return (np.asarray(rgb, dtype=np.float64).reshape(len(ids), 3) * 255).round().astype(np.uint8)


def _as_numpy(value: Any, name: str) -> np.ndarray:
    """A result field (numpy array, torch tensor or sequence) as a numpy array."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"result[{name!r}] is not array-like: {err}") from err


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled default font at `size` px (scalable in Pillow >= 10.1; no download)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _instance_map(masks: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Index of the instance drawn on top at each pixel, -1 for none: [H, W] int32.

    Args:
        masks: bool [N, H, W]; order: instance indices, the last one drawn on top.
    """
    owner = np.full(masks.shape[1:], -1, dtype=np.int32)
    for i in order:
        rows = np.flatnonzero(masks[i].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(masks[i, rows[0]:rows[-1] + 1].any(axis=0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        owner[window][masks[i][window]] = i  # only the mask's bounding window is touched
    return owner


def _outline(owner: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of an instance within `thickness` px of its region's border: bool [H, W]."""
    edge = np.zeros(owner.shape, dtype=bool)
    for step in range(1, thickness + 1):
        vertical = owner[step:] != owner[:-step]  # a change between rows y and y+step
        horizontal = owner[:, step:] != owner[:, :-step]
        edge[step:] |= vertical
        edge[:-step] |= vertical
        edge[:, step:] |= horizontal
        edge[:, :-step] |= horizontal
    return edge & (owner >= 0)


def draw_instances(
    image: np.ndarray,
    result: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    score_thr: float = 0.0,
    track_ids: Any = None,
) -> np.ndarray:
    """Draw masks (per-instance colours, alpha blended, outlined), boxes, class names and scores.

    Args:
        image: HxWx3 uint8 RGB; not modified.
        result: `boxes` [N, 4] (x1, y1, x2, y2 pixels), `scores` [N], `labels` [N] (0-based),
            optional `masks` bool [N, H, W]; numpy arrays or torch tensors.
        class_names: names indexed by label; None (or a label outside it) shows the label number.
        score_thr: instances with a score below this are not drawn.
        track_ids: optional [N] ints (default `result["track_ids"]` when present): colour by track id
            (`track_colors`, the same in every frame) and "#id" in front of each label.
    Returns:
        A new HxWx3 uint8 RGB array.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an HxWx3 uint8 RGB array, got "
                         f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}")
    height, width = image.shape[:2]
    boxes = _as_numpy(result.get("boxes", np.zeros((0, 4))), "boxes").astype(np.float64).reshape(-1, 4)
    count = len(boxes)
    scores = _as_numpy(result.get("scores", np.ones(count)), "scores").astype(np.float64).reshape(-1)
    labels = _as_numpy(result.get("labels", np.zeros(count)), "labels").astype(np.int64).reshape(-1)
    masks = result.get("masks")
    masks = None if masks is None else _as_numpy(masks, "masks")
    if track_ids is None:
        track_ids = result.get("track_ids")
    ids = None if track_ids is None else _as_numpy(track_ids, "track_ids").astype(np.int64).reshape(-1)
    if len(scores) != count or len(labels) != count or (ids is not None and len(ids) != count):
        raise ValueError(f"result has {count} boxes, {len(scores)} scores, {len(labels)} labels"
                         + ("" if ids is None else f" and {len(ids)} track ids"))
    if masks is not None and masks.shape != (count, height, width):
        raise ValueError(f"result['masks'] has shape {masks.shape}, expected {(count, height, width)}")

    keep = np.flatnonzero(scores >= score_thr)
    out = image.copy()
    if keep.size == 0:
        return out
    order = keep[np.argsort(scores[keep], kind="stable")]  # highest score drawn last, on top
    colors = instance_colors(count) if ids is None else track_colors(ids)
    longer = max(height, width)
    line_width = max(1, round(longer * LINE_FRACTION))

    if masks is not None:
        owner = _instance_map(masks.astype(bool, copy=False), order)
        covered = owner >= 0
        tint = colors[owner[covered]].astype(np.float32)
        out[covered] = (out[covered] * (1 - MASK_ALPHA) + tint * MASK_ALPHA).round().astype(np.uint8)
        edge = _outline(owner, max(1, line_width // 2))
        out[edge] = (colors[owner[edge]] * OUTLINE_DARKEN).astype(np.uint8)

    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    font = _font(int(np.clip(round(longer * FONT_FRACTION), MIN_FONT_PX, MAX_FONT_PX)))
    pad = max(1, line_width)
    for i in order:  # all boxes first, so that no box line crosses a label
        x1, y1, x2, y2 = np.clip(boxes[i], 0, [width - 1, height - 1, width - 1, height - 1])
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=tuple(int(c) for c in colors[i]),
                       width=line_width)
    for i in order:
        color = tuple(int(c) for c in colors[i])
        x1, y1 = np.clip(boxes[i, :2], 0, [width - 1, height - 1])
        label = int(labels[i])
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
        text = f"{name} {scores[i]:.2f}" if ids is None else f"#{ids[i]} {name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(x1, max(0.0, width - box_w))  # keep the label inside the image
        ty = y1 - box_h if y1 - box_h >= 0 else min(y1, max(0.0, height - box_h))  # above the box, else inside
        draw.rectangle((tx, ty, tx + box_w, ty + box_h), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((tx + pad - left, ty + pad - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
                  font=font)
    return np.array(canvas)
