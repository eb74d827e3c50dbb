"""Data where users have it: hub names from the Hugging Face cache (offline), the public datasets' layouts (
ultrafeedback_binarized, orca_dpo_pairs), split folders and DatasetDicts, duplicates, too-long prompts, custom chat
templates. Every file is generated here with the public datasets' schemas; nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fixtures_gen as fg
from hub_cache import put_in_hub_cache, write_split_parquet
from tiltlm.commands.cli import main as tilt
from tiltlm.config import load_config
from tiltlm.data import Columns, DataError, available_splits, load_examples, prepare_dataset
from tiltlm.data.tokenize import render_chat
from tiltlm.errors import ConfigError
from tiltlm.model.loading import load_tokenizer
from tiltlm.types import PreferenceExample


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def ultrafeedback_row(k: int, chosen: str, rejected: str) -> dict:
    """HuggingFaceH4/ultrafeedback_binarized's schema: a string prompt, full conversations, extra columns."""
    prompt = f"Question {k}: can you help me?"
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
            "chosen": [user(prompt), bot(chosen)], "rejected": [user(prompt), bot(rejected)],
            "messages": [user(prompt), bot(chosen)], "score_chosen": 8.0, "score_rejected": 3.5}


def ultrafeedback_rows(n: int, start: int = 0) -> list[dict]:
    return [ultrafeedback_row(k, "Happy to help with that.", "No, do it alone.") for k in range(start, start + n)]


# --- layouts -----------------------------------------------------------------------------------------------------

def test_ultrafeedback_binarized_layout(tmp_path):
    rows = ultrafeedback_rows(2)
    rows.append({**ultrafeedback_row(2, "", ""),  # a multi-turn pair: the shared turns are the prompt
                 "chosen": [user("Hi"), bot("Hello!"), user("Sky colour?"), bot("Blue.")],
                 "rejected": [user("Hi"), bot("Hello!"), user("Sky colour?"), bot("Green.")]})
    for path in (fg.write_jsonl(tmp_path / "uf.jsonl", rows), fg.write_parquet(tmp_path / "uf.parquet", rows)):
        ex, issues = load_examples(str(path))
        assert issues == []
        assert [(e.prompt, e.chosen, e.rejected, e.conversational) for e in ex] == [
            ([user("Question 0: can you help me?")], [bot("Happy to help with that.")], [bot("No, do it alone.")],
             True),
            ([user("Question 1: can you help me?")], [bot("Happy to help with that.")], [bot("No, do it alone.")],
             True),
            ([user("Hi"), bot("Hello!"), user("Sky colour?")], [bot("Blue.")], [bot("Green.")], True)]


ORCA = [{"system": "You are terse.", "question": "Sky colour?", "chosen": "Blue.", "rejected": "Green."},
        {"system": "", "question": "2+2?", "chosen": "4", "rejected": "5"}]


def test_orca_dpo_pairs_columns_and_system(tmp_path, smollm2_tokenizer):
    p = fg.write_parquet(tmp_path / "orca.parquet", ORCA)
    cols = Columns(prompt="question", system="system")
    ex, issues = load_examples(str(p), columns=cols)
    assert issues == []
    assert [(e.prompt, e.chosen, e.rejected) for e in ex] == [
        ([{"role": "system", "content": "You are terse."}, user("Sky colour?")], [bot("Blue.")], [bot("Green.")]),
        ([user("2+2?")], [bot("4")], [bot("5")])]  # a blank system text: no system message, same rendering
    # the system text is the template's system turn (SmolLM2's default system turn is replaced, not added)
    _, pairs, stats = prepare_dataset(str(p), smollm2_tokenizer, max_length=128, columns=cols)
    assert stats["format"] == "standard/explicit+system"
    assert smollm2_tokenizer.decode(pairs[0].prompt_ids) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSky colour?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert smollm2_tokenizer.decode(pairs[0].chosen_ids) == "Blue.<|im_end|>\n"


