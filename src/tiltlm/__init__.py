"""tiltlm: exact, fast, debuggable Direct Preference Optimization (DPO) for Hugging Face causal LMs.

    import tiltlm
    cfg = tiltlm.TrainConfig(model="path/to/model", data="pairs.jsonl", output_dir="runs/dpo", beta=0.1)
    final_metrics = tiltlm.train(cfg)

The command line (`tilt train ...`) is a thin caller of the same `train`. See docs/design.md for the layers.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import TrainConfig, load_config
from .core.losses import LOSSES, LossHParams, compute_loss
from .errors import ConfigError, DataError, TrainingError
from .training.loop import train

try:
    __version__ = version("tiltlm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["train", "TrainConfig", "load_config", "LOSSES", "LossHParams", "compute_loss", "ConfigError",
           "DataError", "TrainingError", "__version__"]
