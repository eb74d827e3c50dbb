"""The DPO doctor: live checks over the metrics stream for the failure modes every DPO run can hit.

Each check watches the metric names of docs/design.md and, when it fires, says what it saw and the fix
(the seed's advice). A check fires once; it fires again only after its condition cleared and recurred.
All thresholds live in `DoctorThresholds`; "records" are logging records (one per `logging_steps`).

    doctor = Doctor(hparams=LossHParams.from_options(cfg), learning_rate=5e-7, loss_types=["sigmoid"])
    doctor.check_data(data_stats); for rec in stream: doctor.observe(rec); doctor.finish(pair_scores)
"""

from __future__ import annotations

import math
import statistics
from typing import Optional

from ..core.losses import LOSSES, LossHParams
from .findings import FIX, ONE_SIDED_FIX, DoctorThresholds, Finding, as_number, is_finite, mean
from .length_checks import LengthChecks

__all__ = ["Doctor", "DoctorThresholds", "Finding", "FIX", "initial_loss", "as_number", "is_finite"]


def initial_loss(loss_type: str, hp: LossHParams) -> Optional[float]:
    """The loss at step 0, when policy == reference (all log-ratios 0), from the loss's own LossSpec and ALL the
    run's hyper-parameters (exo_pair's depends on label_smoothing); None when the loss is unknown or reference-free
    (its value then depends on the policy alone)."""
    spec = LOSSES.get(loss_type)
    if spec is None or spec.at_reference is None:
        return None
    return spec.at_reference(hp)


