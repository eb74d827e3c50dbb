"""The architecture zoo: a tiny random model of every architecture `AutoModelForCausalLM` maps.

`ZOO` is every model_type in the pinned transformers' `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, so a new release that
adds or changes an architecture shows up here (and in tests/test_zoo.py) without anyone editing a list.
`build(model_type)` makes one from the architecture's own config class with *generic* overrides (`GENERIC`:
tiny sizes, windows shorter than the test rows, a large init so that context matters, every dropout and jitter
off), mapped through the config's attribute_map (GPT-2's `n_embd` is its `hidden_size`), plus a small table of
per-architecture facts (`FACTS`: sizes that must agree inside one config, e.g. Mamba-2's heads x head_dim =
expand x hidden). Per-layer patterns (`layer_types`, `mlp_layer_types`, ...) are kept in the architecture's order
and cut to the smallest layer count that still holds every kind of layer (Gemma 3: five sliding + one full).

Composite configs (a `text_config` next to a vision / audio tower) are built as the class the mapping names, with
every sub-config shrunk the same way; input is text only.

Skipped architectures (`SKIPS`; `build` returns `Skip(reason)`; tests/test_zoo.py checks this table lists them):

========================  ==========================================================================================
model_type                why there is no tiny model of it here
========================  ==========================================================================================
gemma3n                   its vision tower is timm's (TimmWrapperModel) and timm is not installed; the text decoder
                          is in the zoo as gemma3n_text
gemma4_assistant          a speculative-decoding drafter: every layer reuses the keys/values of a separate target
                          model (num_kv_shared_layers = num_hidden_layers); it cannot score text alone
gemma4_unified_assistant  the same drafter design for Gemma 4 unified
musicgen                  the audio-code decoder of MusicGen: input_ids are (batch x codebooks, length) EnCodec codes
musicgen_melody           the same for MusicGen-Melody
========================  ==========================================================================================

Everything else builds, including the encoder-style ...ForCausalLM heads (BERT & co. with is_decoder=True), the
decoders of encoder-decoder models (BART & co.), recurrent and hybrid models (Mamba, RWKV, xLSTM, Jamba, Zamba,
Falcon-H1, Qwen3-Next ...) and the composite vision/audio-text classes the mapping names (Gemma 3, Llama 4, ...).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, NamedTuple

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tiltlm.types import TokenizedPair

ZOO: list[str] = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)

VOCAB = 128  # token ids in the test pairs stay below PAIR_VOCAB: no special / image token appears by accident
PAIR_VOCAB = 97
WINDOW = 5  # sliding window / attention chunk: shorter than every test row (prompts alone are 8-12 tokens)

# name (the config's own or a key of its attribute_map) -> value, applied where the config has the name (those in
# OFF_WHEN_UNSET only where the default sets them: None / 0 there means the feature is off, e.g. Kimi's q_lora_rank)
GENERIC: dict[str, Any] = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256, "initializer_range": 0.2,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
    "sliding_window": WINDOW, "attention_chunk_size": WINDOW, "sliding_window_size": WINDOW,
    "local_attention_window_len": WINDOW, "use_cache": False,
    # the same sizes under other names (feed-forward width, per-head width, sliding layers' own head counts)
    "hidden_size_global": 64, "ffn_hidden_size": 128, "dim_ff": 128, "d_ff": 128, "dim_head": 16,
    "swa_num_attention_heads": 4, "swa_num_key_value_heads": 2, "swa_head_dim": 16,
    # encoder-decoder configs whose decoder is the causal LM (BART & co.: hidden_size maps to d_model)
    "decoder_attention_heads": 4, "encoder_attention_heads": 4, "decoder_ffn_dim": 128, "encoder_ffn_dim": 128,
    # mixture of experts: 4 experts, top-2, one shared; every MoE layer a real MoE layer
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_top_k": 2, "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64, "expert_intermediate_size": 64, "n_shared_experts": 1,
    "num_shared_experts": 1, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "num_dense_layers": 1,
    "decoder_sparse_step": 1, "interleave_moe_layer_step": 1,
    # multi-head latent attention (DeepSeek-V2/V3 and kin): the rotary part is head_dim wide
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "rotary_dim": 8,  # GPT-J / CodeGen: rotary on part of a 16-wide head
    # state-space / recurrent / linear-attention blocks
    "state_size": 16, "ssm_state_size": 16, "mamba_d_state": 16, "conv_kernel": 4, "mamba_d_conv": 4,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "linear_num_heads": 4, "linear_head_dim": 16, "mamba_n_heads": 8,
    # per-layer input embeddings (Gemma 3n / 4): as small as the main ones
    "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 16,
    # encoder-style configs used as decoders (BERT-like ...ForCausalLM)
    "is_decoder": True, "type_vocab_size": 2,
    # noise sources that are not called dropout
    "router_jitter_noise": 0.0, "input_jitter_noise": 0.0, "moe_jitter_eps": 0.0,
}
OFF_WHEN_UNSET = {"q_lora_rank", "hidden_size_per_layer_input", "vocab_size_per_layer_input"}
LAYER_COUNTS = ("num_hidden_layers", "decoder_layers", "encoder_layers", "n_layers", "num_layers")

# facts of one config: sizes that must agree inside it, names only it uses, fields its default leaves unusable
FACTS: dict[str, dict[str, Any]] = {
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1, "expand": 2, "chunk_size": 8},
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_hidden_layers": 2},
    "zaya": {"num_experts_per_tok": 1, "router_hidden_size": 32},  # "ZAYA currently supports top-1 only"
    "reformer": {"axial_pos_embds_dim": [32, 32], "axial_pos_shape": [16, 16]},  # must sum to hidden, prod to len
    "blt": {"encoder_hash_byte_group_vocab": 1000},
    # the last num_kv_shared_layers layers reuse earlier layers' keys/values: keep both kinds among the producers
    "gemma3n_text": {"num_kv_shared_layers": 5},
    "qwen4_exp_text": {"ngram_vocab_size_base": 1000, "indexer_n_heads": 2, "indexer_kv_heads": 1,
                       "indexer_head_dim": 16, "indexer_budget": 8, "indexer_compress_ratio": 2},
}
FACTS["qwen4_exp"] = FACTS["qwen4_exp_text"]
# hybrids whose default places no attention layer among the first few: the real checkpoints' mix, compressed
FACTS["jamba"] = {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1}
FACTS["bamba"] = {"attn_layer_indices": [1]}
FACTS["granitemoehybrid"] = {"layer_types": ["linear_attention", "full_attention"]}
FACTS["recurrent_gemma"] = {"num_hidden_layers": 3}  # its block_types pattern (2 recurrent, 1 attention) is 3 long
FACTS["roc_bert"] = {"shape_vocab_size": 32, "shape_embed_dim": 16, "pronunciation_vocab_size": 32,
                     "pronunciation_embed_dim": 16}
FACTS["dots3_note.audio_config"] = {"adapter_input_size": 64, "adapter_out_dim": 64}  # must match hidden sizes
FACTS["dots3_note.vision_config"] = {"adapter_in_dim": 64, "adapter_out_dim": 64}
# DbrxAttentionConfig() has no rope_theta and clip_qkv None, which the model cannot run (the released 8)
FACTS["dbrx.attn_config"] = {"rope_theta": 1e4, "clip_qkv": 8.0}
# "num_key_value_heads must match num_attention_heads"; its sliding layers' sizes come in swa_* names
FACTS["dots3_note_text"] = {"num_key_value_heads": 4, "swa_num_attention_heads": 4, "swa_num_key_value_heads": 4,
                            "swa_q_lora_rank": 32, "swa_kv_lora_rank": 16, "swa_head_dim": 32,
                            "swa_qk_nope_head_dim": 16, "swa_v_head_dim": 16}
FACTS["dots3_note.text_config"] = FACTS["dots3_note_text"]
# Zamba's shared transformer block is tied across its hybrid layers: two of them, as in the real pattern
FACTS["zamba"] = {"num_hidden_layers": 4, "layers_block_type": ["linear_attention", "hybrid"] * 2}

# model_type -> why it is not built (a precise reason, nothing else)
SKIPS: dict[str, str] = {
    "gemma3n": "its vision tower is a TimmWrapperModel and the `timm` package is not installed (not a tiltlm "
               "dependency); the text decoder itself is in the zoo as gemma3n_text",
    "gemma4_assistant": "a speculative-decoding drafter: every layer reuses the key/value states of a separate "
                        "target model (num_kv_shared_layers = num_hidden_layers), so it cannot score text alone",
    "gemma4_unified_assistant": "a speculative-decoding drafter: every layer reuses the key/value states of a "
                                "separate target model (num_kv_shared_layers = num_hidden_layers)",
    "musicgen": "the audio-code decoder of MusicGen: input_ids are (batch x num_codebooks, length) EnCodec codes "
                "plus text-encoder states, not one token sequence",
    "musicgen_melody": "the audio-code decoder of MusicGen-Melody: input_ids are (batch x num_codebooks, length) "
                       "EnCodec codes plus conditioning states, not one token sequence",
}


# model_type -> why its plain forward (one sequence, no tricks) fails on the tiny model: strict xfails in the tests
PLAIN_FAILS: dict[str, str] = {}

# model_type -> the words of the one-line ConfigError tiltlm's start-up check refuses it with (the test fails when
# an architecture starts or stops being refused)
REFUSED: dict[str, str] = {
    "cpmant": "batched rows change this model's log-probs",  # 16.8 nats: right padding reaches real tokens
    "prophetnet": "batched rows change this model's log-probs",  # 2e-3 nats: its n-gram stream sees the padding
}

# model_type -> a tiltlm scoring-path defect the zoo found (strict xfail: fixing it makes the test pass -> remove)
SCORING_BUGS: dict[str, str] = {
    "reformer": "choose_path's train-mode determinism check raises Reformer's raw ValueError (train mode needs the "
                "row length to equal prod(axial_pos_shape)) instead of one ConfigError line",
}

# architectures whose fast-suite tests carry the slow marker (tools/zoo_survey.py: over ~3 s for the survey row)
SLOW: set[str] = {"zamba2", "nemotron_h", "bailing_hybrid", "falcon_h1"}  # 8-12 s each (choose_path tries
# every fast path alone on these stateful hybrids); everything else 0.1-4 s (tools/zoo_survey.py, pytest --durations)

MAX_PARAMS = 12_000_000  # "tiny": a few seconds for every test of one architecture on one CPU core

LAYER_KIND_NAMES = ("layer_types", "layers_block_type", "mlp_layer_types", "block_types")
WINDOW_NAMES = ("sliding_window", "attention_chunk_size", "sliding_window_size", "local_attention_window_len",
                "attention_window")


class Skip(NamedTuple):
    reason: str


PER_LAYER = object()  # a per-layer ("heterogeneous") config's field that varies over layers: set, not readable


def _get(cfg, name):
    try:
        return getattr(cfg, name)
    except AttributeError:
        return None
    except Exception:  # noqa: BLE001 - AmbiguousGlobalPerLayerAttributeError (not an AttributeError)
        return PER_LAYER


def _is_dropout(name: str, value) -> bool:
    return isinstance(value, float) and value > 0 and (
        "dropout" in name or "pdrop" in name or name.endswith("_drop") or name in (
            "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "layerdrop"))


def _field_names(cfg) -> set[str]:
    names = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()
    return {n for n in names | set(vars(cfg)) if not n.startswith("_")}


def _is_index_list(v, n_layers: int) -> bool:
    return (all(isinstance(i, int) and not isinstance(i, bool) for i in v) and len(set(v)) == len(v) > 2
            and all(0 <= i < n_layers for i in v))


def _layer_count_and_patterns(default, names) -> dict[str, Any]:
    """Per-layer lists (len == the default layer count) cut to the smallest prefix (>= 2) holding every value."""
    amap = dict(getattr(type(default), "attribute_map", {}) or {})
    counts = sorted({amap.get(n, n) for n in LAYER_COUNTS} & {n for n in names if isinstance(_get(default, n), int)})
    if not counts:
        return {}
    n_default = max(_get(default, n) for n in counts)
    lists = {k: v for k in names if isinstance(v := _get(default, k), (list, tuple)) and len(v) == n_default > 2
             and not _is_index_list(v, n_default)}
    n = min(2, n_default)
    while n < n_default and any(set(map(str, v[:n])) != set(map(str, v)) for v in lists.values()):
        n += 1
    out = {c: n for c in counts}
    # lists of layer indices (Llama 4's moe_layers): the indices that still exist
    out.update({k: [i for i in v if i < n] for k in names
                if isinstance(v := _get(default, k), (list, tuple)) and v and _is_index_list(v, n_default)})
    # a per-layer size (Gemma 3n's intermediate_size list) gets the generic size on every layer
    out.update({k: [GENERIC[k]] * n if k in GENERIC else list(v[:n]) for k, v in lists.items()})
    return out


NOISE = {"router_jitter_noise", "input_jitter_noise", "moe_jitter_eps"}


def overrides_for(cfg_cls, model_type: str | None = None, keep_noise: bool = False) -> dict[str, Any]:
    """Constructor kwargs for a tiny `cfg_cls` (sub-configs as dicts). keep_noise: leave the architecture's
    default dropout / jitter values (to see what train mode does with them)."""
    default = cfg_cls()
    names = _field_names(default)
    amap = dict(getattr(cfg_cls, "attribute_map", {}) or {})
    kw: dict[str, Any] = {}
    for name, value in GENERIC.items():
        real = amap.get(name, name)
        if keep_noise and name in NOISE:
            continue
        if real in names and (name not in OFF_WHEN_UNSET or _get(default, real) not in (None, 0)):
            kw[real] = value
    if "kv_lora_rank" in kw and "num_key_value_heads" in kw:  # latent attention: one key/value head per query head
        kw["num_key_value_heads"] = kw.get(amap.get("num_attention_heads", "num_attention_heads"), 4)
    for name in names if not keep_noise else ():
        if _is_dropout(name, _get(default, name)):
            kw[name] = 0.0
    kw.update(_layer_count_and_patterns(default, names))
    kw.update(FACTS.get(model_type or "", {}))
    for key in getattr(cfg_cls, "sub_configs", None) or {}:
        sub_default = _get(default, key)
        if sub_default is None or not hasattr(sub_default, "to_dict"):
            continue
        sub_cls = type(sub_default)
        # as a dict over the parent's own default for it: the parent may have filled fields in (DBRX's rope_theta)
        # (per_layer_config is derived from the layer pattern: the sub-config recomputes it for the cut pattern)
        kw[key] = {**{k: v for k, v in sub_default.to_dict().items() if k != "per_layer_config"},
                   **overrides_for(sub_cls, getattr(sub_cls, "model_type", None), keep_noise),
                   **FACTS.get(f"{model_type}.{key}", {})}
    return kw


def default_config(model_type: str):
    return CONFIG_MAPPING[model_type]()


def _text_configs(cfg):
    yield cfg
    for key in getattr(type(cfg), "sub_configs", None) or {}:
        sub = _get(cfg, key)
        if hasattr(sub, "to_dict"):
            yield from _text_configs(sub)


def layer_kinds(cfg) -> dict[str, set[str]]:
    """The kinds of layer a config (and its sub-configs) holds, per pattern name: {"text_config.layer_types": ...}."""
    out = {}
    for sub in _text_configs(cfg):
        for name in LAYER_KIND_NAMES:
            value = _get(sub, name)
            if isinstance(value, (list, tuple)) and value:
                out[f"{sub.model_type}.{name}"] = set(map(str, value))
    return out


def windows(cfg) -> list[int]:
    """Every attention window / chunk length set anywhere in the config."""
    return [w for sub in _text_configs(cfg) for name in WINDOW_NAMES
            if isinstance(w := _get(sub, name), int) and not isinstance(w, bool) and w > 0]


def tiny_config(model_type: str, keep_noise: bool = False):
    cfg_cls = CONFIG_MAPPING[model_type]
    return cfg_cls(**overrides_for(cfg_cls, model_type, keep_noise))


def build(model_type: str, seed: int = 0, keep_noise: bool = False) -> torch.nn.Module | Skip:
    """A tiny random model of `model_type` in eval mode (fp32, CPU), or Skip(reason)."""
    if model_type in SKIPS:
        return Skip(SKIPS[model_type])
    cfg = tiny_config(model_type, keep_noise)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    except (ValueError, ImportError) as e:  # no SDPA for this architecture: eager
        if "sdpa" not in str(e).lower() and "scaled_dot_product" not in str(e).lower():
            raise
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    if hasattr(model, "set_default_language"):  # X-MOD: one language adapter must be chosen before a forward
        model.set_default_language(cfg.languages[0])
    model.float().eval()
    return model


def zoo_pairs(n: int = 4, seed: int = 0) -> list[TokenizedPair]:
    """Pairs longer than every window: prompts 8-12 tokens, completions 6-10 (ids 3..96: no special tokens)."""
    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, PAIR_VOCAB) for _ in range(k)]  # noqa: E731
    return [TokenizedPair(index=i, prompt_ids=[1] + tok(rng.randint(7, 11)), chosen_ids=tok(rng.randint(6, 10)),
                          rejected_ids=tok(rng.randint(6, 10))) for i in range(n)]
