"""ultralytics YOLO-seg as a peer: built from its yaml (random weights, nothing downloaded), trained
with its own trainer and `time=` budget, predicted into the package's result dicts, and timed.

Offline: `import_ultralytics` sets `YOLO_OFFLINE=1` before the first import (ultralytics then takes
itself to be offline: no update checks, no analytics, no downloads it would otherwise try) and keeps
its settings file in a temporary folder unless `YOLO_CONFIG_DIR` says otherwise; training runs with
`plots=False` (plots fetch a font) and `amp=False` (the AMP check fetches weights; CPU training has
no AMP anyway). Models come from yaml names (`yolo26n-seg.yaml`), never from `.pt` names, which
ultralytics would download.

Threads: ultralytics sets torch's thread count to min(8, cores - 1) when it picks the CPU
(`select_device`); `yolo_threads` makes it use the benchmark's count instead, so that every row of a
comparison runs with the same threads.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from sipmask.peers import PeerMissing

#: The YOLO-seg rows of the benchmarks, newest first: nano models, the ones users reach for on a CPU.
YOLO_MODELS: tuple[str, ...] = ("yolo26n-seg.yaml", "yolo11n-seg.yaml")
#: ultralytics' own confidence threshold for validation (its `val` default): the detections scored by COCO AP.
EVAL_CONF = 0.001
#: Detections per image, as COCO AP counts them (maxDets 100) and as `sipmask bench` times them.
MAX_DETECTIONS = 100


def import_ultralytics() -> Any:
    """The ultralytics module, set up to stay offline (see the module docstring). Raises PeerMissing
    ("ultralytics") when it is not installed."""
    os.environ["YOLO_OFFLINE"] = "1"  # read once, when ultralytics.utils is first imported
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "sipmask-ultralytics"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from PIL import Image

    pil_open = Image.open
    try:
        import ultralytics
        with contextlib.suppress(ImportError):
            import ultralytics.utils.patches  # noqa: F401  (imported now, so that its patch is undone below)
    except ImportError as err:
        raise PeerMissing("ultralytics", f"not installed ({err}); pip install -e '.[peers]'") from None
    finally:
        # ultralytics replaces PIL.Image.open for the whole process: on a file PIL cannot identify, its
        # version tries to install pi-heif and raises ModuleNotFoundError instead of PIL's
        # UnidentifiedImageError, which turns the package's "not an image" errors into a traceback.
        Image.open = pil_open
    return ultralytics


def yolo_row_name(yaml_name: str) -> str:
    """'yolo26n-seg.yaml' -> 'yolo26n-seg': the name a row, a run folder and a skip message use."""
    return Path(yaml_name).stem


def build_yolo(yaml_name: str) -> Any:
    """A YOLO-seg model with random weights from one of ultralytics' yaml names. Raises PeerMissing
    (the row's name) when ultralytics is not installed or does not know the yaml."""
    if not yaml_name.endswith((".yaml", ".yml")):
        raise ValueError(f"{yaml_name}: give a yaml name (a .pt name would be downloaded)")
    name = yolo_row_name(yaml_name)
    try:
        ultralytics = import_ultralytics()
    except PeerMissing as missing:
        raise PeerMissing(name, missing.reason) from None
    try:
        with no_network():
            return ultralytics.YOLO(yaml_name, task="segment")
    except FileNotFoundError:
        raise PeerMissing(name, f"ultralytics {ultralytics.__version__} has no {yaml_name}") from None


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Within the block, every host-name lookup and internet connection of this process fails at once
    (OSError); the block gets the list of hosts that were asked for. ultralytics checks a few things
    online that YOLO_OFFLINE does not cover (its dataset check asks github.com for a font): they give
    up at once instead of waiting on a network that is not there."""
    attempts: list[str] = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def refuse_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(host))
        raise OSError(f"network disabled by sipmask.peers.yolo.no_network ({host})")

    def refuse_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(str(address))
            raise OSError(f"network disabled by sipmask.peers.yolo.no_network ({address})")
        return connect(sock, address)  # local sockets (e.g. of data-loader processes) are fine

    socket.getaddrinfo, socket.socket.connect = refuse_lookup, refuse_connect
    try:
        yield attempts
    finally:
        socket.getaddrinfo, socket.socket.connect = lookup, connect


@contextlib.contextmanager
def yolo_threads(threads: int) -> Iterator[None]:
    """Within the block, ultralytics sets torch to `threads` threads when it selects the CPU (instead of
    its min(8, cores - 1)); torch's count is set now too and restored afterwards."""
    from ultralytics.utils import torch_utils

    before, before_torch = torch_utils.NUM_THREADS, torch.get_num_threads()
    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch_utils.NUM_THREADS = before
        torch.set_num_threads(before_torch)


@dataclass
class YoloRun:
    """A finished `train_yolo`: its final weights, snapshots taken on the way and times."""

    name: str
    weights: Path  # last.pt: ultralytics' EMA weights at the end
    wall_s: float  # the whole call: set-up, training, its per-epoch and final validation
    epochs: int
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # {"weights", "elapsed_s", "epoch"}
    blocked_hosts: list[str] = field(default_factory=list)  # what ultralytics tried to reach (`no_network`)


def train_yolo(yaml_name: str, data_yaml: str | os.PathLike, out: str | os.PathLike, imgsz: int,
               threads: int, minutes: float | None = None, epochs: int | None = None,
               snapshot_fractions: Sequence[float] = (), seed: int = 0, **overrides: Any) -> YoloRun:
    """Train a fresh model from its yaml with ultralytics' trainer and defaults, on CPU.

    Args:
        minutes: its own `time=` budget (hours = minutes / 60; ultralytics re-plans its epochs and
            schedule to it after the first epoch), or `epochs` instead.
        snapshot_fractions: after the first epoch that ends past each fraction of `minutes` (counted
            from this call), last.pt is copied to OUT/<name>/snapshots/ with its time and epoch.
        overrides: more ultralytics train arguments (e.g. val=False, batch=8).
    Raises PeerMissing (the row's name) when the model cannot be built here.
    """
    if (minutes is None) == (epochs is None):
        raise ValueError("give minutes or epochs")
    start = time.perf_counter()
    name = yolo_row_name(yaml_name)
    model = build_yolo(yaml_name)
    run_dir = Path(out).resolve() / name
    snap_dir = run_dir / "snapshots"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: ultralytics would otherwise number a new folder
    pending = sorted(snapshot_fractions)
    snapshots: list[dict[str, Any]] = []

    def snapshot(trainer: Any) -> None:
        elapsed = time.perf_counter() - start
        if pending and minutes is not None and elapsed >= pending[0] * minutes * 60.0:
            while pending and elapsed >= pending[0] * minutes * 60.0:
                pending.pop(0)
            snap_dir.mkdir(parents=True, exist_ok=True)
            target = snap_dir / f"epoch{trainer.epoch + 1}.pt"
            shutil.copyfile(trainer.last, target)
            snapshots.append({"weights": str(target), "elapsed_s": elapsed, "epoch": trainer.epoch + 1})

    model.add_callback("on_model_save", snapshot)
    args = dict(data=str(data_yaml), imgsz=imgsz, device="cpu", project=str(run_dir.parent), name=name,
                exist_ok=True, plots=False, amp=False, seed=seed, verbose=False)
    args.update({"time": minutes / 60.0} if minutes is not None else {"epochs": epochs})
    args.update(overrides)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with yolo_threads(threads), no_network() as blocked:
        model.train(**args)
    torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])  # its seeding sets them
    trainer = model.trainer
    return YoloRun(name=name, weights=Path(trainer.last), wall_s=time.perf_counter() - start,
                   epochs=int(trainer.epoch) + 1, snapshots=snapshots, blocked_hosts=sorted(set(blocked)))


