"""--activation-memory-budget: the measured per-layer cost, the number of layers it checkpoints, and exactness (a
checkpointed layer recomputes the same forward, so the gradients are those of no checkpointing)."""

import functools

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, LlamaConfig

from tiltlm.config import ConfigError, MemoryBudget, load_config, memory_budget
from tiltlm.core.batching import step_pairs
from tiltlm.model.checkpointing import (ActivationCosts, budget_bytes, checkpoint_first, decoder_layers, free_memory,
                                       measure, optimizer_bytes)
from tiltlm.model.scoring import ScoringPath
from tiltlm.parallel import strategy
from tiltlm.training.loop import loss_hparams
from tiltlm.training.setup import open_run_dir, setup
from tiltlm.training.step import backward_step

from tiny_models import VOCAB, random_pairs


def four_layer_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def bytes_alive_after(forward) -> int:
    """Net bytes the CPU allocator holds after `forward()` that it did not before (the profiler's allocation and
    free events): what the autograd graph keeps for backward, plus the small output."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = forward()
    alive = sum(e.self_cpu_memory_usage for e in prof.profiler.function_events)
    out.sum().backward()  # frees the graph
    return alive


def test_the_measured_cost_matches_what_a_real_forward_keeps():
    """Layer 0 measured alone, times 4 layers, against the bytes a whole forward really leaves allocated, with none
    and with half of the layers checkpointed (a checkpointed layer keeps only its input)."""
    model = four_layer_llama()
    path = ScoringPath(prefix_sharing=True, chunked=True)
    batch = path.micro_batches(random_pairs(8, max_prompt=40, max_completion=40), batch_size=4, pad_token_id=0)[0]
    forward = functools.partial(path.token_logps, model, batch)
    costs = measure(model, batch, lambda b: path.token_logps(model, b))
    assert costs.num_layers == 4 and len(set(costs.saved)) == 1  # identical layers: one ran, four are known
    assert costs.inputs[0] == batch.input_ids.numel() * 32 * 4  # the (R, L, H) fp32 hidden states
    assert all(layer.gradient_checkpointing for layer in decoder_layers(model))  # measuring left the flags as set
    for k in (0, 2):
        checkpoint_first(model, k)
        actual = bytes_alive_after(forward)
        assert costs.at_backward_start(k) == pytest.approx(actual, rel=0.2), k  # measured: within 2% / 4%
    # each layer checkpointed frees what it saved but its input
    checkpoint_first(model, 1)
    one = bytes_alive_after(forward)
    checkpoint_first(model, 2)
    assert one - bytes_alive_after(forward) == pytest.approx(costs.saved[1] - costs.inputs[1], rel=0.2)


def test_the_budget_picks_how_many_leading_layers_to_checkpoint():
    """saved 100 and input 10 per layer, 5 shared, 4 layers: none checkpointed keeps 5 + 400 = 405; k keeps
    5 + 10k + 100(4 - k) at the start of backward and 5 + 10i + 100 while layer i < k is recomputed."""
    costs = ActivationCosts(saved=(100,) * 4, inputs=(10,) * 4, shared=5)
    assert [costs.kept(k) for k in range(5)] == [405, 315, 225, 135, 135]
    assert costs.layers_to_checkpoint(0) == 4  # nothing fits: all, the least there is
    assert costs.layers_to_checkpoint(135) == 3  # the 4th adds nothing: the recompute of layer 3 is the peak then
    assert costs.layers_to_checkpoint(230) == 2  # some
    assert costs.layers_to_checkpoint(10**12) == 0  # none


def test_fractions_and_auto_become_bytes():
    """A fraction is of what the layers keep without checkpointing; auto is 90% of the free memory less the gradients
    and AdamW's two moments (fp32 weights: 4 + 8 bytes per trainable parameter)."""
    model = four_layer_llama()
    costs = ActivationCosts(saved=(100,) * 4, inputs=(10,) * 4, shared=5)
    cpu = torch.device("cpu")
    assert budget_bytes(memory_budget("0.5"), costs, model, cpu) == 202  # half of 405, rounded down
    assert budget_bytes(memory_budget("3kB"), costs, model, cpu) == 3000
    n = sum(p.numel() for p in model.parameters())
    assert optimizer_bytes(model) == 12 * n
    auto = budget_bytes(memory_budget("auto"), costs, model, cpu, reserved=1000)
    assert auto == pytest.approx(0.9 * free_memory(cpu) - 12 * n - 1000, rel=0.05)  # free memory moves a little


def test_budget_strings_and_one_line_errors():
    assert memory_budget("2GB") == MemoryBudget("2GB", bytes=2 * 10**9)
    assert memory_budget("1500MB").bytes == 1500 * 10**6
    assert memory_budget("8GiB").bytes == 8 * 2**30
    assert memory_budget("0.5") == MemoryBudget("0.5", fraction=0.5)
    assert memory_budget(0) == MemoryBudget("0", fraction=0.0)
    assert memory_budget("auto") == MemoryBudget("auto")
    assert memory_budget(None) is None
    for bad in ("2 gigs", "3", "-1GB", "lots"):
        with pytest.raises(ConfigError) as e:
            load_config(None, {"activation_memory_budget": bad})
        assert "\n" not in str(e.value) and "activation_memory_budget" in str(e.value)


def first_step_grads(assets, tmp_path, name: str, **overrides) -> tuple[dict, list[str]]:
    """The gradients of step 1 of a real run (setup, then the loop's own backward_step), and the start-up lines."""
    lines = []
    cfg = load_config(None, dict(model=str(assets / "model"), data=str(assets / "train.jsonl"),
                                 output_dir=str(tmp_path / name), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, progress=False, doctor=False, seed=0,
                                 ref_cache_dir=str(tmp_path / "cache"), **overrides))
    with open_run_dir(cfg) as folder:
        s = setup(cfg, strategy.choose(cfg.dist), folder, log=lines.append)
    s.model.train()
    backward_step(s, step_pairs(s.train_pairs, 0, 4, cfg.seed), loss_hparams(cfg))
    return {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}, lines


def test_partial_checkpointing_gives_the_gradients_of_none_and_of_all(tiny_assets, tmp_path):
    none, _ = first_step_grads(tiny_assets, tmp_path, "none", gradient_checkpointing=False)
    every, _ = first_step_grads(tiny_assets, tmp_path, "all")
    # 2 layers: one checkpointed keeps ~half of what none does; 0.75 of it fits one, not zero
    part, lines = first_step_grads(tiny_assets, tmp_path, "part", activation_memory_budget="0.75")
    assert any(line.startswith("checkpointing 1 of 2 layers (budget 0.75") for line in lines), lines
    print(next(line for line in lines if line.startswith("checkpointing")))
    assert none.keys() == every.keys() == part.keys() and len(none) > 5
    for name, g in none.items():
        assert torch.equal(every[name], g) and torch.equal(part[name], g), name  # bitwise
