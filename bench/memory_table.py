"""Per-rank memory of policy weights, gradients, AdamW state and the reference model, for DPO with tiltlm.

Pure arithmetic on parameter counts (activations are extra and depend on batch and sequence length; the chunked
log-prob path keeps the LM-head logits out of them). Usage:

    python bench/memory_table.py                       # the default table (docs/distributed.md)
    python bench/memory_table.py --params 8e9 --world 8 --lora-fraction 0.005

Assumptions: weights and gradients in the training dtype (bf16 = 2 bytes, fp32 = 4), AdamW's two moments in fp32
(8 bytes per trainable parameter, as torch.optim.AdamW keeps them in the parameter dtype when that is fp32; with
bf16 weights torch keeps them in bf16: 4 bytes -- we show the fp32 case, the larger). Reference: a live frozen copy
(weights only), or 0 with precomputed log-probs (the default) or LoRA (the adapter-off model is the reference).
DDP: every rank holds everything. FSDP (fully sharded): everything divided by the world size, plus one
transformer block gathered at a time (ignored here).
"""

from __future__ import annotations

import argparse

GiB = 1024 ** 3


def per_rank(params: float, *, world: int, mode: str, dtype_bytes: int, reference: str, lora_fraction: float = 0.0):
    """Bytes per rank: (policy weights, gradients, optimizer state, reference weights)."""
    trainable = params * lora_fraction if lora_fraction > 0 else params
    weights = params * dtype_bytes + (trainable * dtype_bytes if lora_fraction > 0 else 0)
    grads = trainable * dtype_bytes
    optim = trainable * 8
    ref = 0.0 if (reference == "precomputed" or lora_fraction > 0) else params * dtype_bytes
    shard = world if mode == "fsdp" else 1
    return weights / shard, grads / shard, optim / shard, ref / shard


def table(sizes, worlds, dtype_bytes=2, lora_fraction=0.005) -> str:
    rows = ["| model | setup | ranks | policy | grads | AdamW | reference | total / rank |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for params in sizes:
        for mode, ref, lf in (("ddp", "live", 0.0), ("ddp", "precomputed", 0.0), ("fsdp", "live", 0.0),
                              ("fsdp", "precomputed", 0.0), ("ddp", "lora", lora_fraction)):
            for world in worlds:
                if mode == "ddp" and ref != "lora" and world != worlds[0]:
                    continue  # DDP replicates: the same per rank for any world size
                w, g, o, r = per_rank(params, world=world, mode=mode, dtype_bytes=dtype_bytes, reference=ref,
                                      lora_fraction=lf)
                label = f"{mode.upper()} + LoRA (r~{lf:.1%} params)" if lf else f"{mode.upper()}, {ref} reference"
                if lf and world != worlds[0]:
                    continue
                rows.append(f"| {params / 1e9:g}B | {label} | {world if mode == 'fsdp' else 'any'} | "
                            f"{w / GiB:.1f} | {g / GiB:.1f} | {o / GiB:.1f} | {r / GiB:.1f} | "
                            f"{(w + g + o + r) / GiB:.1f} GiB |")
    return "\n".join(rows)


# Bytes per parameter of each state under FSDP2 (the whole job; divide by the ranks for one GPU).
#   no mixed precision: parameters held in bf16 (`--dtype bfloat16`): weights 2, gradients 2, and torch's AdamW keeps
#                       its two moments in the parameter dtype: 2 + 2.
#   mixed precision:    fp32 sharded master weights, bf16 compute (FSDP2 MixedPrecisionPolicy(param_dtype=bf16,
#                       reduce_dtype=fp32), what --bf16 means): weights 4, gradients 4, AdamW 4 + 4;
#                       plus the bf16 copy of the block being computed (transient, not counted).
#   reference:          live = a frozen bf16 copy (2; it is never updated, so it needs no fp32 master), sharded like
#                       the policy; cached = 0 (precomputed log-probs, 8 bytes per pair on disk).
BYTES_PER_PARAM = {
    False: {"policy": 2, "grads": 2, "adamw": 4, "reference live": 2, "reference cached": 0},
    True: {"policy": 4, "grads": 4, "adamw": 8, "reference live": 2, "reference cached": 0},
}


def per_param_table(params: float, world: int, gpu_gib: float) -> str:
    """Bytes per parameter and GiB per rank of every state, FSDP2 over `world` GPUs of `gpu_gib` GiB each."""
    rows = [f"| FSDP2, {params / 1e9:g}B params, {world} GPUs | bytes / param | GiB / rank |", "| --- | --- | --- |"]
    for mixed in (False, True):
        b = BYTES_PER_PARAM[mixed]
        label = "mixed precision (fp32 master, bf16 compute)" if mixed else "no mixed precision (bf16 weights)"
        for part, nbytes in b.items():
            rows.append(f"| {label}: {part} | {nbytes} | {params * nbytes / world / GiB:.1f} |")
        for ref in ("live", "cached"):
            total = b["policy"] + b["grads"] + b["adamw"] + b[f"reference {ref}"]
            gib = params * total / world / GiB
            verdict = "fits" if gib < gpu_gib else "does not fit"
            rows.append(f"| **{label}, {ref} reference: total** | **{total}** | **{gib:.1f}** ({verdict} in "
                        f"{gpu_gib:g} GiB before activations) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, nargs="+", default=[0.135e9, 1.7e9, 8e9])
    ap.add_argument("--world", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--dtype-bytes", type=int, default=2, help="2 for bf16/fp16, 4 for fp32")
    ap.add_argument("--lora-fraction", type=float, default=0.005, help="trainable LoRA params / model params")
    ap.add_argument("--per-param", action="store_true",
                    help="bytes per parameter under FSDP2 with / without mixed precision (first --params, --world)")
    ap.add_argument("--gpu-gib", type=float, default=79.2, help="memory of one GPU (H100 80GB: 79.2 GiB usable)")
    a = ap.parse_args()
    if a.per_param:
        print(per_param_table(a.params[0], a.world[0], a.gpu_gib))
        return
    print(table(a.params, a.world, a.dtype_bytes, a.lora_fraction))


if __name__ == "__main__":
    main()
