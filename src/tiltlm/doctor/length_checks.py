"""The doctor's length-bias checks, either way (longer wins / shorter wins): the data up front (data_stats.json),
live (len_diff_margin_corr of the last records), on each eval (eval/len_diff_margin_corr) and at the end (the
final policy's pair_scores.jsonl, with what a fix would change). The statistics are in length.py.

`LengthChecks` is a part of `Doctor` (checks.py): it uses the doctor's records, thresholds and `_emit`.
"""

from __future__ import annotations

from typing import Optional

from .findings import Finding, as_number, is_finite
from .length import direction, length_fix, pair_length_effect, pooled_corr, z_score


class LengthChecks:
    """Mixed into Doctor: needs `self.t` (DoctorThresholds), `self._train`, `self._active`, `self.beta`,
    `self._length_stats`, `self._emit`, `self._config` and `self._last_step`."""

    def check_data(self, stats: dict) -> list[Finding]:
        """Length bias up front, from data_stats.json: the mean and spread of the length difference (chosen minus
        rejected tokens, `length_diff`) and the share of pairs where each side is longer."""
        out: list[Finding] = []
        self._config(out)
        stats = stats or {}
        t = self.t
        frac = as_number(stats, "chosen_longer_frac")
        rej_frac = as_number(stats, "rejected_longer_frac")  # ties count as neither longer
        if rej_frac is None and frac is not None:
            rej_frac = 1 - frac
        mc, mr = _token_mean(stats, "chosen"), _token_mean(stats, "rejected")
        diff = stats.get("length_diff") if isinstance(stats.get("length_diff"), dict) else {}
        mean, sd = as_number(diff, "mean"), as_number(diff, "std")
        if mean is not None and sd is not None:
            self._length_stats = {"mean_diff": mean, "std_diff": sd}
        lens = f" (mean tokens chosen {mc:.0f} vs rejected {mr:.0f})" if mc and mr else ""
        shares = (f"chosen longer in {frac:.0%} of pairs, rejected in {rej_frac:.0%}" if frac is not None else "")
        effect = abs(mean) / sd if mean is not None and sd else 0.0
        mean_len = (mc + mr) / 2 if mc and mr else None
        severity = "warning"
        if frac is not None and max(frac, rej_frac) > t.length_chosen_longer_frac:
            side, sign = ("chosen", 1) if frac > rej_frac else ("rejected", -1)
            msg = (f"{side} is longer than {'rejected' if sign > 0 else 'chosen'} in {max(frac, rej_frac):.0%} of "
                   f"pairs (> {t.length_chosen_longer_frac:.0%}){lens}")
        elif effect >= t.length_diff_effect_info and mean_len and abs(mean) >= t.length_diff_min_frac * mean_len:
            sign = 1 if mean > 0 else -1
            severity = "warning" if effect >= t.length_diff_effect else "info"
            msg = (f"the {'chosen' if sign > 0 else 'rejected'} reply is longer on average: chosen - rejected = "
                   f"{mean:+.1f} ± {sd:.1f} tokens (mean ± sd, {effect:.2f} sd; {abs(mean) / mean_len:.0%} of the "
                   f"mean length){', although by count ' + shares if shares else ''}")
        elif frac is None and mean is None and mc and mr and max(mc / mr, mr / mc) > t.length_mean_ratio:
            sign = 1 if mc > mr else -1
            msg = f"chosen and rejected lengths differ by more than {t.length_mean_ratio:g}x{lens}"
        else:
            return out
        risk = ("summed log-probs make LENGTH a learnable signal: the margin can learn 'longer wins' and the policy "
                "grow verbose" if sign > 0 else "summed log-probs make LENGTH a learnable signal: the margin can "
                "learn 'shorter wins' (shorter is better) instead of the preference")
        self._emit("length:data", True, "length_bias", severity, 0, f"{msg}: {risk}; the doctor watches "
                   f"len_diff_margin_corr", out, fix=length_fix(sign, mean, sd))
        return out

    def _check_length_live(self, step: int, out: list[Finding]) -> None:
        """The margin tracks the length difference, either way, over the last records: at least
        `length_corr_window` of them and, when they log their pair counts, at least `length_corr_min_pairs` pairs."""
        t = self.t
        recs = self._length_window()
        found, msg = 0, ""
        if recs:
            cs = [as_number(r, "len_diff_margin_corr") for r in recs]
            r, z = pooled_corr(cs, [as_number(r, "pairs") for r in recs])
            agree = sum(c * r > 0 for c in cs) / len(cs)
            if abs(r) >= t.length_corr and agree >= t.length_corr_agree and (z is None or z >= t.length_corr_z):
                found = 1 if r > 0 else -1
                pairs = sum(as_number(x, "pairs") or 0 for x in recs)
                how = ([f"{pairs:.0f} pairs"] if pairs else []) + [
                    f"{agree:.0%} of them {'positive' if r > 0 else 'negative'}"] + (
                    [f"z = {z:.1f}"] if z is not None else [])
                msg = (f"len_diff_margin_corr {r:+.2f} over the last {len(cs)} records ({'; '.join(how)}): the "
                       f"reward margin tracks the LENGTH difference, {direction(r).upper()}"
                       + (" (the policy is learning to be verbose)" if r > 0 else
                          " (the policy is learning 'shorter is better', e.g. pushing long replies down by their "
                          "length rather than their content)"))
        for sign in (1, -1):
            self._emit(f"length:live:{sign:+d}", found == sign, "length_bias", "warning", step, msg, out,
                       fix=self._length_fix(sign))

    def _length_window(self) -> list[dict]:
        """The latest records with a correlation, enough of them; [] while there are too few."""
        t = self.t
        recs, pairs = [], 0.0
        for r in reversed(self._train[-t.length_corr_max_window:]):
            if not is_finite(as_number(r, "len_diff_margin_corr")):
                continue
            recs.append(r)
            n = as_number(r, "pairs")
            pairs = pairs + n if n is not None and pairs is not None else None
            if len(recs) >= t.length_corr_window and (pairs is None or pairs >= t.length_corr_min_pairs):
                return recs[::-1]
        return []

    def _length_fix(self, sign: int) -> str:
        return length_fix(sign, self._length_stats.get("mean_diff"), self._length_stats.get("std_diff"))

    def _check_length_eval(self, record: dict, step: int, out: list[Finding]) -> None:
        """The same on held-out pairs (one eval record: many pairs, the stronger evidence)."""
        t = self.t
        r, n = as_number(record, "eval/len_diff_margin_corr"), as_number(record, "eval/pairs")
        found = 0
        if is_finite(r) and (n is None or n >= t.length_eval_min_pairs):
            z = z_score(r, n)
            if abs(r) >= t.length_eval_corr and (z is None or z >= t.length_eval_z):
                found = 1 if r > 0 else -1
        msg = "" if not found else (
            f"on the held-out pairs eval/len_diff_margin_corr is {r:+.2f}"
            + (f" over {n:.0f} pairs" if n is not None else "")
            + f": the reward margin tracks the LENGTH difference, {direction(found).upper()}, on data the policy "
              f"never trained on")
        for sign in (1, -1):
            self._emit(f"length:eval:{sign:+d}", found == sign, "length_bias", "warning", step, msg, out,
                       fix=self._length_fix(sign))

    def _check_length_pairs(self, rows: list[dict], out: list[Finding]) -> None:
        """Margin against length difference over the final policy's scored pairs, with what a fix would change.
        When the live or eval check already fired in that direction this is the follow-up (info): the numbers."""
        t = self.t
        eff = pair_length_effect(rows, self.beta)
        if eff is None or eff.pairs < t.length_eval_min_pairs:
            return
        z = z_score(eff.corr, eff.pairs)
        if abs(eff.corr) < t.length_eval_corr or z < t.length_eval_z:
            return
        sign = 1 if eff.corr > 0 else -1
        seen = any(f"length:{w}:{sign:+d}" in self._active for w in ("live", "eval"))
        change = eff.what_it_would_change()
        self._emit("length:pairs", True, "length_bias", "info" if seen else "warning", self._last_step(),
                   f"at the end, over the {eff.pairs} scored pairs (pair_scores.jsonl; mean tokens chosen "
                   f"{eff.mean_chosen:.0f} vs rejected {eff.mean_rejected:.0f}) the margin correlates "
                   f"{eff.corr:+.2f} with the length difference (z = {z:.1f}): {direction(sign).upper()}"
                   + (f". What a fix would change: {change}" if change else ""), out, fix=self._length_fix(sign))


def _token_mean(stats: dict, which: str) -> Optional[float]:
    """Mean completion tokens of `which` (chosen / rejected) from data_stats.json (data.prepare.pair_stats)."""
    value = (stats.get("tokens") or {}).get(which, {}).get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
