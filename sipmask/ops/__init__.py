"""Tensor operations of SipMask: the SP module's mask assembly, box geometry and NMS."""
from sipmask.ops.crop_split import crop_split, crop_by_box

__all__ = ["crop_split", "crop_by_box"]
