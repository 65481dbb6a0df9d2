"""`sipmask predict`: segment images, folders, globs, videos or a webcam; drawn outputs, results.json, masks."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sipmask.commands.arguments import add_device_argument, add_progress_argument, probability
from sipmask.errors import ConfigError, SipMaskError
from sipmask.tracking import DEFAULT_TRACKER, TRACKERS

if TYPE_CHECKING:
    from tqdm import tqdm

    from sipmask.inference.predictor import Predictor
    from sipmask.inference.sources import Source

#: Frame rate written for webcam recordings: V4L2 capture through PyAV does not report one reliably.
WEBCAM_FPS = 30
#: Default frame rate of the drawn video of a folder of frames (`--fps`).
FRAMES_FPS = 30.0
#: Quality of the drawn JPEG images (drawn overlays stay crisp; files stay small).
JPEG_QUALITY = 92
#: Errors of one input that must not stop the others (reported by name, exit code 1).
_INPUT_ERRORS = (SipMaskError, ValueError, OSError, RuntimeError)


def score_thr_help() -> str:
    """`--score-thr` help of predict and eval: which quantity each preset thresholds (test.threshold_on)."""
    from sipmask.config import PRESETS

    def names(on: str) -> str:
        return ", ".join(n for n, c in PRESETS.items() if c.test.threshold_on == on)

    return ("score threshold T in [0, 1] (default: the preset's test.score_thr). A detection is kept when "
            "the quantity its preset thresholds is > T: the raw class probability p, before centerness, for "
            f"{names('prob')} (these report score = p x centerness, bm_*: sqrt(p x centerness), which can be "
            f"below T); p x centerness, the reported score itself (always > T), for {names('score')}. "
            "SipMask++ mask_score is not thresholded")


def positive_float(text: str) -> float:
    """A finite number > 0 (a frame rate); `type=` for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="segment images, folders, glob patterns, videos or a webcam",
        description="Segment every input; write drawn images / videos, results.json (one COCO results entry "
                    "per detection, with file names; bbox [x, y, w, h] in the preset's box convention, "
                    "w = x2 - x1 + 1 for the official presets, x2 - x1 for tiny; score = the detection "
                    "score; SipMask++ also mask_score, the score of the mask) and, with --save-masks, one "
                    "PNG per instance. Exit code 1 when some inputs failed (each is reported with the reason).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders, glob patterns (quoted), video files or a webcam index (0); when "
                   "tracking, a folder's images are one sequence of frames (natural name order: 2.jpg before "
                   "10.jpg)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="sipmask checkpoint or official SipMask weights file")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--score-thr", type=probability, default=None, metavar="T",
                   help=score_thr_help())
    add_device_argument(p)
    add_progress_argument(p)
    p.add_argument("--save-masks", action="store_true", help="also write one PNG mask per instance")
    p.add_argument("--tracker", choices=tuple(TRACKERS), default=None,
                   help="track objects through videos, webcams and folders of frames (default with a SipMask-VIS "
                   f"checkpoint: {DEFAULT_TRACKER}; official: the official tracker; iou: box overlap alone, the one "
                   "an image checkpoint can use): drawn video coloured by track id, tracks.json (YouTube-VIS "
                   "results), track_id on every detection of results.json. Images are segmented as images")
    p.add_argument("--fps", type=positive_float, default=FRAMES_FPS, metavar="FPS",
                   help=f"frame rate of the drawn video of a folder of frames (default {FRAMES_FPS})")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="ONNX file from `sipmask export` for --backend onnxruntime (default: export in memory)")
    p.add_argument("--bf16", action="store_true",
                   help="run the network in bfloat16 on the CPU (autocast; faster on CPUs with AVX-512 BF16 or AMX, "
                   "elsewhere one warning and float32); the postprocess stays float32")
    p.set_defaults(func=run)


