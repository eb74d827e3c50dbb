"""What the DPO doctor reports and what it compares against: `Finding`, every threshold (`DoctorThresholds`),
the standing fix of each check (`FIX`), and the number helpers every check reads records with."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

FIX = {
    "chosen_collapse": "raise beta, or add the SFT term on the chosen response (--loss-type sigmoid,sft, i.e. RPO)",
    "sign_bug": "check the chosen/rejected columns and the loss sign: assert rewards/chosen > rewards/rejected "
                "within the first few steps",
    "inverted_data": "check the chosen/rejected columns of the train and eval files: one of them is swapped",
    "reference_mismatch": "initialise the policy from the reference (the same checkpoint); don't pass a "
                          "different --ref-model",
    "length_bias": "length-balance the pairs, or use a length-normalised loss (--loss-type sigmoid_norm, or simpo)",
    "kl_runaway": "beta too small: raise beta (or lower the learning rate)",
    "beta_lr_confusion": "fix the learning rate (5e-7 is standard), sweep beta in {0.05, 0.1, 0.3}; "
                         "sweep LR only if beta isn't moving the needle",
    "nonfinite": "lower the learning rate, keep --max-grad-norm 1.0, train in float32/bfloat16 rather than float16",
    "rounded_updates": "train with --bf16 (fp32 master weights, bf16 compute) instead of low-precision weights "
                       "stepped in place, or raise the learning rate above the weights' resolution",
    "not_learning": "learning rate too low, or beta too large (beta >= 1 is almost identity): raise the LR or "
                    "lower beta",
}


# sign_bug, one-sided: chosen and rejected swapped in the policy's log-probs or in the reference's, not both
ONE_SIDED_FIX = ("pair chosen with chosen and rejected with rejected on BOTH sides: the policy's and the reference's "
                 "log-probs (or a precomputed reference table's columns) are swapped on one side only")


@dataclass
class Finding:
    check: str
    severity: str  # "warning" | "error" | "info"
    step: int
    message: str
    fix: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DoctorThresholds:
    """Every number the doctor compares against. Windows count logging records, not optimizer steps."""

    # chosen_collapse: compare the mean of the first and of the last `collapse_window` records
    collapse_window: int = 3
    collapse_margin_increase: float = 0.05  # rewards/margins must have grown by at least this much
    collapse_per_token_drop: float = 0.05  # logps_per_token/chosen fell by more than this (nats/token)
    collapse_sum_drop_frac: float = 0.05  # logps/chosen fell by more than this fraction of |first-window value|
    # sign_bug: the first `sign_window` records after step 1
    sign_window: int = 10
    sign_min_records: int = 5  # fewer than this: no early verdict
    sign_wrong_frac: float = 0.7  # share of records with rewards/chosen < rewards/rejected
    stuck_after: int = 20  # "accuracy stuck" is judged only after this many records...
    stuck_window: int = 10  # ...over the mean of the last this-many records
    stuck_accuracy: float = 0.5  # mean accuracy <= this while the loss has moved = stuck
    # inverted_data
    inverted_train_accuracy: float = 0.6  # recent train accuracy (mean of last 5 records) at least this...
    inverted_eval_accuracy: float = 0.45  # ...while eval/rewards/accuracies below this and eval margins < 0
    # reference_mismatch (first record, only when it is step 1 = computed before any update)
    ref_loss_tolerance: float = 0.05  # |loss - initial_loss| > tol * max(1, initial_loss)
    ref_margin_tolerance: float = 0.1  # |rewards/margins| at step 1
    ref_kl_tolerance: float = 1.0  # kl_proxy at step 1 (nats), and also...
    ref_kl_per_token_tolerance: float = 0.02  # ...kl_proxy / mean completion tokens (nats/token)
    ref_grad_ratio: float = 10.0  # first grad_norm > ratio * median of the next `ref_grad_window` records
    ref_grad_window: int = 10
    one_sided_sum: float = 0.02  # step 1: |rewards/chosen + rewards/rejected| <= this * their size: one-sided swap
    one_sided_min_reward: float = 0.005  # ...when their size |rewards/chosen| + |rewards/rejected| is at least this
    # length_bias, either way (longer wins: correlation > 0; shorter wins: < 0). Data: data_stats.json
    length_chosen_longer_frac: float = 0.65  # chosen longer in > this share of pairs (or rejected longer)
    length_diff_effect: float = 0.3  # |mean| / sd of (chosen - rejected tokens) at least this: a warning...
    length_diff_effect_info: float = 0.1  # ...at least this, with |mean| >= this share of the mean length: info
    length_diff_min_frac: float = 0.1
    length_mean_ratio: float = 1.5  # data_stats without length_diff and the fraction: mean chosen / mean rejected
    # live: len_diff_margin_corr of the last records, pooled (Fisher z weighted by their pairs): at least
    # `length_corr_window` records holding at least `length_corr_min_pairs` pairs (looking back at most
    # `length_corr_max_window` records)
    length_corr: float = 0.4  # |pooled correlation| at least this...
    length_corr_window: int = 5
    length_corr_min_pairs: int = 64
    length_corr_max_window: int = 64
    length_corr_agree: float = 0.8  # ...with at least this share of the records on its side of 0...
    length_corr_z: float = 3.5  # ...and its z-score against "no correlation" at least this (when pairs are logged)
    # held out: eval/len_diff_margin_corr of each eval, and at the end the pairs of pair_scores.jsonl
    length_eval_corr: float = 0.3  # |correlation| at least this over at least `length_eval_min_pairs` pairs...
    length_eval_min_pairs: int = 20
    length_eval_z: float = 3.0  # ...with a z-score at least this
    # kl_runaway
    kl_min: float = 5.0  # kl_proxy (nats, mean of last 3 records) above this and above...
    kl_min_per_token: float = 0.05  # ...this * mean completion tokens (long responses drift more in total)...
    kl_window: int = 10  # ...and at least `kl_growth` times its value `kl_window` records earlier...
    kl_growth: float = 2.0
    kl_accel: float = 1.25  # ...and growing superlinearly: 2nd-half rise > kl_accel * 1st-half rise
    # beta_lr_confusion (info)
    small_beta: float = 0.05  # beta below this...
    large_lr: float = 1e-5  # ...with learning rate above this: both dials aggressive
    identity_beta: float = 1.0  # beta at or above this is almost identity
    # not_learning
    not_learning_after: int = 30  # judged after this many records, once LR warmup is over
    not_learning_window: int = 20  # every loss of the last this-many records...
    not_learning_tolerance: float = 0.01  # ...within tol * max(1, start) of the start value...
    not_learning_accuracy: float = 0.55  # ...and their mean accuracy <= this (end of run: never beat 0.5)
    finish_min_records: int = 10  # end-of-run checks need at least this many records after step 1
    # rounded_updates: the share of AdamW's intended update the stored weights kept (optim.UpdateProbe)
    min_update_kept: float = 0.5


def as_number(rec: dict, key: str) -> Optional[float]:
    v = rec.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def is_finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)
