"""Data loading, format detection and validation (no tokenizer needed except where noted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import fixtures_gen as fg
from tiltlm.commands.data import add_cli
from tiltlm.data import (DataError, RowIssue, load_examples, prepare_dataset, read_rows, split_implicit_text,
                         validate_examples)

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_dev.jsonl"


def _key(ex):
    return (ex.index, ex.prompt, ex.chosen, ex.rejected, ex.conversational)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return fg.write_format_fixtures(tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("fmt", fg.FORMATS)
@pytest.mark.parametrize("container", fg.CONTAINERS)
def test_every_format_and_container_loads_the_same_examples(fixtures, fmt, container):
    examples, issues = load_examples(str(fixtures[(container, fmt)]))
    assert issues == []
    expected = [(i, p, c, r, fmt.startswith("conv")) for i, (p, c, r) in enumerate(fg.expected_pairs(fmt))]
    assert [_key(e) for e in examples] == expected
    assert validate_examples(examples) == []


def test_explicit_and_implicit_agree(fixtures):
    for kind in ("standard", "conversational"):
        a, _ = load_examples(str(fixtures[("jsonl", f"{kind}/explicit")]))
        b, _ = load_examples(str(fixtures[("parquet", f"{kind}/implicit")]))
        assert [_key(e) for e in a] == [_key(e) for e in b]


def test_sources_are_file_line(fixtures):
    ex, _ = load_examples(str(fixtures[("jsonl", "standard/explicit")]))
    assert ex[2].source.endswith("standard_explicit.jsonl:3")
    ex, _ = load_examples(str(fixtures[("json", "standard/explicit")]))  # indented JSON list: element lines
    text = fixtures[("json", "standard/explicit")].read_text().splitlines()
    for e in ex:
        line = int(e.source.rsplit(":", 1)[1])
        assert text[line - 1].strip() == "{"
    ex, _ = load_examples(str(fixtures[("csv", "standard/explicit")]))
    assert ex[0].source.endswith(".csv:2")  # header is line 1; rows with newlines in cells shift later lines
    assert ex[1].source.endswith(".csv:4")
    ex, _ = load_examples(str(fixtures[("parquet", "standard/explicit")]))
    assert ex[3].source.endswith(".parquet#3")


def test_json_wrapped_in_train_key_and_tsv(tmp_path):
    rows = fg.format_rows("standard/explicit")
    ex, iss = load_examples(str(fg.write_json(tmp_path / "w.json", rows, key="train")))
    assert len(ex) == 4 and not iss
    ex, iss = load_examples(str(fg.write_csv(tmp_path / "t.tsv", rows, delimiter="\t")))
    assert [e.chosen for e in ex] == [c for _, c, _ in fg.TEXT_PAIRS] and not iss


def test_hf_dataset_without_train_split(tmp_path):
    p = fg.write_hf(tmp_path / "ds", fg.format_rows("standard/explicit"), split="validation")
    with pytest.raises(DataError, match="validation"):
        load_examples(str(p))
    ex, _ = load_examples(str(p / "validation"))  # a split folder works directly
    assert len(ex) == 4
    p2 = fg.write_hf(tmp_path / "plain", fg.format_rows("conversational/implicit"), as_dict=False)
    ex, _ = load_examples(str(p2))
    assert ex[1].prompt[0]["role"] == "system" and ex[1].chosen == [{"role": "assistant", "content": "Hi!"}]


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(read_rows(str(tmp_path / "nope.jsonl")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported"):
        list(read_rows(str(tmp_path / "x.txt")))


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory):
    return fg.write_malformed(tmp_path_factory.mktemp("bad"))


def _all_issues(path):
    ex, issues = load_examples(str(path))
    return issues + validate_examples(ex)


@pytest.mark.parametrize("i", range(14))
def test_malformed_rows_report_kind_location_and_field(bad_cases, i):
    case = bad_cases[i]
    issues = _all_issues(case.path)
    assert [iss.kind for iss in issues] == [case.kind], issues
    iss = issues[0]
    assert iss.source == (f"{case.path}:{case.line}" if case.line else str(case.path))
    assert iss.field == case.field
    assert iss.message


def test_all_kinds_covered(bad_cases):
    kinds = {c.kind for c in bad_cases}
    assert kinds == {"invalid_json", "invalid_encoding", "not_an_object", "missing_field", "wrong_type",
                     "empty_prompt", "empty_response", "identical_responses", "unknown_role", "non_alternating",
                     "duplicate_pair", "no_distinct_completion", "empty_file"}


def test_duplicate_names_the_earlier_row(bad_cases):
    case = next(c for c in bad_cases if c.kind == "duplicate_pair")
    (iss,) = _all_issues(case.path)
    assert f"{case.path}:1" in iss.message


def test_implicit_split_rules():
    assert split_implicit_text("The sky is blue.", "The sky is black.") == len("The sky is")
    # one text a prefix of the other: both completions stay non-empty
    c, r = "A B", "A B C"
    k = split_implicit_text(c, r)
    assert c[:k] == "A" and c[k:] == " B" and r[k:] == " B C"
    assert split_implicit_text("Hello", "Hello there") is None
    # marker: cut right after the last marker inside the common prefix
    c = "\n\nHuman: hi\n\nAssistant: Sure thing"
    r = "\n\nHuman: hi\n\nAssistant: Sure, no"
    k = split_implicit_text(c, r)
    assert c[:k].endswith("\n\nAssistant:") and c[k:] == " Sure thing"
    assert split_implicit_text("User: x ### yes", "User: x ### no", "###") == len("User: x ###")


def test_prepare_dataset_raises_summary_then_skips(tmp_path):
    rows = [fg.GOOD, {"prompt": "p", "chosen": "", "rejected": " b"}, fg.GOOD2, "oops",
            {"prompt": "q", "chosen": " x"}, fg.GOOD2]
    lines = [json.dumps(r) for r in rows]
    lines[3] = "{not json"
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as ei:
        prepare_dataset(str(p), None, max_length=64)
    msg = str(ei.value)
    assert "3 of 6 rows" in msg and "Traceback" not in msg
    for kind, line in (("empty_response", 2), ("invalid_json", 4), ("missing_field", 5)):
        assert kind in msg and f"mixed.jsonl:{line}" in msg
    assert "duplicate_pair" not in msg  # a repeated pair is a warning, not bad data (TRL trains on it)
    skipped = tmp_path / "out" / "skipped.jsonl"
    logged = []
    ex, pairs, stats = prepare_dataset(str(p), None, max_length=64, skip_invalid=True, skipped_path=str(skipped),
                                       log=logged.append)
    assert [e.index for e in ex] == [0, 2, 5]  # row 6 repeats row 3 and is kept
    assert stats["rows"] == 6 and stats["valid"] == 3 and stats["skipped"] == 3 and stats["duplicates"] == 1
    assert stats["skipped_by_kind"] == {"empty_response": 1, "invalid_json": 1, "missing_field": 1}
    assert logged == [f"warning: {p}: 1 duplicate pairs kept, as TRL does; --drop-duplicates removes them; "
                      f"first: {p}:6 (same prompt/chosen/rejected as {p}:3)"]
    recs = [json.loads(x) for x in skipped.read_text().splitlines()]
    assert len(recs) == 3 and set(recs[0]) == {"source", "field", "kind", "reason"}
    assert {r["kind"] for r in recs} == set(stats["skipped_by_kind"])
    # --drop-duplicates: the repeat goes too, counted and written with its reason
    ex, _, stats = prepare_dataset(str(p), None, max_length=64, skip_invalid=True, skipped_path=str(skipped),
                                   drop_duplicates=True, log=logged.append)
    assert [e.index for e in ex] == [0, 2] and stats["skipped"] == 4 and stats["duplicates"] == 1
    assert stats["skipped_by_kind"]["duplicate_pair"] == 1
    dup = [json.loads(x) for x in skipped.read_text().splitlines()][-1]
    assert dup == {"source": f"{p}:6", "field": "chosen", "kind": "duplicate_pair",
                   "reason": f"same prompt/chosen/rejected as {p}:3"}
    assert "dropped (--drop-duplicates)" in logged[-1]


def test_prepare_dataset_no_valid_rows(tmp_path, bad_cases):
    empty = next(c for c in bad_cases if c.kind == "empty_file")
    with pytest.raises(DataError, match="empty_file"):
        prepare_dataset(str(empty.path), None, max_length=64, skip_invalid=True)


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="tilt")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_data_check(tmp_path, bad_cases, fixtures, capsys):
    case = next(c for c in bad_cases if c.kind == "missing_field")
    assert _run_cli(["data", "check", str(case.path)]) == 1
    out = capsys.readouterr().out
    assert "missing_field" in out and f"{case.path}:3 [rejected]" in out and "1 of 3 rows" in out
    assert _run_cli(["data", "check", str(fixtures[("jsonl", "conversational/implicit")])]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "conversational/implicit" in out
    assert _run_cli(["data", "check", str(tmp_path / "missing.jsonl")]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_data_check_with_model(tmp_path, smollm2_tokenizer, capsys, monkeypatch):
    import tiltlm.commands.data as data_cmd
    from tiltlm.assets import smollm2_gguf_path

    loaded = []  # reuse the session tokenizer (loading the GGUF again takes ~30 s); check the CLI asks for it
    monkeypatch.setattr(data_cmd, "load_tokenizer", lambda path, **kw: loaded.append(path) or smollm2_tokenizer)
    p = fg.write_jsonl(tmp_path / "d.jsonl", [fg.GOOD, {"prompt": "word " * 50, "chosen": " a", "rejected": " b"}])
    # a prompt too long for --max-length is a length budget: training skips it, so the check warns (exit 0)
    assert _run_cli(["data", "check", str(p), "--model", str(smollm2_gguf_path()), "--max-length", "20"]) == 0
    assert loaded == [str(smollm2_gguf_path())]
    out = capsys.readouterr().out
    assert "prompt_too_long" in out and "tokens (mean" in out and f"{p}:2 [prompt]" in out
    assert "warnings" in out and "1 valid" in out and "no malformed rows" in out


def test_prompt_too_long_via_validate(tmp_path, smollm2_tokenizer):
    p = fg.write_jsonl(tmp_path / "d.jsonl", [fg.GOOD, {"prompt": "word " * 50, "chosen": " a", "rejected": " b"}])
    ex, _ = load_examples(str(p))
    issues = validate_examples(ex, tokenizer=smollm2_tokenizer, max_length=20)
    assert [(i.kind, i.source, i.field) for i in issues] == [("prompt_too_long", f"{p}:2", "prompt")]


@pytest.mark.skipif(not HH.exists(), reason=f"real HH-RLHF dev file not present at {HH}")
def test_hh_rlhf_dev_file():
    ex, issues = load_examples(str(HH))
    assert issues == [] and len(ex) == 1849
    assert all(e.prompt.endswith("\n\nAssistant:") for e in ex)
    assert all(e.chosen and e.rejected and not e.conversational for e in ex)
    # the real file has 3 rows whose chosen reply is blank ("\n\nAssistant: " at the end): reported, not crashed
    sem = validate_examples(ex)
    assert {i.kind for i in sem} <= {"empty_response", "identical_responses", "duplicate_pair"}
    assert all(isinstance(i, RowIssue) and i.source.startswith(str(HH) + ":") for i in sem)