class _Outputs:
    """Unique output names inside the output folder and the collected COCO results."""

    def __init__(self, out: Path, save_masks: bool) -> None:
        self.out = out
        self.save_masks = save_masks
        self.results: list[dict[str, Any]] = []
        self.tracks: list[dict[str, Any]] = []  # YouTube-VIS results entries of the tracked inputs
        self.failures: list[str] = []  # problems within an input that still gave outputs (reported, exit code 1)
        self.warnings: list[str] = []  # things changed to make an input work (reported)
        self._taken: set[str] = set()
        self._next_image_id = 1

    def unique_stem(self, path: Path | None, fallback: str) -> str:
        stem = path.stem if path is not None else fallback
        candidate, n = stem, 1
        while candidate.casefold() in self._taken:  # A.jpg and a.jpg are one file on some file systems
            n += 1
            candidate = f"{stem}_{n}"
        self._taken.add(candidate.casefold())
        return candidate

    def add(self, result: dict[str, Any], file_name: str, drawing: str, predictor: Predictor, mask_prefix: str,
            frame_index: int | None = None, video_id: int | None = None) -> None:
        """Collect the COCO result entries of one image or frame; `drawing`: its drawn file in the output folder.
        A tracked frame (`result["track_ids"]`) gives each entry its `track_id` and the `video_id` of tracks.json."""
        from PIL import Image

        image_id = self._next_image_id
        self._next_image_id += 1
        entries = predictor.to_coco(result, image_id)
        masks = result["masks"].numpy() if self.save_masks else None
        for i, entry in enumerate(entries):
            entry["file_name"] = file_name
            entry["drawing"] = drawing
            if frame_index is not None:
                entry["frame_index"] = frame_index
            if "track_ids" in result:
                entry["video_id"] = video_id
                entry["track_id"] = int(result["track_ids"][i])
            if masks is not None:
                rel = Path("masks") / f"{mask_prefix}_{i:03d}.png"
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(masks[i].astype(np.uint8) * 255).save(self.out / rel)
                entry["mask_file"] = rel.as_posix()
        self.results.extend(entries)


def _total_frames(sources: list[Source]) -> int | None:
    from sipmask.inference.video_io import video_info

    total = 0
    for source in sources:
        if source.kind == "image":
            total += 1
            continue
        if source.kind == "frames":
            total += len(source.frames)
            continue
        if source.kind == "webcam":
            return None
        try:
            count = video_info(source.path).frame_count
        except _INPUT_ERRORS:
            count = 0  # reported when the video is processed
        if count is None:
            return None
        total += count
    return total


def _image(predictor: Predictor, source: Source, outputs: _Outputs, score_thr: float | None, bar: tqdm) -> None:
    from PIL import Image

    from sipmask.inference.draw import draw_instances
    from sipmask.inference.predictor import load_image

    array = load_image(source.path)
    result = predictor(array, score_thr)
    stem = outputs.unique_stem(source.path, "image")
    drawing = f"{stem}.jpg"
    Image.fromarray(draw_instances(array, result, predictor.class_names)).save(outputs.out / drawing,
                                                                               quality=JPEG_QUALITY)
    outputs.add(result, str(source.path), drawing, predictor, stem)
    bar.update(1)


class _Sequence:
    """The frames of a video, webcam or folder of frames with what its drawn video needs."""

    def __init__(self, source: Source, outputs: _Outputs, folder_fps: float) -> None:
        from sipmask.inference.frames import read_frames
        from sipmask.inference.video_io import iter_video_frames, iter_webcam_frames, video_info

        self.size: tuple[int, int] | None = None  # (width, height); None: the first frame's
        self.count: int | None = None  # the number of frames where known before reading (a folder)
        if source.kind == "webcam":
            self.frames = iter_webcam_frames(source.webcam_index, outputs.failures.append)
            self.stem = outputs.unique_stem(None, f"webcam{source.webcam_index}")
            self.fps, self.name = WEBCAM_FPS, source.name
        elif source.kind == "video":
            info = video_info(source.path)
            self.frames = iter_video_frames(source.path, outputs.failures.append)
            self.stem = outputs.unique_stem(source.path, "video")
            self.fps, self.size, self.name = info.fps, (info.width, info.height), str(source.path)
        else:  # a folder of frames
            def skipped(index: int, reason: str) -> None:
                outputs.failures.append(f"{source.name}: frame {index}: {reason}; skipped")

            self.frames = read_frames(source.frames, skipped)
            self.stem = outputs.unique_stem(source.path, "frames")
            self.fps, self.name, self.count = folder_fps, str(source.path), len(source.frames)
        self.drawing = f"{self.stem}.mp4"


