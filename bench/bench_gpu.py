#!/usr/bin/env python3
"""GPU benchmark: TRL 1.16 DPOTrainer (bf16, its fastest settings that install offline) against tiltlm --bf16 with
each fast path off / on, on SmolLM2-135M-Instruct and on a randomly initialised Qwen2.5-1.5B-shaped model.

Reuses bench_dpo.py (inputs, FLOP model, the two framework children); adds the GPU parts: the 1.5B model written in
code, HH pairs stretched to the target length, CUDA peak memory, MFU against this GPU's measured bf16 matmul rate, and
the memory predicted by bench/memory_table.py next to the measured peak. One child process per configuration.

    python bench/bench_gpu.py --output bench/results/gpu                     # everything (docs/benchmarks.md)
    python bench/bench_gpu.py --models smollm2 --lengths 1024 --configs trl-bf16,tiltlm-default --steps 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_dpo  # noqa: E402  (the CPU benchmark's inputs, FLOP model and framework children)
import memory_table  # noqa: E402

PLAIN = dict(bench_dpo.PLAIN, bf16=True)
DEFAULT = dict(bf16=True)  # precompute + prefix sharing + chunked log-probs + gradient checkpointing
GPU_CONFIGS = {
    # TRL 1.16: padding_free is disabled in this version (it warns and falls back to padding); Liger's layer kernels
    # (RMSNorm, RoPE, SwiGLU) need `pip install liger-kernel==0.8.5`; the Hub kernels need the internet.
    "trl-bf16": ("trl", dict(bf16=True, gradient_checkpointing=True)),
    "trl-bf16-liger": ("trl", dict(bf16=True, gradient_checkpointing=True, use_liger_kernel=True)),
    "trl-bf16-liger-precompute": ("trl", dict(bf16=True, gradient_checkpointing=True, use_liger_kernel=True,
                                              precompute_ref_log_probs=True)),
    "tiltlm-plain": ("tiltlm", PLAIN),  # 2B padded rows, full logits, live reference, SDPA causal
    "tiltlm+precompute": ("tiltlm", {**PLAIN, "precompute_ref_log_probs": True}),
    "tiltlm+chunked": ("tiltlm", {**PLAIN, "chunked_logps": True}),
    "tiltlm+prefix-dense": ("tiltlm", {**PLAIN, "prefix_sharing": True, "attn_implementation": "sdpa"}),
    "tiltlm+prefix-flex": ("tiltlm", {**PLAIN, "prefix_sharing": True}),
    "tiltlm-default-dense": ("tiltlm", {**DEFAULT, "attn_implementation": "sdpa"}),
    "tiltlm-default": ("tiltlm", DEFAULT),  # FlexAttention on CUDA
    "tiltlm-default-no-gc": ("tiltlm", {**DEFAULT, "gradient_checkpointing": False}),
    "tiltlm+packing-dense": ("tiltlm", {**DEFAULT, "packing": True, "attn_implementation": "sdpa"}),
    "tiltlm+packing": ("tiltlm", {**DEFAULT, "packing": True}),
}
# Qwen2.5-1.5B's published shape (config.json of Qwen/Qwen2.5-1.5B), written here: random weights, nothing downloaded
QWEN_1P5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=True)


# ------------------------------------------------------------------------------------------------ inputs
def random_qwen_1p5b(tokenizer_dir: str) -> str:
    """A Qwen2.5-1.5B-shaped model with random weights (seed 0, fp32) and the SmolLM2 tokenizer (its ids fit the
    151,936-row embedding): the compute and memory of a real 1.5B model, no download."""
    out = bench_dpo.CACHE / "qwen2.5-1.5b-random"
    if not (out / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0)
        cfg = Qwen2Config(**QWEN_1P5B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(cfg)
        tmp = out.with_suffix(".tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    return str(out)


def stretched_pairs(data: str, tokenizer_dir: str, max_length: int, pairs: int) -> str:
    """HH pairs made long: each prompt is prefixed with the following HH dialogues until prompt + the longer
    completion fill about 90% of max_length, so sequences (not padding) reach the target length."""
    out = bench_dpo.CACHE / f"hh_stretched_{max_length}_{pairs}.jsonl"
    if out.is_file():
        return str(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [json.loads(line) for line in open(data)]
    n_tok = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    lines = []
    for k, row in enumerate(rows[:pairs]):
        target = int(0.9 * max_length) - max(n_tok(row["chosen"]), n_tok(row["rejected"])) - 2
        prompt, j = row["prompt"], k + 1
        while n_tok(prompt) < target and j < k + len(rows):
            context = rows[j % len(rows)]
            prompt = context["prompt"] + context["chosen"] + prompt
            j += 1
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        prompt = tok.decode(ids[len(ids) - target:]) if len(ids) > target else prompt  # keep the end: the question
        lines.append(json.dumps({"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}))
    out.write_text("\n".join(lines) + "\n")
    return str(out)


def bf16_matmul_flops(n: int = 8192, repeats: int = 20) -> float:
    """Best dense bf16 matmul rate of this GPU (n x n @ n x n, CUDA events): the MFU denominator."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 / (start.elapsed_time(end) / 1e3))
    return best