def load_yolo(weights: str | os.PathLike) -> Any:
    """A trained YOLO model from a local .pt file (ultralytics downloads only names it does not find
    on disk, so the file must exist). ultralytics reads it with a full unpickle, which can run code:
    unlike the package's own checkpoints (`weights_only=True`), only files one trusts belong here."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    ultralytics = import_ultralytics()
    with no_network():
        return ultralytics.YOLO(str(path), task="segment")


def yolo_predict(model: Any, image: np.ndarray, imgsz: int, conf: float = EVAL_CONF,
                 max_det: int = MAX_DETECTIONS) -> dict[str, torch.Tensor]:
    """One RGB uint8 [H, W, 3] image -> a result dict as the package's: boxes float32 [N, 4] x1y1x2y2
    in original pixels, scores [N], labels int64 [N] (0-based), masks bool [N, H, W] at the original
    size (ultralytics' `retina_masks`)."""
    (result,) = model.predict(_bgr(image), imgsz=imgsz, conf=conf, max_det=max_det, retina_masks=True,
                              device="cpu", verbose=False)
    height, width = image.shape[:2]
    n = 0 if result.boxes is None else len(result.boxes)
    if n == 0:
        return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, height, width), dtype=torch.bool)}
    return {"boxes": result.boxes.xyxy.cpu().float(), "scores": result.boxes.conf.cpu().float(),
            "labels": result.boxes.cls.cpu().long(), "masks": result.masks.data.cpu() > 0.5}


def yolo_timed_predict(model: Any, image: np.ndarray, imgsz: int, max_det: int = MAX_DETECTIONS,
                       device: str = "cpu") -> tuple[float, int, dict[str, float]]:
    """One `predict` call as a user makes it (its defaults, `conf=0` so that up to `max_det` boxes come
    back) on an RGB uint8 [H, W, 3] image: (wall seconds, detections returned, ultralytics' own split
    in ms: preprocess, inference, postprocess)."""
    bgr = _bgr(image)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    tic = time.perf_counter()
    (result,) = model.predict(bgr, imgsz=imgsz, conf=0.0, max_det=max_det, device=device, verbose=False)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    return seconds, 0 if result.boxes is None else len(result.boxes), dict(result.speed)


def _bgr(image: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] -> BGR: ultralytics reads arrays as OpenCV gives them."""
    return np.ascontiguousarray(image[..., ::-1])