class Doctor(LengthChecks):
    """Feed it data stats, then train/eval records in order; it returns new `Finding`s as they appear."""

    def __init__(self, *, learning_rate: Optional[float], loss_types: list[str],
                 hparams: Optional[LossHParams] = None, beta: Optional[float] = None,
                 thresholds: Optional[DoctorThresholds] = None):
        """`hparams`: every loss hyper-parameter of the run (LossHParams.from_options(config)); `beta` alone is a
        shorthand for LossHParams(beta=beta) (tests, notebooks)."""
        if hparams is None:
            hparams = LossHParams() if beta is None else LossHParams(beta=float(beta))
        elif beta is not None and float(beta) != hparams.beta:
            raise ValueError(f"beta={beta} disagrees with hparams.beta={hparams.beta}")
        self.hparams = hparams
        self.beta = hparams.beta
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
        self._length_stats: dict = {}  # the data's length difference, for the length finding's fix
        start = initial_loss(self.loss_types[0], hparams) if len(self.loss_types) == 1 else None
        self._expected_start = start
        # reference-free losses' "rewards" are not log-ratios, so the step-1 reference checks do not apply
        self._ref_free = any(lt in LOSSES and LOSSES[lt].reference_free for lt in self.loss_types)

    # ------------------------------------------------------------------ plumbing
    def _emit(self, key: str, cond: bool, check: str, severity: str, step: int, message: str,
              out: list[Finding], fix: Optional[str] = None) -> None:
        """Fire `check` when `cond` turns true (keyed by `key`); re-arm when it turns false. `fix` overrides the
        check's standing advice (FIX) when the finding knows better (e.g. the direction of a length bias)."""
        if cond and key not in self._active:
            self._active.add(key)
            f = Finding(check, severity, int(step), message, fix or FIX[check])
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

    # ------------------------------------------------------------------ data    # ------------------------------------------------------------------ train records
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
        per_tok = kl / mean(toks) if is_finite(kl) and toks else None
        if is_finite(kl) and kl > t.ref_kl_tolerance and (per_tok is None or per_tok > t.ref_kl_per_token_tolerance):
            why.append(f"kl_proxy {kl:.3f} nats at step 1 (should be ~0)")
        rc, rr = as_number(rec, "rewards/chosen"), as_number(rec, "rewards/rejected")
        if self._one_sided(rc, rr, m):
            # lw' = pi_l - ref_w and ll' = pi_w - ref_l (or the reference swapped): at policy == reference every
            # pair's two log-ratios are exact opposites, something no genuinely different reference produces
            self._emit("sign:one_sided", True, "sign_bug", "error", step,
                       f"at step 1 rewards/chosen {rc:+.4f} = -rewards/rejected {rr:+.4f} with rewards/margins "
                       f"{m:+.3f}: each pair's two log-ratios are exact opposites, which is what chosen and rejected "
                       f"swapped on ONE side (policy or reference log-probs, not both) gives when policy == "
                       f"reference; the loss then trains toward a mix of the right and the wrong preference", out,
                       fix=ONE_SIDED_FIX)
        elif why:
            self._emit("ref", True, "reference_mismatch", "error", step,
                       "; ".join(why) + ": the policy and the reference differ before the first update", out)

    def _one_sided(self, rc: Optional[float], rr: Optional[float], m: Optional[float]) -> bool:
        """Step-1 rewards that are not 0 but exact opposites (r_w = -r_l, per pair and so on average): chosen and
        rejected swapped on one side. Policy == reference gives 0 and 0; a genuinely different reference moves both
        replies' log-ratios its own way; only a swap makes them cancel (pair by pair, so their means too)."""
        t = self.t
        if not (all(is_finite(x) for x in (rc, rr, m)) and all(LOSSES[lt].reward == "logratio"
                                                               for lt in self.loss_types if lt in LOSSES)):
            return False
        scale = abs(rc) + abs(rr)
        return scale >= t.one_sided_min_reward and abs(rc + rr) <= t.one_sided_sum * scale \
            and abs(rc - rr - m) <= t.one_sided_sum * scale

    def _check_grad_spike(self, step: int, out: list[Finding]) -> None:
        t = self.t
        if len(self._train) != t.ref_grad_window or self._active & {"ref", "sign:one_sided"}:
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
        acc = mean([r[2] for r in rows])
        m1, m2 = mean([r[3] for r in rows[:h]]), mean([r[3] for r in rows[h:]])
        l1, l2 = mean([r[4] for r in rows[:h]]), mean([r[4] for r in rows[h:]])
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
        acc = mean(accs)
        n = len(self._train)
        stuck_learning = flat and n >= t.not_learning_after and self._warm(t.not_learning_window) and \
            mean(self._series("rewards/accuracies", t.not_learning_window)) <= t.not_learning_accuracy
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
            return mean(xs) if xs else None

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
    def _check_kl(self, step: int, out: list[Finding]) -> None:
        t = self.t
        k = self._series("kl_proxy")
        if len(k) < t.kl_window + 3:
            return
        now, then = mean(k[-3:]), mean(k[-t.kl_window - 3:-t.kl_window])
        mid = mean(k[-t.kl_window // 2 - 3:-t.kl_window // 2])
        toks = self._series("tokens/chosen", 3) + self._series("tokens/rejected", 3)
        floor = max(t.kl_min, t.kl_min_per_token * mean(toks)) if toks else t.kl_min
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
        self._check_length_eval(record, step, out)
        acc, margin = as_number(record, "eval/rewards/accuracies"), as_number(record, "eval/rewards/margins")
        train_acc = self._series("rewards/accuracies", 5)
        if is_finite(acc) and train_acc:
            tr = mean(train_acc)
            cond = (tr >= self.t.inverted_train_accuracy and acc < self.t.inverted_eval_accuracy
                    and (margin is None or margin < 0))
            self._emit("inverted", cond, "inverted_data", "error", step,
                       f"train accuracy {tr:.2f} but eval accuracy {acc:.2f}"
                       + (f" (eval margin {margin:+.3f})" if is_finite(margin) else "")
                       + ": the model learns a preference the held-out labels disagree with (swapped columns in one "
                       "file, or severe overfitting)", out)
        return out

    # ------------------------------------------------------------------ end of run
    def finish(self, pair_scores: Optional[list[dict]] = None) -> list[Finding]:
        """End-of-run checks: loss stuck at its start value, accuracy never beat 0.5, short-run sign verdict, and
        length bias on the pairs scored at the end (pair_scores.jsonl rows: margin against length difference)."""
        out: list[Finding] = []
        t = self.t
        self._check_length_pairs(pair_scores or [], out)
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
        best = max(mean(accs[i:i + 5]) for i in range(max(1, len(accs) - 4)))
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
