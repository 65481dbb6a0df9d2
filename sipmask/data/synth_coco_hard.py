"""A harder synthetic COCO dataset (`sipmask synth coco --hard`): clusters of touching look-alikes.

Every image holds 1-3 clusters. A cluster is 2-6 objects of ONE class: the same shape kind, similar
size, colour and stripes with small variations from object to object. Each object is placed touching
or overlapping an earlier one of its cluster, later objects occluding earlier ones; each mask is the
*visible* part (compressed RLE). An object goes in only if every object keeps at least
MIN_VISIBLE_FRACTION of its pixels visible. Clusters may touch one another but never overlap, so every
object touches a look-alike of its own class (the argument is in `_Canvas.try_place`).

Objects are 8 px to half the image side long (log-uniform); five classes (ellipse, rectangle,
triangle, ring, cross) with non-contiguous ids. A fraction of the backgrounds is textured (smooth
noise, stripes or soft blobs over the noisy gradient of the normal mode) and a fraction of the images
is low-contrast (clusters coloured close to the background under them).

Same layout, file names and determinism as synth_coco (whose rasterisers and writer this reuses).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sipmask.data.synth_coco import gradient_background, pixel_centres, shape_mask, stripes, write_coco_splits

#: (category id, shape kind): five classes, non-contiguous ids on purpose (gaps, not starting at 1).
CATEGORIES: tuple[tuple[int, str], ...] = ((2, "ellipse"), (5, "rectangle"), (6, "triangle"), (11, "ring"),
                                           (17, "cross"))
#: Clusters per image and objects per cluster (issue 16).
MIN_CLUSTERS, MAX_CLUSTERS = 1, 3
MIN_CLUSTER_OBJECTS, MAX_CLUSTER_OBJECTS = 2, 6
#: Object length (twice the long half-size) from MIN_LENGTH_PX to MAX_LENGTH_FRACTION of the image side.
MIN_LENGTH_PX, MAX_LENGTH_FRACTION = 8.0, 0.5
#: Look-alikes: an object's size is its cluster's size times a factor in this range.
LOOKALIKE_SCALE = (0.8, 1.25)
#: Short half-size / long half-size.
ASPECT_RANGE = (0.6, 1.0)
#: Centre distance to the anchor object, as a fraction of the two mean half-sizes: < 1 overlaps.
ANCHOR_DISTANCE = (0.5, 1.0)
#: Every object keeps at least this fraction of its (in-image) pixels visible.
MIN_VISIBLE_FRACTION = 0.4
#: An object is placed only with at least this fraction of its pixels inside the image.
MIN_INSIDE_FRACTION = 0.6
#: Attempts to place one object, and to start one cluster (a cluster that ends with fewer than
#: MIN_CLUSTER_OBJECTS objects is taken back and started again).
PLACEMENT_TRIES, CLUSTER_TRIES = 30, 5
#: Fraction of images whose background gets a texture layer, and of images that are low-contrast.
TEXTURED_BACKGROUND_FRACTION, LOW_CONTRAST_FRACTION = 0.6, 0.25
#: Low contrast: the cluster colour is this far (Euclidean RGB) from the mean background under it.
LOW_CONTRAST_DISTANCE = (10.0, 28.0)
#: Look-alikes: per-channel colour jitter (std), stripe angle jitter (rad), stripe period factor.
COLOUR_JITTER, ANGLE_JITTER, PERIOD_JITTER = 8.0, 0.3, (0.85, 1.15)
#: Pixel noise (std) inside objects, as in the normal mode's textures.
OBJECT_NOISE = 6.0
#: Final pixel noise (std) over the whole image, as in the normal mode.
IMAGE_NOISE = 4.0


@dataclass
class _Style:
    """A cluster's look: two stripe colours (RGB float [3]), stripe direction (rad) and period (px)."""

    base: np.ndarray
    other: np.ndarray
    theta: float
    period: float


@dataclass
class _Placed:
    """One placed object: its full mask in the window rows y0.., columns x0.. (clipped to the image)."""

    cluster: int
    y0: int
    x0: int
    mask: np.ndarray  # [h,w] bool
    area: int  # pixels of mask
    visible: int  # pixels still on top


