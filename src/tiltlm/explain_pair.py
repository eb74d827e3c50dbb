"""`tilt explain RUN_DIR --pair N`: the seed's hand walkthrough on one pair of the user's own data.

N is the 0-based row of the training data file (as in pair_scores.jsonl and skipped.jsonl). The four log-probs come
from pair_scores.jsonl when the run scored that pair at the end; otherwise the pair is tokenised exactly as in
training and scored with the trained policy (RUN_DIR) and the reference (the run's starting model).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import ConfigError, load_config
from .explain import explain_numbers


def _stored_scores(run_dir: Path, index: int):
    f = run_dir / "pair_scores.jsonl"
    if f.is_file():
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row.get("index") == index and row.get("ref_chosen") is not None:
                return row
    return None


def _score_now(run_dir: Path, cfg, index: int) -> dict:
    from .data import prepare_dataset
    from .logps import score_pairs
    from .models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(run_dir))
    examples, pairs, _ = prepare_dataset(cfg.data, tokenizer, max_length=cfg.max_length,
                                         max_prompt_length=cfg.max_prompt_length,
                                         prompt_delimiter=cfg.prompt_delimiter, skip_invalid=True)
    found = [(e, p) for e, p in zip(examples, pairs) if p.index == index]
    if not found:
        raise ConfigError(f"pair {index} is not a valid pair of {cfg.data} ({len(pairs)} valid pairs)")
    ex, pair = found[0]
    policy = score_pairs(load_model(str(run_dir), dtype=cfg.dtype), [pair], pad_token_id=tokenizer.pad_token_id)
    ref = score_pairs(load_model(cfg.ref_model or cfg.model, dtype=cfg.dtype), [pair],
                      pad_token_id=tokenizer.pad_token_id)
    text = lambda v: v if isinstance(v, str) else "\n".join(f"[{m['role']}] {m['content']}" for m in v)  # noqa
    return dict(index=index, source=ex.source, prompt=text(ex.prompt), chosen=text(ex.chosen),
                rejected=text(ex.rejected), policy_chosen=float(policy.chosen[0]),
                policy_rejected=float(policy.rejected[0]), ref_chosen=float(ref.chosen[0]),
                ref_rejected=float(ref.rejected[0]), chosen_tokens=int(policy.chosen_tokens[0]),
                rejected_tokens=int(policy.rejected_tokens[0]))


def explain_run_pair(run_dir, pair_index: int) -> dict:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a tiltlm run directory (no config.yaml)")
    raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    cfg = load_config(None, {k: v for k, v in raw.items() if v is not None})
    row = _stored_scores(run_dir, pair_index) or _score_now(run_dir, cfg, pair_index)
    d = explain_numbers(row["policy_chosen"], row["policy_rejected"], row["ref_chosen"], row["ref_rejected"],
                        cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                        simpo_gamma=cfg.simpo_gamma, discopop_tau=cfg.discopop_tau,
                        chosen_tokens=row["chosen_tokens"], rejected_tokens=row["rejected_tokens"],
                        loss_weights=cfg.loss_weights)
    d.update(index=pair_index, source=row.get("source", ""), prompt=row.get("prompt", ""),
             chosen_text=row.get("chosen", ""), rejected_text=row.get("rejected", ""))
    return d
