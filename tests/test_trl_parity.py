"""tiltlm's losses side by side with TRL 1.16's DPOTrainer on the SAME per-token log-probs.

TRL computes its loss inside `DPOTrainer._compute_loss(model, inputs, ...)`, which calls the policy (and the
reference) on a padded batch and reads the per-token log-probs of TRL's fused LM head. The harness hands it two
stand-in models that return fixed per-token tables (the policy's and the reference's) and the trainer attributes that
method reads; everything after the forward is TRL's own code. tiltlm gets the same tables in its own layout (a
ModelBatch from core.batching.collate, per-token values in batch.labels order) and goes through
core.logps.sequence_logps and core.losses.compute_loss. Loss and metrics must agree within 1e-6.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tiltlm.core.batching import collate
from tiltlm.core.logps import completion_positions, sequence_logps
from tiltlm.core.losses import LOSSES, LossHParams, compute_loss
from tiltlm.types import TokenizedPair

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")  # requirements.txt pins trl==1.16.0: this always runs

LENGTHS = [(3, 5, 2), (2, 1, 4), (4, 3, 3), (1, 6, 1), (2, 2, 5)]  # (prompt, chosen, rejected) tokens per pair
TRL_LOSSES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class TableLM(torch.nn.Module):
    """Stands in for a model with TRL's fused LM head: returns a fixed (2B, L-1) table of per-token log-probs (0 off
    the completion, as the fused head returns for label -100) and, for WPO, of log sum_v p_v^2."""

    is_gradient_checkpointing = False

    def __init__(self, log_probs: torch.Tensor, log_sum_sq: torch.Tensor):
        super().__init__()
        self.log_probs, self.log_sum_sq = log_probs, log_sum_sq

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):
        zeros = torch.zeros_like(self.log_probs)
        return SimpleNamespace(log_probs=self.log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool(), log_sum_sq_probs=self.log_sum_sq, aux_loss=None)


def tables(dtype: torch.dtype, seed: int = 0):
    """Random per-token tables in TRL's padded layout (rows: the B chosen sequences, then the B rejected ones)."""
    g = torch.Generator().manual_seed(seed)
    B = len(LENGTHS)
    L = max(p + max(c, r) for p, c, r in LENGTHS)
    completion = torch.zeros(2 * B, L, dtype=torch.long)
    for i, (p, c, r) in enumerate(LENGTHS):
        completion[i, p:p + c] = 1
        completion[B + i, p:p + r] = 1
    shifted = completion[:, 1:].bool()  # log_probs[:, j] is the log-prob of token j+1
    def table(scale):
        return torch.where(shifted, -scale * torch.rand(2 * B, L - 1, generator=g, dtype=torch.float64), 0.0).to(dtype)
    return completion, table(3.0), table(3.0), table(2.0)  # policy, reference, policy log sum p^2 (<= 0)


