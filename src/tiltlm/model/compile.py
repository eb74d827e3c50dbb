"""--torch-compile (TRL's `torch_compile`): regional compilation of the decoder blocks, checked exact at start-up.

Each decoder block (the repeated layer: transformers' GradientCheckpointingLayer, else the children of the
decoder's largest ModuleList of one class) gets its forward replaced by ONE torch.compile'd function per block
class, bound to the block. Dynamo caches by code object and, since torch 2.5, inlines nn modules with their
parameters as graph inputs, so all blocks of a class share one compiled graph per (grad mode, autocast state, mask
kind, layer kind) instead of one per layer; `dynamic=True` traces the row count and length as symbols, so a run
compiles a handful of graphs, not one per batch shape. The embedding, final norm and the chunked LM head stay eager
(their cost is one matmul per chunk, already one kernel). Compiling blocks rather than the whole model keeps
compile time at one block's worth and leaves the model's own Python (mask building, position ids) eager.

How it composes:
* gradient checkpointing: transformers checkpoints inside the block's forward (non-reentrant); that forward is what
  is compiled, so dynamo captures the checkpoint as a region and AOTAutograd recomputes it in backward;
* per-layer masks (model/layer_rules.py): a shared row's 4D mask carries a callback to its batch; traced, dynamo
  would guard on that batch object (a recompile per batch). A pre-hook on each compiled block resolves the block's
  own rule eagerly and hands the compiled forward a bare mask (the attention hooks inside then find nothing to do);
* autocast, LoRA (peft's layers are inlined like any module; switching the adapter off for the reference is one
  guard, one more graph), eval / no-grad scoring (its own graph);
* `copy.deepcopy` (an in-memory frozen reference) rebinds each block's forward to the copy's block.

Exactness: fusion reorders float reductions. `verify` compares the compiled path with one plain forward per sequence
on the start-up check's pairs (the same tolerance as every fast path, model/scoring.py) and runs one backward; if it
differs or raises, `restore` puts the eager forwards back and one line says why.
"""

from __future__ import annotations

import contextlib
import copy
import types
from dataclasses import replace
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from ..core.logps import backbone_of
from ..errors import ConfigError, first_line
from ..trl_options import suggest
from . import layer_rules
from .scoring import SAMPLE_SIZE, TOLERANCE, ScoringPath, check_sample, compare, one_at_a_time

_MASK_HOOK = "_tiltlm_compile_mask_hook"  # on a compiled block: its mask hook's handle (restore removes it)


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, outermost first: transformers' GradientCheckpointingLayer modules, else the
    children of the decoder's largest ModuleList whose children share one class."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks, names = [], []
    for name, module in model.named_modules():  # pre-order: a block comes before the modules inside it
        if isinstance(module, GradientCheckpointingLayer) and not any(name.startswith(f"{n}.") for n in names):
            blocks.append(module)
            names.append(name)
    if blocks:
        return blocks
    lists = [m for m in backbone_of(model).modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
             and len({type(c) for c in m}) == 1]
    return list(max(lists, key=len)) if lists else []


def block_rule(block: torch.nn.Module, config) -> tuple[bool, Optional[layer_rules.LayerRule]]:
    """(one rule?, the rule) of the attention modules inside `block`: (True, None) when it has none that
    layer_rules hooks, (False, None) when they follow different rules (no single mask to hand the block)."""
    rules = {r for _, m in layer_rules.attention_modules(block) if (r := layer_rules.rule_of(m, config)) is not None}
    return (len(rules) <= 1, next(iter(rules), None))


def _bare_mask(rule: Optional[layer_rules.LayerRule]):
    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        pick = getattr(mask, "tiltlm_for_rule", None)
        if pick is None:  # a plain padded batch (the model built its own masks) or no mask
            return None
        resolved = mask if rule is None else pick(rule)
        if isinstance(resolved, torch.Tensor):
            bare = resolved.detach()  # a new tensor object: no callback attribute for dynamo to trace
        else:  # a FlexAttention BlockMask: a shallow copy without the callback
            bare = copy.copy(resolved)
            bare.__dict__.pop("tiltlm_for_rule", None)
        return args, {**kwargs, "attention_mask": bare}

    return hook