def _video(predictor: Predictor, source: Source, outputs: _Outputs, score_thr: float | None, bar: tqdm) -> bool:
    """Segment every frame into a drawn video of the same size and frame rate; False if interrupted."""
    from sipmask.inference.draw import draw_instances
    from sipmask.inference.video_io import VideoWriter

    seq = _Sequence(source, outputs, FRAMES_FPS)
    frames, stem, fps, size, file_name = seq.frames, seq.stem, seq.fps, seq.size, seq.name
    writer = None
    try:
        for index, frame in frames:
            if writer is None:
                width, height = size or (frame.shape[1], frame.shape[0])
                writer = VideoWriter(outputs.out / f"{stem}.mp4", fps, width, height)
            result = predictor(frame, score_thr)
            writer.write(draw_instances(frame, result, predictor.class_names))
            outputs.add(result, file_name, f"{stem}.mp4", predictor, f"{stem}/{index:06d}",
                        frame_index=index)
            bar.update(1)
    except KeyboardInterrupt:
        if source.kind != "webcam":
            raise
        return False  # Ctrl-C ends a webcam recording; the file is finished below
    finally:
        if writer is not None:
            writer.close()
    return True


class _Tracking:
    """The tracking options of one predict run and the next video id of tracks.json."""

    def __init__(self, tracker: str, fps: float) -> None:
        self.tracker = tracker
        self.fps = fps
        self.next_video_id = 1