def test_data_check_honours_the_layout_options(tmp_path, capsys):
    p = fg.write_jsonl(tmp_path / "orca.jsonl", ORCA + [ORCA[0]])
    assert tilt(["data", "check", str(p), "--prompt-column", "question", "--system-column", "system"]) == 0
    out = capsys.readouterr().out
    assert f"{p}: 3 rows, 3 valid, format standard/explicit+system" in out
    assert "duplicate_pair      1" in out and f"{p}:3 [chosen]: same prompt/chosen/rejected as {p}:1" in out
    assert tilt(["data", "check", str(p), "--prompt-column", "instruction"]) == 1
    assert "no column 'instruction' (given by --prompt-column)" in capsys.readouterr().err


def test_a_mapped_column_missing_from_the_file_is_one_line(tmp_path):
    p = fg.write_jsonl(tmp_path / "orca.jsonl", ORCA)
    with pytest.raises(DataError) as e:
        load_examples(str(p), columns=Columns(prompt="instruction"))
    assert str(e.value) == (f"{p}: no column 'instruction' (given by --prompt-column); its columns: system, "
                            "question, chosen, rejected")
    # a row without a mapped column later in the file is a row issue that names the file's column
    p = fg.write_jsonl(tmp_path / "gap.jsonl", [ORCA[0], {"question": "q?", "chosen": "a", "rejected": "b"}])
    _, issues = load_examples(str(p), columns=Columns(prompt="question", chosen="chosen", system="system"))
    assert issues == []  # a missing system text is no system message
    p = fg.write_jsonl(tmp_path / "gap2.jsonl", [ORCA[0], {"system": "", "question": "q?", "chosen": "a"}])
    _, issues = load_examples(str(p), columns=Columns(prompt="question", rejected="rejected", system="system"))
    assert [(i.source, i.field, i.kind) for i in issues] == [(f"{p}:2", "rejected", "missing_field")]


def test_datasetdict_and_split_files(tmp_path):
    dd = fg.write_hf(tmp_path / "dd", fg.format_rows("standard/explicit"))  # a DatasetDict with a train split
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(fg.format_rows("standard/explicit")),
                          "test": datasets.Dataset.from_list(fg.format_rows("standard/explicit")[:2])}
                         ).save_to_disk(str(tmp_path / "dd2"))
    assert available_splits(str(dd)) == ["train"]
    assert sorted(available_splits(str(tmp_path / "dd2"))) == ["test", "train"]
    ex, _ = load_examples(str(tmp_path / "dd2"), split="test")
    assert [e.source for e in ex] == [f"{tmp_path / 'dd2' / 'test'}#0", f"{tmp_path / 'dd2' / 'test'}#1"]
    with pytest.raises(DataError, match=r"has no split 'validation'; its splits: (train, test|test, train)"):
        load_examples(str(tmp_path / "dd2"), split="validation")

    uf = write_split_parquet(tmp_path / "uf", {"train_prefs": ultrafeedback_rows(3), "test_prefs":
                                               ultrafeedback_rows(2, start=3)})
    assert available_splits(str(uf)) == ["test_prefs", "train_prefs"]
    ex, _ = load_examples(str(uf), split="train_prefs")
    assert [e.source for e in ex] == [f"{uf}/data/train_prefs-00000-of-00001.parquet#{i}" for i in range(3)]
    ex, _ = load_examples(str(uf), split="test_prefs")
    assert [e.prompt[0]["content"] for e in ex] == ["Question 3: can you help me?", "Question 4: can you help me?"]
    with pytest.raises(DataError) as e:
        load_examples(str(uf))  # the default split is "train"
    assert str(e.value) == (f"{uf} has no split 'train'; its splits: test_prefs, train_prefs (choose with "
                            "--dataset-train-split, or --dataset-test-split for the eval data)")
    plain = tmp_path / "plain"  # files named train / test
    plain.mkdir()
    fg.write_jsonl(plain / "train.jsonl", fg.format_rows("standard/explicit"))
    fg.write_jsonl(plain / "test.jsonl", fg.format_rows("standard/explicit")[:1])
    assert sorted(available_splits(str(plain))) == ["test", "train"]
    assert len(load_examples(str(plain), split="test")[0]) == 1
    assert available_splits(str(plain / "train.jsonl")) is None  # a file is the data itself