def compile_blocks(model: torch.nn.Module, *, backend: Union[str, Callable] = "inductor", mode: Optional[str] = None,
                   log: Callable[[str], None] = print) -> int:
    """Compile every decoder block of `model` in place (idempotent). Returns how many blocks were compiled; 0 (and
    one info line) when the model has no repeated blocks found."""
    if isinstance(backend, str) and backend not in (known := torch._dynamo.list_backends(exclude_tags=())):
        raise ConfigError(f"torch_compile_backend {backend!r} is not a torch.compile backend"
                          f"{suggest(backend, known)}; known: {', '.join(known)}")
    blocks = decoder_blocks(model)
    if not blocks:
        log(f"info: torch_compile off: no repeated decoder blocks found in {type(model).__name__}")
        return 0
    config = layer_rules.text_config(model)
    compiled: dict[type, Callable] = {}
    count, mixed = 0, []
    for block in blocks:
        if _MASK_HOOK in block.__dict__:
            count += 1
            continue
        single, rule = block_rule(block, config)
        if not single:
            mixed.append(type(block).__name__)
            continue
        cls = type(block)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, backend=backend, mode=mode, dynamic=True)
        handle = block.register_forward_pre_hook(_bare_mask(rule), with_kwargs=True, prepend=True)
        block.__dict__[_MASK_HOOK] = handle
        block.forward = types.MethodType(compiled[cls], block)
        count += 1
    if mixed:
        log(f"info: torch_compile off for {len(mixed)} blocks ({', '.join(sorted(set(mixed)))}): their attention "
            "modules follow different mask rules inside one block")
    return count


def restore(model: torch.nn.Module) -> None:
    """Undo compile_blocks: every block runs its class's eager forward again."""
    for module in model.modules():
        handle = module.__dict__.pop(_MASK_HOOK, None)
        if handle is not None:
            handle.remove()
            module.__dict__.pop("forward", None)


def verify(model: torch.nn.Module, path: ScoringPath, pairs: Sequence, *, pad_token_id: int = 0,
           sample_size: int = SAMPLE_SIZE) -> Optional[str]:
    """None when the compiled `model` scores the check's pairs as one plain forward per sequence (within the fast
    paths' tolerance: eval mode without grad, as the reference pass and evaluation run; train mode with grad, as a
    step runs) and its backward runs; else what went wrong, in a few words. In the weights' dtype, as the start-up
    check (exactness is a property of the layout). Compiles those graphs on the way, so step 1 costs a step."""
    sample = check_sample(pairs, sample_size)
    if not sample:
        return None
    try:
        with eager_blocks(model):  # the truth: the model's own forward, every block eager
            want = one_at_a_time(model, sample)
    except Exception as e:  # noqa: BLE001 - reported by the caller as the reason compile is off
        return f"the eager forward raises {type(e).__name__}: {first_line(e)[:160]}"
    dtype = next(model.parameters()).dtype
    tol = TOLERANCE.get(dtype, 1e-4)
    exact = replace(path, precision=replace(path.precision, compute=None), notes=())
    if problem := compare(exact, model, sample, want, tol, pad_token_id):
        return problem
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            batch = exact.micro_batches(sample, batch_size=len(sample), pad_token_id=pad_token_id)[0]
            tok = exact.token_logps(model, batch.to(next(model.parameters()).device))
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(tok.sum(), params, allow_unused=True)
    except Exception as e:  # noqa: BLE001 - any failure of the compiled training graph means: train eager
        return f"the training forward or backward raises {type(e).__name__}: {first_line(e)[:160]}"
    finally:
        model.train(was_training)
    tok = tok.detach().float().cpu()
    for s in range(2 * batch.num_pairs):
        ref = want[(int(batch.pair_index[s // 2]), s % 2)]
        worst = (tok[batch.seq_ids == s] - ref).abs().max().item()
        if not worst <= tol:
            return f"differs in train mode from the model's own forward by {worst:.3g} nats per token (tolerance {tol:g})"
    return None


@contextlib.contextmanager
def eager_blocks(model: torch.nn.Module) -> Iterator[None]:
    """Inside, the compiled blocks of `model` run their class's eager forward (the ground truth of `verify`)."""
    blocks = [m for m in model.modules() if _MASK_HOOK in m.__dict__]
    saved = [m.__dict__.pop("forward") for m in blocks]
    try:
        yield
    finally:
        for m, forward in zip(blocks, saved):
            m.forward = forward


def compile_model(model: torch.nn.Module, path: ScoringPath, pairs: Sequence, *,
                  backend: Union[str, Callable] = "inductor",
                  mode: Optional[str] = None, pad_token_id: int = 0, log: Callable[[str], None] = print) -> bool:
    """--torch-compile: compile the blocks, check them on the run's pairs, and keep them only if exact. Returns
    whether the model runs compiled; each reason it does not is one info line."""
    if not compile_blocks(model, backend=backend, mode=mode, log=log):
        return False
    problem = verify(model, path, pairs, pad_token_id=pad_token_id)
    if problem is not None:
        restore(model)
        log(f"info: torch_compile off (the compiled blocks: {problem}); training eager")
        return False
    n = sum(1 for m in model.modules() if _MASK_HOOK in m.__dict__)
    log(f"torch_compile: {n} decoder blocks compiled (backend {getattr(backend, '__name__', backend)}, mode {mode or 'default'}; one graph per "
        "block class, grad mode and mask kind, shared by all blocks; dynamic lengths); equal to the eager forward")
    return True
