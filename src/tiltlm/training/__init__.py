"""Training: set-up, the loop, checkpoints, evaluation and reporting. Chooses the parallel strategy once."""
