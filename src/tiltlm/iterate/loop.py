"""`tilt iterate` / `tiltlm.iterate(...)`: rounds of sample -> score -> pair -> DPO, each round an ordinary run.

    RUN/iterate.json             the options (a relaunch with other options is refused)
    RUN/round-000/heldout.json   round 0's policy (the initial model) on the held-out prompts: score, win rate, KL
    RUN/round-000/samples.jsonl  every completion sampled this round, with its score
    RUN/round-000/pair_stats.json, pairs.jsonl   the round's pairs: an ordinary dataset file (`tilt data check`,
                                 `tilt train --data` read it), with the scorer's scores
    RUN/round-000/train/         an ordinary `tilt train` run folder: round 0's DPO run from the initial model
    RUN/round-000/finished.json  the round's summary, written last: a relaunch skips the round
    RUN/round-001/...            round 1 starts from round-000/train (its reference: that model, or the initial one)
    RUN/metrics.jsonl            every round's training records with a `round` field, and one summary per round
    RUN/doctor.jsonl             the rounds' findings (no_signal_round) and their training runs' findings
    RUN/report.png               the per-round curves (`tilt report RUN` writes them into an HTML page too)
    RUN/finished.json            the last policy's held-out curves point and where the final model is

Replay: round k samples with a seed derived from (seed, k) from a policy loaded from disk, so a round replays byte for
byte; its files are written whole (beside, then renamed). A relaunch with `resume="auto"` skips finished rounds,
redoes an interrupted round's sampling from its seed (or reuses its pairs once written), and resumes its training
run from its newest checkpoint: the final weights are those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..config import TrainConfig
from ..doctor.rounds import RoundThresholds, check_round_pairs
from ..errors import ConfigError, TrainingError
from ..model.loading import load_model, load_tokenizer
from ..parallel.comm import resolve_device
from ..rundir import DOCTOR, FINISHED, METRICS, RunDir, read_jsonl
from ..training import checkpoint
from ..training.api import as_callbacks, resolve_config, train
from ..training.precision import Precision
from .heldout import evaluate_heldout
from .options import IterateOptions, derived_seed, split_options
from .pairs import build_pairs
from .report import plot_rounds
from .sampling import generate, read_prompts
from .scorers import finite, make_scorer

ITERATE = "iterate.json"
HELDOUT = "heldout.json"
SAMPLES = "samples.jsonl"
PAIRS = "pairs.jsonl"
PAIR_STATS = "pair_stats.json"
TRAIN = "train"


@dataclass
class IterateResult:
    rounds: list[dict]  # one summary per round (the `kind: round` records of metrics.jsonl)
    final: dict  # the last policy on the held-out prompts
    output_dir: Path
    model_dir: Path  # the final policy: the last round's training run folder


def round_dir(root: Path, k: int) -> Path:
    return Path(root) / f"round-{k:03d}"


def iterate(config: Any = None, *, callbacks: Any = None, log: Callable = print, **options) -> IterateResult:
    """Python entry point: `tiltlm.iterate(model=..., prompts=..., output_dir=..., scorer="fn:mod:fn", rounds=3,
    beta=0.1, ...)`. Iterate options (IterateOptions fields) and training options (TrainConfig fields, TRL's names
    too) mix in one call; the training options apply to every round's DPO run."""
    mine, train_options = split_options(options)
    opts = IterateOptions(**mine).validate()
    given = train_options.get("model", train_options.get("model_name_or_path"))
    if given is not None and not isinstance(given, (str, Path)):
        raise ConfigError("tiltlm.iterate takes the initial model as a path (every round starts from a model folder "
                          "on disk): save it first with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)")
    cfg = resolve_config(config, {k: str(v) if isinstance(v, Path) else v for k, v in train_options.items()})
    return run_iterate(cfg, opts, callbacks=as_callbacks(callbacks), log=log)


def _load_prompts(source: Any) -> list:
    if isinstance(source, (str, Path)):
        return read_prompts(str(source))
    return list(source)


