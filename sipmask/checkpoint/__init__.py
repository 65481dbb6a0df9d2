"""Checkpoints: the self-describing format, safe reading, atomic saving, and official SipMask files.

    model, metadata = load_checkpoint("weights.pth")   # a sipmask checkpoint or an official file
"""
from sipmask.checkpoint.format import read_checkpoint, save_checkpoint
from sipmask.checkpoint.loading import checkpoint_classes, load_checkpoint, load_imagenet_weights

__all__ = ["checkpoint_classes", "load_checkpoint", "load_imagenet_weights", "read_checkpoint", "save_checkpoint"]
