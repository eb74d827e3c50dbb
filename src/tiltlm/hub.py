"""Hugging Face Hub names (`org/name`) for models and datasets, resolved to a folder in the standard hub cache.

A path that exists always wins: only an `org/name` that is not a local path (and does not end like a data or GGUF
file) is a hub name. `huggingface_hub.snapshot_download` does the work, so its cache (HF_HOME / HF_HUB_CACHE),
its offline mode (HF_HUB_OFFLINE=1: the cached snapshot, no network) and its login are the user's usual ones.
Everything downstream sees a local folder. Each failure is one line naming the repo id.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional

from .errors import ConfigError, DataError, first_line

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".gguf", ".yaml", ".yml")

# what a training run needs of a model repo: config, safetensors weights, tokenizer files, remote code
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py")
# the data files of a dataset repo (every split: which one is read is decided from the files' names)
DATASET_FILES = ("*.parquet", "*.jsonl", "*.json", "*.csv", "*.tsv", "*.arrow")


def is_hub_name(name: Optional[str]) -> bool:
    """True for `org/name` that is not an existing local path (local paths keep working exactly as before)."""
    if not name or Path(name).expanduser().exists():
        return False
    return bool(_REPO_ID.match(name)) and not name.lower().endswith(_FILE_SUFFIXES)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=None)  # tokenizer, model and fingerprint ask for the same repo: one look-up
def snapshot(repo_id: str, repo_type: str, revision: Optional[str] = None) -> str:
    """The local snapshot folder of a hub repo ("model" or "dataset"), downloaded into the hub cache if needed.
    Errors are ConfigError (models) or DataError (datasets), one line each."""
    from huggingface_hub import constants, errors, snapshot_download

    error = DataError if repo_type == "dataset" else ConfigError
    what = f"{repo_type} {repo_id}" + (f" (revision {revision})" if revision else "")
    patterns = list(DATASET_FILES if repo_type == "dataset" else MODEL_FILES)
    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns)
    except errors.RevisionNotFoundError:
        raise error(f"{what}: no such revision on the Hugging Face Hub") from None
    except errors.GatedRepoError:
        raise error(f"{what} is gated: accept its terms on huggingface.co and log in (hf auth login)") from None
    except errors.RepositoryNotFoundError:
        raise error(f"{what} not found: no local path of that name, and no such {repo_type} on the Hugging Face "
                    "Hub (or it is private: log in with `hf auth login`)") from None
    except errors.LocalEntryNotFoundError as e:
        if offline():
            raise error(f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and offline mode is "
                        "on (HF_HUB_OFFLINE=1): download it once online, or unset HF_HUB_OFFLINE") from None
        raise error(f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be "
                    f"reached: {first_line(e)}") from None
    except (errors.HfHubHTTPError, ValueError) as e:  # the Hub is down, a malformed id (HFValidationError) ...
        raise error(f"{what}: {first_line(e)}") from None
