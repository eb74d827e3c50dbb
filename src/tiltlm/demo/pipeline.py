"""The demo pipeline: task -> SFT -> sample 4 per prompt -> label pairs -> DPO (tiltlm.train) -> evaluate.

Shared by `tilt demo` (one DPO run) and `tilt frontier` (a sweep of DPO runs on the same SFT model and pairs).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from transformers import AutoModelForCausalLM

from ..config import TrainConfig
from ..training.loop import train
from . import task as T
from .evaluate import evaluate_policy, examples, preference_accuracy, strip_groups
from .report import write_demo_report
from .sample import build_pairs, sample
from .tiny_model import make_tiny_model, seed_everything, sft


@dataclass(frozen=True)
class Sizes:
    """Every knob of the demo's budget. FULL fits ~5 min on 2 CPU cores, QUICK (tests) well under 2."""

    sft_texts: int = 4000
    sft_steps: int = 200
    sft_batch: int = 64
    sft_lr: float = 5e-3
    hidden: int = 64
    layers: int = 2
    train_prompts: int = 256  # x4 samples -> up to 6 labelled pairs each
    heldout_prompts: int = 64
    eval_prompts: int = 128
    eval_samples: int = 4  # samples per eval prompt for the reward / KL estimates
    samples_per_prompt: int = 4
    max_new_tokens: int = 16
    dpo_steps: int = 150
    dpo_batch: int = 16
    learning_rate: float = 5e-4


FULL = Sizes()
QUICK = Sizes(sft_texts=2000, sft_steps=100, sft_batch=48, train_prompts=128, heldout_prompts=32, eval_prompts=64,
              dpo_steps=60, learning_rate=1e-3)


