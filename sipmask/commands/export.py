"""`sipmask export`: write the network of a checkpoint as ONNX and check it with ONNX Runtime against PyTorch."""
from __future__ import annotations

import argparse
import json
import sys
import time

from sipmask.commands.arguments import add_device_argument, int_at_least

#: Smallest example side: the input is padded to a multiple of 32 (the backbone's output stride).
MIN_SIZE = 32
#: Seed of the random check image (the check is reproducible).
CHECK_SEED = 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the network to ONNX (checked with ONNX Runtime)",
        description="Export backbone + FPN + head to ONNX (opset 20, dynamic batch and size, DeformConv), "
                    "then run one image through PyTorch and ONNX Runtime and compare the detections.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--size", type=int_at_least(MIN_SIZE), default=544,
                   help=f"example input side for tracing and the check, >= {MIN_SIZE} (default 544)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from sipmask.commands.arguments import check_output_file, chosen_device
    from sipmask.errors import SipMaskError
    from sipmask.export.onnx import compare_results, export_onnx, results_match
    from sipmask.checkpoint import checkpoint_classes, load_checkpoint
    from sipmask.inference.predictor import Predictor

    check_output_file(args.out, "--out")  # before the model is loaded and exported
    device = chosen_device(args)
    model, state = load_checkpoint(args.checkpoint, device)
    names, ids = checkpoint_classes(state, args.checkpoint, model.cfg.head.num_classes)
    start = time.perf_counter()
    try:
        path = export_onnx(model, args.out, size=args.size, class_names=names, category_ids=ids)
    except OSError as err:
        raise SipMaskError(f"{args.out}: cannot write the ONNX file ({err.strerror or err})") from None
    print(f"exported {args.checkpoint} -> {path} in {time.perf_counter() - start:.1f} s")
    if args.no_check:
        return 0
    image = np.random.default_rng(CHECK_SEED).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    torch_pred = Predictor(model, names, ids, device=device)
    ort_pred = Predictor(model, names, ids, device=device, backend="onnxruntime", onnx_path=path)
    threshold = 0.0  # every candidate counts: the comparison sees max_per_img detections
    report = compare_results(ort_pred(image, threshold), torch_pred(image, threshold))
    ok = results_match(report)
    print(f"ONNX Runtime vs PyTorch on a random {args.size}x{args.size} image: " + json.dumps(report))
    if not ok:
        print(f"error: {path}: ONNX Runtime output differs from PyTorch beyond the tolerances", file=sys.stderr)
        return 1
    print("check passed (boxes within 1e-3 px, scores within 1e-4, masks within 0.1% of pixels)")
    return 0
