"""The start-up check's verdict, kept on disk so that a second run of the same model on the same pairs does not
pay for the check again (on SmolLM2-135M at 512 tokens it costs about a reference pass of 9 pairs).

The check (`scoring.choose_path`) is a deterministic function of the model's bytes, the pairs it samples, the path
asked for, the precision and device, and the code that runs it (this package, torch, transformers). The key hashes
all of them -- the sampled pairs by their token ids, the code by the source of the modules that batch and score --
so anything that could change the verdict gives a new key and the check runs again. What is stored is what the
check decided and did: the fast paths kept, the notes, the lines it logged, and the modules it kept in eval mode
(re-pinned on a hit). The per-layer mask hooks are installed on every run either way (cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..types import TokenizedPair
from . import layer_rules, scoring

# the modules whose code decides the verdict: a change in any of them re-runs the check
_CHECK_CODE = ("model/scoring.py", "model/layer_rules.py", "model/attention.py", "core/batching.py", "core/logps.py")


def default_dir() -> Path:
    return Path(os.environ.get("TILTLM_CACHE", Path.home() / ".cache" / "tiltlm")) / "paths"


def verdict_key(model_fingerprint: str, model: torch.nn.Module, sample: Sequence[TokenizedPair],
                requested: scoring.ScoringPath) -> str:
    import transformers

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for part in (model_fingerprint, type(model).__qualname__, str(next(model.parameters()).dtype),
                 requested.tag, requested.precision.device_type, requested.chunk_size, requested.max_tokens_per_batch,
                 torch.__version__, transformers.__version__):
        h.update(f"{part}|".encode())
    for p in sample:
        h.update(json.dumps([p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    for rel in _CHECK_CODE:
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:24]


def choose_path_cached(model: torch.nn.Module, pairs: Sequence[TokenizedPair], requested: scoring.ScoringPath, *,
                       model_fingerprint: Optional[str], pad_token_id: int = 0, log: Callable[[str], None] = print,
                       cache_dir: Optional[str] = None) -> scoring.ScoringPath:
    """`scoring.choose_path`, with its verdict reused when this model, these pairs and this code were checked before.
    `model_fingerprint` None (an in-memory model): the check always runs."""
    if model_fingerprint is None:
        return scoring.choose_path(model, pairs, requested, pad_token_id=pad_token_id, log=log)
    sample = scoring.check_sample(pairs, scoring.SAMPLE_SIZE)
    file = Path(cache_dir or default_dir()) / f"path-{verdict_key(model_fingerprint, model, sample, requested)}.json"
    if (path := _reuse(file, model, requested, log)) is not None:
        return path
    lines: list[str] = []
    path = scoring.choose_path(model, pairs, requested, pad_token_id=pad_token_id,
                               log=lambda line: (lines.append(line), log(line)))
    record = {"flags": {f: getattr(path, f) for f in scoring.FAST}, "notes": list(path.notes[len(requested.notes):]),
              "pinned": scoring.kept_in_eval(model), "lines": lines}
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, file)
    except OSError:  # a read-only or full cache: the next run checks again, nothing else changes
        tmp.unlink(missing_ok=True)  # never a half-written file left behind
    return path


def _reuse(file: Path, model: torch.nn.Module, requested: scoring.ScoringPath,
           log: Callable[[str], None]) -> Optional[scoring.ScoringPath]:
    try:
        record = json.loads(file.read_text())
        flags, notes, pinned, lines = record["flags"], record["notes"], record["pinned"], record["lines"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: check again
    modules = dict(model.named_modules())
    if not set(flags) == set(scoring.FAST) or any(name not in modules for name in pinned):
        return None
    layer_rules.install(model)  # the hooks are per process
    for name in pinned:
        scoring.keep_in_eval(modules[name])
    for line in lines:
        log(line)
    log(f"info: start-up check: the verdict of an earlier identical check ({file})")
    return replace(requested, **flags, notes=(*requested.notes, *notes))