@dataclass
class Task:
    """The prepared task, shared by every DPO run: SFT model (= reference), tokenizer, pair files, eval prompts."""

    root: Path
    sizes: Sizes
    seed: int
    tokenizer: object
    sft_model: torch.nn.Module
    sft_dir: Path
    train_path: Path
    heldout_path: Path
    heldout_rows: list
    eval_prompts: list
    before: dict  # evaluation of the SFT model (keeps its sample groups for best-of-N and examples)
    timings: dict


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def prepare_task(root: str | Path, sizes: Sizes, seed: int, *, log: Callable = print, bon_samples: int = 0) -> Task:
    """Build the task in `root`: SFT model + tokenizer in root/sft, pairs in root/pairs_{train,heldout}.jsonl."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    seed_everything(seed)
    tok = T.build_tokenizer()
    model = make_tiny_model(tok, hidden=sizes.hidden, layers=sizes.layers, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[1/4] SFT: tiny Llama ({n_params / 1e3:.0f}k params, vocab {len(tok)}) on {sizes.sft_texts} "
        f"mixed-sentiment reviews, {sizes.sft_steps} steps")
    info = sft(model, tok, T.make_reviews(sizes.sft_texts, seed), steps=sizes.sft_steps, batch_size=sizes.sft_batch,
               lr=sizes.sft_lr, seed=seed)
    sft_dir = root / "sft"
    model.save_pretrained(sft_dir)
    tok.save_pretrained(sft_dir)
    timings["sft_s"] = time.perf_counter() - t0
    log(f"      loss {info['loss']:.3f} ({timings['sft_s']:.0f}s)")

    t1 = time.perf_counter()
    gen = dict(max_new_tokens=sizes.max_new_tokens, reward_fn=T.reward)
    n = sizes.samples_per_prompt
    train_groups = sample(model, tok, T.make_prompts(sizes.train_prompts, seed + 1), n=n, seed=seed + 11, **gen)
    held_groups = sample(model, tok, T.make_prompts(sizes.heldout_prompts, seed + 2), n=n, seed=seed + 12, **gen)
    train_rows, held_rows = build_pairs(train_groups), build_pairs(held_groups)
    _write_jsonl(root / "pairs_train.jsonl", train_rows)
    _write_jsonl(root / "pairs_heldout.jsonl", held_rows)
    timings["pairs_s"] = time.perf_counter() - t1
    log(f"[2/4] sampled {n} completions per prompt -> {len(train_rows)} train / {len(held_rows)} held-out pairs "
        f"labelled by the lexicon reward ({timings['pairs_s']:.0f}s)")

    eval_prompts = T.make_prompts(sizes.eval_prompts, seed + 3)
    before = evaluate_policy(model, None, tok, eval_prompts, reward_fn=T.reward,
                             n=max(sizes.eval_samples, bon_samples), max_new_tokens=sizes.max_new_tokens,
                             seed=seed + 13)
    if bon_samples > sizes.eval_samples:  # the mean reward uses the same number of samples as after-DPO evals
        rs = [s.reward for g in before["groups"] for s in g[: sizes.eval_samples]]
        before["reward"] = sum(rs) / len(rs)
    return Task(root, sizes, seed, tok, model, sft_dir, root / "pairs_train.jsonl", root / "pairs_heldout.jsonl",
                held_rows, eval_prompts, before, timings)


def train_dpo(task: Task, out_dir: str | Path, *, beta: float = 0.1, loss_type: str = "sigmoid",
              learning_rate: Optional[float] = None, steps: Optional[int] = None, log: Callable = print) -> dict:
    """Run tiltlm.train on the task's pairs from the SFT model; returns train()'s final metrics."""
    sz = task.sizes
    cfg = TrainConfig(
        model=str(task.sft_dir), data=str(task.train_path), eval_data=str(task.heldout_path), output_dir=str(out_dir),
        beta=beta, loss_type=[s for s in loss_type.split(",") if s],
        learning_rate=learning_rate if learning_rate is not None else sz.learning_rate,
        max_steps=steps if steps is not None else sz.dpo_steps, per_device_train_batch_size=sz.dpo_batch,
        per_device_eval_batch_size=64, max_length=64, warmup_ratio=0.1, seed=task.seed, overwrite_output_dir=True,
        progress=False, logging_steps=10, ref_cache_dir=str(task.root / "ref_cache"), device="cpu",
    ).validate()
    lines: list[str] = []
    metrics = train(cfg, log=lines.append)
    (Path(out_dir) / "train_log.txt").write_text("\n".join(map(str, lines)) + "\n")
    return metrics


def load_policy(path: str | Path):
    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    return model


def evaluate_run(task: Task, policy) -> dict:
    """Reward / KL of fresh samples from `policy` on the eval prompts, and held-out preference accuracy."""
    sz = task.sizes
    after = evaluate_policy(policy, task.sft_model, task.tokenizer, task.eval_prompts, reward_fn=T.reward,
                            n=sz.eval_samples, max_new_tokens=sz.max_new_tokens, seed=task.seed + 13)
    after.update(preference_accuracy(policy, task.sft_model, task.tokenizer, task.heldout_rows))
    return after


def run_demo(out_dir: str | Path = "runs/demo", *, seed: int = 0, quick: bool = False, beta: float = 0.1,
             loss_type: str = "sigmoid", learning_rate: Optional[float] = None, steps: Optional[int] = None,
             log: Callable = print) -> dict:
    """The whole demo; writes out_dir/{sft,dpo,pairs_*.jsonl,metrics.json,report.png,report.html}."""
    t0 = time.perf_counter()
    sizes = QUICK if quick else FULL
    if learning_rate is not None or steps is not None:
        sizes = replace(sizes, learning_rate=learning_rate or sizes.learning_rate, dpo_steps=steps or sizes.dpo_steps)
    out = Path(out_dir)
    task = prepare_task(out, sizes, seed, log=log)
    t1 = time.perf_counter()
    log(f"[3/4] DPO ({loss_type}, beta={beta}, lr={sizes.learning_rate:g}, {sizes.dpo_steps} steps x "
        f"{sizes.dpo_batch} pairs) with tiltlm.train")
    train_metrics = train_dpo(task, out / "dpo", beta=beta, loss_type=loss_type, log=log)
    task.timings["dpo_s"] = time.perf_counter() - t1
    log(f"      done ({task.timings['dpo_s']:.0f}s)")
    t2 = time.perf_counter()
    log("[4/4] evaluating: fresh samples from SFT and DPO models on held-out prompts")
    policy = load_policy(out / "dpo")
    after = evaluate_run(task, policy)
    before = dict(task.before)
    before.update(preference_accuracy(task.sft_model, task.sft_model, task.tokenizer, task.heldout_rows))
    task.timings["eval_s"] = time.perf_counter() - t2
    task.timings["total_s"] = time.perf_counter() - t0
    result = {
        "task": "synthetic controlled sentiment (reward = #positive - #negative lexicon words)",
        "seed": seed, "quick": quick, "beta": beta, "loss_type": loss_type, "sizes": asdict(sizes),
        "before": strip_groups(before), "after": strip_groups(after),
        "train": {k: v for k, v in train_metrics.items() if isinstance(v, (int, float, str, bool))},
        "examples": examples(before["groups"], after["groups"], 3),
        "timings": task.timings,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_demo_report(out, result, before["groups"], after["groups"])
    return result