def split_prompts(opts: IterateOptions, seed: int) -> tuple[list, list]:
    """(training prompts, held-out prompts): the given eval prompts, or a seeded eval_prompt_split share of the prompts."""
    prompts = _load_prompts(opts.prompts)
    if not prompts:
        raise ConfigError("the prompts are empty")
    if opts.eval_prompts is not None:
        return prompts, _load_prompts(opts.eval_prompts)
    if opts.eval_prompt_split <= 0 or len(prompts) < 2:
        return prompts, []
    order = list(range(len(prompts)))
    random.Random(derived_seed(seed, "eval_prompt_split")).shuffle(order)
    n_eval = max(1, round(len(prompts) * opts.eval_prompt_split))
    held = set(order[:n_eval])
    return [p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)]


def round_prompts(prompts: list, k: int, per_round: int) -> list:
    if per_round <= 0 or per_round >= len(prompts):
        return list(prompts)
    start = (k * per_round) % len(prompts)
    return [prompts[(start + i) % len(prompts)] for i in range(per_round)]


def _signature(cfg: TrainConfig, opts: IterateOptions) -> dict:
    """The options that define the run (not where it lives, its cache, or how it was launched)."""
    skip = {"resume", "overwrite_output_dir", "progress", "output_dir", "ref_cache_dir"}
    train_options = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    return json.loads(json.dumps({"iterate": opts.to_dict(), "train": train_options}, default=str))


def check_options(cfg: TrainConfig) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("tilt iterate runs in one process (it samples, scores and trains in turn); launch it "
                          "without torchrun / --nproc")
    if not cfg.model or not cfg.output_dir:
        raise ConfigError("tilt iterate needs --model (the initial policy: a folder, .gguf or hub name) and "
                          "--output-dir")
    if cfg.data:
        raise ConfigError("tilt iterate samples its own pairs: give prompts, not data")
    if cfg.resume not in (None, "auto"):
        raise ConfigError(f"an iterate run resumes with resume=auto (each round from its own checkpoints), got "
                          f"{cfg.resume!r}")
    if cfg.ref_model:
        raise ConfigError("tilt iterate chooses each round's reference itself: use --ref previous (round k-1's "
                          "model, default) or --ref initial instead of --ref-model")


def _open(cfg: TrainConfig, opts: IterateOptions) -> RunDir:
    inputs = [cfg.model] + [str(p) for p in (opts.prompts, opts.eval_prompts) if isinstance(p, (str, Path))]
    run = RunDir.create(cfg.output_dir, inputs=inputs, resume=bool(cfg.resume), overwrite=cfg.overwrite_output_dir)
    signature, saved = _signature(cfg, opts), run.read_json(ITERATE)
    if saved is not None and saved != signature:
        run.unlock()
        changed = sorted({f"{part}.{k}" for part in ("iterate", "train") for k in
                          set(saved.get(part, {})) | set(signature[part])
                          if saved.get(part, {}).get(k) != signature[part].get(k)})
        raise ConfigError(f"{cfg.output_dir} holds an iterate run with other options ({', '.join(changed)}): "
                          "relaunch it with the same options, or choose another --output-dir")
    run.write_json(ITERATE, signature)
    return run


