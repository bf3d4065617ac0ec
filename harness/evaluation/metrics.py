"""Knowledge-editing metrics (ROME and EasyEdit protocols), fluency, and aggregation with CIs.

Per-case values are computed from scores; aggregates carry mean, std, n and a percentile
bootstrap 95% CI over cases (fixed seed, so reports are reproducible).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from editbench.modeling.scoring import TargetScore

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _mean(xs: Sequence[float]) -> float | None:
    """Mean, or None when there is nothing to average (not applicable; NaN means a non-finite score)."""
    return float(sum(xs) / len(xs)) if xs else None


def rome_prompt_family(new: Sequence[TargetScore], true: Sequence[TargetScore], keep_true: bool) -> tuple[float, float]:
    """(success rate, magnitude) over one case's prompts of one family.

    keep_true=False (rewrite/paraphrase): success = nll(o) > nll(o*), magnitude = p(o*) - p(o).
    keep_true=True (neighbourhood): success = nll(o) < nll(o*), magnitude = p(o) - p(o*).
    Probabilities are exp(-mean token NLL), as in the ROME code.
    """
    succ, mag = [], []
    for n, t in zip(new, true, strict=True):
        if not (math.isfinite(n.nll) and math.isfinite(t.nll)):  # a broken score is not a failure: flag it
            succ.append(math.nan)
            mag.append(math.nan)
        elif keep_true:
            succ.append(float(t.nll < n.nll))
            mag.append(math.exp(-t.nll) - math.exp(-n.nll))
        else:
            succ.append(float(t.nll > n.nll))
            mag.append(math.exp(-n.nll) - math.exp(-t.nll))
    return _mean(succ), _mean(mag)


def _finite(*scores: TargetScore) -> bool:
    """Argmaxes of NaN/inf logits mean nothing: such a prompt's argmax metrics are NaN (flagged)."""
    return all(math.isfinite(s.nll) for s in scores)


def token_accuracy(scores: Sequence[TargetScore]) -> float | None:
    """EasyEdit: teacher-forced share of target tokens predicted by argmax, averaged over prompts."""
    return _mean([s.token_accuracy if _finite(s) else math.nan for s in scores])


def first_token_match(scores: Sequence[TargetScore]) -> float | None:
    """Greedy first-token prefix match: the argmax after the prompt is the target's first token."""
    return _mean([float(s.argmax_ids[0] == s.target_ids[0]) if _finite(s) else math.nan for s in scores])


def locality_agreement(pre: Sequence[TargetScore], post: Sequence[TargetScore]) -> float | None:
    """EasyEdit locality: share of teacher-forced argmax tokens unchanged by the edit."""
    vals = []
    for a, b in zip(pre, post, strict=True):
        if not _finite(a, b):
            vals.append(math.nan)
            continue
        vals.append(_mean([float(x == y) for x, y in zip(a.argmax_ids, b.argmax_ids, strict=True)]))
    return _mean(vals)


