"""TRL 1.16's documented DPO cases (tests/trl_corpus.py) run unchanged through `tilt train` / `tiltlm.DPOTrainer`.

Every model and dataset name the docs use is served from an offline hub cache (HF_HUB_OFFLINE=1): a tiny Llama
and generated pairs in each dataset's layout. The cases run in-process for 1 step (`--max_steps 1` appended; the
Python snippets, which cannot take it, run DPOConfig's default 3 epochs over 8 pairs: 3 steps). A case refused by
design is one `error:` line. TRL itself parses every command-line and YAML case (so the corpus is TRL's input).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import fixtures_gen as fg
import trl_corpus
from hub_cache import put_in_hub_cache
from tiltlm.commands import cli
from tiltlm.config import TrainConfig
from tiltlm.core.losses import LOSSES

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def conv(q: str, a: str) -> list:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def dataset_rows(name: str, n: int, start: int = 0) -> list[dict]:
    out = []
    for k in range(start, start + n):
        q, good, bad = f"What is {k} plus {k}?", f"It is {2 * k}.", f"It is {2 * k + 1}, I think."
        if name == trl_corpus.HH:
            out.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}",
                        "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"})
        elif name == trl_corpus.CAPY:
            out.append({"source": "generated", "chosen": conv(q, good), "chosen_rating": 5, "chosen_model": "m1",
                        "rejected": conv(q, bad), "rejected_rating": 2, "rejected_model": "m2"})
        elif name == trl_corpus.VLM_DATA:
            out.append({"images": [f"image{k}.png"], "prompt": [{"role": "user", "content": q}],
                        "chosen": [{"role": "assistant", "content": good}],
                        "rejected": [{"role": "assistant", "content": bad}]})
        else:  # trl-lib/ultrafeedback_binarized: implicit conversations and the scores
            out.append({"chosen": conv(q, good), "rejected": conv(q, bad), "score_chosen": 8.0,
                        "score_rejected": 4.0})
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_assets):
    """The hub cache: every model name -> the tiny Llama (SmolLM2's tokenizer and chat template); every dataset
    name -> 8 training pairs (and 4 test pairs) in its layout; plus a tool-calling JSONL file."""
    root = tmp_path_factory.mktemp("trl_hub")
    for name in trl_corpus.MODELS:
        put_in_hub_cache(root / "hub", "model", name, tiny_assets / "model")
    for name in trl_corpus.DATASETS:
        src = root / "src" / name
        (src / "data").mkdir(parents=True)
        fg.write_parquet(src / "data" / "train-00000-of-00001.parquet", dataset_rows(name, 8))
        if name != trl_corpus.CAPY:
            fg.write_parquet(src / "data" / "test-00000-of-00001.parquet", dataset_rows(name, 4, start=50))
        put_in_hub_cache(root / "hub", "dataset", name, src)
    tools = root / "tools.jsonl"
    tools.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Weather in city {k}?"}],
                                         "chosen": [{"role": "assistant", "content": f"Sunny in city {k}."}],
                                         "rejected": [{"role": "assistant", "content": "No idea."}],
                                         "tools": json.dumps(TOOLS)}) + "\n" for k in range(8)))
    return root


@pytest.fixture
def offline_hub(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    import tiltlm.hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(hub / "home"))  # the reference cache (~/.cache/tiltlm/ref), shared by cases
    monkeypatch.chdir(tmp_path)  # TRL's default output_dir `trainer_output` lands here
    tiltlm.hub.snapshot.cache_clear()
    yield hub
    tiltlm.hub.snapshot.cache_clear()


def load_dataset_from(hub: Path):
    """`datasets.load_dataset(name, split=...)` for the snippets: the generated rows of the cached dataset."""
    import datasets

    def load_dataset(name, split="train", **_):
        return datasets.Dataset.from_list(dataset_rows(name, 8 if split == "train" else 4))
    return load_dataset


def needs_19b(expect) -> str | None:
    if isinstance(expect, tuple) and expect[0] == "loss" and expect[1] not in LOSSES:
        return f"loss_type {expect[1]} (issue 19b) is not in this tree yet"
    if isinstance(expect, tuple) and expect[0] == "field" and \
            expect[1] not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return f"{expect[1]} (issue 19b) is not in this tree yet"
    return None


def run_case(kind, body, hub: Path, tmp_path: Path, monkeypatch) -> tuple[int, Path]:
    """Run one case; returns (exit code, the run folder it should have written)."""
    if kind == "python":
        code = body.replace("from trl import", "from tiltlm import").replace("from datasets import load_dataset",
                                                                             "")
        space = {"load_dataset": load_dataset_from(hub)}
        try:
            exec(compile(code, "<corpus>", "exec"), space)
        except Exception as e:  # noqa: BLE001 - the one line a user would see
            print(f"error: {e}", file=__import__("sys").stderr)
            return 2, tmp_path
        return 0, Path(space["trainer"].args.output_dir)
    extra = []
    if kind == "yaml":
        text, extra = body if isinstance(body, tuple) else (body, [])
        (tmp_path / "dpo_config.yaml").write_text(text)
        argv = ["--config", str(tmp_path / "dpo_config.yaml"), *extra]
    else:
        argv = [str(hub / "tools.jsonl") if a == "TOOLS_FILE" else a for a in body]
    out = tmp_path / next((argv[i + 1] for i, a in enumerate(argv) if a == "--output_dir"), "trainer_output")
    return cli.main(["train", *argv, "--max_steps", "1", "--no_progress"]), out


@pytest.mark.parametrize("case", trl_corpus.CASES, ids=[c[0] for c in trl_corpus.CASES])
def test_trl_corpus_case(case, offline_hub, tmp_path, monkeypatch, capsys):
    _, _, kind, body, expect = case
    if (why := needs_19b(expect)) is not None:
        pytest.skip(why)
    launched = []
    monkeypatch.setattr(cli, "launch", lambda argv, nproc: launched.append(nproc) or 0)
    rc, out = run_case(kind, body, offline_hub, tmp_path, monkeypatch)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if isinstance(expect, tuple) and expect[0] == "refused":
        assert rc == 2 and len(errors) == 1 and expect[1] in errors[0], err
        return
    assert rc == 0 and not errors, err
    if isinstance(expect, tuple) and expect[0] == "launches":
        assert launched == [expect[1]]
        return
    assert (out / "model.safetensors").is_file() or (out / "adapter_model.safetensors").is_file(), sorted(
        p.name for p in out.iterdir())
    assert (out / "metrics.jsonl").is_file()


@pytest.mark.parametrize("case", [c for c in trl_corpus.CASES if c[2] != "python"],
                         ids=[c[0] for c in trl_corpus.CASES if c[2] != "python"])
def test_trl_itself_parses_the_case(case, tmp_path):
    """The corpus is TRL 1.16's own input: its `trl dpo` parser takes every command line and YAML file."""
    dpo = pytest.importorskip("trl.scripts.dpo")
    _, _, kind, body, _ = case
    launchers = ("num_processes", "accelerate_config")  # `trl dpo` hands these to accelerate launch
    if kind == "yaml":
        text, extra = body if isinstance(body, tuple) else (body, [])
        options = {k: v for k, v in yaml.safe_load(text).items() if k not in launchers}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(options))
        argv = ["--config", str(tmp_path / "c.yaml"), *extra]
    else:
        argv = list(body)
    for launcher in ("--num_processes", "--accelerate_config"):  # `trl dpo` hands these to accelerate launch
        if launcher in argv:
            i = argv.index(launcher)
            argv = argv[:i] + argv[i + 2:]
    parser = dpo.make_parser()  # --bf16 False: TRL's default bf16 fails its own hardware check on this CPU
    parser.parse_args_and_config([*argv, "--bf16", "False"], fail_with_unknown_args=True)