def trl_loss(completion, pol, ref, sq, *, loss_types, weights=None, beta=0.1, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha=0.5, use_weighting=False, ld_alpha=None, discopop_tau=0.05):
    """TRL 1.16's DPOTrainer._compute_loss on the tables: (loss, its logged metrics)."""
    policy_lm, ref_lm = TableLM(pol, sq), TableLM(ref, sq)
    trainer = SimpleNamespace(
        model=policy_lm, ref_model=ref_lm, aux_loss_enabled=False, precompute_ref_logps=False,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t),
        beta=beta, label_smoothing=label_smoothing, loss_types=loss_types,
        loss_weights=weights or [1.0] * len(loss_types), f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha, use_weighting=use_weighting, ld_alpha=ld_alpha,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(completion), "attention_mask": torch.ones_like(completion),
              "completion_mask": completion}
    loss = trl_dpo.DPOTrainer._compute_loss(trainer, policy_lm, inputs, False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def tiltlm_logps(completion, *tabs):
    """The same tables as tiltlm sees them: per completion token, in the order of a ModelBatch's labels."""
    B = len(LENGTHS)
    pairs = [TokenizedPair(i, [1] * p, [2] * c, [3] * r) for i, (p, c, r) in enumerate(LENGTHS)]
    batch = collate(pairs, prefix_sharing=True)
    seq, pos = batch.seq_ids, completion_positions(batch.seq_ids, 2 * B)
    row = torch.where(seq % 2 == 0, seq // 2, B + seq // 2)  # TRL's row of each tiltlm sequence
    start = completion.argmax(dim=1)  # first completion token of each TRL row
    per_token = [t[row, start[row] - 1 + pos] for t in tabs]  # log_probs[:, j] predicts token j+1
    return batch, per_token


def tiltlm_loss(completion, pol, ref, sq, *, loss_types, weights=None, **hp):
    batch, (p, r, s) = tiltlm_logps(completion, pol, ref, sq)
    policy = sequence_logps(p, batch, log_sum_sq=s)
    reference = sequence_logps(r, batch)
    out = compute_loss(loss_types, weights, policy, reference, LossHParams(**hp))
    return out.losses.mean(), policy, out


def assert_same(loss_types, dtype=torch.float64, tol=1e-6, weights=None, **hp):
    completion, pol, ref, sq = tables(dtype)
    trl_hp = {("f_alpha" if k == "f_alpha_divergence_coef" else k): v for k, v in hp.items()}
    expected, metrics = trl_loss(completion, pol, ref, sq, loss_types=loss_types, weights=weights, **trl_hp)
    got, policy, out = tiltlm_loss(completion, pol, ref, sq, loss_types=loss_types, weights=weights, **hp)
    assert got.item() == pytest.approx(expected.item(), abs=tol, rel=tol), (loss_types, hp)
    return metrics, policy, out


def test_trl_loss_types_all_exist_in_tiltlm():
    trl_types = trl_dpo.DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    for name in TRL_LOSSES:
        assert f"'{name}'" in trl_types and name in LOSSES
    assert set(LOSSES) - set(TRL_LOSSES) == {"simpo"}  # TRL has SimPO in CPOTrainer, not in DPOTrainer


# exo_pair: TRL 1.16 refuses label_smoothing 0 (tiltlm then uses EXO's 1e-3), so it runs at 1e-3 like aot's smoothing
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1}


@pytest.mark.parametrize("name", TRL_LOSSES)
def test_same_loss_as_trl(name):
    assert_same([name], beta=0.3, label_smoothing=SMOOTHING.get(name, 0.0), discopop_tau=0.5)
    if name in SMOOTHING and name != "exo_pair":
        assert_same([name], beta=0.3)  # and without smoothing


def test_same_metrics_as_trl():
    metrics, policy, out = assert_same(["sigmoid"], beta=0.3)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
    assert policy.chosen.mean().item() == pytest.approx(metrics["logps/chosen"], abs=1e-6)
    assert policy.rejected.mean().item() == pytest.approx(metrics["logps/rejected"], abs=1e-6)


def test_same_mix_as_trl():  # MPO-style mix of three losses, and RPO
    assert_same(["sigmoid", "bco_pair", "sft"], weights=[0.8, 0.2, 1.0], beta=0.2)
    assert_same(["sigmoid", "sft"], weights=[1.0, 0.5])


F_DIV_LOSSES = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"]


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence"])
@pytest.mark.parametrize("name", F_DIV_LOSSES)
def test_same_f_divergence_as_trl(name, divergence):
    assert_same([name], beta=0.3, label_smoothing=SMOOTHING.get(name, 0.0), f_divergence_type=divergence)


@pytest.mark.parametrize("coef", [0.5, 0.2, 1.0])
@pytest.mark.parametrize("name", F_DIV_LOSSES)
def test_same_alpha_divergence_as_trl(name, coef):
    # TRL's alpha_divergence only runs in fp16 / bf16 / fp32 (its clamp table has no fp64): fp32 here
    assert_same([name], dtype=torch.float32, tol=1e-6, beta=0.3, label_smoothing=SMOOTHING.get(name, 0.0),
                f_divergence_type="alpha_divergence", f_alpha_divergence_coef=coef)


@pytest.mark.parametrize("name", [n for n in TRL_LOSSES if n not in ("aot", "aot_unpaired", "sft")])
def test_same_wpo_as_trl(name):
    _, _, out = assert_same([name], beta=0.3, label_smoothing=SMOOTHING.get(name, 0.0), use_weighting=True)
    assert ((out.extras["wpo_weight"] > 0) & (out.extras["wpo_weight"] != 1)).all()


def test_wpo_with_sft_where_trl_fails():
    """TRL 1.16 cannot weight its sft loss (an in-place product on the expanded batch scalar raises); tiltlm gives
    what TRL's code means: the batch's token-mean NLL times each pair's weight, averaged over pairs."""
    completion, pol, ref, sq = tables(torch.float64)
    with pytest.raises(RuntimeError, match="memory location"):
        trl_loss(completion, pol, ref, sq, loss_types=["sft"], use_weighting=True)
    shifted = completion[:, 1:].bool()
    B = len(LENGTHS)
    nll = -pol[:B][shifted[:B]].mean()
    w = torch.exp(((pol - sq) * shifted).sum(1) / shifted.sum(1))
    got, _, out = tiltlm_loss(completion, pol, ref, sq, loss_types=["sft"], use_weighting=True)
    assert torch.allclose(out.extras["wpo_weight"], w[:B] * w[B:], atol=1e-12)
    assert got.item() == pytest.approx((nll * w[:B] * w[B:]).mean().item(), abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("name", TRL_LOSSES)
def test_same_ld_dpo_as_trl(name, alpha):
    assert_same([name], beta=0.3, label_smoothing=SMOOTHING.get(name, 0.0), ld_alpha=alpha)


def test_same_everything_at_once_as_trl():
    assert_same(["sigmoid", "ipo", "sft"], weights=[1.0, 0.1, 0.5], beta=0.2, ld_alpha=0.3,
                f_divergence_type="js_divergence")
    assert_same(["sigmoid", "ipo"], weights=[1.0, 0.1], beta=0.2, ld_alpha=0.3, use_weighting=True,
                f_divergence_type="js_divergence")


def test_ld_dpo_changes_the_loss():  # the LD cases above are not all equal to plain DPO by accident
    completion, pol, ref, sq = tables(torch.float64)
    plain = tiltlm_loss(completion, pol, ref, sq, loss_types=["sigmoid"])[0]
    assert tiltlm_loss(completion, pol, ref, sq, loss_types=["sigmoid"], ld_alpha=1.0)[0].item() == pytest.approx(
        plain.item(), abs=1e-12)
    assert abs(tiltlm_loss(completion, pol, ref, sq, loss_types=["sigmoid"], ld_alpha=0.0)[0].item()
               - plain.item()) > 1e-3


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_same_per_token_log_probs_and_wpo_terms_as_trls_fused_head(kind):
    """On a real (tiny) model: TRL's fused LM head (add_fused_lm_head, the kernel DPOTrainer reads) and tiltlm's
    token_logps / token_log_sum_sq_probs give the same per-token log-probs and log sum_v p_v^2 (gemma2: with its
    final-logit soft-capping)."""
    import copy

    from tiny_models import tiny_model

    from tiltlm.core.logps import token_log_sum_sq_probs, token_logps

    model = tiny_model(kind)
    fused = copy.deepcopy(model)
    trl_utils = pytest.importorskip("trl.trainer.utils")
    trl_utils.add_fused_lm_head(fused, outputs=("log_probs", "log_sum_sq_probs"))
    pairs = [TokenizedPair(0, [1, 7, 8], [9, 10], [11, 12, 13]), TokenizedPair(1, [1], [14, 15, 16, 17], [18])]
    seqs = [p.prompt_ids + c for p in pairs for c in (p.chosen_ids, p.rejected_ids)]  # tiltlm's sequence order
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    labels = torch.full_like(ids, -100)
    for k, p in enumerate(pairs):
        for j, comp in enumerate((p.chosen_ids, p.rejected_ids)):
            labels[2 * k + j, len(p.prompt_ids):len(p.prompt_ids) + len(comp)] = torch.tensor(comp)
    with torch.no_grad():
        out = fused(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
    mask = labels[:, 1:] != -100
    batch = collate(pairs, prefix_sharing=True)
    counts = torch.bincount(batch.seq_ids, minlength=4)
    in_seq_order = torch.cumsum(counts, 0) - counts  # labels of sequence s start here in seq order ...
    where = in_seq_order[batch.seq_ids] + completion_positions(batch.seq_ids, 4)  # ... and this label sits here
    with torch.no_grad():
        lp = token_logps(model, batch, chunk_size=3)
        sq = token_log_sum_sq_probs(model, batch, chunk_size=3)
    assert torch.allclose(lp, out.log_probs[mask][where], atol=1e-5)
    assert torch.allclose(sq, out.log_sum_sq_probs[mask][where], atol=1e-5)


# ------------------------------------------------------------------------------------------------ step 1 end to end
STEP1_CONFIGS = {
    "sigmoid": dict(loss_type=["sigmoid"]),
    "rpo+js+ld": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], f_divergence_type="js_divergence",
                      ld_alpha=0.5),
    "ipo+wpo": dict(loss_type=["ipo"], use_weighting=True),
    "aot+smoothing": dict(loss_type=["aot"], label_smoothing=0.1),
}


@pytest.fixture(scope="module")
def step1_assets(tiny_assets, smollm2_tokenizer, tmp_path_factory):
    """A second tiny model as the reference (so step 1's rewards are not 0) and 4 pairs of unequal lengths."""
    import json

    from tiny_models import tiny_model_dir

    root = tmp_path_factory.mktemp("step1")
    tiny_model_dir(root / "ref", smollm2_tokenizer, seed=1)
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": f"Question {i}: can you help me?", "chosen": " Sure." + " Gladly." * (i % 3),
                                "rejected": " No." + " Never, go away." * ((i + 1) % 4)}) + "\n")
    return tiny_assets / "model", root / "ref", root / "pairs.jsonl"


