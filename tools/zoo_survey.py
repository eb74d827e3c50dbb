"""Survey the architecture zoo (tests/zoo.py) against today's fast log-prob paths.

For every architecture `AutoModelForCausalLM` maps: build a tiny random model, score random pairs longer than
its windows through every layout of tests/tiny_models.LAYOUTS (collate + completion_logps, as tests/test_logps.py
does) and compare each with one plain forward per sequence (tests/tiny_models.naive_logps); then the gradient of
sum(chosen) - 0.5 sum(rejected) through the all-fast layout against the plain layout, and whether two train-mode
forwards agree (dropout or routing noise left on). Prints one row per architecture:

    model_type  build_s  <max |diff| nats per layout>  grad_rel  train_det  total_s  note

`diff` is the worst per-sequence |fast - naive| over the pairs; `grad_rel` = |g_fast - g_plain| / |g_plain|.
Usage: PYTHONPATH=src:tests python tools/zoo_survey.py [--out FILE] [model_type ...]
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import torch  # noqa: E402
import transformers  # noqa: E402

from tiltlm.core.batching import collate  # noqa: E402
from tiltlm.core.logps import completion_logps  # noqa: E402

import zoo  # noqa: E402
from tiny_models import LAYOUTS, naive_logps  # noqa: E402

FAST = "prefix+packed+chunked"


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("over the per-model time limit")


def layout_logps(model, pairs, prefix, packed, chunked):
    batch = collate(pairs, prefix_sharing=prefix, packing=packed, max_tokens_per_row=40)
    return completion_logps(model, batch, chunked=chunked, chunk_size=7)


def short(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:110]}"


def flat_grad(model):
    """Every parameter's gradient (zeros where a layout leaves a parameter out of the graph)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def survey_one(model_type: str, pairs) -> dict:
    row = {"model_type": model_type, "notes": []}
    t0 = time.perf_counter()
    model = zoo.build(model_type)
    row["build_s"] = time.perf_counter() - t0
    if isinstance(model, zoo.Skip):
        row["notes"].append("SKIP " + model.reason)
        return row
    row["class"] = type(model).__name__
    row["attn"] = model.config._attn_implementation
    try:
        with torch.no_grad():
            want_c, want_r = naive_logps(model, pairs)
    except Exception as e:  # noqa: BLE001 - the plain forward itself fails: nothing to compare with
        row["notes"].append("naive: " + short(e))
        row["total_s"] = time.perf_counter() - t0
        return row
    for name, (prefix, packed, chunked) in LAYOUTS.items():
        try:
            with torch.no_grad():
                got = layout_logps(model, pairs, prefix, packed, chunked)
            row[name] = max((got.chosen - want_c).abs().max().item(), (got.rejected - want_r).abs().max().item())
        except Exception as e:  # noqa: BLE001
            row[name] = None
            row["notes"].append(f"{name}: {short(e)}")
    try:
        grads = {}
        for name in ("plain", FAST):
            model.zero_grad(set_to_none=True)
            out = layout_logps(model, pairs, *LAYOUTS[name])
            (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
            grads[name] = flat_grad(model)
        row["grad_rel"] = ((grads[FAST] - grads["plain"]).norm() / grads["plain"].norm()).item()
    except Exception as e:  # noqa: BLE001
        row["notes"].append("grad: " + short(e))
    model.zero_grad(set_to_none=True)
    try:
        model.train()
        ids = torch.tensor([pairs[0].prompt_ids + pairs[0].chosen_ids])
        with torch.no_grad():
            a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        row["train_det"] = "yes" if torch.equal(a, b) else f"NO({(a - b).abs().max().item():.2g})"
    except Exception as e:  # noqa: BLE001
        row["notes"].append("train: " + short(e))
    finally:
        model.eval()
    try:  # the same with the architecture's default dropout / jitter: what train mode does with them
        noisy = zoo.build(model_type, keep_noise=True).train()
        ids = torch.tensor([pairs[0].prompt_ids + pairs[0].chosen_ids])
        with torch.no_grad():
            a, b = noisy(input_ids=ids).logits, noisy(input_ids=ids).logits
        row["noise_det"] = "yes" if torch.equal(a, b) else "NO"
    except Exception as e:  # noqa: BLE001
        row["notes"].append("noisy: " + short(e))
    backbone = getattr(model, model.base_model_prefix, None)
    if backbone is None or backbone is model:
        row["notes"].append(f"base_model_prefix {model.base_model_prefix!r} is not a submodule")
    row["total_s"] = time.perf_counter() - t0
    return row


def fmt(v) -> str:
    if v is None:
        return "ERR"
    if isinstance(v, float):
        return f"{v:.1e}"
    return str(v)


def header() -> str:
    cols = ["model_type", "build_s"] + list(LAYOUTS) + ["grad_rel", "train_det", "dflt_noise_det", "total_s",
                                                         "class/attn | notes"]
    return " ".join(f"{c:>{w}}" for c, w in zip(cols, WIDTHS))


WIDTHS = [26, 7, 8, 8, 8, 8, 21, 8, 9, 14, 7, 0]


def line(row) -> str:
    vals = [row["model_type"], f"{row['build_s']:.2f}"] + [fmt(row.get(k, "-")) for k in LAYOUTS]
    vals += [fmt(row.get("grad_rel", "-")), row.get("train_det", "-"), row.get("noise_det", "-"),
             f"{row.get('total_s', 0):.2f}"]
    tail = f"{row.get('class', '')}/{row.get('attn', '')}"
    if row["notes"]:
        tail += " | " + " ; ".join(row["notes"])
    return " ".join(f"{v:>{w}}" for v, w in zip(vals, WIDTHS)) + " " + tail


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_types", nargs="*")
    ap.add_argument("--out", help="also write the table to this file (rewritten after every row)")
    ap.add_argument("--limit-s", type=int, default=120, help="per-model time limit")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    pairs = zoo.zoo_pairs(4, seed=0)
    lines = [f"# tiltlm zoo survey: transformers {transformers.__version__}, torch {torch.__version__}, fp32 CPU, "
             f"{len(pairs)} pairs (prompt 8-12, completions 6-10 tokens), window {zoo.WINDOW}",
             "# columns: max |fast - one-forward-per-sequence| in nats per layout; grad_rel = |g_fast - g_plain| / "
             "|g_plain| for prefix+packed+chunked; train_det = two train-mode forwards equal (zoo config: dropout/jitter "
             "0); dflt_noise_det = the same with the architecture's default dropout/jitter", header()]
    signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    for mt in args.model_types or zoo.ZOO:
        signal.alarm(args.limit_s)
        try:
            row = survey_one(mt, pairs)
        except Exception as e:  # noqa: BLE001 - build failed
            row = {"model_type": mt, "build_s": 0.0, "notes": ["build: " + short(e)]}
        finally:
            signal.alarm(0)
        lines.append(line(row))
        print(lines[-1], flush=True)
        if args.out:
            pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    lines.append(f"# total {time.perf_counter() - start:.1f} s for {len(args.model_types or zoo.ZOO)} model types")
    print(lines[-1])
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
