"""Turn TokenizedPairs into model rows, three exact ways.

* padded         -- the textbook layout: 2B rows (prompt||chosen, prompt||rejected), right-padded.
* prefix-shared  -- one row per pair: prompt || chosen || rejected. Rejected tokens restart their position ids
                    where chosen started and cannot see the chosen tokens, so every token sees exactly the
                    context it would see in its own sequence: the prompt is computed once instead of twice.
* packed         -- several of those segments per row (no padding between them); a segment sees only itself.

All three are described by the same per-token layout -- (segment id, branch, position id) -- and one mask rule:
token i may attend token j  iff  j <= i,  seg[i] == seg[j],  and branch[j] in {PROMPT, branch[i]}
(`may_attend`: the one rule, used both for the dense mask and for FlexAttention's mask_mod). A layer with its own
attention rule (a sliding window, chunked attention: `LayerRule`) adds it in the POSITION space of each sequence:
positions restart for the rejected branch, so a window counts the tokens the layer would see in that sequence.
A completion token is predicted by the hidden state *before* it in its own sequence; with prefix sharing the first
rejected token is predicted by the last prompt token, which is therefore used twice. So instead of shifting
logits we list, for every completion token, (row, position of the predicting hidden state, label, sequence id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..types import TokenizedPair

PAD_SEG = -1
PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass(frozen=True)
class LayerRule:
    """What one attention layer may see besides the causal rule, in its own sequence (transformers' overlays):
    `window` -- sliding window: keys less than `window` positions behind the query (kv > q - window);
    `chunk`  -- chunked attention: keys in the same block of `chunk` positions (q // chunk == kv // chunk)."""
    window: Optional[int] = None
    chunk: Optional[int] = None

    def describe(self) -> str:
        return (f"sliding window {self.window}" if self.window else f"chunks of {self.chunk}" if self.chunk
                else "full attention")


FULL = LayerRule()


@dataclass
class ModelBatch:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    segment_ids: torch.Tensor  # (R, L), PAD_SEG on padding
    branch_ids: torch.Tensor  # (R, L), PROMPT / CHOSEN / REJECTED
    gather_rows: torch.Tensor  # (T,) for every completion token: its row ...
    gather_pos: torch.Tensor  # (T,) ... the position whose hidden state predicts it ...
    labels: torch.Tensor  # (T,) ... the token itself ...
    seq_ids: torch.Tensor  # (T,) ... and its sequence: 2*k chosen / 2*k+1 rejected of the k-th pair in `pair_index`
    pair_index: torch.Tensor  # (B,) dataset indices of the pairs, in batch order
    shared_segments: bool  # True if some segment holds both branches (needs a 4D mask)
    _masks: dict = field(default_factory=dict, repr=False, compare=False)  # attention masks built for this batch

    @property
    def num_pairs(self) -> int:
        return int(self.pair_index.numel())

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens fed to the model."""
        return int((self.segment_ids != PAD_SEG).sum())

    def to(self, device) -> "ModelBatch":
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
              if k != "_masks"}
        return ModelBatch(**kw)

    def attention_mask(self, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
                       rule: LayerRule = FULL):
        """The mask in the form the model's attention expects (built once per batch and rule, and kept: a live
        reference forward on the same batch reuses the policy's).

        A plain padded batch gets the usual 2D padding mask (the model builds its own causal and window masks).
        Shared or packed rows get the rule in the module docstring as a FlexAttention BlockMask when the model's
        attention is a flex implementation (masked blocks are skipped), else as a dense 4D mask: boolean for SDPA,
        additive (0 / -inf) for eager attention. Padding queries attend to themselves only, so no softmax row is
        empty (their outputs are never read). Every 4D mask carries `tiltlm_for_rule(rule)`: the same batch's mask
        for another layer rule (model/layer_rules.py swaps it in per layer, recomputation under checkpointing too).
        """
        if not self.shared_segments:
            return (self.segment_ids != PAD_SEG).long()
        kind = "flex" if "flex" in attn_implementation else "sdpa" if attn_implementation == "sdpa" else "eager"
        key = (kind, dtype if kind == "eager" else None, rule)
        if key not in self._masks:
            mask = (self.block_mask(rule) if kind == "flex" else self.dense_mask(rule) if kind == "sdpa"
                    else additive(self.dense_mask(rule), dtype))
            mask.tiltlm_for_rule = lambda other: self.attention_mask(attn_implementation, dtype, other)
            self._masks[key] = mask
        return self._masks[key]

    def dense_mask(self, rule: LayerRule = FULL) -> torch.Tensor:
        """(R, 1, L, L) boolean: True where a query may attend a key."""
        seg, br, pos = self.segment_ids, self.branch_ids, self.position_ids
        ar = torch.arange(seg.shape[1], device=seg.device)
        return may_attend(ar[:, None], ar[None, :], seg[:, :, None], seg[:, None, :], br[:, :, None],
                          br[:, None, :], pos[:, :, None], pos[:, None, :], rule)[:, None]

    def mask_mod(self, rule: LayerRule = FULL):
        """The same rule as a FlexAttention mask_mod(b, h, q_idx, kv_idx) over this batch's rows."""
        seg, br, pos = self.segment_ids, self.branch_ids, self.position_ids

        def mod(b, h, q, kv):
            return may_attend(q, kv, seg[b, q], seg[b, kv], br[b, q], br[b, kv], pos[b, q], pos[b, kv], rule)

        return mod

    def block_mask(self, rule: LayerRule = FULL):
        """FlexAttention's BlockMask of the rule: (R, 1, L, L) in blocks of 128; fully masked blocks are skipped.
        On CUDA the mask is built by a compiled kernel (no dense L x L intermediate)."""
        from torch.nn.attention.flex_attention import create_block_mask

        R, L = self.segment_ids.shape
        return create_block_mask(self.mask_mod(rule), B=R, H=None, Q_LEN=L, KV_LEN=L,
                                 device=self.segment_ids.device, _compile=self.segment_ids.is_cuda)


def may_attend(q, kv, seg_q, seg_kv, br_q, br_kv, pos_q=None, pos_kv=None, rule: LayerRule = FULL) -> torch.Tensor:
    """THE mask rule (elementwise, broadcasting): query position q may attend key position kv of the same row iff
    kv <= q, both are in the same (non-padding) segment, the key is a prompt token or in the query's own branch,
    and -- for a windowed or chunked layer -- the key's position id is inside the query's window / chunk.
    A padding query (or any query) may attend itself, so no softmax row is empty."""
    same = (seg_q == seg_kv) & (seg_kv != PAD_SEG)
    allowed = (kv <= q) & same & ((br_kv == PROMPT) | (br_kv == br_q))
    if rule.window:
        allowed = allowed & (pos_kv > pos_q - rule.window)
    if rule.chunk:
        allowed = allowed & (torch.div(pos_kv, rule.chunk, rounding_mode="floor")
                             == torch.div(pos_q, rule.chunk, rounding_mode="floor"))
    return (q == kv) | allowed


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive mask (0 where allowed, the dtype's minimum elsewhere) for eager attention."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _row_segments(pair: TokenizedPair, shared: bool) -> list[tuple[list[int], list[int], list[int], list[tuple]]]:
    """Token lists for one pair: 1 segment (shared) or 2 (plain). Each: (ids, positions, branches, label specs).

    Label spec: (offset of the predicting token within the segment, label id, which: 0 chosen / 1 rejected).
    """
    p, c, r = pair.prompt_ids, pair.chosen_ids, pair.rejected_ids
    P = len(p)
    if P < 1:
        raise ValueError(f"pair {pair.index}: empty prompt token list (a completion needs a preceding token)")
    chosen_labels = [(P - 1 + k, tok, 0) for k, tok in enumerate(c)]
    if shared:
        ids = p + c + r
        pos = list(range(P + len(c))) + list(range(P, P + len(r)))
        br = [PROMPT] * P + [CHOSEN] * len(c) + [REJECTED] * len(r)
        # first rejected token is predicted by the last prompt token, the rest by their own predecessor
        rej_src = [P - 1] + list(range(P + len(c), P + len(c) + len(r) - 1))
        rejected_labels = [(src, tok, 1) for src, tok in zip(rej_src, r)]
        return [(ids, pos, br, chosen_labels + rejected_labels)]
    rejected_labels = [(P - 1 + k, tok, 1) for k, tok in enumerate(r)]
    return [
        (p + c, list(range(P + len(c))), [PROMPT] * P + [CHOSEN] * len(c), chosen_labels),
        (p + r, list(range(P + len(r))), [PROMPT] * P + [REJECTED] * len(r), rejected_labels),
    ]


def segment_length(pair: TokenizedPair, shared: bool) -> int:
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids) if shared else max(
        pair.chosen_len, pair.rejected_len)


def pack_rows(pairs: Sequence[TokenizedPair], *, shared: bool, capacity: Optional[int]) -> list[list[tuple]]:
    """Assign segments to rows. capacity=None: one segment per row (padded layouts).

    With a capacity, first-fit-decreasing bin packing: each row holds segments whose total length fits.
    A segment longer than the capacity gets a row of its own (never split: that would change the result).
    Returns rows as lists of (pair_slot, segment).
    """
    segs = [(slot, seg) for slot, pair in enumerate(pairs) for seg in _row_segments(pair, shared)]
    if capacity is None:
        if shared:
            return [[s] for s in segs]
        # keep the textbook order: all chosen rows, then all rejected rows
        return [[s] for s in segs[0::2]] + [[s] for s in segs[1::2]]
    rows: list[list[tuple]] = []
    room: list[int] = []
    for slot, seg in sorted(segs, key=lambda s: -len(s[1][0])):
        n = len(seg[0])
        for i, free in enumerate(room):
            if n <= free:
                rows[i].append((slot, seg))
                room[i] -= n
                break
        else:
            rows.append([(slot, seg)])
            room.append(max(capacity - n, 0))
    return rows


def collate(pairs: Sequence[TokenizedPair], *, prefix_sharing: bool, packing: bool = False,
            max_tokens_per_row: Optional[int] = None, pad_token_id: int = 0) -> ModelBatch:
    """Build a ModelBatch for `pairs` in the requested layout. Exactly the same log-probs come out of all of them."""
    rows = pack_rows(pairs, shared=prefix_sharing, capacity=max_tokens_per_row if packing else None)
    L = max(sum(len(seg[0]) for _, seg in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, L), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    segment_ids = torch.full((R, L), PAD_SEG, dtype=torch.long)
    branch_ids = torch.zeros((R, L), dtype=torch.long)
    g_rows, g_pos, labels, seq_ids = [], [], [], []
    seg_counter = 0
    for r, row in enumerate(rows):
        start = 0
        for slot, (ids, pos, br, label_specs) in row:
            n = len(ids)
            input_ids[r, start:start + n] = torch.tensor(ids)
            position_ids[r, start:start + n] = torch.tensor(pos)
            segment_ids[r, start:start + n] = seg_counter
            branch_ids[r, start:start + n] = torch.tensor(br)
            for src, tok, which in label_specs:
                g_rows.append(r)
                g_pos.append(start + src)
                labels.append(tok)
                seq_ids.append(2 * slot + which)
            seg_counter += 1
            start += n
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return ModelBatch(
        input_ids=input_ids, position_ids=position_ids, segment_ids=segment_ids, branch_ids=branch_ids,
        gather_rows=as_long(g_rows), gather_pos=as_long(g_pos), labels=as_long(labels), seq_ids=as_long(seq_ids),
        pair_index=as_long([p.index for p in pairs]), shared_segments=prefix_sharing or packing,
    )


def micro_batches(pairs: Sequence[TokenizedPair], *, batch_size: int, prefix_sharing: bool, packing: bool,
                  max_tokens_per_batch: int, pad_token_id: int) -> list[ModelBatch]:
    """Split the pairs of one optimizer step into micro-batches.

    The step's gradient is a sum over its pairs divided by their count, so how the pairs are split into
    micro-batches does not change it: we sort by length first (less padding; exact) and then either cut
    every `batch_size` pairs (padded / prefix-shared), or, with packing, fill rows of `max_tokens_per_batch`
    tokens and run one row per forward -- the token budget, not the pair count, bounds memory.
    """
    order = sorted(pairs, key=lambda p: segment_length(p, prefix_sharing), reverse=True)
    if not packing:
        return [collate(order[i:i + batch_size], prefix_sharing=prefix_sharing, pad_token_id=pad_token_id)
                for i in range(0, len(order), batch_size)]
    rows = pack_rows(order, shared=prefix_sharing, capacity=max_tokens_per_batch)
    # a pair's two plain segments may land in different rows: group rows so that each micro-batch holds whole pairs
    out, taken = [], set()
    for row in rows:
        slots = sorted({slot for slot, _ in row} - taken)
        if not slots:
            continue
        taken.update(slots)
        out.append(collate([order[s] for s in slots], prefix_sharing=prefix_sharing, packing=True,
                           max_tokens_per_row=max_tokens_per_batch, pad_token_id=pad_token_id))
    return out


def step_pairs(pairs: Sequence[TokenizedPair], step: int, pairs_per_step: int, seed: int) -> list[TokenizedPair]:
    """The pairs of optimizer step `step` (0-based): a seeded permutation per epoch, cut into consecutive steps.

    A pure function of (step, seed): resuming at step k replays exactly the order an uninterrupted run would see,
    whatever the number of processes (each takes its share of these). The last step of an epoch may be smaller;
    its loss is still the mean over its own pairs.
    """
    steps_per_epoch = math.ceil(len(pairs) / pairs_per_step)
    epoch, within = divmod(step, steps_per_epoch)
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [pairs[i] for i in perm[within * pairs_per_step:(within + 1) * pairs_per_step]]