# ------------------------------------------------------------------------------------------------ child
def run_child(a) -> None:
    import torch

    framework, opts = GPU_CONFIGS[a.child]
    steps, timing = [], {}
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    (bench_dpo.child_trl if framework == "trl" else bench_dpo.child_tiltlm)(a, dict(opts), steps, timing)
    timing["process_s"] = time.perf_counter() - t0
    print("BENCH_RESULT " + json.dumps({"steps": steps, "timing": timing,
                                        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20,
                                        "cuda_reserved_mb": torch.cuda.max_memory_reserved() / 2 ** 20}), flush=True)


# ------------------------------------------------------------------------------------------------ parent
def summarise(name: str, model: str, length: int, raw: dict, dims: dict, peak: float, warmup: int) -> dict:
    """Steady-state figures over the steps after `warmup` (compilation of FlexAttention falls in the warm-up)."""
    measured = raw["steps"][warmup:]
    secs = [s["seconds"] for s in measured]
    total = sum(secs)
    useful = sum(m["useful"] for s in measured for m in s["micro"])
    flops = sum(bench_dpo.seq_flops(dims, L, p) for s in measured for m in s["micro"]
                for L, p in zip(m["lens"], m["predicted_per_row"]))
    return {"config": name, "model": model, "max_length": length, "measured_steps": len(measured),
            "median_step_s": statistics.median(secs), "mean_step_s": total / len(secs),
            "useful_tokens_per_s": useful / total, "useful_tflops_per_s": flops / total / 1e12,
            "mfu": flops / total / peak, "cuda_peak_mb": raw["cuda_peak_mb"],
            "cuda_reserved_mb": raw["cuda_reserved_mb"], "precompute_s": raw["timing"].get("precompute_s"),
            "process_s": raw["timing"]["process_s"]}