@dataclass
class _Canvas:
    """The geometry of one image under construction: which object is on top at each pixel."""

    size: int
    owner: np.ndarray  # [size,size] int16, object index on top or -1
    objects: list[_Placed] = field(default_factory=list)

    def try_place(self, kind: str, cluster: int, cx: float, cy: float, rx: float, ry: float, angle: float,
                  need_touch: bool) -> bool:
        """Draw the shape on top if the rules allow it; return whether it was placed.

        Rules: enough of it inside the image; it covers no pixel of another cluster; every earlier
        object keeps MIN_VISIBLE_FRACTION visible; with `need_touch`, its border touches a visible
        pixel of its own cluster. Why every object then touches its cluster in the final image: an
        object covered in part is connected (all shapes are, except a ring cut in two by the image
        border), so a visible pixel of it lies next to a covered one, whose top object overlaps it and
        is therefore of the same cluster; an object never covered still has the visible cluster pixels
        next to its border that it was placed against, or (if they were covered since) the
        same-cluster objects that cover them.
        """
        reach = math.hypot(rx, ry) + 1  # bounding radius plus the dilation pixel
        y0, x0 = math.floor(cy - reach), math.floor(cx - reach)
        side = math.ceil(2 * reach) + 1
        full = shape_mask(kind, cx, cy, rx, ry, angle, *pixel_centres(y0, x0, side, side))  # [side,side]
        total = int(full.sum())
        # clip to the image
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + side, self.size), min(x0 + side, self.size)
        if total == 0 or cy1 <= cy0 or cx1 <= cx0:
            return False
        inner = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        mask = full[inner]
        inside = int(mask.sum())
        if inside < MIN_INSIDE_FRACTION * total:
            return False
        owner = self.owner[cy0:cy1, cx0:cx1]
        under = owner[mask]
        under = under[under >= 0]
        clusters = np.array([o.cluster for o in self.objects], dtype=np.int64)
        if under.size and (clusters[under] != cluster).any():
            return False
        covered = np.bincount(under, minlength=len(self.objects))
        if any(o.visible - c < MIN_VISIBLE_FRACTION * o.area for o, c in zip(self.objects, covered)):
            return False
        if need_touch:
            border = _dilate4(full)[inner] & ~mask  # pixels next to the shape, not under it
            neighbours = owner[border]
            neighbours = neighbours[neighbours >= 0]
            if not (clusters[neighbours] == cluster).any():
                return False
        for o, c in zip(self.objects, covered):
            o.visible -= int(c)
        owner[mask] = len(self.objects)
        self.objects.append(_Placed(cluster, cy0, cx0, mask, inside, inside))
        return True

    def take_back(self, count: int) -> None:
        """Remove the last `count` objects (a cluster that did not grow). Clusters never overlap, so they
        covered only one another: no earlier object gets pixels back."""
        keep = len(self.objects) - count
        self.owner[self.owner >= keep] = -1
        del self.objects[keep:]


def _dilate4(mask: np.ndarray) -> np.ndarray:
    """[h,w] bool -> grown by one pixel (4-neighbourhood)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear [g,g,C] -> [size,size,C] (corners aligned)."""
    t = np.linspace(0, grid.shape[0] - 1, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), grid.shape[0] - 2)
    w = (t - i0).astype(np.float32)
    rows = grid[i0] * (1 - w[:, None, None]) + grid[i0 + 1] * w[:, None, None]  # [size,g,C]
    return rows[:, i0] * (1 - w[None, :, None]) + rows[:, i0 + 1] * w[None, :, None]


def _noise_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth value noise, 3-11 cells across. Returns [size,size,3] float32 around 0."""
    cells = int(rng.integers(3, 12))
    grid = rng.normal(0, rng.uniform(20, 50), size=(cells + 1, cells + 1, 3)).astype(np.float32)
    return _upsample(grid, size)


def _stripe_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes of random direction, 6-40 px period and colour. Returns [size,size,3] float32 around 0."""
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 40)
    colour = rng.uniform(-40, 40, size=3).astype(np.float32)
    sign = np.where(stripes(theta, period, *pixel_centres(0, 0, size, size)), 1.0, -1.0).astype(np.float32)
    return sign[..., None] * colour


def _blob_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """3-10 soft Gaussian blobs (no edges, so never mistaken for objects). Returns [size,size,3] float32."""
    ys, xs = pixel_centres(0, 0, size, size)
    layer = np.zeros((size, size, 3), np.float32)
    for _ in range(int(rng.integers(3, 11))):
        cx, cy = rng.uniform(0, size, size=2)
        sigma = rng.uniform(0.03, 0.15) * size
        colour = rng.uniform(-60, 60, size=3).astype(np.float32)
        layer += np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))[..., None] * colour
    return layer


#: The textures a background may get on top of its noisy gradient.
BACKGROUND_LAYERS = (_noise_layer, _stripe_layer, _blob_layer)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The normal mode's noisy gradient, textured in a fraction of images. Returns [size,size,3] float32."""
    canvas = gradient_background(rng, size).astype(np.float32)
    if rng.random() < TEXTURED_BACKGROUND_FRACTION:
        canvas += BACKGROUND_LAYERS[int(rng.integers(len(BACKGROUND_LAYERS)))](rng, size)
    return canvas


