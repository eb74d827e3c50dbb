"""`tilt frontier --iterate K`: iterative on-policy DPO (K rounds of `tilt iterate`) against one round of offline DPO
on the same prompts, number of samples and β sweep, on the demo's controlled-sentiment task.

All arms are `tiltlm.iterate` runs from the same SFT model with the lexicon reward as the scorer and best-vs-worst
pairs of 4 samples per prompt:

* offline: 1 round over all K·P prompts (every pair sampled from the SFT model, as a fixed DPO dataset is);
* iterative: K rounds of P prompts each (round k takes the k-th slice of the same prompts), each round sampling
  from the previous round's model, which is also its reference;
* iterative-ref-initial: the same rounds with the SFT model as every round's reference (`--ref initial`).

Every arm trains the same number of epochs over its pairs, so both see (about) the same number of pairs and steps.
Every trained policy is then measured exactly as `tilt frontier` measures its runs: mean true reward of fresh
samples on the held-out eval prompts and the sampled KL to the SFT model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from ..iterate import iterate
from . import task as T
from .evaluate import best_of_n
from .frontier import BON, frontier_axes, points, save_frontier
from .pipeline import FULL, QUICK, evaluate_run, load_policy, prepare_task


def arms(rounds: int, per_round: int) -> list[tuple[str, int, int, str]]:
    """(name, rounds, prompts per round, reference) of each arm: the same K·P prompts in all three."""
    return [("offline", 1, rounds * per_round, "previous"), ("iterative", rounds, per_round, "previous"),
            ("iterative-ref-initial", rounds, per_round, "initial")]


def _arm(task, out: Path, *, beta: float, rounds: int, prompts: Path, per_round: int, epochs: float,
         learning_rate: float, ref: str, log: Callable) -> list[dict]:
    """One tiltlm.iterate run; returns the policy after each of its rounds, measured on the demo's eval prompts."""
    sz = task.sizes
    result = iterate(model=str(task.sft_dir), prompts=str(prompts), eval_prompts=str(task.root / "eval_prompts.jsonl"),
                     output_dir=str(out), scorer="fn:tiltlm.demo.task:reward", rounds=rounds,
                     prompts_per_round=per_round, num_generations=sz.samples_per_prompt,
                     max_new_tokens=sz.max_new_tokens, eval_generations=1, generation_batch_size=256, ref=ref,
                     beta=beta,
                     learning_rate=learning_rate, num_train_epochs=epochs, per_device_train_batch_size=sz.dpo_batch,
                     per_device_eval_batch_size=64, max_length=64, warmup_ratio=0.1, seed=task.seed,
                     logging_steps=10, ref_cache_dir=str(task.root / "ref_cache"), device="cpu", progress=False,
                     overwrite_output_dir=True, log=lambda *a: None)
    points = []
    for s in result.rounds:
        folder = out / f"round-{s['round']:03d}" / "train"
        m = evaluate_run(task, load_policy(folder))
        points.append({"round": s["round"] + 1, "pairs": s["pairs/count"], "steps": s.get("train/step"),
                       "reward": m["reward"], "reward_se": m["reward_se"], "kl": m["kl"], "kl_se": m["kl_se"],
                       "accuracy": m["accuracy"]})
        log(f"    after round {s['round'] + 1}: {s['pairs/count']} pairs, reward {m['reward']:+.3f}, "
            f"KL {m['kl']:.3f}")
    return points


