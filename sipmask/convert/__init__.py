"""Reading the official SipMask checkpoints (mmdetection, benchmark and VIS code bases)."""