def _cluster_style(rng: np.random.Generator, low_contrast: bool, background_rgb: np.ndarray) -> _Style:
    """A cluster's look; low contrast puts its colours close to `background_rgb` [3]."""
    if low_contrast:
        direction = rng.normal(size=3)
        base = background_rgb + direction / np.linalg.norm(direction) * rng.uniform(*LOW_CONTRAST_DISTANCE)
        other = base + rng.uniform(-15, 15, size=3)
    else:
        base = rng.uniform(30, 225, size=3)
        other = base + rng.uniform(-60, 60, size=3)
    return _Style(np.clip(base, 0, 255), np.clip(other, 0, 255), rng.uniform(0, math.pi), rng.uniform(5, 16))


def _paint(canvas: np.ndarray, obj: _Placed, style: _Style, rng: np.random.Generator) -> None:
    """Paint one object's look-alike texture (its cluster's style, slightly varied) into canvas [S,S,3]."""
    h, w = obj.mask.shape
    base = style.base + rng.normal(0, COLOUR_JITTER, size=3)
    other = style.other + rng.normal(0, COLOUR_JITTER, size=3)
    theta = style.theta + rng.uniform(-ANGLE_JITTER, ANGLE_JITTER)
    period = style.period * rng.uniform(*PERIOD_JITTER)
    ys, xs = pixel_centres(obj.y0, obj.x0, h, w)
    texture = np.where(stripes(theta, period, ys - 0.5, xs - 0.5)[..., None], base, other)
    texture = texture + rng.normal(0, OBJECT_NOISE, size=(h, w, 3))
    window = canvas[obj.y0:obj.y0 + h, obj.x0:obj.x0 + w]
    window[obj.mask] = texture[obj.mask]


def _grow_cluster(state: _Canvas, rng: np.random.Generator, cluster: int, kind: str) -> int:
    """Place up to 2-6 look-alikes of `kind`, each against an earlier one. Returns how many were placed."""
    size = state.size
    wanted = int(rng.integers(MIN_CLUSTER_OBJECTS, MAX_CLUSTER_OBJECTS + 1))
    low, high = MIN_LENGTH_PX / 2, MAX_LENGTH_FRACTION * size / 2  # long half-size range
    half = math.exp(rng.uniform(math.log(low), math.log(high)))
    first = len(state.objects)
    centres: list[tuple[float, float, float]] = []  # (cx, cy, mean half-size) of the placed members
    for _ in range(wanted):
        for _try in range(PLACEMENT_TRIES):
            rx = float(np.clip(half * rng.uniform(*LOOKALIKE_SCALE), low, high))
            ry = rx * rng.uniform(*ASPECT_RANGE)
            angle = rng.uniform(0, math.pi)
            if centres:
                ax, ay, ar = centres[int(rng.integers(len(centres)))]
                direction = rng.uniform(0, 2 * math.pi)
                dist = (ar + (rx + ry) / 2) * rng.uniform(*ANCHOR_DISTANCE)
                cx, cy = ax + dist * math.cos(direction), ay + dist * math.sin(direction)
            else:
                cx, cy = rng.uniform(0, size, size=2)
            if state.try_place(kind, cluster, cx, cy, rx, ry, angle, need_touch=bool(centres)):
                centres.append((cx, cy, (rx + ry) / 2))
                break
    return len(state.objects) - first


def _render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image. Returns ([size,size,3] uint8, [(category id, [size,size] bool visible mask)])."""
    canvas = _background(rng, size)
    low_contrast = rng.random() < LOW_CONTRAST_FRACTION
    state = _Canvas(size, np.full((size, size), -1, dtype=np.int16))
    cat_ids: list[int] = []
    for cluster in range(int(rng.integers(MIN_CLUSTERS, MAX_CLUSTERS + 1))):
        for _attempt in range(CLUSTER_TRIES):
            cat_id, kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            placed = _grow_cluster(state, rng, cluster, kind)
            if placed >= MIN_CLUSTER_OBJECTS:
                break
            state.take_back(placed)
        else:
            continue  # no room left for this cluster
        members = state.objects[-placed:]
        first = members[0]
        h, w = first.mask.shape
        under = canvas[first.y0:first.y0 + h, first.x0:first.x0 + w][first.mask]  # background: clusters never overlap
        style = _cluster_style(rng, low_contrast, under.mean(axis=0))
        for obj in members:
            _paint(canvas, obj, style, rng)
        cat_ids += [cat_id] * placed
    image = np.clip(canvas + rng.normal(0, IMAGE_NOISE, size=canvas.shape), 0, 255).astype(np.uint8)
    return image, [(cat_id, state.owner == index) for index, cat_id in enumerate(cat_ids)]


def write_hard_synthetic_coco(
    out: str | os.PathLike,
    num_images: int = 100,
    size: int = 320,
    seed: int = 0,
    val_images: int | None = None,
) -> dict[str, Path]:
    """Write the harder synthetic COCO dataset (see module docstring); arguments and return as
    synth_coco.write_synthetic_coco (the same seed gives byte-identical files)."""
    return write_coco_splits(out, num_images, size, seed, val_images, _render_image, CATEGORIES,
                             "sipmask synthetic shapes, hard")