def _tracked(predictor: Predictor, source: Source, outputs: _Outputs, score_thr: float | None, bar: tqdm,
             tracking: _Tracking) -> bool:
    """Track a video, webcam or folder of frames (Predictor.track): a drawn video coloured by track id at the
    input's frame rate and (first frame's) size, one tracks.json entry per track, results.json entries with
    track ids. Frames decoded before a failure are kept and written. False if a webcam was interrupted."""
    from sipmask.inference.draw import draw_instances
    from sipmask.inference.tracking_io import TrackedVideo, resize_masks, track_frames
    from sipmask.inference.video_io import VideoWriter

    video_id = tracking.next_video_id
    tracking.next_video_id += 1
    seq = _Sequence(source, outputs, tracking.fps)
    frames, stem, fps, size, name, count, drawing = (seq.frames, seq.stem, seq.fps, seq.size, seq.name, seq.count,
                                                     seq.drawing)
    collected = TrackedVideo()
    writer, resized, completed, last = None, [], True, -1
    try:
        for index, frame, result in track_frames(predictor, frames, tracking.tracker, score_thr):
            height, width = frame.shape[:2]
            if writer is None:
                size = size or (width, height)
                writer = VideoWriter(outputs.out / drawing, fps, *size)
            drawn = draw_instances(frame, result, predictor.class_names, track_ids=result["track_ids"])
            masks = result["masks"]
            if (width, height) != size:  # drawn video and tracks.json keep the first frame's size
                from PIL import Image

                resized.append(index)
                drawn = np.asarray(Image.fromarray(drawn).resize(size, Image.BILINEAR))
                masks = resize_masks(masks, size[1], size[0])
            writer.write(drawn)
            collected.add(index, {**result, "masks": masks})
            file_name = str(source.frames[index]) if source.kind == "frames" else name
            outputs.add(result, file_name, drawing, predictor, f"{stem}/{index:06d}", frame_index=index,
                        video_id=video_id)
            last = index
            bar.update(1)
    except KeyboardInterrupt:
        if source.kind != "webcam":
            raise
        completed = False  # Ctrl-C ends a webcam recording; its outputs are finished below
    finally:
        if writer is not None:
            writer.close()
        entries = collected.entries(video_id, predictor.category_ids, count if count is not None else last + 1)
        for entry in entries:
            entry["file_name"] = name
        outputs.tracks.extend(entries)
        if resized:
            outputs.warnings.append(
                f"{source.name}: {len(resized)} frame(s) of another size than the first frame's {size[0]}x{size[1]} "
                f"(first: frame {resized[0]}); resized to it in {drawing} and tracks.json")
    return completed


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sipmask.data.json_files import write_json
    from sipmask.commands.arguments import chosen_device
    from sipmask.inference.predictor import Predictor
    from sipmask.inference.sources import collect_sources

    device = chosen_device(args)  # a missing GPU is an error before any work
    if args.onnx is not None and args.backend != "onnxruntime":
        raise SipMaskError("--onnx is only used with --backend onnxruntime")
    if args.bf16 and args.backend != "torch":
        raise SipMaskError("--bf16 is an option of --backend torch")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SipMaskError(f"{out}: cannot create the output folder ({err.strerror or err})") from None
    if args.backend == "onnxruntime" and args.onnx is None:
        print("exporting the network to ONNX in memory (`sipmask export` writes a file to reuse)", file=sys.stderr)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=device, backend=args.backend,
                                              onnx_path=args.onnx, bf16=args.bf16)
    except ValueError as err:  # an unavailable device, a bad option
        raise SipMaskError(str(err)) from None
    from sipmask.inference.tracking_io import check_tracker

    tracking = None
    if args.tracker is not None or predictor.cfg.is_video:
        tracking = _Tracking(args.tracker or DEFAULT_TRACKER, args.fps)
        check_tracker(predictor.cfg, tracking.tracker)
    elif args.fps != FRAMES_FPS:
        raise ConfigError("--fps is the frame rate of a tracked folder of frames: it needs --tracker (or a "
                          "SipMask-VIS checkpoint)")
    sources, problems = collect_sources(args.inputs, frame_folders=tracking is not None)
    failures = [f"{name}: {reason}" for name, reason in problems]
    for message in failures:
        print(f"failed: {message}", file=sys.stderr)
    outputs = _Outputs(out, args.save_masks)
    done = 0
    bar = tqdm(total=_total_frames(sources), unit="frame", desc="predict", dynamic_ncols=True,
               disable=not args.progress)
    try:
        for source in sources:
            try:
                if source.kind == "image":
                    _image(predictor, source, outputs, args.score_thr, bar)
                elif tracking is not None:
                    if not _tracked(predictor, source, outputs, args.score_thr, bar, tracking):
                        done += 1
                        break
                elif not _video(predictor, source, outputs, args.score_thr, bar):
                    done += 1
                    break
                done += 1
            except _INPUT_ERRORS as err:
                message = str(err) if isinstance(err, SipMaskError) else f"{source.name}: {err}"
                bar.write(f"failed: {message}", file=sys.stderr)
                failures.append(message)
                if source.kind == "image":
                    bar.update(1)
            finally:
                for message in outputs.warnings:
                    bar.write(f"warning: {message}", file=sys.stderr)
                for message in outputs.failures:  # problems inside an input whose outputs were still written
                    bar.write(f"failed: {message}", file=sys.stderr)
                failures += outputs.failures
                outputs.failures.clear()
                outputs.warnings.clear()
    finally:
        bar.close()
        write_json(out / "results.json", outputs.results)
        if tracking is not None:
            write_json(out / "tracks.json", outputs.tracks)
    written = "drawn results, results.json" + (", tracks.json" if tracking is not None else "")
    tracked = f", {len(outputs.tracks)} tracks (tracker {tracking.tracker})" if tracking is not None else ""
    print(f"{done} of {len(sources) + len(problems)} inputs segmented, {len(outputs.results)} detections"
          f"{tracked} -> {out}/ ({written})")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
