"""Video instance segmentation on a CPU, end to end: synthetic YouTube-VIS videos, `tiny_vis` trained from
scratch within a wall budget, then video mask AP and identity switches of each tracker on the same detections.

    .venv/bin/python benchmarks/vis_train_cpu.py --out runs/vis_cpu [--pretrain-iters 900] [--iters 350] [--videos 60] [--frames 16]
        [--size 320] [--seed 0] [--checkpoint CKPT]

Steps (each a `sipmask` command, printed as it runs):
1. `write_synthetic_ytvis`: `--videos` training and `--videos // 5` validation videos of `--frames`
   frames at `--size` px: textured shapes of four classes that move, touch (twins side by side),
   cross look-alikes of their own class (same size and texture, colours a few levels apart),
   occlude each other, enter and leave the frame.
2. Image pre-training, as the official recipe starts from a COCO model: the annotated training
   frames as a COCO file, `sipmask train --config tiny ... --iters P` from scratch (no pretrained
   weights anywhere) at tiny_vis's input size; then `sipmask train --config tiny_vis ... --iters N
   --weights PRETRAINED` (the tracking branch starts fresh). Batch 4, the presets' recipes; wall
   times reported; `--pretrain-iters 0` trains tiny_vis from scratch alone; `--checkpoint` skips both.
3. `sipmask eval --tracker T` for T in sipmask, iou, official: the model's detections are the same
   for every tracker (the network and postprocess do not depend on it), so the figures compare the
   trackers alone. Video mask AP with the YouTube-VIS scorer; identity switches, MOTA and IDF1
   with motmetrics at mask IoU >= 0.5.

Writes OUT/report.json and OUT/report.md (the table, the commands, the machine) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from sipmask.precision import cpu_model_name

TRACKERS = ("sipmask", "iou", "official")


def _run(args: list[str], log: Path) -> float:
    """Run `python -m sipmask ARGS`, output to `log`; returns the wall time in seconds."""
    command = [sys.executable, "-m", "sipmask", *args]
    print("$ sipmask " + shlex.join(args), flush=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"failed (exit code {code}); see {log}")
    return time.perf_counter() - start


def frames_as_coco(ytvis_path: Path, out_path: Path) -> Path:
    """The annotated frames of a YouTube-VIS file as a COCO instances file (one image per frame, file
    names relative to the same image folder), for image pre-training on the same videos."""
    data = json.loads(ytvis_path.read_text())
    images, annotations, index = [], [], {}
    for video in data["videos"]:
        for f, name in enumerate(video["file_names"]):
            index[(video["id"], f)] = len(images) + 1
            images.append({"id": len(images) + 1, "file_name": name, "width": video["width"], "height": video["height"]})
    for track in data["annotations"]:
        for f, seg in enumerate(track["segmentations"]):
            box = track["bboxes"][f] if track.get("bboxes") else None
            if seg is None or box is None:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": index[(track["video_id"], f)],
                                "category_id": track["category_id"], "segmentation": seg, "bbox": box,
                                "area": float(box[2] * box[3]), "iscrowd": track.get("iscrowd", 0)})
    out_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": data["categories"]}))
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pretrain-iters", type=int, default=900,
                        help="image pre-training of `tiny` on the training frames first (0: none), batch 4")
    parser.add_argument("--iters", type=int, default=350, help="tiny_vis training iterations (batch 4)")
    parser.add_argument("--videos", type=int, default=60, help="training videos (validation: a fifth)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint, do not train")
    args = parser.parse_args()

    from sipmask.data.synth_ytvis import write_synthetic_ytvis

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    start = time.perf_counter()
    paths = write_synthetic_ytvis(data, num_videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                                  val_videos=max(1, args.videos // 5))
    data_s = time.perf_counter() - start
    report: dict = {"machine": cpu_model_name(), "command": shlex.join(sys.argv), "data_s": data_s,
                    "data": {"train_videos": args.videos, "val_videos": max(1, args.videos // 5),
                             "frames": args.frames, "size": args.size, "seed": args.seed}}
    checkpoint = args.checkpoint
    if checkpoint is None:
        # tiny_vis's input size for both stages, so that the image model's features carry over
        from sipmask.config import get_preset

        vis_input = get_preset("tiny_vis").input
        same_input = ["--set", f"input__train_scales={json.dumps([list(s) for s in vis_input.train_scales])}",
                      "--set", f"input__test_scale={json.dumps(list(vis_input.test_scale))}"]
        report["train_s"] = 0.0
        weights: list[str] = []
        if args.pretrain_iters > 0:
            coco = frames_as_coco(paths["train_ann"], args.out / "train_frames_coco.json")
            pre_args = ["train", "--config", "tiny_classic", "--train-images", str(paths["train_images"]),
                        "--train-ann", str(coco), "--out", str(args.out / "pretrain"),
                        "--iters", str(args.pretrain_iters), "--seed", str(args.seed), "--no-progress", *same_input]
            report["pretrain_command"] = "sipmask " + shlex.join(pre_args)
            report["pretrain_s"] = _run(pre_args, args.out / "pretrain.log")
            report["train_s"] += report["pretrain_s"]
            weights = ["--weights", str(args.out / "pretrain" / "last.pth")]
        run = args.out / "run"
        train_args = ["train", "--config", "tiny_vis", "--train-images", str(paths["train_images"]),
                      "--train-ann", str(paths["train_ann"]), "--out", str(run), "--iters", str(args.iters),
                      "--seed", str(args.seed), "--no-progress", *weights]
        report["train_command"] = "sipmask " + shlex.join(train_args)
        report["video_train_s"] = _run(train_args, args.out / "train.log")
        report["train_s"] += report["video_train_s"]
        checkpoint = run / "last.pth"
    rows = {}
    for tracker in TRACKERS:
        metrics_file = args.out / f"eval_{tracker}.json"
        eval_args = ["eval", "--checkpoint", str(checkpoint), "--images", str(paths["val_images"]),
                     "--ann", str(paths["val_ann"]), "--tracker", tracker, "--json-out", str(metrics_file),
                     "--no-progress"]
        seconds = _run(eval_args, args.out / f"eval_{tracker}.log")
        metrics = json.loads(metrics_file.read_text())
        rows[tracker] = {"video_mask_AP": metrics["segm"]["AP"], "AP50": metrics["segm"]["AP50"],
                         "id_switches": metrics["tracking"]["num_switches"], "mota": metrics["tracking"]["mota"],
                         "idf1": metrics["tracking"]["idf1"], "eval_s": seconds,
                         "command": "sipmask " + shlex.join(eval_args)}
    report["trackers"] = rows
    total = data_s + report.get("train_s", 0.0)
    report["data_and_train_minutes"] = total / 60
    lines = ["| tracker | video mask AP | AP50 | ID switches | MOTA | IDF1 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for tracker, row in rows.items():
        lines.append(f"| `{tracker}` | {row['video_mask_AP']:.3f} | {row['AP50']:.3f} | {row['id_switches']} | "
                     f"{row['mota']:.3f} | {row['idf1']:.3f} |")
    table = "\n".join(lines)
    summary = (f"{report['machine']}; data {data_s / 60:.1f} min"
               + (f", image pre-training {report['pretrain_s'] / 60:.1f} min ({args.pretrain_iters} iterations)"
                  if "pretrain_s" in report else "")
               + (f", video training {report['video_train_s'] / 60:.1f} min ({args.iters} iterations)"
                  if "video_train_s" in report else "")
               + (f", {total / 60:.1f} min in total" if "train_s" in report else "")
               + f"; `{report['command']}`")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(table + "\n\n" + summary + "\n")
    print(table)
    print(summary)


if __name__ == "__main__":
    main()