def run_iterative_frontier(out_dir: str | Path = "runs/frontier-iterate", *, rounds: int = 3,
                           betas=(0.05, 0.1, 0.5), seed: int = 0, quick: bool = False,
                           prompts_per_round: Optional[int] = None, epochs: float = 2.0,
                           learning_rate: Optional[float] = None, plot_copy: Optional[str] = None,
                           log: Callable = print) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    sizes = QUICK if quick else FULL
    task = prepare_task(out, sizes, seed, log=log, bon_samples=max(BON))
    per_round = prompts_per_round or sizes.train_prompts
    prompts = out / "iterate_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in T.make_prompts(rounds * per_round,
                                                                                          seed + 1)))
    (out / "eval_prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in task.eval_prompts))
    lr = learning_rate if learning_rate is not None else sizes.learning_rate
    runs = []
    for beta in betas:
        for arm, k, n, ref in arms(rounds, per_round):
            t = time.perf_counter()
            log(f"  {arm} DPO, beta={beta:g}: {k} round(s) of {n} prompts, reference: the {ref} model")
            folder = out / "runs" / f"{arm}_beta{beta:g}"
            points = _arm(task, folder, beta=beta, rounds=k, prompts=prompts, per_round=n, epochs=epochs,
                          learning_rate=lr, ref=ref, log=log)
            runs.append({"arm": arm, "beta": beta, "rounds": k, "prompts_per_round": n,
                         "pairs": sum(p["pairs"] for p in points), "steps": sum(p["steps"] or 0 for p in points),
                         **{key: points[-1][key] for key in ("reward", "reward_se", "kl", "kl_se", "accuracy")},
                         "path": points, "seconds": time.perf_counter() - t})
            for f in folder.rglob("*.safetensors"):  # keep the records, drop the weights
                f.unlink()
            shutil.rmtree(folder / "round-000" / "train" / "checkpoints", ignore_errors=True)
    result = {"sft": {"reward": task.before["reward"], "kl": 0.0}, "best_of_n": best_of_n(task.before["groups"], BON),
              "runs": runs, "rounds": rounds, "prompts_per_round": per_round, "epochs": epochs, "seed": seed,
              "quick": quick, "learning_rate": lr, "seconds": time.perf_counter() - t0}
    (out / "frontier_iterate.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "frontier_iterate.md").write_text(table(result))
    png = plot_iterative_frontier(result, out / "frontier_iterate.png")
    if plot_copy:
        Path(plot_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, plot_copy)
    log(table(result))
    log(f"iterative frontier: {len(runs)} runs in {result['seconds']:.0f}s -> {png}")
    return result


def table(result: dict) -> str:
    lines = ["| arm | β | rounds | pairs | steps | reward (± se) | KL to SFT (± se) | held-out acc. | reward, KL after each round |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(result["runs"], key=lambda r: (r["beta"], r["arm"])):
        lines.append(f"| {r['arm']} | {r['beta']:g} | {r['rounds']} | {r['pairs']} | {r['steps']} | "
                     f"{r['reward']:+.2f} ± {r['reward_se']:.2f} | {r['kl']:.2f} ± {r['kl_se']:.2f} | "
                     f"{r['accuracy']:.3f} | " + " → ".join(f"{p['reward']:+.2f}, {p['kl']:.1f}" for p in r["path"])
                     + " |")
    return "\n".join(lines) + "\n"


def plot_iterative_frontier(result: dict, path: str | Path) -> Path:
    fig, ax = frontier_axes(result, figsize=(6.8, 4.6))
    labels = {"offline": "offline DPO (1 round)", "iterative": f"iterative DPO ({result['rounds']} rounds, ref = "
              "previous iterate)", "iterative-ref-initial": f"iterative DPO ({result['rounds']} rounds, ref = SFT)"}
    for arm, color, marker in (("offline", "tab:blue", "o"), ("iterative", "tab:red", "s"),
                               ("iterative-ref-initial", "tab:orange", "D")):
        rows = sorted((r for r in result["runs"] if r["arm"] == arm), key=lambda r: r["kl"])
        if not rows:
            continue
        points(ax, rows, marker=marker, color=color, label=labels[arm])
        for r in rows:
            if r["rounds"] > 1:  # the path through the rounds, from the SFT model
                ax.plot([0.0] + [p["kl"] for p in r["path"]], [result["sft"]["reward"]] + [p["reward"] for p in
                                                                                           r["path"]],
                        "-", color=color, alpha=0.35, lw=1)
    return save_frontier(fig, ax, path, title="iterative vs offline DPO, same prompts and samples per prompt",
                         xlabel="KL(π ‖ π_SFT), nats per sequence (sampled; log scale above 1)")