# --- duplicates, length budget, --max-prompt-length --------------------------------------------------------------

def test_too_long_prompts_are_skipped_and_counted(tmp_path, smollm2_tokenizer):
    long = {"prompt": "one two three four five six seven eight nine ten:", "chosen": " yes", "rejected": " no"}
    short = [{"prompt": "Hi:", "chosen": " yes", "rejected": " no"}, {"prompt": "Sky:", "chosen": " blue",
                                                                      "rejected": " red"}]
    p = fg.write_jsonl(tmp_path / "d.jsonl", [short[0], long, short[1]])
    logged, skipped = [], tmp_path / "skipped.jsonl"
    ex, pairs, stats = prepare_dataset(str(p), smollm2_tokenizer, max_length=8, skipped_path=str(skipped),
                                       log=logged.append)
    assert [e.index for e in ex] == [pr.index for pr in pairs] == [0, 2]
    assert stats["valid"] == 2 and stats["skipped"] == 1 and stats["skipped_by_kind"] == {"prompt_too_long": 1}
    (rec,) = [json.loads(x) for x in skipped.read_text().splitlines()]
    assert rec == {"source": f"{p}:2", "field": "prompt", "kind": "prompt_too_long",
                   "reason": "the prompt alone is 11 tokens, max_length is 8: no room left for the completion "
                             "(raise --max-length or set --max-prompt-length)"}
    assert logged == [f"warning: {p}: skipped 1 pairs whose prompt alone leaves no room under --max-length 8 "
                      f"(first: {p}:2); raise --max-length, or set --max-prompt-length to keep the end of each prompt"]
    # --max-prompt-length keeps the prompt's END (the words nearest the answer): " eight nine ten:" is 4 tokens
    ex, pairs, stats = prepare_dataset(str(p), smollm2_tokenizer, max_length=8, max_prompt_length=4,
                                       log=logged.append)
    assert [e.index for e in ex] == [0, 1, 2] and stats["skipped"] == 0 and stats["truncated"] == 1
    assert smollm2_tokenizer.decode(pairs[1].prompt_ids) == " eight nine ten:"
    assert smollm2_tokenizer.decode(pairs[1].chosen_ids) == " yes<|im_end|>"


# --- chat templates ----------------------------------------------------------------------------------------------

TEMPLATE = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% if enable_thinking is defined and not enable_thinking %}"
            " /no_think{% endif %} {% endif %}")


def test_chat_template_file_and_kwargs(tmp_path, tiny_assets):
    model = str(tiny_assets / "model")
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    ex = PreferenceExample(0, "x.jsonl:1", [user("Hi")], [bot("Hello.")], [bot("Go away.")], conversational=True)
    tok = load_tokenizer(model, chat_template=str(tmp_path / "t.jinja"))
    assert render_chat(ex, tok) == ("[user] Hi\n[assistant] ", "[user] Hi\n[assistant] Hello.\n",
                                    "[user] Hi\n[assistant] Go away.\n")
    kwargs = load_config(None, {"chat_template_kwargs": ["enable_thinking=false"]}).chat_template_kwargs
    assert kwargs == {"enable_thinking": False}
    tok = load_tokenizer(model, chat_template=str(tmp_path / "t.jinja"), chat_template_kwargs=kwargs)
    assert render_chat(ex, tok, kwargs)[0] == "[user] Hi\n[assistant] /no_think "


