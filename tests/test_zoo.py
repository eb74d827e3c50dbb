"""The architecture zoo (tests/zoo.py): every fast scoring path on every causal-LM architecture transformers maps.

For each architecture: the tiny model builds (or is a listed Skip) with every kind of layer its default config has;
its plain forward runs; and every fast path the scoring path keeps (prefix sharing, packing, the chunked LM head;
each alone and all together; forward and gradient) equals one plain forward per sequence -- or the path turned it
off and says why in exactly one line. A new transformers release then shows which architectures changed.

Budget: building and the all-fast forward run for every architecture in the fast suite; each path alone and the
gradients are `slow` (tools/zoo_survey.py measures the whole zoo; figures in tests/zoo.py SLOW).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest
import torch

from tiltlm.core.logps import sequence_logps
from tiltlm.errors import ConfigError

import zoo
from tiny_models import naive_logps

try:
    from tiltlm.model.scoring import ScoringPath, choose_path
except ModuleNotFoundError as e:  # the scoring path of issue 18 has not landed on this branch yet
    if e.name != "tiltlm.model.scoring":
        raise
    ScoringPath = choose_path = None

needs_scoring = pytest.mark.skipif(ScoringPath is None, reason="tiltlm.model.scoring (issue 18) is not here yet")

# nats per completion token, fp32 (a sequence of n tokens may differ by n * ATOL): the start-up check's own
# tolerance (model/scoring.py TOLERANCE); HRM's repeated reasoning cycles reach ~1e-4 on a 44-nat sum from fp32
# summation order alone
ATOL = 1e-4
GRAD_RTOL = 1e-4  # |g_fast - g_plain| <= GRAD_RTOL * |g_plain|
PATH_WORDS = {"prefix_sharing": "prefix", "packing": "pack", "chunked": "chunk"}  # how a note names each path
ALONE = {"prefix": dict(prefix_sharing=True, packing=False, chunked=False),
         "packed": dict(prefix_sharing=False, packing=True, chunked=False),
         "chunked": dict(prefix_sharing=False, packing=False, chunked=True)}
ALL_FAST = dict(prefix_sharing=True, packing=True, chunked=True)


def zoo_params(slow_all: bool = False, scoring: bool = False):
    """ZOO as pytest params: the architectures in zoo.SLOW (or all, with slow_all) carry the slow marker;
    the known plain-forward failures are strict xfails (a release that fixes one makes the test fail: update)."""
    out = []
    for mt in zoo.ZOO:
        marks = [pytest.mark.slow] if slow_all or mt in zoo.SLOW else []
        if mt in zoo.PLAIN_FAILS:
            marks.append(pytest.mark.xfail(reason=zoo.PLAIN_FAILS[mt], strict=True))
        if scoring and mt in zoo.SCORING_BUGS:
            marks.append(pytest.mark.xfail(reason=zoo.SCORING_BUGS[mt], strict=True))
        out.append(pytest.param(mt, marks=marks, id=mt))
    return out


@functools.lru_cache(maxsize=4)
def model_of(model_type: str):
    model = zoo.build(model_type)
    if isinstance(model, zoo.Skip):
        pytest.skip(f"{model_type}: {model.reason}")
    return model


@functools.lru_cache(maxsize=4)
def ground_truth(model_type: str):
    with torch.no_grad():
        return naive_logps(model_of(model_type), zoo.zoo_pairs())


def test_zoo_is_every_causal_lm_of_the_pinned_transformers():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert zoo.ZOO == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert set(zoo.SKIPS) <= set(zoo.ZOO) and set(zoo.PLAIN_FAILS) <= set(zoo.ZOO)
    assert all(len(reason) > 40 for reason in zoo.SKIPS.values()), "every skip says precisely why"
    rows = re.split(r"\n=[ =]+\n", zoo.__doc__.split("why there is no tiny model of it here")[1])[1]
    listed = {line.split()[0] for line in rows.splitlines() if line[:1].isalnum()}
    assert listed == set(zoo.SKIPS), "the module docstring's skip table is the SKIPS dict"


@pytest.mark.parametrize("model_type", zoo_params())
def test_tiny_model_builds_and_its_plain_forward_depends_on_context(model_type):
    """Tiny, windows shorter than the test rows, every kind of layer of the default config (a hybrid whose default
    holds no attention layer may get one: zoo.FACTS gives it the real checkpoints' mix); and the ground truth itself:
    one forward per sequence runs, and with the large init the context matters (the same completion after another
    prompt scores differently)."""
    model = zoo.build(model_type)
    if isinstance(model, zoo.Skip):
        assert model.reason == zoo.SKIPS[model_type]
        return
    assert sum(p.numel() for p in model.parameters()) < zoo.MAX_PARAMS
    shortest_row = min(len(p.prompt_ids) for p in zoo.zoo_pairs())
    tiny = zoo.tiny_config(model_type)
    for window in zoo.windows(tiny):
        assert window < shortest_row
    got = zoo.layer_kinds(tiny)
    for name, kinds in zoo.layer_kinds(zoo.default_config(model_type)).items():
        assert kinds <= got.get(name, set()), f"{name}: {sorted(kinds - got.get(name, set()))} missing"
    a, b = zoo.zoo_pairs()[:2]
    with torch.no_grad():
        chosen, rejected = naive_logps(model, [a, dataclasses.replace(a, prompt_ids=b.prompt_ids)])
    assert torch.isfinite(chosen).all() and torch.isfinite(rejected).all()
    assert (chosen[0] - chosen[1]).abs() > 1e-3


def _check_path(model_type: str, requested_flags: dict):
    model = model_of(model_type)
    pairs = zoo.zoo_pairs()
    want_c, want_r = ground_truth(model_type)
    requested = ScoringPath(**requested_flags, chunk_size=7, max_tokens_per_batch=64)
    lines: list[str] = []
    try:
        path = choose_path(model, pairs, requested=requested, log=lines.append)  # start-up checks: may turn paths off
    except ConfigError as e:  # tiltlm refuses the model: one line, and only where the zoo knows why
        assert "\n" not in str(e) and model_type in zoo.REFUSED, f"{model_type} refused: {e}"
        assert zoo.REFUSED[model_type] in str(e), str(e)
        return None
    assert model_type not in zoo.REFUSED, f"{model_type} is no longer refused: update zoo.REFUSED"
    got = path.score(model, pairs, batch_size=4, pad_token_id=0)
    for which, mine, ref in (("chosen", got.chosen, want_c), ("rejected", got.rejected, want_r)):
        n_tokens = torch.tensor([len(getattr(p, f"{which}_ids")) for p in pairs], dtype=torch.float32)
        excess = (mine - ref).abs() - ATOL * n_tokens
        assert (excess <= 0).all(), f"{which}: |fast - plain| = {(mine - ref).abs().tolist()} with {path.layout}"
    notes = tuple(path.notes)
    assert all(n and "\n" not in n for n in notes), notes
    for name, word in PATH_WORDS.items():
        if not requested_flags[name]:
            assert not getattr(path, name), f"{name} was not requested but is on"
        elif not getattr(path, name):  # turned off: exactly one line says why (its head names the path)
            heads = [n.split(":")[0].lower() for n in notes]
            assert sum(word in h or h.startswith("fast paths off") for h in heads) == 1, (name, notes)
    for note in notes:  # and the user saw it
        assert any(note in line for line in lines), (note, lines)
    return path


@needs_scoring
@pytest.mark.parametrize("model_type", zoo_params(scoring=True))
def test_all_fast_paths_together_equal_one_forward_per_sequence(model_type):
    _check_path(model_type, ALL_FAST)


@needs_scoring
@pytest.mark.parametrize("layout", list(ALONE))
@pytest.mark.parametrize("model_type", zoo_params(slow_all=True, scoring=True))
def test_each_fast_path_alone_equals_one_forward_per_sequence(model_type, layout):
    _check_path(model_type, ALONE[layout])


def _gradient(model, path, pairs) -> torch.Tensor:
    """d(sum chosen - 0.5 sum rejected)/d params through `path`'s micro-batches (train mode, as in training)."""
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        for batch in path.micro_batches(pairs, batch_size=4, pad_token_id=0):
            out = sequence_logps(path.token_logps(model, batch), batch)
            (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
    finally:
        model.eval()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return grad


@needs_scoring
@pytest.mark.parametrize("model_type", zoo_params(slow_all=True, scoring=True))
def test_gradients_of_the_kept_paths_equal_the_plain_path(model_type):
    model = model_of(model_type)
    pairs = zoo.zoo_pairs()
    if model_type in zoo.REFUSED:
        pytest.skip(f"tiltlm refuses {model_type} (zoo.REFUSED; the forward test checks that)")
    path = choose_path(model, pairs, requested=ScoringPath(**ALL_FAST, chunk_size=7, max_tokens_per_batch=64),
                       log=lambda line: None)
    plain = ScoringPath(prefix_sharing=False, packing=False, chunked=False)
    want = _gradient(model, plain, pairs)
    got = _gradient(model, path, pairs)
    assert torch.isfinite(want).all() and want.norm() > 0
    assert (got - want).norm() <= GRAD_RTOL * want.norm(), f"relative gradient error {(got - want).norm() / want.norm():.2e}"
