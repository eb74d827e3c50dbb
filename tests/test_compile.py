"""--torch-compile (model/compile.py): the compiled decoder blocks score exactly as the eager model -- plain and
prefix-shared rows, on Llama and on Mistral with a sliding window (whose per-layer masks the layer_rules hooks swap)
-- with one graph per mask kind shared by all blocks and no recompile for a new length; one DPO step has the eager
gradients under gradient checkpointing; LoRA's policy and adapter-off reference are exact compiled; and a real
`tilt train --torch-compile` run equals the eager run (ln 2 at step 1, the same weights after 2 steps)."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

import zoo
from tiltlm.commands.cli import main as tilt
from tiltlm.config import load_config
from tiltlm.core.batching import collate
from tiltlm.core.logps import sequence_logps, token_logps
from tiltlm.model import compile as compiled_blocks
from tiltlm.errors import ConfigError
from tiltlm.model import layer_rules, lora
from tiltlm.model.scoring import ScoringPath

from tiny_models import random_pairs, tiny_model

QUIET = lambda *a, **k: None  # noqa: E731
# aot_eager traces exactly what inductor compiles (dynamo's graphs, AOTAutograd's forward and backward) but runs it
# with eager kernels: the mechanism in seconds; inductor's fused kernels (the exactness that matters) compile for
# tens of seconds per graph on a CPU, so those runs are slow tests
BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


def model_of(kind: str) -> torch.nn.Module:
    # mistral: a window of zoo.WINDOW = 5 tokens on every layer, shorter than the rows: the hooks swap its mask
    model = tiny_model("llama") if kind == "llama" else zoo.build("mistral")
    layer_rules.install(model)
    return model


def batches(pairs) -> dict:
    return {name: collate(pairs, prefix_sharing=shared, pad_token_id=0) for name, shared in
            (("plain", False), ("prefix", True))}


def test_options_have_trls_meaning():
    assert not load_config(None, {}).torch_compile
    cfg = load_config(None, {"torch_compile_mode": "max-autotune"})  # a backend or mode given implies it (TRL)
    assert (cfg.torch_compile, cfg.torch_compile_backend, cfg.torch_compile_mode) == (True, "inductor", "max-autotune")
    assert not load_config(None, {"torch_compile_backend": "aot_eager", "torch_compile": "false"}).torch_compile
    with pytest.raises(ConfigError, match="torch_compile_mode must be one of"):
        load_config(None, {"torch_compile_mode": "fastest"})


def test_the_blocks_are_the_decoder_layers():
    model = tiny_model("llama")
    assert compiled_blocks.decoder_blocks(model) == list(model.model.layers)
    assert compiled_blocks.block_rule(model.model.layers[0], model.config) == (True, layer_rules.FULL)


@pytest.mark.parametrize("kind, backend", [("mistral", "aot_eager"), pytest.param("llama", "inductor", marks=pytest.mark.slow),
                                           pytest.param("mistral", "inductor", marks=pytest.mark.slow)])
def test_compiled_blocks_score_as_the_eager_model(kind, backend):
    torch._dynamo.reset()
    model = model_of(kind)
    if kind == "mistral":
        assert layer_rules.layer_rules(model) == {layer_rules.LayerRule(window=zoo.WINDOW): 2}
    pairs = zoo.zoo_pairs(4)
    first, other = batches(pairs[:3]), batches(pairs[1:])  # two batches of other lengths
    with torch.no_grad():
        want = {(n, k): token_logps(model, b) for k, bs in enumerate((first, other)) for n, b in bs.items()}
    assert compiled_blocks.compile_blocks(model, backend=backend, log=QUIET) == 2
    counters.clear()
    with torch.no_grad():
        for k, bs in enumerate((first, other)):
            for name, batch in bs.items():
                torch.testing.assert_close(token_logps(model, batch), want[(name, k)], atol=1e-5, rtol=0)
    # one graph per mask kind (plain rows: the model's own causal mask; shared rows: tiltlm's 4D mask), both blocks
    # sharing it, and the second batch's new lengths need no new one (dynamic shapes)
    assert counters["stats"]["unique_graphs"] == 2
    clone = copy.deepcopy(model)  # an in-memory frozen reference: its blocks run their own weights
    assert all(b.forward.__self__ is b for b in clone.model.layers)
    compiled_blocks.restore(model)
    assert all("forward" not in m.__dict__ for m in model.model.layers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dpo_step_has_the_eager_gradients_under_checkpointing(backend):
    torch._dynamo.reset()
    model = tiny_model("llama")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = collate(random_pairs(6, seed=2), prefix_sharing=True, pad_token_id=0)

    def step():
        """-logsigmoid(beta ((c - c_ref) - (r - r_ref))), the reference a fixed offset: loss and gradients."""
        model.zero_grad(set_to_none=True)
        lp = sequence_logps(token_logps(model, batch), batch)
        margin = (lp.chosen - lp.chosen.detach() + 0.3) - (lp.rejected - lp.rejected.detach() - 0.2)
        loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager_loss, eager = step()
    compiled_blocks.compile_blocks(model, backend=backend, log=QUIET)
    loss, grads = step()
    assert loss == pytest.approx(eager_loss, abs=1e-7)
    for name, g in eager.items():
        assert (grads[name] - g).norm() <= 1e-5 * g.norm() + 1e-9, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_policy_and_its_reference_are_exact_compiled(backend):
    torch._dynamo.reset()
    model = lora.apply(tiny_model("llama"), r=4, alpha=8, dropout=0.0, target_modules=None, log=QUIET)
    for name, p in model.named_parameters():  # a trained adapter: the policy differs from its reference
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    batch = collate(random_pairs(4, seed=3), prefix_sharing=True, pad_token_id=0)
    with torch.no_grad():
        policy = token_logps(model, batch)
        with lora.reference_weights(model):
            reference = token_logps(model, batch)
    assert (policy - reference).abs().max() > 1e-3
    assert compiled_blocks.compile_blocks(model, backend=backend, log=QUIET) == 2
    with torch.no_grad():
        torch.testing.assert_close(token_logps(model, batch), policy, atol=1e-5, rtol=0)
        with lora.reference_weights(model):
            torch.testing.assert_close(token_logps(model, batch), reference, atol=1e-5, rtol=0)


def test_a_compiler_that_fails_turns_compile_off_in_one_line():
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    torch._dynamo.reset()
    model = model_of("llama")
    lines = []
    assert not compiled_blocks.compile_model(model, ScoringPath(), random_pairs(4), backend=broken, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("info: torch_compile off (the compiled blocks: it raises")
    assert "no C++ compiler here" in lines[0] and "\n" not in lines[0]
    assert all("forward" not in m.__dict__ and not m._forward_pre_hooks for m in model.model.layers)
    with pytest.raises(ConfigError, match="torch_compile_backend 'inducter'.*did you mean 'inductor'"):
        compiled_blocks.compile_blocks(model, backend="inducter", log=QUIET)


@pytest.mark.slow
def test_tilt_train_with_torch_compile_equals_the_eager_run(tiny_assets, tmp_path, capsys):
    def run(name, *flags):
        assert tilt(["train", "--model", str(tiny_assets / "model"), "--data", str(tiny_assets / "train.jsonl"),
                     "--output-dir", str(tmp_path / name), "--max-steps", "2", "--per-device-train-batch-size", "4",
                     "--learning-rate", "1e-3", "--seed", "0", "--no-progress", "--ref-cache-dir",
                     str(tmp_path / f"cache-{name}"), *flags]) == 0
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if "loss" in r], load_file(str(tmp_path / name / "model.safetensors"))

    eager, eager_weights = run("eager")
    torch._dynamo.reset()
    capsys.readouterr()
    compiled, weights = run("compiled", "--torch-compile")
    assert "torch_compile: 2 decoder blocks compiled" in capsys.readouterr().out
    assert compiled[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the compiled reference pass too
    for x, y in zip(eager, compiled):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    for name, w in eager_weights.items():
        torch.testing.assert_close(weights[name], w, atol=1e-5, rtol=0)
