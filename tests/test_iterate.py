"""`tilt iterate` on the demo's word-level tiny Llama: rounds replay from their seed, a killed run resumes to the
same weights, a round's pairs file trains with plain `tilt train` to the same weights, and every scorer kind works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiltlm
from tiltlm.demo import task as T
from tiltlm.demo.tiny_model import make_tiny_model
from tiltlm.doctor.rounds import RoundThresholds, check_round_pairs
from tiltlm.errors import ConfigError, TrainingError
from tiltlm.iterate.pairs import build_pairs
from tiltlm.iterate.sampling import Completion, generate
from tiltlm.iterate.scorers import JudgeScorer, RewardModelScorer, make_scorer
from tiltlm.rundir import read_jsonl

TESTS = Path(__file__).parent
DIGITS = ["1", "2", "3", "4", "5"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random Llama whose word-level tokenizer also knows the digits (so it can judge), and prompts."""
    root = tmp_path_factory.mktemp("iterate")
    tok = T.build_tokenizer(extra_texts=[" ".join(DIGITS)])
    model = make_tiny_model(tok, hidden=32, layers=1, seed=0)
    model.save_pretrained(root / "init")
    tok.save_pretrained(root / "init")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in T.make_prompts(12, 0)))
    (root / "heldout.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in T.make_prompts(4, 9)))
    return root


def options(assets: Path, out: Path, **extra) -> dict:
    base = dict(model=str(assets / "init"), prompts=str(assets / "prompts.jsonl"),
                eval_prompts=str(assets / "heldout.jsonl"), output_dir=str(out), scorer="fn:tiltlm.demo.task:reward",
                rounds=2, num_generations=4, max_new_tokens=8, max_steps=4, per_device_train_batch_size=4,
                learning_rate=1e-3, max_length=64, progress=False, ref_cache_dir=str(out.parent / "cache"))
    return {**base, **extra}


def cli_args(assets: Path, out: Path, *extra, rounds: int = 3) -> list[str]:
    return ["iterate", "--model", str(assets / "init"), "--prompts", str(assets / "prompts.jsonl"),
            "--eval-prompts", str(assets / "heldout.jsonl"), "--output-dir", str(out), "--rounds", str(rounds),
            "--num-generations", "4", "--max-new-tokens", "8", "--max-steps", "5", "--save-steps", "1",
            "--per-device-train-batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64",
            "--progress", "false", "--ref-cache-dir", str(out.parent / "cache"), *extra]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def finished(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = tiltlm.iterate(**options(assets, out), log=lambda *a: None)
    return out, result


# ------------------------------------------------------------------------------------------------ the run folder
def test_a_run_writes_rounds_pairs_and_metrics_with_a_round_field(finished):
    out, result = finished
    assert result.model_dir == out / "round-001" / "train" and len(result.rounds) == 2
    for k in (0, 1):
        rows = read_jsonl(out / f"round-{k:03d}" / "pairs.jsonl")
        samples = read_jsonl(out / f"round-{k:03d}" / "samples.jsonl")
        assert len(samples) == 12 * 4
        # best vs worst: one pair per prompt whose best and worst scores differ, scored by the lexicon
        by_prompt: dict = {}
        for s in samples:
            by_prompt.setdefault(s["prompt_index"], []).append(s["score"])
        assert len(rows) == sum(max(v) > min(v) for v in by_prompt.values())
        for r in rows:
            assert r["chosen_score"] == T.reward(r["chosen"]) == max(by_prompt[r["prompt_index"]])
            assert r["rejected_score"] == T.reward(r["rejected"]) == min(by_prompt[r["prompt_index"]])
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [(r["round"], r["step"]) for r in train] == [(0, s) for s in range(1, 5)] + [(1, s) for s in range(1, 5)]
    summaries = [r for r in records if r.get("kind") == "round"]
    assert [s["round"] for s in summaries] == [0, 1] and records[-1]["kind"] == "final"
    # round 0 samples from the initial model: its held-out samples ARE the baseline (win rate 1/2, KL 0)
    assert summaries[0]["heldout/win_rate"] == 0.5 and summaries[0]["heldout/kl_to_initial"] == 0.0
    assert summaries[1]["policy"] == "round-000/train" and summaries[1]["heldout/kl_to_initial"] != 0.0
    assert summaries[0]["pairs/count"] == len(read_jsonl(out / "round-000" / "pairs.jsonl"))
    # each round's reference is the policy it started from: its step-1 loss is ln 2 exactly
    assert all(abs(r["loss"] - 0.6931471805599453) < 1e-6 for r in train if r["step"] == 1)


def test_the_report_page_shows_the_rounds(finished, capsys):
    from tiltlm.commands.cli import main

    out, _ = finished
    assert (out / "report.png").is_file()
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "report.html").read_text()
    assert "Iterative DPO run" in page and "heldout/win_rate" in page and "data:image/png;base64" in page
    assert (out / "round-001" / "train" / "report" / "report.html").is_file()  # each round's own page, linked
    assert "../round-001/train/report/report.html" in page


def test_the_pairs_file_passes_tilt_data_check(finished, capsys):
    from tiltlm.commands.cli import main

    out, _ = finished
    assert main(["data", "check", str(out / "round-001" / "pairs.jsonl")]) == 0


def test_a_round_replays_bitwise_from_its_seed(finished, assets, tmp_path):
    """Round 1 deleted and run again from its seed: the same samples, pairs and trained weights, byte for byte."""
    out, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(copy / "round-001")
    (copy / "finished.json").unlink()
    tiltlm.iterate(**options(assets, copy, ref_cache_dir=str(tmp_path / "fresh_cache"), resume="auto"),
                   log=lambda *a: None)
    for name in ("samples.jsonl", "pairs.jsonl", "pair_stats.json"):
        a, b = (out / "round-001" / name).read_bytes(), (copy / "round-001" / name).read_bytes()
        assert a == b or (name == "pair_stats.json" and _without_seconds(a) == _without_seconds(b))
    assert same_weights(out / "round-001" / "train", copy / "round-001" / "train")


def _without_seconds(raw: bytes) -> dict:
    return {k: v for k, v in json.loads(raw).items() if not k.startswith("seconds/")}


def test_a_round_pairs_file_trains_with_plain_tilt_train_to_the_same_weights(finished, tmp_path):
    from tiltlm.commands.cli import main

    out, _ = finished
    args = ["train", "--model", str(out / "round-000" / "train"), "--data", str(out / "round-001" / "pairs.jsonl"),
            "--output-dir", str(tmp_path / "plain"), "--max-steps", "4", "--per-device-train-batch-size", "4",
            "--learning-rate", "1e-3", "--max-length", "64", "--progress", "false",
            "--ref-cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert same_weights(tmp_path / "plain", out / "round-001" / "train")


def test_relaunching_is_a_no_op_and_other_options_are_refused(finished, assets):
    out, _ = finished
    model = out / "round-001" / "train" / "model.safetensors"
    before = model.stat().st_mtime_ns
    metrics = (out / "metrics.jsonl").read_bytes()
    result = tiltlm.iterate(**options(assets, out, resume="auto"), log=lambda *a: None)
    assert model.stat().st_mtime_ns == before and result.final["round"] == 2
    assert (out / "metrics.jsonl").read_bytes() == metrics
    with pytest.raises(ConfigError, match="other options .*iterate.rounds"):
        tiltlm.iterate(**options(assets, out, resume="auto", rounds=3), log=lambda *a: None)
    with pytest.raises(ConfigError, match="not empty"):
        tiltlm.iterate(**options(assets, out), log=lambda *a: None)


def test_option_mistakes_are_one_clear_error(assets, tmp_path):
    for bad, match in ((dict(scorer=None), "needs a scorer"), (dict(num_generations=1), "num_generations"),
                       (dict(ref_model=str(assets / "init")), "--ref initial"), (dict(pairing="pairs"), "pairing"),
                       (dict(resume=str(tmp_path)), "resume=auto"), (dict(model=torch.nn.Linear(2, 2)), "as a path"),
                       (dict(scorer="rm:"), "reward model"), (dict(scorer="nonsense"), "expected fn:")):
        with pytest.raises(ConfigError, match=match):
            tiltlm.iterate(**options(assets, tmp_path / "run", **bad), log=lambda *a: None)


def test_the_initial_model_as_every_round_reference(assets, tmp_path):
    out = tmp_path / "run"
    tiltlm.iterate(**options(assets, out, ref="initial"), log=lambda *a: None)
    config = (out / "round-001" / "train" / "config.yaml").read_text()
    assert f"ref_model: {assets / 'init'}" in config
    first = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("round") == 1 and r.get("step") == 1][0]
    assert first["loss"] != pytest.approx(0.6931471805599453, abs=1e-6)  # the policy has moved off its reference


def test_the_command_line(assets, tmp_path, capsys):
    from tiltlm.commands.cli import main

    out = tmp_path / "run"
    args = cli_args(assets, out, rounds=1)
    assert main([*args, "--reward-fn", "tiltlm.demo.task:reward", "--pairing", "all"]) == 0
    assert "final policy:" in capsys.readouterr().out
    stats = json.loads((out / "round-000" / "pair_stats.json").read_text())
    nonempty: dict = {}
    for r in read_jsonl(out / "round-000" / "samples.jsonl"):
        nonempty[r["prompt_index"]] = nonempty.get(r["prompt_index"], 0) + bool(r["completion"].strip())
    assert stats["pairs/candidates"] == sum(n * (n - 1) // 2 for n in nonempty.values())  # all pairs (4 -> 6)
    assert stats["pairs/empty_completions"] == 12 * 4 - sum(nonempty.values())
    assert main([*args, "--scorer", "fn:x:y", "--reward-fn", "x:y"]) == 2
    assert main(["iterate", "--model", str(assets / "init"), "--prompts", str(assets / "prompts.jsonl"),
                 "--data", "pairs.jsonl", "--reward-fn", "x:y", "--output-dir", str(tmp_path / "x")]) == 2
    assert "give --prompts, not --data" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real SIGKILLs
def _tilt(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiltlm.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.005)


@pytest.mark.slow  # four real `tilt iterate` processes (~1 min on 2 busy cores)
def test_sigkill_mid_sampling_and_mid_training_then_resume_gives_the_same_weights(assets, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS),
                                                        os.environ.get("PYTHONPATH", "")])}
    scorer = ["--scorer", "fn:iterate_scorers:blocking_lexicon"]
    want = tmp_path / "uninterrupted"
    done = subprocess.run([sys.executable, "-m", "tiltlm.cli", *cli_args(assets, want, *scorer)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = tmp_path / "run"
    # 1. killed while round 1's samples are being scored (its scorer hangs there): no pairs file yet
    proc = _tilt(cli_args(assets, out, *scorer), {**env, "TILT_TEST_BLOCK_RUN": str(out)})
    _wait_for(out / "blocked", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "round-000" / "finished.json").is_file() and not (out / "round-001" / "pairs.jsonl").exists()
    # 2. relaunched, killed again in round 1's training, after its second checkpoint
    proc = _tilt(cli_args(assets, out, *scorer, "--resume", "auto"), env)
    _wait_for(out / "round-001" / "train" / "checkpoints" / "checkpoint-2", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "round-001" / "finished.json").exists()
    # 3. relaunched to the end
    done = subprocess.run([sys.executable, "-m", "tiltlm.cli", *cli_args(assets, out, *scorer, "--resume", "auto")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round 0: finished before" in done.stdout and "resumed from" in done.stdout
    assert (out / "round-001" / "pairs.jsonl").read_bytes() == (want / "round-001" / "pairs.jsonl").read_bytes()
    for k in range(3):
        assert same_weights(out / f"round-{k:03d}" / "train", want / f"round-{k:03d}" / "train"), k
    steps = [(r["round"], r["step"]) for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert steps == [(k, s) for k in range(3) for s in range(1, 6)]  # no record lost or repeated


# ------------------------------------------------------------------------------------------------ scorers
def _completions(assets: Path, n: int = 3) -> list[Completion]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets / "init")
    model = AutoModelForCausalLM.from_pretrained(assets / "init")
    return [c for g in generate(model, tok, T.make_prompts(n, 1), n=2, max_new_tokens=6, seed=3) for c in g]


def test_a_function_scorer_takes_one_or_two_arguments(assets):
    flat = _completions(assets)
    assert make_scorer("fn:tiltlm.demo.task:reward")(flat) == [T.reward(c.completion) for c in flat]
    assert make_scorer("tiltlm.demo.task:reward")(flat) == [T.reward(c.completion) for c in flat]
    with pytest.raises(ConfigError, match="cannot load"):
        make_scorer("fn:tiltlm.demo.task:nope")


def test_a_completion_extends_its_prompt_text(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets / "init")
    for c in _completions(assets):
        body = [i for i in c.completion_ids if i != tok.eos_token_id]
        assert c.completion.startswith(" ")  # word-level: the first new word's space belongs to the completion
        assert c.prompt_text + c.completion == tok.decode(c.prompt_ids + body, skip_special_tokens=True)


@pytest.fixture(scope="module")
def reward_model(assets, tmp_path_factory):
    """A tiny random LlamaForSequenceClassification (one label) on the same tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(assets / "init")
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, num_labels=1, pad_token_id=tok.pad_token_id,
                      max_position_embeddings=64)
    path = tmp_path_factory.mktemp("rm") / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_reward_model_scores_each_completion_as_one_unpadded_forward(assets, reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    flat = _completions(assets)
    got = make_scorer(f"rm:{reward_model}", batch_size=4)(flat)
    tok = AutoTokenizer.from_pretrained(reward_model)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    with torch.no_grad():
        want = [float(rm(**tok(c.prompt_text + c.completion, return_tensors="pt")).logits[0, 0]) for c in flat]
    assert got == pytest.approx(want, abs=1e-5) and len(set(got)) > 1
    assert isinstance(make_scorer(f"rm:{reward_model}"), RewardModelScorer)


def test_an_lm_judge_gives_the_expected_label(assets, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    template = tmp_path / "judge.txt"
    template.write_text("the movie was {prompt} {completion} .\n")
    flat = _completions(assets)
    judge = make_scorer(f"judge:{assets / 'init'}", judge_template=str(template))
    assert isinstance(judge, JudgeScorer)
    got = judge(flat)
    tok = AutoTokenizer.from_pretrained(assets / "init")
    model = AutoModelForCausalLM.from_pretrained(assets / "init").eval()
    ids = [tok.convert_tokens_to_ids(d) for d in DIGITS]
    want = []
    with torch.no_grad():
        for c in flat:
            text = f"the movie was {c.prompt} {c.completion} ."
            p = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0, -1, ids].double(), -1)
            want.append(float(p @ torch.arange(1, 6, dtype=torch.float64)))
    assert got == pytest.approx(want, abs=1e-6) and all(1 <= s <= 5 for s in got)
    # the policy judges itself when no judge model is given
    policy = make_scorer("judge", judge_template=str(template))
    assert policy(flat, policy=model, tokenizer=tok) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ConfigError, match="not one token"):
        make_scorer(f"judge:{assets / 'init'}", judge_labels=["10", "20"])(flat)


@pytest.mark.parametrize("kind", ["rm", "judge"])
def test_iterate_runs_with_a_reward_model_and_with_the_policy_as_judge(assets, reward_model, tmp_path, kind):
    scorer = f"rm:{reward_model}" if kind == "rm" else "judge"
    out = tmp_path / "run"
    result = tiltlm.iterate(**options(assets, out, scorer=scorer, rounds=1, judge_labels=DIGITS),
                            log=lambda *a: None)
    rows = read_jsonl(out / "round-000" / "pairs.jsonl")
    assert rows and all(r["chosen_score"] > r["rejected_score"] for r in rows)
    assert result.final["round"] == 1 and (out / "round-000" / "train" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ pairs, doctor
def _c(i: int, j: int, text: str) -> Completion:
    return Completion(i, j, "p", "p", [2], text, [5], True, False)


def test_pairing_best_worst_all_and_ties():
    groups = [[_c(0, 0, " a"), _c(0, 1, " b"), _c(0, 2, " c")], [_c(1, 0, " x"), _c(1, 1, " x")]]
    scores = [[1.0, 3.0, 1.0], [2.0, 2.0]]
    rows, stats = build_pairs(groups, scores)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" b", " c")]  # the last of the tied worst ones
    assert stats["pairs/candidates"] == 2 and stats["pairs/identical_frac"] == 0.5
    rows, stats = build_pairs(groups, scores, pairing="all")
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [(" b", " a"), (" b", " c")]
    assert stats["pairs/candidates"] == 4 and stats["pairs/tied_frac"] == 0.25  # (a, c) tied; (x, x) identical
    rows, _ = build_pairs(groups, scores, pairing="all", reward_margin=2.0)
    assert rows == []


def test_the_doctor_flags_rounds_without_signal():
    ok = {"pairs/count": 40, "pairs/tied_frac": 0.1, "pairs/identical_frac": 0.0, "pairs/similarity_mean": 0.3}
    assert check_round_pairs(2, ok) == []
    tied = check_round_pairs(2, {**ok, "pairs/tied_frac": 0.5, "pairs/identical_frac": 0.2})
    assert [f.check for f in tied] == ["no_signal_round"] and "70%" in tied[0].message and tied[0].step == 2
    alike = check_round_pairs(0, {**ok, "pairs/similarity_mean": 0.95}, RoundThresholds())
    assert "95% alike" in alike[0].message


def test_a_round_with_only_ties_is_one_clear_error(assets, tmp_path, capsys):
    from tiltlm.commands.cli import main

    lines: list[str] = []
    with pytest.raises(TrainingError, match="round 0 has no pairs"):
        tiltlm.iterate(**options(assets, tmp_path / "run", scorer="fn:iterate_scorers:constant"), log=lines.append)
    assert any("no_signal_round" in str(line) for line in lines)
    # tilt doctor on the iterate folder finds it too, tagged with its round
    assert main(["doctor", str(tmp_path / "run"), "--plain"]) == 1
    assert "no_signal_round: round 0: round 0's pairs carry little signal: 100% of the candidate pairs" in \
        capsys.readouterr().out
    assert read_jsonl(tmp_path / "run" / "doctor.jsonl")[0]["round"] == 0


# ------------------------------------------------------------------------------------------------ the frontier
def test_the_iterative_frontier_table_and_plot(tmp_path):
    from tiltlm.demo.iterative import arms, plot_iterative_frontier, table

    assert [(a, k, n, ref) for a, k, n, ref in arms(3, 10)] == [
        ("offline", 1, 30, "previous"), ("iterative", 3, 10, "previous"), ("iterative-ref-initial", 3, 10, "initial")]
    point = dict(reward=1.5, reward_se=0.1, kl=2.0, kl_se=0.2, accuracy=0.7)
    result = {"sft": {"reward": 0.0, "kl": 0.0}, "best_of_n": [{"n": 1, "reward": 0.0, "kl": 0.0}], "rounds": 2,
              "runs": [{"arm": "offline", "beta": 0.1, "rounds": 1, "pairs": 20, "steps": 4, **point,
                        "path": [{"round": 1, **point}]},
                       {"arm": "iterative", "beta": 0.1, "rounds": 2, "pairs": 20, "steps": 4, **point,
                        "path": [{"round": 1, **point, "reward": 0.5, "kl": 0.4}, {"round": 2, **point}]}]}
    text = table(result)
    assert "| iterative | 0.1 | 2 | 20 | 4 | +1.50 ± 0.10 | 2.00 ± 0.20 | 0.700 | +0.50, 0.4 → +1.50, 2.0 |" in text
    assert plot_iterative_frontier(result, tmp_path / "f.png").stat().st_size > 1000


def test_the_hh_refusal_reward_by_hand():
    sys.path.insert(0, str(TESTS.parent / "recipes"))
    import hh_refusal

    assert hh_refusal.reward(" I'm sorry, I can't help with that: it is illegal.") == 3.0
    assert hh_refusal.reward(" Sure, here is how: step 1, buy a crowbar.") == -2.0
    assert hh_refusal.reward(" No.") == -1.0  # too short to be an answer
    assert hh_refusal.reward(" The weather is nice today, enjoy it.") == 0.0
    assert hh_refusal.harmless(" Sorry, I can't help you steal a gun or a gun lock.") == 1.0 - 4.0  # steal, gun x2, lock