def harmonic_mean(values: Sequence[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME fluency: weighted mean of n-gram entropies (bits) of one text, ``mean(2/3*H2, 4/3*H3)``.
    Words are the lowercased text split with a simple regex (ROME uses NLTK's word tokenizer and
    keeps case); kept as is because the committed reference runs were measured this way."""
    words = _WORD.findall(text.lower())
    ents = []
    for n in ns:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        if total == 0:
            ents.append(0.0)
            continue
        p = np.array(list(grams.values()), dtype=np.float64) / total
        ents.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(np.array(weights) * np.array(ents)))


# --------------------------------------------------------------------------------------------
def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``[resamples, n]`` case indices drawn with replacement (fixed seed: reproducible reports)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def split_non_finite(metrics: dict) -> list[str]:
    """Replace non-finite per-case values by None in place; return their names (recorded per case as
    ``non_finite`` and counted in the aggregates, never folded into failures)."""
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    for k in bad:
        metrics[k] = None
    return bad


#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion from ``n`` trials. ``successes`` may be fractional
    (the sum of per-case rates in [0, 1]): a [0, 1] variable with mean p has variance at most
    p(1 - p), so the Bernoulli interval is a conservative bound for it. At 0 of n (n of n) the
    bound is exactly 0 (1): centre - half cancels there only up to rounding (3.5e-16 at 0 of 100),
    which would put the estimate outside its own interval. Whole counts go through
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``; the formula below is its
    continuous extension for fractional ones (the two agree to 1e-15 on whole counts, tested)."""
    if float(successes).is_integer() and z == Z95:
        from scipy.stats import binomtest

        ci = binomtest(int(successes), n).proportion_ci(confidence_level=0.95, method="wilson")
        return (0.0 if successes <= 0 else float(ci.low)), (1.0 if successes >= n else float(ci.high))
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def newcombe_paired_interval(a: int, b: int, c: int, d: int,
                             z: float = 1.959963984540054) -> tuple[float, float]:
    """95% interval of p1 - p2 for two paired proportions (Newcombe 1998, "method 10": the hybrid
    of both Wilson intervals, with the pairs' phi correlation): of n pairs, ``a`` are 1 on both,
    ``b`` only on the first, ``c`` only on the second, ``d`` on neither. Unlike a bootstrap over
    the pairs it has width when every pair agrees (0 of 32 vs 0 of 32 is not a certain 0)."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    num = a * d - b * c
    if num > 0:
        num = max(num - n / 2, 0.0)  # Newcombe's continuity correction of a positive phi
    phi = num / math.sqrt(den) if den else 0.0
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, p1 - p2 - below), min(1.0, p1 - p2 + above)


def aggregate(values: Sequence[float | None], scale: float = 100.0, non_finite: int = 0,
              proportion: bool = False) -> dict:
    """mean, std, n and bootstrap 95% CI of per-case values, times ``scale``. None (not applicable or
    non-finite) and NaN values are left out; ``non_finite`` (how many were NaN/inf) is reported
    alongside when non-zero, and NaN/inf values still in ``values`` are counted there too.
    ``proportion`` (per-case rates in [0, 1]): where the bootstrap interval has zero width (one case,
    or every case 0 or every case 1: 5 of 5 cases at 100 is not certainty) the CI is the Wilson
    score interval, and ``ci_method`` says so."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    non_finite += sum(1 for v in values if v is not None and not math.isfinite(v))
    out = _aggregate(finite, scale)
    lo, hi = out["ci95"]
    if proportion and out["n"] and lo == hi:
        w = wilson_interval(out["mean"] / scale * out["n"], out["n"])
        out["ci95"], out["ci_method"] = [w[0] * scale, w[1] * scale], "wilson"
    if non_finite:
        out["non_finite"] = int(non_finite)
    return out


def _aggregate(values: Sequence[float], scale: float) -> dict:
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    mean, std = float(x.mean()), float(x.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        boot = x[bootstrap_indices(n)].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
    else:
        lo = hi = mean
    return {"mean": mean * scale, "std": std * scale, "n": n, "ci95": [float(lo) * scale, float(hi) * scale]}


def aggregate_joint(columns: Sequence[Sequence[float]], statistic: Callable[[np.ndarray], np.ndarray],
                    scale: float = 100.0) -> dict:
    """A statistic of several per-case columns' means (e.g. the harmonic-mean Score), with a paired
    bootstrap over cases. ``statistic`` maps ``[..., k]`` column means to ``[...]``."""
    X = np.asarray([[math.nan if v is None else v for v in col] for col in columns], dtype=np.float64).T  # [n, k]
    X = X[np.isfinite(X).all(axis=1)]
    n = X.shape[0]
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    point = float(statistic(X.mean(axis=0)[None])[0])
    if n > 1:
        boot = statistic(X[bootstrap_indices(n)].mean(axis=1))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        std = float(boot.std(ddof=1))  # bootstrap standard error: the per-case value is not defined
    else:
        lo = hi = point
        std = 0.0
    return {"mean": point * scale, "std": std * scale, "n": n, "ci95": [float(lo) * scale, float(hi) * scale]}


def hmean_rows(m: np.ndarray) -> np.ndarray:
    """Row-wise harmonic mean, 0 where any entry is 0."""
    with np.errstate(divide="ignore"):
        inv = np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), np.inf)
    return np.where(np.isinf(inv).any(axis=-1), 0.0, m.shape[-1] / inv.sum(axis=-1))
