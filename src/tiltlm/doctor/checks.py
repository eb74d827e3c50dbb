"""The DPO doctor: live checks over the metrics stream for the failure modes every DPO run can hit.

Each check watches the metric names of docs/design.md and, when it fires, says what it saw and the fix
(the seed's advice). A check fires once; it fires again only after its condition cleared and recurred.
All thresholds live in `DoctorThresholds`; "records" are logging records (one per `logging_steps`).

    doctor = Doctor(beta=0.1, learning_rate=5e-7, loss_types=["sigmoid"])
    doctor.check_data(data_stats); for rec in stream: doctor.observe(rec); doctor.finish()
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Optional

from ..core.losses import LOSSES, LossHParams

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


def initial_loss(loss_type: str, beta: float, label_smoothing: float = 0.0) -> Optional[float]:
    """The loss at step 0, when policy == reference (all log-ratios 0), from the loss's own LossSpec; None when
    the loss is unknown or reference-free (its value then depends on the policy alone)."""
    spec = LOSSES.get(loss_type)
    if spec is None or spec.at_reference is None:
        return None
    return spec.at_reference(LossHParams(beta=beta, label_smoothing=label_smoothing))


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
    # length_bias
    length_chosen_longer_frac: float = 0.65  # chosen longer in > this share of pairs (or rejected: < 1 - this)
    length_mean_ratio: float = 1.5  # used when the fraction is unknown: mean chosen / mean rejected tokens
    length_corr: float = 0.5  # len_diff_margin_corr above this...
    length_corr_window: int = 5  # ...for this many consecutive records
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
    finish_min_records: int = 10
    # rounded_updates: the share of AdamW's intended update the stored weights kept (optim.UpdateProbe)
    min_update_kept: float = 0.5  # end-of-run checks need at least this many records after step 1


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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class Doctor:
    """Feed it data stats, then train/eval records in order; it returns new `Finding`s as they appear."""

    def __init__(self, *, beta: float, learning_rate: Optional[float], loss_types: list[str],
                 thresholds: Optional[DoctorThresholds] = None):
        self.beta = float(beta)
        self.learning_rate = learning_rate
        self.loss_types = [loss_types] if isinstance(loss_types, str) else list(loss_types or ["sigmoid"])
        self.t = thresholds or DoctorThresholds()
        self.findings: list[Finding] = []
        self._train: list[dict] = []  # finite-loss train records after step 1 (the first record kept apart)
        self._first: Optional[dict] = None
        self._evals: list[dict] = []
        self._active: set[str] = set()
        self._done: set[str] = set()  # one-shot evaluations already made
        self._config_checked = False
        start = initial_loss(self.loss_types[0], self.beta) if len(self.loss_types) == 1 else None
        self._expected_start = start
        # reference-free losses' "rewards" are not log-ratios, so the step-1 reference checks do not apply
        self._ref_free = any(lt in LOSSES and LOSSES[lt].reference_free for lt in self.loss_types)

    # ------------------------------------------------------------------ plumbing
    def _emit(self, key: str, cond: bool, check: str, severity: str, step: int, message: str,
              out: list[Finding]) -> None:
        """Fire `check` when `cond` turns true (keyed by `key`); re-arm when it turns false."""
        if cond and key not in self._active:
            self._active.add(key)
            f = Finding(check, severity, int(step), message, FIX[check])
            self.findings.append(f)
            out.append(f)
        elif not cond:
            self._active.discard(key)

    def _series(self, key: str, last: Optional[int] = None) -> list[float]:
        recs = self._train if last is None else self._train[-last:]
        return [x for x in (as_number(r, key) for r in recs) if is_finite(x)]

    def _warm(self, last: int) -> bool:
        """True unless the learning rate is still rising over the last `last` records (LR warmup)."""
        lrs = self._series("learning_rate", last + 1)
        return len(lrs) < 2 or lrs[-1] <= lrs[0] * (1 + 1e-6)

    def _config(self, out: list[Finding]) -> None:
        if self._config_checked:
            return
        self._config_checked = True
        b, lr, t = self.beta, self.learning_rate, self.t
        if lr is not None and b < t.small_beta and lr > t.large_lr:
            self._emit("beta_lr", True, "beta_lr_confusion", "info", 0,
                       f"beta={b:g} is small AND learning_rate={lr:g} is large: both push the policy far from the "
                       f"reference per step (halving beta ~ doubling LR), so you can't tell which dial mattered",
                       out)
        elif b >= t.identity_beta:
            self._emit("beta_lr", True, "beta_lr_confusion", "info", 0,
                       f"beta={b:g} >= {t.identity_beta:g}: the policy will hardly move from the reference "
                       f"(a sanity-check baseline, not a training setting)", out)

    # ------------------------------------------------------------------ data
    def check_data(self, stats: dict) -> list[Finding]:
        """Length bias up front, from data_stats.json (`chosen_longer_frac`, token length stats)."""
        out: list[Finding] = []
        self._config(out)
        stats = stats or {}
        t = self.t
        frac = as_number(stats, "chosen_longer_frac")
        rej_frac = as_number(stats, "rejected_longer_frac")  # ties count as neither longer
        if rej_frac is None and frac is not None:
            rej_frac = 1 - frac
        mc, mr = _token_mean(stats, "chosen"), _token_mean(stats, "rejected")
        lens = f" (mean tokens chosen {mc:.0f} vs rejected {mr:.0f})" if mc and mr else ""
        if frac is not None and frac > t.length_chosen_longer_frac:
            msg = (f"chosen is longer than rejected in {frac:.0%} of pairs (> {t.length_chosen_longer_frac:.0%})"
                   f"{lens}: summed log-probs make LENGTH a learnable signal and the policy will grow verbose")
        elif frac is not None and rej_frac > t.length_chosen_longer_frac:
            msg = (f"rejected is longer than chosen in {rej_frac:.0%} of pairs{lens}: DPO can learn 'shorter is "
                   f"better' instead of the preference")
        elif frac is None and mc and mr and max(mc / mr, mr / mc) > t.length_mean_ratio:
            msg = f"chosen and rejected lengths differ by more than {t.length_mean_ratio:g}x{lens}"
        else:
            return out
        self._emit("length:data", True, "length_bias", "warning", 0, msg, out)
        return out

    # ------------------------------------------------------------------ train records
    def observe(self, record: dict) -> list[Finding]:
        """One train metrics record; returns the findings that are new with it."""
        if any(str(k).startswith("eval/") for k in record):
            return self.observe_eval(record)
        out: list[Finding] = []
        self._config(out)
        step = int(as_number(record, "step") or (len(self._train) + 1 + (self._first is not None)))
        loss, gn, nfs = as_number(record, "loss"), as_number(record, "grad_norm"), as_number(record, "nonfinite_steps")
        bad = [f"{k}={v}" for k, v in (("loss", loss), ("grad_norm", gn)) if v is not None and not math.isfinite(v)]
        if "loss" in record and loss is None:
            bad.append("loss=null")
        if nfs is not None and nfs > 0:
            bad.append(f"nonfinite_steps={nfs:g}")
        self._emit("nonfinite", bool(bad), "nonfinite", "error", step,
                   "non-finite values: " + ", ".join(bad) + " (those steps were skipped or corrupted the weights)",
                   out)
        if bad and not is_finite(loss):
            return out
        self._check_rounding(record, step, out)
        if self._first is None:
            self._first = record
            self._check_reference(record, step, out)
            return out
        self._train.append(record)
        self._check_grad_spike(step, out)
        self._check_sign_early(step, out)
        self._check_collapse(step, out)
        self._check_length_live(step, out)
        self._check_kl(step, out)
        self._check_stuck(step, out)
        return out

    def _check_rounding(self, rec: dict, step: int, out: list[Finding]) -> None:
        kept = as_number(rec, "update_kept")
        if kept is None:
            return
        self._emit("rounded_updates", kept < self.t.min_update_kept, "rounded_updates", "error", step,
                   f"the weights kept only {kept:.0%} of the optimizer's intended update (update_kept): the steps "
                   f"are smaller than half the weights' precision step and round away, so the model barely trains",
                   out)

    def _start_loss(self) -> Optional[float]:
        if self._expected_start is not None:
            return self._expected_start
        return as_number(self._first or {}, "loss")

    def _check_reference(self, rec: dict, step: int, out: list[Finding]) -> None:
        t = self.t
        if step > 1 or self._ref_free:
            return
        why = []
        loss, exp = as_number(rec, "loss"), self._expected_start
        weight = as_number(rec, "wpo_weight")  # WPO: each pair's loss is the policy = reference value times its weight
        if exp is not None and is_finite(weight):
            exp *= weight
        if is_finite(loss) and exp is not None and abs(loss - exp) > t.ref_loss_tolerance * max(1.0, abs(exp)):
            why.append(f"loss {loss:.4f} at step 1, but policy == reference gives {exp:.4f} for "
                       f"{self.loss_types[0]}")
        m = as_number(rec, "rewards/margins")
        if is_finite(m) and abs(m) > t.ref_margin_tolerance:
            why.append(f"rewards/margins {m:+.3f} at step 1 (should be 0)")
        kl = as_number(rec, "kl_proxy")
        toks = [x for x in (as_number(rec, "tokens/chosen"), as_number(rec, "tokens/rejected")) if is_finite(x) and x > 0]
        per_tok = kl / _mean(toks) if is_finite(kl) and toks else None
        if is_finite(kl) and kl > t.ref_kl_tolerance and (per_tok is None or per_tok > t.ref_kl_per_token_tolerance):
            why.append(f"kl_proxy {kl:.3f} nats at step 1 (should be ~0)")
        if why:
            self._emit("ref", True, "reference_mismatch", "error", step,
                       "; ".join(why) + ": the policy and the reference differ before the first update", out)

    def _check_grad_spike(self, step: int, out: list[Finding]) -> None:
        t = self.t
        if len(self._train) != t.ref_grad_window or "ref" in self._active:
            return
        g0, later = as_number(self._first, "grad_norm"), self._series("grad_norm")
        if is_finite(g0) and later:
            med = statistics.median(later)
            if med > 0 and g0 > t.ref_grad_ratio * med:
                self._emit("ref:grad", True, "reference_mismatch", "warning", step,
                           f"first grad_norm {g0:.3g} is {g0 / med:.0f}x the median of the next {len(later)} "
                           f"records ({med:.3g}): the policy leapt toward the reference at step 1", out)

    def _check_sign_early(self, step: int, out: list[Finding]) -> None:
        t = self.t
        if len(self._train) != t.sign_window or "sign:early" in self._done:
            return
        self._done.add("sign:early")
        self._sign_verdict(self._train, step, out)

    def _sign_verdict(self, recs: list[dict], step: int, out: list[Finding]) -> None:
        t = self.t
        rows = [(as_number(r, "rewards/chosen"), as_number(r, "rewards/rejected"), as_number(r, "rewards/accuracies"),
                 as_number(r, "rewards/margins"), as_number(r, "loss")) for r in recs]
        rows = [r for r in rows if all(is_finite(x) for x in r)]
        if len(rows) < t.sign_min_records:
            return
        h = len(rows) // 2
        wrong = sum(c < rj for c, rj, *_ in rows) / len(rows)
        acc = _mean([r[2] for r in rows])
        m1, m2 = _mean([r[3] for r in rows[:h]]), _mean([r[3] for r in rows[h:]])
        l1, l2 = _mean([r[4] for r in rows[:h]]), _mean([r[4] for r in rows[h:]])
        if wrong >= t.sign_wrong_frac and acc < 0.5 and m2 < m1 and m2 < 0 and l2 < l1:
            self._emit("sign:early", True, "sign_bug", "error", step,
                       f"in the first {len(rows)} records rewards/chosen < rewards/rejected {wrong:.0%} of the time "
                       f"(mean accuracy {acc:.2f}) and rewards/margins went {m1:+.3f} -> {m2:+.3f} while the loss "
                       f"DEcreased {l1:.4f} -> {l2:.4f}: the loss is optimising the wrong direction "
                       f"(inverted sign or swapped chosen/rejected in the loss)", out)

    def _check_stuck(self, step: int, out: list[Finding]) -> None:
        t = self.t
        accs = self._series("rewards/accuracies", t.stuck_window)
        losses = self._series("loss", t.not_learning_window)
        start = self._start_loss()
        if not accs or not losses or start is None:
            return
        tol = t.not_learning_tolerance * max(1.0, abs(start))
        flat = len(losses) >= t.not_learning_window and all(abs(x - start) <= tol for x in losses)
        acc = _mean(accs)
        n = len(self._train)
        stuck_learning = flat and n >= t.not_learning_after and self._warm(t.not_learning_window) and \
            _mean(self._series("rewards/accuracies", t.not_learning_window)) <= t.not_learning_accuracy
        early = any(f.check == "sign_bug" and f.message.startswith("in the first") for f in self.findings)
        self._emit("not_learning", stuck_learning, "not_learning", "warning", step,
                   f"loss has stayed within ±{tol:.3g} of its start value {start:.4f} for the last {len(losses)} "
                   f"records with accuracy ~{acc:.2f}: the policy is not moving (beta={self.beta:g}, "
                   f"lr={self.learning_rate if self.learning_rate is not None else '?'})", out)
        self._emit("sign:stuck", n >= t.stuck_after and not flat and not early and acc <= t.stuck_accuracy, "sign_bug", "error", step,
                   f"preference accuracy is stuck at {acc:.2f} (<= {t.stuck_accuracy:g}) over the last {len(accs)} "
                   f"records although the loss moved: chosen and rejected are probably swapped, or the loss sign "
                   f"is inverted", out)

    def _check_collapse(self, step: int, out: list[Finding]) -> None:
        t = self.t
        w = t.collapse_window
        if len(self._train) < 2 * w:
            return

        def win(key: str, recs: list[dict]) -> Optional[float]:
            xs = [x for x in (as_number(r, key) for r in recs) if is_finite(x)]
            return _mean(xs) if xs else None

        a, b = self._train[:w], self._train[-w:]
        m0, m1 = win("rewards/margins", a), win("rewards/margins", b)
        s0, s1 = win("logps/chosen", a), win("logps/chosen", b)
        p0, p1 = win("logps_per_token/chosen", a), win("logps_per_token/chosen", b)
        rc = win("rewards/chosen", b)
        if None in (m0, m1, s0, s1, p0, p1):
            return
        cond = (m1 > m0 + t.collapse_margin_increase and p0 - p1 > t.collapse_per_token_drop
                and s0 - s1 > t.collapse_sum_drop_frac * abs(s0) and (rc is None or rc < 0))
        self._emit("collapse", cond, "chosen_collapse", "warning", step,
                   f"rewards/margins widened {m0:+.3f} -> {m1:+.3f} but the chosen log-prob FELL: "
                   f"logps/chosen {s0:.1f} -> {s1:.1f}, per token {p0:.3f} -> {p1:.3f}"
                   + (f", rewards/chosen {rc:+.3f}" if rc is not None else "")
                   + ": the margin grows by unlearning rejected faster than learning chosen", out)

    def _check_length_live(self, step: int, out: list[Finding]) -> None:
        t = self.t
        cs = self._series("len_diff_margin_corr", t.length_corr_window)
        cond = len(cs) >= t.length_corr_window and all(c > t.length_corr for c in cs)
        self._emit("length:live", cond, "length_bias", "warning", step,
                   f"len_diff_margin_corr > {t.length_corr:g} for {len(cs)} records (mean {_mean(cs) if cs else 0:.2f})"
                   f": the reward margin is tracking the LENGTH difference between chosen and rejected", out)

    def _check_kl(self, step: int, out: list[Finding]) -> None:
        t = self.t
        k = self._series("kl_proxy")
        if len(k) < t.kl_window + 3:
            return
        now, then = _mean(k[-3:]), _mean(k[-t.kl_window - 3:-t.kl_window])
        mid = _mean(k[-t.kl_window // 2 - 3:-t.kl_window // 2])
        toks = self._series("tokens/chosen", 3) + self._series("tokens/rejected", 3)
        floor = max(t.kl_min, t.kl_min_per_token * _mean(toks)) if toks else t.kl_min
        cond = (now > floor and now >= t.kl_growth * max(then, 1e-9) and self._warm(t.kl_window)
                and (now - mid) > t.kl_accel * max(mid - then, 0.0))
        self._emit("kl", cond, "kl_runaway", "warning", step,
                   f"kl_proxy is running away: {then:.2f} -> {now:.2f} nats over the last {t.kl_window} records "
                   f"and accelerating (beta={self.beta:g} lets the policy drift too far from the reference)", out)

    # ------------------------------------------------------------------ eval records
    def observe_eval(self, record: dict) -> list[Finding]:
        """One eval record (keys `eval/...` plus `step`)."""
        out: list[Finding] = []
        self._evals.append(record)
        step = int(as_number(record, "step") or 0)
        loss = as_number(record, "eval/loss")
        self._emit("nonfinite:eval", loss is not None and not math.isfinite(loss), "nonfinite", "error", step,
                   f"eval/loss is {loss}", out)
        acc, margin = as_number(record, "eval/rewards/accuracies"), as_number(record, "eval/rewards/margins")
        train_acc = self._series("rewards/accuracies", 5)
        if is_finite(acc) and train_acc:
            tr = _mean(train_acc)
            cond = (tr >= self.t.inverted_train_accuracy and acc < self.t.inverted_eval_accuracy
                    and (margin is None or margin < 0))
            self._emit("inverted", cond, "inverted_data", "error", step,
                       f"train accuracy {tr:.2f} but eval accuracy {acc:.2f}"
                       + (f" (eval margin {margin:+.3f})" if is_finite(margin) else "")
                       + ": the model learns a preference the held-out labels disagree with (swapped columns in one "
                       "file, or severe overfitting)", out)
        return out

    # ------------------------------------------------------------------ end of run
    def finish(self) -> list[Finding]:
        """End-of-run checks: loss stuck at its start value, accuracy never beat 0.5, short-run sign verdict."""
        out: list[Finding] = []
        t = self.t
        fired = {f.check for f in self.findings}
        if "sign:early" not in self._done and "sign_bug" not in fired:
            self._done.add("sign:early")
            self._sign_verdict(self._train, self._last_step(), out)
            fired = {f.check for f in self.findings}
        if len(self._train) < t.finish_min_records:
            return out
        start, losses = self._start_loss(), self._series("loss")
        tail = losses[len(losses) // 2:]
        accs = self._series("rewards/accuracies")
        if start is None or not tail or not accs:
            return out
        tol = t.not_learning_tolerance * max(1.0, abs(start))
        flat = all(abs(x - start) <= tol for x in tail)
        best = max(_mean(accs[i:i + 5]) for i in range(max(1, len(accs) - 4)))
        if flat and best <= 0.5 and "not_learning" not in fired:
            self._emit("finish:flat", True, "not_learning", "warning", self._last_step(),
                       f"over the whole run the loss stayed within ±{tol:.3g} of {start:.4f} and accuracy never "
                       f"rose above {best:.2f}", out)
        elif not flat and best <= 0.5 and "sign_bug" not in fired:
            self._emit("finish:acc", True, "sign_bug", "error", self._last_step(),
                       f"preference accuracy never beat 0.5 (best 5-record mean {best:.2f}) although the loss moved",
                       out)
        return out

    def _last_step(self) -> int:
        recs = self._train or ([self._first] if self._first else [])
        return int(as_number(recs[-1], "step") or 0) if recs else 0


def _token_mean(stats: dict, which: str) -> Optional[float]:
    """Mean completion tokens of `which` (chosen / rejected) from data_stats.json (data.prepare.pair_stats)."""
    value = (stats.get("tokens") or {}).get(which, {}).get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