def predicted_state_mb(model_dir: str, live_reference: bool) -> float:
    """bench/memory_table.py's bytes per parameter for one GPU under mixed precision (fp32 master weights, fp32
    gradients and AdamW moments: --bf16 in both frameworks), activations excluded: compare with the measured peak.
    A live reference is counted at 4 bytes: both frameworks load it in fp32 like the policy (the table's 2 bytes
    assume a bf16 copy)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters())
    per_param = memory_table.BYTES_PER_PARAM[True]
    return n * (per_param["policy"] + per_param["grads"] + per_param["adamw"] + (4 if live_reference else 0)) / 2 ** 20


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"GPU: {m['gpu']}; torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}; measured dense "
             f"bf16 matmul {m['bf16_matmul_flops'] / 1e12:,.0f} TFLOP/s (the MFU denominator).",
             f"Settings: {result['settings']}", "",
             "| model | max_length | config | median s/step | useful tok/s | useful TFLOP/s | MFU | peak GPU MB "
             "| predicted states MB | vs trl-bf16 tok/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        base = next((b for b in result["rows"] if b["model"] == r["model"] and b["max_length"] == r["max_length"]
                     and b["config"] == "trl-bf16"), None)
        rel = f"{r['useful_tokens_per_s'] / base['useful_tokens_per_s']:.2f}x" if base else "-"
        lines.append(f"| {r['model']} | {r['max_length']} | {r['config']} | {r['median_step_s']:.3f} | "
                     f"{r['useful_tokens_per_s']:,.0f} | {r['useful_tflops_per_s']:.1f} | {100 * r['mfu']:.1f}% | "
                     f"{r['cuda_peak_mb']:,.0f} | {r['predicted_states_mb']:,.0f} | {rel} |")
    lines += [f"- FAILED {f['model']} / {f['max_length']} / {f['config']}: {f['error']}" for f in result["failures"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,qwen1.5b")
    p.add_argument("--lengths", default="1024,4096", help="max_length values; pairs are stretched to ~90%% of it")
    p.add_argument("--configs", default=",".join(GPU_CONFIGS))
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="measured optimizer steps after the warm-up")
    p.add_argument("--warmup", type=int, default=2, help="optimizer steps not measured (compilation, allocator)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    p.add_argument("--output", default=str(HERE / "results" / "gpu"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    for internal in ("--model", "--data", "--workdir", "--max-length"):
        p.add_argument(internal, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # bench_dpo's children read these attributes
        a.cuda, a.threads, a.max_length = True, os.cpu_count(), int(a.max_length)
        run_child(a)
        return 0

    import torch
    import transformers
    import trl

    if not torch.cuda.is_available():
        sys.exit("error: bench_gpu.py needs a CUDA GPU (the CPU benchmark is bench/bench_dpo.py)")
    models = [m for m in a.models.split(",") if m]
    configs = [c for c in a.configs.split(",") if c]
    unknown = [c for c in configs if c not in GPU_CONFIGS] + [m for m in models if m not in ("smollm2", "qwen1.5b")]
    if unknown:
        p.error(f"unknown {unknown}; configs: {', '.join(GPU_CONFIGS)}; models: smollm2, qwen1.5b")
    inputs = bench_dpo.prepare_inputs(["smollm2"], a.pairs)
    dirs = {"smollm2": inputs["smollm2"]}
    if "qwen1.5b" in models:
        dirs["qwen1.5b"] = random_qwen_1p5b(inputs["smollm2"])
    peak = bf16_matmul_flops()
    result = {"machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "trl": trl.__version__,
                          "bf16_matmul_flops": peak},
              "settings": {k: getattr(a, k) for k in ("models", "lengths", "pairs", "steps", "warmup", "batch_size",
                                                      "grad_accum", "seed")}, "rows": [], "failures": []}
    print(f"bf16 matmul: {peak / 1e12:.0f} TFLOP/s", flush=True)
    out_dir = Path(a.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(bench_dpo.ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for model in models:
        dims = bench_dpo.model_dims(dirs[model])
        for length in map(int, a.lengths.split(",")):
            data = stretched_pairs(inputs["data"], inputs["smollm2"], length, a.pairs)
            for name in configs:
                with tempfile.TemporaryDirectory(prefix="tiltbench-gpu-") as work:
                    cmd = [sys.executable, __file__, "--child", name, "--model", dirs[model], "--data", data,
                           "--workdir", work, "--max-length", str(length), "--steps", str(a.steps + a.warmup - 1),
                           "--batch-size", str(a.batch_size), "--grad-accum", str(a.grad_accum), "--seed", str(a.seed)]
                    print(f"[{model} / {length}] {name} ...", flush=True)
                    try:
                        proc = subprocess.run(cmd, env={**env, "HF_DATASETS_CACHE": os.path.join(work, "hfds")},
                                              capture_output=True, text=True, timeout=a.timeout)
                        line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
                        if proc.returncode != 0 or line is None:
                            raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
                        row = summarise(name, model, length, json.loads(line[len("BENCH_RESULT "):]), dims, peak,
                                        a.warmup)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        print(f"  FAILED: {str(e)[-600:]}", flush=True)
                        result["failures"].append({"model": model, "max_length": length, "config": name,
                                                   "error": str(e)[-600:]})
                        continue
                framework, opts = GPU_CONFIGS[name]  # TRL's default reference is live, tiltlm's precomputed
                live = not opts.get("precompute_ref_log_probs", framework == "tiltlm")
                row["predicted_states_mb"] = predicted_state_mb(dirs[model], live_reference=live)
                result["rows"].append(row)
                print(f"  {row['median_step_s']:.3f} s/step, {row['useful_tokens_per_s']:,.0f} tok/s, "
                      f"MFU {100 * row['mfu']:.1f}%, peak {row['cuda_peak_mb']:,.0f} MB", flush=True)
    return bench_dpo.write_results(out_dir, "bench_gpu", result, markdown)


if __name__ == "__main__":
    sys.exit(main())