class Rounds:
    """One iterate run: its tokenizer, initial model, scorer and prompts; `run(folder)` does the rounds."""

    def __init__(self, cfg: TrainConfig, opts: IterateOptions, callbacks: Sequence[Callable], log: Callable):
        self.cfg, self.opts, self.callbacks, self.log = cfg, opts, list(callbacks), log
        self.device = resolve_device(cfg.device)
        self.precision = Precision.of(cfg.dtype, cfg.mixed_precision, self.device)
        self.tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                                        chat_template=cfg.chat_template, chat_template_kwargs=cfg.chat_template_kwargs)
        self.train_prompts, self.eval_prompts = split_prompts(opts, cfg.seed)
        self.initial = self.load(cfg.model)
        self.scorer = make_scorer(opts.scorer, dtype=cfg.dtype, device=self.device,
                                  batch_size=cfg.per_device_eval_batch_size, autocast=self.precision.compute,
                                  judge_template=opts.judge_template, judge_labels=opts.judge_labels)
        self.generation = dict(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                               top_k=opts.top_k, batch_size=opts.generation_batch_size,
                               use_chat_template=opts.use_chat_template)

    def load(self, path: str) -> torch.nn.Module:
        model = load_model(str(path), dtype=self.cfg.dtype, device=self.device,
                           trust_remote_code=self.cfg.trust_remote_code,
                           revision=self.cfg.revision if str(path) == self.cfg.model else None)
        model.eval()
        return model

    def name(self, path: Path) -> str:
        """A round's model as a path inside the run folder (the folder can move); the initial model as given."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def score(self, completions, judge) -> list[float]:
        with self.precision.autocast():
            return finite(self.scorer(completions, policy=judge, tokenizer=self.tokenizer), "completions")

    # ---------------------------------------------------------------------------------------------- one round
    def heldout(self, k: int, policy, folder: Path, name: str = HELDOUT) -> dict:
        """The policy on the held-out prompts (kept in `folder/name`: a relaunch reads it back). An LM judge that is
        the policy itself is replaced here by the initial model, so every round is measured by the same judge."""
        saved = RunDir(folder).read_json(name)
        if saved is not None or not self.eval_prompts:
            return saved or {}
        base = None if k == 0 else RunDir(round_dir(self.root, 0)).read_json(HELDOUT)
        with self.precision.autocast():
            found = evaluate_heldout(policy, self.initial if k else None, self.tokenizer, self.eval_prompts,
                                     score=lambda flat: self.score(flat, self.initial),
                                     generation=dict(self.generation, n=self.opts.eval_generations),
                                     seed=derived_seed(self.cfg.seed, "heldout"),
                                     baseline=base["scores"] if base else None)
        folder.mkdir(parents=True, exist_ok=True)
        RunDir(folder).write_json(name, found)
        return found

    def sample_and_pair(self, k: int, policy, folder: Path) -> dict:
        """Round k's completions, scores and pairs; written once, whole (pairs.jsonl last), then reused."""
        rd = RunDir(folder)
        stats = rd.read_json(PAIR_STATS)
        if stats is not None and rd.file(PAIRS).is_file():
            return stats
        t0 = time.perf_counter()
        prompts = round_prompts(self.train_prompts, k, self.opts.prompts_per_round)
        seed = derived_seed(self.cfg.seed, "sample", k)
        with self.precision.autocast():
            groups = generate(policy, self.tokenizer, prompts, n=self.opts.num_generations, seed=seed,
                              **self.generation)
        flat = [c for g in groups for c in g]
        scores = self.score(flat, policy)
        per_prompt = [scores[i * self.opts.num_generations:(i + 1) * self.opts.num_generations]
                      for i in range(len(groups))]
        rows, stats = build_pairs(groups, per_prompt, pairing=self.opts.pairing,
                                  reward_margin=self.opts.reward_margin)
        stats = {"samples/seed": seed, "samples/count": len(flat), "samples/score_mean": statistics.fmean(scores),
                 "samples/score_std": statistics.pstdev(scores),
                 "samples/tokens_mean": statistics.fmean(len(c.completion_ids) for c in flat),
                 "samples/finished_frac": statistics.fmean(float(c.finished) for c in flat), **stats,
                 "seconds/sample": time.perf_counter() - t0}
        rd.write_records(SAMPLES, [{**c.to_dict(), "score": s} for c, s in zip(flat, scores)])
        rd.write_json(PAIR_STATS, stats)
        rd.write_records(PAIRS, rows)  # last: its presence means the round's data is complete
        self.log(f"round {k}: {len(flat)} samples (mean score {stats['samples/score_mean']:+.3f}) -> "
                 f"{len(rows)} pairs ({stats['pairs/tied_frac']:.0%} of candidates tied) in {folder / PAIRS}")
        return stats

    def train_round(self, k: int, policy_path: Path, folder: Path) -> dict:
        out = folder / TRAIN
        if out.is_dir() and not (out / FINISHED).is_file() and \
                checkpoint.find_resumable(out / "checkpoints", "auto", log=self.log) is None:
            shutil.rmtree(out)  # killed before its first checkpoint: start it again from nothing
        ref = self.cfg.model if self.opts.ref == "initial" and k > 0 else None
        round_cfg = dataclasses.replace(self.cfg, model=str(policy_path), data=str(folder / PAIRS), eval_data=None,
                                        output_dir=str(out), ref_model=ref, resume="auto",
                                        overwrite_output_dir=False, revision=self.cfg.revision if k == 0 else None)
        tag = [lambda record, k=k: [c({"round": k, **record}) for c in self.callbacks]] if self.callbacks else None
        t0 = time.perf_counter()
        train(round_cfg, callbacks=tag, log=self.log)
        records = [r for r in read_jsonl(out / METRICS) if not any(str(x).startswith("eval/") for x in r)]
        last = records[-1] if records else {}
        keys = ("step", "loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                "logps/chosen", "kl_proxy")
        return {**{f"train/{key}": last[key] for key in keys if key in last},
                "seconds/train": time.perf_counter() - t0}

    def do_round(self, k: int, policy_path: Path) -> dict:
        folder = round_dir(self.root, k)
        done = RunDir(folder).read_json(FINISHED)
        if done is not None:
            self.log(f"round {k}: finished before ({folder / FINISHED}); skipped")
            return done
        policy = self.initial if k == 0 else self.load(str(policy_path))
        held = self.heldout(k, policy, folder)
        stats = self.sample_and_pair(k, policy, folder)
        del policy
        findings = [f.to_dict() for f in check_round_pairs(k, stats, RoundThresholds())]
        for f in findings:
            self.log(f"doctor [{f['severity']}] {f['check']} at round {k}: {f['message']}  Fix: {f['fix']}")
        if stats["pairs/count"] == 0:
            raise TrainingError(f"round {k} has no pairs (every candidate pair was tied or identical; see "
                                f"{folder / SAMPLES}): lower --reward-margin, raise --num-generations or "
                                "--temperature, or check the scorer")
        trained = self.train_round(k, policy_path, folder)
        summary = {"round": k, "kind": "round", "policy": self.name(policy_path),
                   **{key: v for key, v in held.items() if key not in ("scores", "samples")}, **stats, **trained,
                   "findings": findings}
        RunDir(folder).write_json(FINISHED, summary)  # last: the round is done
        return summary

    def run(self, rundir: RunDir) -> IterateResult:
        self.rundir, self.root = rundir, rundir.path
        done = self.rundir.read_json(FINISHED)
        summaries: list[dict] = []
        policy_path = Path(self.cfg.model)
        if done is not None:
            self.log(f"{self.root}: already finished after {done['rounds']} rounds; nothing to do")
        for k in range(self.opts.rounds):
            summary = self.do_round(k, policy_path)
            summaries.append(summary)
            for c in self.callbacks:
                c(summary)
            policy_path = round_dir(self.root, k) / TRAIN
            if done is None:  # a finished run's records are complete: a relaunch rewrites nothing
                self.write_records(summaries)
        if done is None:
            final = self.heldout(self.opts.rounds, self.load(str(policy_path)), self.root, "final_heldout.json")
            done = {"rounds": self.opts.rounds, "model": self.name(policy_path), "kind": "final",
                    "round": self.opts.rounds, **{key: v for key, v in final.items() if key not in ("scores",
                                                                                                    "samples")}}
            self.write_records(summaries, done)
            plot_rounds(self.root)
            self.rundir.write_json(FINISHED, done)
        return IterateResult(summaries, done, self.root, policy_path)

    def write_records(self, summaries: list[dict], final: Optional[dict] = None) -> None:
        """metrics.jsonl and doctor.jsonl of the whole run, rebuilt from the finished rounds (so a relaunch never
        duplicates a record)."""
        metrics, findings = [], []
        for s in summaries:
            out = round_dir(self.root, s["round"]) / TRAIN
            metrics += [{"round": s["round"], **r} for r in read_jsonl(out / METRICS)] if (out / METRICS).is_file() \
                else []
            metrics.append({key: v for key, v in s.items() if key != "findings"})
            findings += [{"round": s["round"], **f} for f in s.get("findings", [])]
            if (out / DOCTOR).is_file():
                findings += [{"round": s["round"], **f} for f in read_jsonl(out / DOCTOR)]
        if final is not None:
            metrics.append(final)
        self.rundir.write_records(METRICS, metrics)
        self.rundir.write_records(DOCTOR, findings)


def run_iterate(cfg: TrainConfig, opts: IterateOptions, *, callbacks: Sequence[Callable] = (),
                log: Callable = print) -> IterateResult:
    opts.validate()
    check_options(cfg)
    rounds = Rounds(cfg, opts, callbacks, log)  # the models, prompts and scorer load before any folder is touched
    with _open(cfg, opts) as run:
        return rounds.run(run)
