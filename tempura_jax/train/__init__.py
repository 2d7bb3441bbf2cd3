"""Training: loss, optimiser groups and schedules, the sharded step, checkpoints."""
