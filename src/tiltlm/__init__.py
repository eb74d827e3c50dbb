"""tiltlm: exact, fast, debuggable Direct Preference Optimization (DPO) for Hugging Face causal LMs.

    import tiltlm
    result = tiltlm.train(model="path/to/model", train_dataset="pairs.jsonl", output_dir="runs/dpo", beta=0.1)
    result.metrics["eval/rewards/accuracies"], result.output_dir, result.model

model/tokenizer may be loaded transformers (or peft) objects and the datasets a `datasets.Dataset`, a pandas
DataFrame or a list of dicts (training/api.py). The command line (`tilt train ...`) is a thin caller of the same
`train`. See docs/design.md for the layers.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import TrainConfig, load_config
from .core.losses import LOSSES, LossHParams, compute_loss
from .errors import ConfigError, DataError, TrainingError
from .iterate import IterateResult, iterate
from .training.api import TrainResult, train
from .training.trl_compat import DPOConfig, DPOTrainer

try:
    __version__ = version("tiltlm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["train", "TrainResult", "iterate", "IterateResult", "DPOConfig", "DPOTrainer",
           "TrainConfig", "load_config", "LOSSES", "LossHParams", "compute_loss", "ConfigError",
           "DataError", "TrainingError", "__version__"]
