"""How processes hold the model and talk to each other: the collectives (comm), FSDP2 sharding (fsdp) and the
strategy object the training loop calls (strategy). Knows nothing of losses, runs or flags."""
