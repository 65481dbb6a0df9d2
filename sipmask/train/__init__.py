"""Training: the trainer (single process or torchrun), its schedule and exact-resume state."""
