"""Training: FCOS targets, SipMask losses, and the trainer."""
