"""The DPO doctor: live checks for the failure modes of DPO runs (checks) and their replay over a run folder (replay)."""
