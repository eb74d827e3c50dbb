"""The one scoring path: how a model turns preference pairs into sequence log-probs, decided once per run.

A `ScoringPath` is the row layout (prefix-shared, packed or plain), the LM head (chunked or full logits) and the
precision. The policy, the cached and the live reference, evaluation, `tilt precompute-ref`, `tilt eval` and
`tilt explain` all score through one, so a fast path turned off is off for all of them, and the reference cache
key names the path (`tag`).

`choose_path` makes the decision at start-up, on the model itself:
1. every attention layer gets its own mask rule in shared rows (model/layer_rules.py);
2. token mixers that carry a state (state-space, recurrent, linear attention) get plain rows, with the reason;
3. on real pairs of the run (the longest and a seeded sample), against one plain forward per sequence (eval mode)
   with an absolute tolerance per token: padded plain rows in TRAIN mode must agree -- batching is exact and
   training deterministic. If not: padding itself changes the numbers (one line: cannot be batched exactly), or
   something is random in train mode after dropout of every kind was turned off (model/loading.py); that module is
   found by its outputs and kept in eval mode, said in a line, so that at step 1 the policy is its reference;
4. the requested fast paths together are compared; if they differ, or raise, each is tried alone and only the ones
   that differ are turned off, each with one line saying why.
"""

from __future__ import annotations

import math
import random
import types
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch

from ..core.batching import collate, micro_batches, segment_length
from ..core.logps import sequence_logps, token_logps
from ..errors import ConfigError, first_line
from ..types import PairLogps, TokenizedPair
from . import layer_rules
from .precision import Precision

FAST = ("prefix_sharing", "packing", "chunked")
# what `score` keeps of each pair: the sums and counts, and LD-DPO's tails (the reference cache stores them)
SCORED = ("chosen", "rejected", "chosen_tokens", "rejected_tokens", "chosen_tail", "rejected_tail")
NAMES = {"prefix_sharing": "prefix sharing", "packing": "packing", "chunked": "the chunked LM head"}
# per-token agreement required of a fast path, by the dtype the check computes in (the weights' dtype): fp32
# reduction order moves a log-prob by ~1e-6; bf16/fp16 weights round every layer
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}
SAMPLE_SIZE = 2  # pairs the check runs on: the longest and a seeded one (check_sample)


