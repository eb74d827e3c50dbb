"""Tiny causal LMs built from a config (no download), and random preference pairs, for exactness tests."""

from __future__ import annotations

import random

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

from tiltlm.types import TokenizedPair

# the batch layouts every fast-path equality test runs through (CPU: test_logps.py, CUDA: test_gpu.py)
LAYOUTS = {  # name: (prefix_sharing, packing, chunked)
    "plain": (False, False, False),
    "chunked": (False, False, True),
    "prefix": (True, False, False),
    "packed": (False, True, False),
    "prefix+packed+chunked": (True, True, True),
}

VOCAB = 97


def tiny_model(kind: str = "llama", seed: int = 0, attn: str = "sdpa", hidden: int = 32) -> torch.nn.Module:
    """hidden / 4 heads = the head dimension: 8 by default; CUDA's FlexAttention kernel needs >= 16 (hidden 64)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **common)
    elif kind == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **common)
    elif kind == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    elif kind == "gemma2":  # final-logit soft-capping: the chunked path must apply it too (SDPA has no softcap)
        attn = "eager" if attn == "sdpa" else attn
        cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                           final_logit_softcapping=5.0, attn_logit_softcapping=1.0, **common)
    else:
        raise ValueError(kind)
    cfg._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    model.eval()
    return model


def random_pairs(n: int, seed: int = 0, max_prompt: int = 7, max_completion: int = 9) -> list[TokenizedPair]:
    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, VOCAB) for _ in range(k)]  # noqa: E731
    pairs = []
    for i in range(n):
        pairs.append(TokenizedPair(index=i, prompt_ids=[1] + tok(rng.randint(0, max_prompt - 1)),
                                   chosen_ids=tok(rng.randint(1, max_completion)),
                                   rejected_ids=tok(rng.randint(1, max_completion))))
    pairs.append(TokenizedPair(index=n, prompt_ids=[1], chosen_ids=[5], rejected_ids=[6]))  # 1-token everything
    return pairs


def naive_logps(model, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence at a time, no padding, no tricks: the ground truth."""
    out = {0: [], 1: []}
    for p in pairs:
        for which, comp in ((0, p.chosen_ids), (1, p.rejected_ids)):
            ids = torch.tensor([p.prompt_ids + comp])
            logits = model(input_ids=ids).logits[0].float()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            out[which].append(lp[len(p.prompt_ids) - 1:].sum())
    return torch.stack(out[0]), torch.stack(out[1])


def seed_response_logprob(model, input_ids, attn_mask, response_mask) -> torch.Tensor:
    """The seed document's response_logprob, verbatim in spirit: the reference every fast path is tested against."""
    out = model(input_ids=input_ids, attention_mask=attn_mask, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    targets = input_ids[:, 1:]
    rm = response_mask[:, 1:].float()
    logp_tok = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp_tok * rm).sum(dim=-1)


def tiny_model_dir(path, tok, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A tiny random Llama (49k vocab) saved with `tok` (SmolLM2's real tokenizer): a loadable HF model folder."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_pairs(path, n: int = 24, seed: int = 0, swap: bool = False):
    """Learnable plain-text pairs: chosen answers are polite, rejected ones rude (a clear token-level signal).

    Every answer is 6 SmolLM2 tokens long, so the data carries no length bias for the doctor to flag.
    `swap=True` writes the same pairs with chosen and rejected exchanged (inverted labels).
    """
    import json

    rng = random.Random(seed)
    topics = ["the weather", "my homework", "a recipe", "the train", "my cat", "a movie", "the garden", "music"]
    good = ["Happy to help with that.", "Sure, I can help.", "Of course, gladly."]
    bad = ["Whatever, not my problem.", "No, do it alone.", "Not my job, sorry."]
    with open(path, "w") as f:
        for i in range(n):
            prompt = f"Question {i}: can you help me with {rng.choice(topics)}? Answer:"
            chosen, rejected = " " + rng.choice(good), " " + rng.choice(bad)
            if swap:
                chosen, rejected = rejected, chosen
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def real_data_stats(path, chosen_words: list[int], rejected_words: list[int]) -> dict:
    """data_stats.json exactly as training writes it: `prepare_dataset` on a generated pair file, tokenised with the
    demo's word-level tokenizer (one token per word). Pair k has chosen_words[k] / rejected_words[k] words."""
    import json

    from tiltlm.data import prepare_dataset
    from tiltlm.demo.task import POSITIVE, build_tokenizer

    words = list(POSITIVE)
    with open(path, "w") as f:
        for k, (nc, nr) in enumerate(zip(chosen_words, rejected_words)):
            prompt = f"the movie number {k} was"  # unique: no duplicate pairs
            f.write(json.dumps({"prompt": prompt, "chosen": " " + " ".join(words[(k + j) % 12] for j in range(nc)),
                                "rejected": " " + " ".join(words[(k + j + 5) % 12] for j in range(nr))}) + "\n")
    return prepare_dataset(str(path), build_tokenizer(), max_length=1024)[2]