def test_chat_template_mistakes_are_one_line(tmp_path, tiny_assets, capsys):
    model = str(tiny_assets / "model")
    with pytest.raises(ConfigError, match=f"chat template file {tmp_path}/none.jinja: cannot read it"):
        load_tokenizer(model, chat_template=str(tmp_path / "none.jinja"))
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m.content }")
    code = tilt(["train", "--model", model, "--data", str(tiny_assets / "train.jsonl"), "--output-dir",
                 str(tmp_path / "out"), "--chat-template", str(tmp_path / "bad.jinja")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path}/bad.jinja does not render: TemplateSyntaxError")


def test_yaml_and_flag_spellings(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model_revision: v1.0\nchat_template_kwargs: {enable_thinking: false, depth: 2}\n"
                 "dataset_train_split: train_prefs\nprompt_column: question\nsystem_column: system\n")
    cfg = load_config(str(y), {"drop_duplicates": "true"})
    assert (cfg.revision, cfg.chat_template_kwargs, cfg.dataset_train_split, cfg.prompt_column,
            cfg.system_column, cfg.drop_duplicates) == ("v1.0", {"enable_thinking": False, "depth": 2},
                                                        "train_prefs", "question", "system", True)
    with pytest.raises(ConfigError, match="expects key=value items"):
        load_config(None, {"chat_template_kwargs": ["enable_thinking"]})


# --- hub names, offline, through the real CLI --------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, tiny_assets):
    """HF_HOME with the tiny model as `tiny-org/dpo-model` and an ultrafeedback-layout dataset as
    `tiny-org/prefs` (train_prefs: 12 pairs, one of them a repeat; test_prefs: 4 pairs) in the hub cache."""
    root = tmp_path_factory.mktemp("hf")
    put_in_hub_cache(root / "hub", "model", "tiny-org/dpo-model", tiny_assets / "model")
    train = ultrafeedback_rows(11)
    train.append(train[3])
    data = write_split_parquet(root / "src", {"train_prefs": train, "test_prefs": ultrafeedback_rows(4, start=20)})
    put_in_hub_cache(root / "hub", "dataset", "tiny-org/prefs", data)
    return root


def offline_tilt(hub_home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "tiltlm.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_train_from_hub_names_offline(hub_home, tmp_path):
    out = tmp_path / "run"
    p = offline_tilt(hub_home, "train", "--model", "tiny-org/dpo-model", "--data", "tiny-org/prefs",
                     "--dataset-train-split", "train_prefs", "--dataset-test-split", "test_prefs",
                     "--eval-strategy", "steps", "--eval-steps", "2",
                     "--output-dir", out, "--max-steps", "2", "--learning-rate", "1e-3", "--no-progress",
                     "--ref-cache-dir", tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    assert "eval: the 'test_prefs' split of tiny-org/prefs" in p.stdout
    assert "1 duplicate pairs kept" in p.stdout
    stats = json.loads((out / "data_stats.json").read_text())
    assert (stats["rows"], stats["valid"], stats["duplicates"], stats["format"]) == \
        (12, 12, 1, "conversational/implicit")
    assert stats["eval"] == {"rows": 4, "valid": 4, "skipped": 0, "truncated": 0}
    assert (out / "model.safetensors").is_file() and "final:" in p.stdout


def test_missing_hub_repos_offline_are_one_line(hub_home, tmp_path):
    cache = hub_home / "hub"
    p = offline_tilt(hub_home, "train", "--model", "tiny-org/absent", "--data", "tiny-org/prefs",
                     "--output-dir", tmp_path / "a")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: model tiny-org/absent is not in the Hugging Face cache ({cache}) and offline mode is on "
        "(HF_HUB_OFFLINE=1): download it once online, or unset HF_HUB_OFFLINE"]
    p = offline_tilt(hub_home, "data", "check", "tiny-org/nodata")
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        f"error: dataset tiny-org/nodata is not in the Hugging Face cache ({cache}) and offline mode is on "
        "(HF_HUB_OFFLINE=1): download it once online, or unset HF_HUB_OFFLINE"]
