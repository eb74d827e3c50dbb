"""Write small preference-data fixture files (the repo ships no data files; tests generate them).

`write_format_fixtures(tmp)` writes the same pairs in TRL's four formats x five containers
(jsonl / json / parquet / csv / saved `datasets` folder). `write_malformed(tmp)` writes one small file per
validation kind, each with the bad row at a known line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

SYSTEM = {"role": "system", "content": "You are terse."}

# (prompt, chosen, rejected) plain-text pairs whose implicit-prompt split gives back exactly this prompt.
TEXT_PAIRS = [
    ("Q: What color is the sky?\nA:", " Blue.", " Green, obviously."),
    ("\n\nHuman: Say hi.\n\nAssistant:", " Hi there!", " No."),
    ("\n\nHuman: 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:", " 6.", " 7."),
    ("Translate to French: cat =>", " chat", " chien (dog)"),
]

# (prompt messages, chosen messages, rejected messages)
CHAT_PAIRS = [
    ([{"role": "user", "content": "What color is the sky?"}],
     [{"role": "assistant", "content": "Blue."}], [{"role": "assistant", "content": "Green."}]),
    ([SYSTEM, {"role": "user", "content": "Say hi."}],
     [{"role": "assistant", "content": "Hi!"}], [{"role": "assistant", "content": "No."}]),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."},
      {"role": "user", "content": "And 3+3?"}],
     [{"role": "assistant", "content": "6."}], [{"role": "assistant", "content": "7."}]),
]

FORMATS = ("standard/explicit", "standard/implicit", "conversational/explicit", "conversational/implicit")
CONTAINERS = ("jsonl", "json", "parquet", "csv", "hf")


def format_rows(fmt: str) -> list[dict]:
    """Rows of one TRL format (with an extra, ignored column)."""
    if fmt == "standard/explicit":
        return [{"prompt": p, "chosen": c, "rejected": r, "id": i} for i, (p, c, r) in enumerate(TEXT_PAIRS)]
    if fmt == "standard/implicit":
        return [{"chosen": p + c, "rejected": p + r, "id": i} for i, (p, c, r) in enumerate(TEXT_PAIRS)]
    if fmt == "conversational/explicit":
        return [{"prompt": p, "chosen": c, "rejected": r, "id": i} for i, (p, c, r) in enumerate(CHAT_PAIRS)]
    if fmt == "conversational/implicit":
        return [{"chosen": p + c, "rejected": p + r, "id": i} for i, (p, c, r) in enumerate(CHAT_PAIRS)]
    raise ValueError(fmt)


def expected_pairs(fmt: str) -> list[tuple]:
    return list(TEXT_PAIRS if fmt.startswith("standard") else CHAT_PAIRS)


# ---------------------------------------------------------------------------------------------- writers
def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list, key: str | None = None) -> Path:
    path.write_text(json.dumps({key: rows} if key else rows, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list, delimiter: str = ",") -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(cols)
        for r in rows:
            w.writerow([json.dumps(r[c]) if isinstance(r.get(c), list) else r.get(c, "") for c in cols])
    return path


def write_hf(path: Path, rows: list, as_dict: bool = True, split: str = "train") -> Path:
    import datasets

    ds = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({split: ds}) if as_dict else ds).save_to_disk(str(path))
    return path


def write_container(tmp: Path, container: str, name: str, rows: list) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    if container == "jsonl":
        return write_jsonl(tmp / f"{name}.jsonl", rows)
    if container == "json":
        return write_json(tmp / f"{name}.json", rows)
    if container == "parquet":
        return write_parquet(tmp / f"{name}.parquet", rows)
    if container == "csv":
        return write_csv(tmp / f"{name}.csv", rows)
    if container == "hf":
        return write_hf(tmp / f"{name}_hf", rows)
    raise ValueError(container)


def write_format_fixtures(tmp: Path) -> dict[tuple[str, str], Path]:
    """{(container, format): path} for every container x TRL format."""
    out = {}
    for fmt in FORMATS:
        rows = format_rows(fmt)
        for container in CONTAINERS:
            out[(container, fmt)] = write_container(tmp, container, fmt.replace("/", "_"), rows)
    return out


# ---------------------------------------------------------------------------------------------- malformed
@dataclass
class BadCase:
    kind: str
    path: Path
    line: int | None  # 1-based line of the bad row (None: whole-file issue)
    field: str


GOOD = {"prompt": "Q: hi?\nA:", "chosen": " Hello.", "rejected": " Bye."}
GOOD2 = {"prompt": "Q: sky?\nA:", "chosen": " Blue.", "rejected": " Red."}
U = {"role": "user", "content": "Hi?"}
A1 = {"role": "assistant", "content": "Hello."}
A2 = {"role": "assistant", "content": "Bye."}


def _lines(path: Path, lines: list) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def write_malformed(tmp: Path) -> list[BadCase]:
    """One file per validation kind (except prompt_too_long, which needs a tokenizer)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cases = []

    def case(kind, lines, line, field, name=None):
        p = _lines(tmp / f"{name or kind}.jsonl", lines)
        cases.append(BadCase(kind, p, line, field))

    case("invalid_json", [GOOD, b'{"prompt": "x", "chosen": ', GOOD2], 2, "")
    case("invalid_encoding", [GOOD, GOOD2, b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}'], 3, "")
    case("not_an_object", [GOOD, [1, 2]], 2, "")
    case("missing_field", [GOOD, GOOD2, {"prompt": "p", "chosen": " c"}], 3, "rejected")
    case("wrong_type", [GOOD, {"prompt": "p", "chosen": 5, "rejected": " r"}], 2, "chosen")
    case("empty_prompt", [{"prompt": "  ", "chosen": " a", "rejected": " b"}, GOOD], 1, "prompt")
    case("empty_response", [GOOD, {"prompt": "p", "chosen": "", "rejected": " b"}], 2, "chosen")
    case("identical_responses", [GOOD, {"prompt": "p", "chosen": " same", "rejected": " same"}], 2, "rejected")
    case("unknown_role", [{"prompt": [{"role": "human", "content": "Hi?"}], "chosen": [A1], "rejected": [A2]}],
         1, "prompt[0].role")
    case("non_alternating", [{"prompt": [U, U], "chosen": [A1], "rejected": [A2]}], 1, "prompt[1].role")
    case("duplicate_pair", [GOOD, GOOD2, GOOD], 3, "chosen")
    case("no_distinct_completion", [GOOD, {"chosen": "Hello", "rejected": "Hello there"}], 2, "chosen")
    (tmp / "empty_file.jsonl").write_text("\n\n")
    cases.append(BadCase("empty_file", tmp / "empty_file.jsonl", None, ""))
    # CSV: the header is line 1 and a quoted multi-line cell spans lines 2-4, so the bad row starts on line 5
    p = tmp / "csv_empty_response.csv"
    p.write_text('prompt,chosen,rejected\n"Q: multi\nline?\nA:", Yes., No.\n"Q: x?\nA:",, No.\n', encoding="utf-8")
    cases.append(BadCase("empty_response", p, 5, "chosen"))
    return cases
