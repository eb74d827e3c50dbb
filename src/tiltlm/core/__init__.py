"""Core math: preference losses, batch layouts, log-probs, metrics. Knows nothing of ranks, runs, flags or files."""
