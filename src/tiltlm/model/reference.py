"""Reference log-probs, one implementation of each kind: cached (computed once, then looked up) or live (a model
under no_grad every step -- a frozen copy, or the policy itself switched to its reference weights).

log pi_ref(y|x) does not depend on the training step, so on a fixed dataset it is a constant of the data (seed:
"Production trainers pre-compute these once and skip the reference forward entirely"). The cache key hashes
the model's bytes, the dtype and the exact token ids of every pair -- which already covers the tokenizer, the chat
template, the data, max_length and truncation -- so a second run or a beta sweep reuses it and anything that could
change a number gives a new key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, ContextManager, Optional, Sequence

import torch

from ..core.batching import ModelBatch
from ..core.logps import sequence_logps
from ..errors import writing
from ..parallel import comm
from ..types import PairLogps, TokenizedPair

# the *_tail_logp columns: log-prob sums past each pair's shared length (LD-DPO's ld_alpha); a cache file written
# before they existed is recomputed once
COLUMNS = ("index", "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens", "chosen_tail_logp",
           "rejected_tail_logp")


def pairs_digest(pairs: Sequence[TokenizedPair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()[:16]


def cache_key(model_fingerprint: str, dtype: str, pairs: Sequence[TokenizedPair]) -> str:
    return hashlib.sha256(f"{model_fingerprint}|{dtype}|{pairs_digest(pairs)}".encode()).hexdigest()[:24]


def _rows_digest(rows: Sequence[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def pair_row(index: int, lp: PairLogps, k: int) -> dict:
    """The k-th pair of `lp` as a cache-table row (COLUMNS)."""
    row = dict(index=index, chosen_logp=float(lp.chosen[k]), rejected_logp=float(lp.rejected[k]),
               chosen_tokens=int(lp.chosen_tokens[k]), rejected_tokens=int(lp.rejected_tokens[k]))
    if lp.chosen_tail is not None and lp.rejected_tail is not None:
        row.update(chosen_tail_logp=float(lp.chosen_tail[k]), rejected_tail_logp=float(lp.rejected_tail[k]))
    return row


class CachedReference:
    """Reference log-probs looked up by pair index."""

    def __init__(self, indices: Sequence[int], logps: PairLogps):
        self.row_of = {int(i): k for k, i in enumerate(indices)}
        self.logps = logps

    def __call__(self, batch: ModelBatch) -> PairLogps:
        try:
            rows = torch.tensor([self.row_of[int(i)] for i in batch.pair_index.tolist()])
        except KeyError as e:
            raise KeyError(f"pair {e.args[0]} is not in the reference cache") from None
        dev = batch.pair_index.device
        pick = lambda t: None if t is None else t[rows].to(dev)  # noqa: E731
        lp = self.logps
        return PairLogps(pick(lp.chosen), pick(lp.rejected), pick(lp.chosen_tokens), pick(lp.rejected_tokens),
                         chosen_tail=pick(lp.chosen_tail), rejected_tail=pick(lp.rejected_tail))

    @property
    def has_tails(self) -> bool:
        return self.logps.chosen_tail is not None and self.logps.rejected_tail is not None

    # --- a readable table: one row per pair ---------------------------------------------------------------
    def to_rows(self) -> list[dict]:
        idx = sorted(self.row_of, key=self.row_of.get)
        return [pair_row(i, self.logps, k) for k, i in enumerate(idx)]

    def save(self, path: str | Path, metadata: Optional[dict] = None) -> Path:
        """Write as Parquet (.parquet, with the rows' sha256 in its metadata) or JSON lines (anything else).

        Atomic and safe under concurrency: written to a file of this process's own, then renamed, so a reader
        (another run sharing the cache folder) sees the old file or the whole new one, never half of one.
        A failed write (a full disk included) raises one OSError and leaves no file behind."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        rows = self.to_rows()
        try:
            with writing(str(path)):
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".parquet":
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    meta = {**(metadata or {}), "sha256": _rows_digest(rows)}
                    table = pa.Table.from_pylist(rows).replace_schema_metadata({b"tiltlm": json.dumps(meta).encode()})
                    pq.write_table(table, tmp)
                else:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> "CachedReference":
        col = lambda k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float32)  # noqa: E731
        tails = all("chosen_tail_logp" in r and "rejected_tail_logp" in r for r in rows)
        return cls([int(r["index"]) for r in rows],
                   PairLogps(col("chosen_logp"), col("rejected_logp"), col("chosen_tokens"), col("rejected_tokens"),
                             chosen_tail=col("chosen_tail_logp") if tails else None,
                             rejected_tail=col("rejected_tail_logp") if tails else None))

    @classmethod
    def load(cls, path: str | Path) -> "CachedReference":
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            rows = table.to_pylist()
            meta = json.loads((table.schema.metadata or {}).get(b"tiltlm", b"{}"))
            if "sha256" in meta and meta["sha256"] != _rows_digest(rows):
                raise ValueError("its checksum does not match its contents (the file is corrupt)")
            return cls.from_rows(rows)
        return cls.from_rows([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


class LiveReference:
    """A model evaluated under no_grad every step: a frozen copy of the starting model (what TRL does without
    precompute_ref_log_probs), or -- with `switch` -- the policy itself switched to its reference weights for the
    call (a LoRA policy with its adapter off: no second model in memory).

    `token_logps(batch)` computes the per-token log-probs of `model` (a sharded model's root under FSDP)."""

    def __init__(self, model: torch.nn.Module, token_logps: Callable[[ModelBatch], torch.Tensor], *,
                 switch: Optional[Callable[[torch.nn.Module], ContextManager]] = None):
        self.model, self.token_logps = model, token_logps
        self.shares_policy = switch is not None
        self.switch = switch or (lambda _model: contextlib.nullcontext())
        if not self.shares_policy:
            self.model.eval()
            self.model.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: ModelBatch) -> PairLogps:
        was_training = self.model.training
        self.model.eval()
        try:
            with self.switch(self.model):
                return sequence_logps(self.token_logps(batch), batch)
        finally:
            self.model.train(was_training)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TILTLM_CACHE", Path.home() / ".cache" / "tiltlm")) / "ref"


def cached_reference(score: Callable[[Sequence[TokenizedPair]], PairLogps], model_fingerprint: str, dtype: str,
                     pairs: Sequence[TokenizedPair], *, cache_dir: Optional[str] = None, log=print
                     ) -> tuple[CachedReference, Path, bool]:
    """Load the reference log-probs of `pairs` from the cache, or compute and store them. Returns (ref, path, hit).

    `score(pairs)` returns their log-probs under the reference model. With several processes, rank 0 looks the
    cache up (a hit is broadcast: no shared filesystem needed); on a miss every rank scores its share of the pairs,
    the shares are gathered back into the order of `pairs`, and rank 0 writes the table. With one process every
    collective is the identity."""
    world = comm.world()
    path = Path(cache_dir or default_cache_dir()) / f"ref-{cache_key(model_fingerprint, dtype, pairs)}.parquet"
    hit = None
    if world.is_main and path.is_file():
        try:
            ref = CachedReference.load(path)
            if set(ref.row_of) == {p.index for p in pairs} and ref.has_tails:
                hit = ref
        except Exception as e:  # a corrupt cache file is recomputed, never trusted
            log(f"reference cache {path} unreadable ({e}); recomputing")
    hit = comm.broadcast_object(hit)
    if hit is not None:
        log(f"reference log-probs: cache hit {path}")
        return hit, path, True
    log(f"reference log-probs: computing {len(pairs)} pairs once"
        + (f" on {world.size} ranks" if world.enabled else "") + f" -> {path}")
    mine = comm.shard(pairs)
    lp = score(mine)
    rows = [pair_row(p.index, lp, k) for k, p in enumerate(mine)]
    order = {p.index: k for k, p in enumerate(pairs)}  # back to the order of `pairs`, as one process has it
    ref = CachedReference.from_rows(sorted((r for part in comm.gather_objects(rows) for r in part),
                                           key=lambda r: order[r["index"]]))
    if world.is_main:
        try:
            ref.save(path, metadata={"model_fingerprint": model_fingerprint, "dtype": dtype, "pairs": len(pairs)})
        except OSError as e:  # the log-probs are in memory: train with them, only the reuse by later runs is lost
            log(f"warning: {e}; training goes on without caching the reference log-probs")
    comm.barrier()
    return ref, path, False