@dataclass(frozen=True)
class ScoringPath:
    prefix_sharing: bool = True
    packing: bool = False
    chunked: bool = True
    chunk_size: int = 1024
    max_tokens_per_batch: int = 4096
    precision: Precision = Precision(torch.float32, None, "cpu")
    notes: tuple[str, ...] = ()  # one line per fast path the start-up check turned off, and why

    @property
    def layout(self) -> str:
        on = [name for name, flag in (("prefix", self.prefix_sharing), ("packed", self.packing),
                                      ("chunked", self.chunked)) if flag]
        return "+".join(on) or "plain"

    @property
    def tag(self) -> str:
        """Names the numbers this path produces: part of the reference cache key."""
        return f"{self.precision.tag}|{self.layout}"

    def without(self, flags: Sequence[str], note: str) -> "ScoringPath":
        return replace(self, **{f: False for f in flags}, notes=(*self.notes, note))

    def micro_batches(self, pairs: Sequence[TokenizedPair], *, batch_size: int, pad_token_id: int) -> list:
        return micro_batches(pairs, batch_size=batch_size, prefix_sharing=self.prefix_sharing, packing=self.packing,
                             max_tokens_per_batch=self.max_tokens_per_batch, pad_token_id=pad_token_id)

    def token_logps(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """Per-completion-token log-probs of `batch` (fp32), under this path's precision."""
        with self.precision.autocast():
            return token_logps(model, batch, chunked=self.chunked, chunk_size=self.chunk_size)

    @torch.no_grad()
    def score(self, model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, batch_size: int = 8,
              pad_token_id: int = 0, progress: Optional[Callable[[int], None]] = None) -> PairLogps:
        """Log-probs of many pairs under `model` (eval mode, no grad), in the order of `pairs`. The pairs are scored
        longest first, so each batch pads to a near neighbour instead of the longest of a random handful (exact: a
        pair's log-probs do not depend on which pairs share its batch)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        by_index: dict[int, tuple] = {}
        ordered = longest_first(pairs, self.prefix_sharing)  # batches of near neighbours: little padding
        try:
            for start in range(0, len(ordered), batch_size):
                part = ordered[start:start + batch_size]
                for batch in self.micro_batches(part, batch_size=batch_size, pad_token_id=pad_token_id):
                    lp = sequence_logps(self.token_logps(model, batch.to(device)), batch)
                    for k, idx in enumerate(batch.pair_index.tolist()):
                        by_index[idx] = tuple(getattr(lp, name)[k] for name in SCORED)
                if progress is not None:
                    progress(len(part))
        finally:
            model.train(was_training)
        if not pairs:
            z = torch.zeros(0)
            return PairLogps(z, z, z, z, chosen_tail=z, rejected_tail=z)
        cols = zip(*(by_index[p.index] for p in pairs))
        return PairLogps(**{name: torch.stack(c).float().cpu() for name, c in zip(SCORED, cols)})


def longest_first(pairs: Sequence[TokenizedPair], prefix_sharing: bool = True) -> list[TokenizedPair]:
    """The pairs by row length, longest first (a batch that runs out of memory then does so on its first call)."""
    return sorted(pairs, key=lambda p: segment_length(p, prefix_sharing), reverse=True)


def choose_path(model: torch.nn.Module, pairs: Sequence[TokenizedPair], requested: ScoringPath, *,
                pad_token_id: int = 0, log: Callable[[str], None] = print, sample_size: int = SAMPLE_SIZE) -> ScoringPath:
    """The exact path for `model`: `requested` with the fast paths that would not equal the plain forward turned off
    (each with one line in `notes`, also logged). Installs the per-layer mask hooks and makes train mode
    deterministic as side effects on `model`."""
    rules = layer_rules.install(model)
    path = requested
    stateful = layer_rules.stateful_mixers(model)
    if stateful and (path.prefix_sharing or path.packing):
        path = path.without(("prefix_sharing", "packing"),
                            f"prefix sharing and packing off: {', '.join(stateful)} carry a state from token to "
                            "token, so a shared or packed row would run one sequence's state into the next")
    sample = check_sample(pairs, sample_size)
    dtype = next(model.parameters()).dtype
    # the check computes in the weights' own dtype (no autocast): exactness is a property of the layout
    exact = replace(path, precision=Precision(dtype, None, path.precision.device_type), notes=())
    plain = replace(exact, prefix_sharing=False, packing=False, chunked=False)
    if sample:
        try:
            want = one_at_a_time(model, sample)
        except Exception as e:  # noqa: BLE001 - the model's own forward: nothing to fall back to
            raise ConfigError(f"the model's own forward fails on these pairs: {type(e).__name__}: "
                              f"{first_line(e)}") from None
        tol = TOLERANCE.get(dtype, 1e-4)
        # padded plain rows in TRAIN mode: equal to the truth means batching is exact and training is deterministic
        if compare(plain, model, sample, want, tol, pad_token_id, train=True):
            if problem := compare(plain, model, sample, want, tol, pad_token_id):
                raise ConfigError(f"batched rows change this model's log-probs (right padding: {problem}); tiltlm "
                                  "cannot score it exactly")
            make_deterministic(model, collate(sample[-1:], prefix_sharing=False, pad_token_id=pad_token_id), log)
        if any(getattr(exact, f) for f in FAST) and compare(exact, model, sample, want, tol, pad_token_id):
            for flag in FAST:  # find which of them differ: each alone against the plain forward
                if getattr(exact, flag):
                    problem = compare(replace(plain, **{flag: True}), model, sample, want, tol, pad_token_id)
                    if problem:
                        path = path.without((flag,), f"{NAMES[flag]} off: {problem}")
            together = replace(exact, **{f: getattr(path, f) for f in FAST})
            if sum(getattr(together, f) for f in FAST) > 1 and compare(together, model, sample, want, tol,
                                                                        pad_token_id):
                path = path.without(FAST, "fast paths off: each alone equals the plain forward, together they "
                                          "do not")
    for note in path.notes[len(requested.notes):]:
        log(f"info: {note}; using the plain path for it")
    if any(rule != layer_rules.FULL for rule in rules) and (path.prefix_sharing or path.packing):
        log(f"info: attention layers: {layer_rules.describe(rules)} (each gets its own mask in shared rows)")
    return path


def check_sample(pairs: Sequence[TokenizedPair], n: int) -> list[TokenizedPair]:
    """The pairs the check runs on: the longest ones (windows and long-range effects show there) and a seeded
    random share of the rest."""
    if len(pairs) <= n:
        return list(pairs)
    by_length = sorted(pairs, key=lambda p: -(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)))
    longest, rest = by_length[:n // 2], by_length[n // 2:]
    return longest + random.Random(0).sample(rest, n - len(longest))


@torch.no_grad()
def one_at_a_time(model: torch.nn.Module, pairs: Sequence[TokenizedPair]) -> dict[tuple[int, int], torch.Tensor]:
    """The ground truth: one plain forward per sequence (no padding, no mask, the model's own positions), eval mode.
    {(pair index, 0 chosen / 1 rejected): per-token log-probs of the completion}."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    try:
        for p in pairs:
            for which, completion in ((0, p.chosen_ids), (1, p.rejected_ids)):
                ids = torch.tensor([p.prompt_ids + completion], device=device)
                logits = model(input_ids=ids, use_cache=False).logits[0, len(p.prompt_ids) - 1:-1].float()
                out[(p.index, which)] = torch.log_softmax(logits, -1).gather(
                    -1, ids[0, len(p.prompt_ids):, None]).squeeze(-1).cpu()
    finally:
        model.train(was_training)
    return out


def per_sequence(path: ScoringPath, model: torch.nn.Module, pairs: Sequence[TokenizedPair], pad_token_id: int,
                 train: bool = False) -> dict[tuple[int, int], torch.Tensor]:
    """{(pair index, 0 chosen / 1 rejected): its per-token log-probs in order} under `path` (no grad; eval mode, or
    train mode with the global RNG left untouched)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.train(train)
    out = {}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for batch in path.micro_batches(pairs, batch_size=len(pairs), pad_token_id=pad_token_id):
                tok = path.token_logps(model, batch.to(device)).float().cpu()
                for s in range(2 * batch.num_pairs):
                    out[(int(batch.pair_index[s // 2]), s % 2)] = tok[batch.seq_ids == s]
    finally:
        model.train(was_training)
    return out


def compare(path: ScoringPath, model, pairs, want: dict, tol: float, pad_token_id: int,
            train: bool = False) -> Optional[str]:
    """None if `path` gives `want` within `tol` nats on every token, else what went wrong, in a few words."""
    try:
        got = per_sequence(path, model, pairs, pad_token_id, train)
    except Exception as e:  # noqa: BLE001 - any failure of a fast path means: use the plain one
        return f"it raises {type(e).__name__}: {first_line(e)[:160]}"
    worst, where = 0.0, None
    for key, ref in want.items():
        mine = got.get(key)
        diff = (mine - ref).abs().max().item() if mine is not None and mine.shape == ref.shape else math.inf
        diff = math.inf if math.isnan(diff) else diff
        if diff > worst:
            worst, where = diff, key
    if where is None or worst <= tol:
        return None
    which = "chosen" if where[1] == 0 else "rejected"
    return (f"differs from the model's own forward by up to {worst:.3g} nats per token (pair {where[0]}, "
            f"{which}; tolerance {tol:g})")


def make_deterministic(model: torch.nn.Module, batch, log: Callable[[str], None], tries: int = 4) -> None:
    """A train-mode forward must equal an eval-mode forward (DPO's step 1: policy = reference). A module still
    random in train mode after dropout is off (sampled routing, noise), or computing something else in train mode,
    is found by its outputs and kept in eval mode, said in a line; if that does not help, one line says which."""
    batch = batch.to(next(model.parameters()).device)
    pinned = set()
    for _ in range(tries):
        culprit = _train_mode_culprit(model, batch)
        if culprit is None:
            return
        name, module = culprit
        if name in pinned:
            break
        pinned.add(name)
        keep_in_eval(module)
        log(f"info: {name} ({type(module).__name__}) behaves differently in train mode (sampling, noise or "
            "train-only routing besides dropout): kept in eval mode so that the policy at step 1 equals its reference")
    culprit = _train_mode_culprit(model, batch)
    if culprit is not None:
        raise ConfigError(f"{culprit[0]} ({type(culprit[1]).__name__}) gives other outputs in train mode than in eval "
                          "mode: set its noise or dropout options to 0 in the model's config.json")


def _train_mode_culprit(model: torch.nn.Module, batch) -> Optional[tuple[str, torch.nn.Module]]:
    """A module random in train mode (two seeds differ), else one that computes otherwise in train mode."""
    try:
        return differing_module(model, batch, ((True, 1), (True, 2))) or differing_module(
            model, batch, ((False, 0), (True, 0)))
    except Exception as e:  # noqa: BLE001 - the model's own train-mode forward: nothing to fall back to
        raise ConfigError(f"the model's own forward fails in train mode on these pairs: {type(e).__name__}: "
                          f"{first_line(e)[:200]}") from None


def differing_module(model: torch.nn.Module, batch, runs) -> Optional[tuple[str, torch.nn.Module]]:
    """Two forwards, `runs` = ((train mode?, seed), (train mode?, seed)): the first module (in completion order)
    whose inputs agree between them but whose outputs do not; when the difference comes from code between modules,
    the first module whose output differs at all. None when the two forwards agree."""
    recorded = []
    was_training = model.training
    names = {m: n for n, m in model.named_modules()}
    try:
        for train, seed in runs:
            seen: list[tuple[torch.nn.Module, list]] = []

            def record(module, args, output, seen=seen):
                seen.append((module, [_first_tensor(args), _first_tensor(output)]))

            handles = [m.register_forward_hook(record) for m in model.modules()]
            model.train(train)
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    token_logps(model, batch, chunked=False)
            finally:
                for h in handles:
                    h.remove()
            recorded.append(seen)
    finally:
        model.train(was_training)
    first_differing = None
    for (module, (in_a, out_a)), (_, (in_b, out_b)) in zip(*recorded):
        if _same(out_a, out_b):
            continue
        first_differing = first_differing or module
        if _same(in_a, in_b):
            return names.get(module) or type(module).__name__, module
    if first_differing is not None:
        return names.get(first_differing) or type(first_differing).__name__, first_differing
    return None


def _first_tensor(x) -> Optional[torch.Tensor]:
    x = x[0] if isinstance(x, (tuple, list)) and x else x
    x = getattr(x, "last_hidden_state", x)
    return x.detach().float().clone() if isinstance(x, torch.Tensor) and x.is_floating_point() else None


def _same(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    return (a is None) == (b is None) and (a is None or (a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0,
                                                                                           equal_nan=True)))


def keep_in_eval(module: torch.nn.Module) -> None:
    """`module` (and its children) stay in eval mode whatever `model.train()` says."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), module)
    module.tiltlm_kept_in_eval = True


def kept_in_eval(model: torch.nn.Module) -> list[str]:
    """The names of the modules `keep_in_eval` pinned (the start-up check's verdict stores them)."""
    return [name for name, m in model.named_modules() if getattr(m, "tiltlm_kept_in_eval", False)]