@pytest.mark.parametrize("config", sorted(STEP1_CONFIGS))
def test_step1_metrics_match_trls_dpotrainer(step1_assets, tmp_path, config):
    """The same model, reference, pairs and options through TRL's DPOTrainer and through tiltlm.train: the first
    step's loss, rewards and log-probs agree. (Measured: |difference| <= 6e-5 on sigmoid's loss and the rewards,
    7e-4 on ipo's loss of 25 (3e-5 relative), 3.2e-4 nats on a -114-nat logps/rejected; tiltlm's log-probs are the
    one-sequence-at-a-time ones to 1e-5, TRL's carry the fp32 rounding of its padded batch and fused LM head.)"""
    import json

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    import tiltlm

    model, ref, data = step1_assets
    options = dict(beta=0.1, learning_rate=1e-6, per_device_train_batch_size=4, max_steps=1, **STEP1_CONFIGS[config])
    trl_args = DPOConfig(output_dir=str(tmp_path / "trl"), logging_steps=1, report_to=[], use_cpu=True,
                         precompute_ref_log_probs=False, save_strategy="no", disable_tqdm=True, **options)
    trainer = DPOTrainer(model=str(model), ref_model=AutoModelForCausalLM.from_pretrained(ref), args=trl_args,
                         train_dataset=datasets.load_dataset("json", data_files=str(data), split="train"),
                         processing_class=AutoTokenizer.from_pretrained(model))
    trainer.train()
    theirs = trainer.state.log_history[0]
    tiltlm.train(model=str(model), ref_model=str(ref), train_dataset=str(data), output_dir=str(tmp_path / "tilt"),
                 ref_cache_dir=str(tmp_path / "cache"), progress=False, log=lambda *a, **k: None, **options)
    ours = json.loads((tmp_path / "tilt" / "metrics.jsonl").read_text().splitlines()[0])
    assert ours["step"] == theirs["step"] == 1
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=2e-4), key  # ipo's loss is ~25: relative
    if "ld_alpha" not in options:  # TRL logs the LD-weighted sums as logps/*; tiltlm logs the plain sums
        for key in ("logps/chosen", "logps/rejected"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
