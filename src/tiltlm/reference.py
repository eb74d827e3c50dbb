"""Reference log-probs: live (a frozen model under no_grad) or cached (computed once, then just looked up).

log pi_ref(y|x) does not depend on the training step, so on a fixed dataset it is a constant of the data (seed:
"Production trainers pre-compute these once and skip the reference forward entirely"). The cache key hashes
the model's bytes, the dtype and the exact token ids of every pair -- which already covers the tokenizer, the chat
template, the data, max_length and truncation -- so a second run or a beta sweep reuses it and anything that could
change a number gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from .batching import ModelBatch
from .logps import completion_logps, score_pairs
from .types import PairLogps, TokenizedPair

COLUMNS = ("index", "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens")


def pairs_digest(pairs: Sequence[TokenizedPair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()[:16]


def cache_key(model_fingerprint: str, dtype: str, pairs: Sequence[TokenizedPair]) -> str:
    return hashlib.sha256(f"{model_fingerprint}|{dtype}|{pairs_digest(pairs)}".encode()).hexdigest()[:24]


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
        pick = lambda t: t[rows].to(dev)  # noqa: E731
        return PairLogps(pick(self.logps.chosen), pick(self.logps.rejected),
                         pick(self.logps.chosen_tokens), pick(self.logps.rejected_tokens))

    # --- a readable table: one row per pair ---------------------------------------------------------------
    def to_rows(self) -> list[dict]:
        idx = sorted(self.row_of, key=self.row_of.get)
        lp = self.logps
        return [dict(index=i, chosen_logp=float(lp.chosen[k]), rejected_logp=float(lp.rejected[k]),
                     chosen_tokens=int(lp.chosen_tokens[k]), rejected_tokens=int(lp.rejected_tokens[k]))
                for k, i in enumerate(idx)]

    def save(self, path: str | Path, metadata: Optional[dict] = None) -> Path:
        """Write as Parquet (.parquet) or JSON lines (anything else), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        rows = self.to_rows()
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(rows)
            if metadata:
                table = table.replace_schema_metadata({b"tiltlm": json.dumps(metadata).encode()})
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CachedReference":
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        col = lambda k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float32)  # noqa: E731
        return cls([int(r["index"]) for r in rows],
                   PairLogps(col("chosen_logp"), col("rejected_logp"), col("chosen_tokens"), col("rejected_tokens")))


class LiveReference:
    """A frozen model evaluated every step (what TRL does without precompute_ref_log_probs)."""

    def __init__(self, model: torch.nn.Module, *, chunked: bool = True, chunk_size: int = 1024):
        self.model, self.chunked, self.chunk_size = model, chunked, chunk_size
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: ModelBatch) -> PairLogps:
        return completion_logps(self.model, batch, chunked=self.chunked, chunk_size=self.chunk_size)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TILTLM_CACHE", Path.home() / ".cache" / "tiltlm")) / "ref"


def cached_reference(model: torch.nn.Module, model_fingerprint: str, dtype: str, pairs: Sequence[TokenizedPair], *,
                     cache_dir: Optional[str] = None, batch_size: int = 8, pad_token_id: int = 0,
                     chunk_size: int = 1024, log=print, progress: bool = False
                     ) -> tuple[CachedReference, Path, bool]:
    """Load the reference log-probs of `pairs` from the cache, or compute and store them. Returns (ref, path, hit)."""
    key = cache_key(model_fingerprint, dtype, pairs)
    path = Path(cache_dir or default_cache_dir()) / f"ref-{key}.parquet"
    if path.is_file():
        try:
            ref = CachedReference.load(path)
            if set(ref.row_of) == {p.index for p in pairs}:
                log(f"reference log-probs: cache hit {path}")
                return ref, path, True
        except Exception as e:  # a corrupt cache file is recomputed, never trusted
            log(f"reference cache {path} unreadable ({e}); recomputing")
    log(f"reference log-probs: computing {len(pairs)} pairs once -> {path}")
    from tqdm.auto import tqdm

    with tqdm(total=len(pairs), desc="reference log-probs", unit="pair", disable=not progress, leave=False) as bar:
        logps = score_pairs(model, pairs, batch_size=batch_size, pad_token_id=pad_token_id, chunk_size=chunk_size,
                            progress=bar.update)
    ref = CachedReference([p.index for p in pairs], logps)
    ref.save(path, metadata={"model_fingerprint": model_fingerprint, "dtype": dtype, "pairs": len(pairs)})
    return ref, path, False
