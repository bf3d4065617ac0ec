import math

import numpy as np
import pytest

from editbench.evaluation import metrics as M
from editbench.modeling.scoring import TargetScore


def ts(nll, argmax=(1,), target=(1,)):
    return TargetScore(nll=nll, token_nll=[nll], target_ids=list(target), argmax_ids=list(argmax))


def test_rome_family_hand_computed():
    new = [ts(1.0), ts(3.0)]
    true = [ts(2.0), ts(2.0)]
    succ, mag = M.rome_prompt_family(new, true, keep_true=False)
    assert succ == 0.5  # first prompt: nll(o)=2 > nll(o*)=1
    assert mag == pytest.approx(((math.exp(-1) - math.exp(-2)) + (math.exp(-3) - math.exp(-2))) / 2)
    succ, mag = M.rome_prompt_family(new, true, keep_true=True)
    assert succ == 0.5  # second prompt: nll(o)=2 < nll(o*)=3
    assert mag == pytest.approx(((math.exp(-2) - math.exp(-1)) + (math.exp(-2) - math.exp(-3))) / 2)
    # ties count as failures both ways
    assert M.rome_prompt_family([ts(1.0)], [ts(1.0)], False)[0] == 0.0
    assert M.rome_prompt_family([ts(1.0)], [ts(1.0)], True)[0] == 0.0


def test_easyedit_accuracy_and_locality():
    a = TargetScore(1.0, [1, 1, 1], target_ids=[4, 5, 6], argmax_ids=[4, 0, 6])
    assert M.token_accuracy([a]) == pytest.approx(2 / 3)
    pre = [TargetScore(1, [1, 1], [1, 2], [7, 8]), TargetScore(1, [1], [3], [9])]
    post = [TargetScore(1, [1, 1], [1, 2], [7, 0]), TargetScore(1, [1], [3], [9])]
    assert M.locality_agreement(pre, post) == pytest.approx((0.5 + 1.0) / 2)


def test_first_token_match():
    a = TargetScore(1.0, [1, 1], target_ids=[4, 5], argmax_ids=[4, 0])
    b = TargetScore(1.0, [1, 1], target_ids=[4, 5], argmax_ids=[3, 5])
    assert M.first_token_match([a]) == 1.0 and M.first_token_match([a, b]) == 0.5


def test_harmonic_mean():
    assert M.harmonic_mean([0.5, 1.0, 1.0]) == pytest.approx(3 / (2 + 1 + 1))
    assert M.harmonic_mean([0.0, 1.0]) == 0.0
    rows = np.array([[0.5, 1.0, 1.0], [0.0, 1.0, 1.0]])
    assert M.hmean_rows(rows).tolist() == pytest.approx([0.75, 0.0])


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams (a,b),(b,a),(a,b): p = 2/3, 1/3; trigrams (a,b,a),(b,a,b): uniform -> 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert M.ngram_entropy("a b a b") == pytest.approx(np.mean([2 / 3 * h2, 4 / 3 * 1.0]))
    assert M.ngram_entropy("same same same same") == 0.0
    assert M.ngram_entropy("") == 0.0


def test_aggregate():
    agg = M.aggregate([1.0, 0.0, 1.0, 1.0])
    assert agg["mean"] == pytest.approx(75.0)
    assert agg["std"] == pytest.approx(np.std([1, 0, 1, 1], ddof=1) * 100)
    assert agg["n"] == 4
    lo, hi = agg["ci95"]
    assert 0 <= lo <= 75 <= hi <= 100
    assert M.aggregate([1.0, 0.0, 1.0, 1.0]) == agg  # deterministic bootstrap
    assert M.aggregate([0.3])["ci95"] == [pytest.approx(30.0)] * 2
    assert M.aggregate([])["n"] == 0
    assert M.aggregate([float("nan"), 1.0])["n"] == 1


def test_aggregate_joint_score():
    es, ps, ns = [1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]
    agg = M.aggregate_joint([es, ps, ns], M.hmean_rows)
    assert agg["mean"] == pytest.approx(100 * M.harmonic_mean([0.75, 0.5, 0.75]))
    assert agg["ci95"][0] <= agg["mean"] <= agg["ci95"][1]


def test_wilson_interval_where_the_bootstrap_has_zero_width():
    """5 of 5 cases at 100 is not certainty: a rate's CI is the Wilson interval (hand-computed:
    k=n=5 gives [56.55, 100]) where the percentile bootstrap collapses; a varied sample keeps the
    bootstrap, a non-rate metric keeps zero width, and a lone case gets Wilson too."""
    from editbench.evaluation.metrics import aggregate, wilson_interval

    all_hit = aggregate([1.0] * 5, proportion=True)
    assert all_hit["ci95"][0] == pytest.approx(56.55, abs=0.01) and all_hit["ci95"][1] == 100.0
    assert all_hit["ci_method"] == "wilson"
    assert aggregate([0.0] * 5, proportion=True)["ci95"] == pytest.approx([0.0, 43.45], abs=0.01)
    assert aggregate([1.0] * 5)["ci95"] == [100.0, 100.0]  # not declared a rate: unchanged
    varied = aggregate([0.0, 1.0, 1.0, 0.5, 1.0], proportion=True)
    assert "ci_method" not in varied and varied == aggregate([0.0, 1.0, 1.0, 0.5, 1.0])
    one = aggregate([1.0], proportion=True)
    assert one["ci95"][0] == pytest.approx(100 * wilson_interval(1, 1)[0]) and one["ci95"][0] < 25
    # hand computation for a fractional count: p = 0.5, n = 4
    lo, hi = wilson_interval(2.0, 4)
    z = 1.959963984540054
    c, h = (0.5 + z * z / 8) / (1 + z * z / 4), z * (0.25 / 4 + z * z / 64) ** 0.5 / (1 + z * z / 4)
    assert (lo, hi) == pytest.approx((c - h, c + h))


@pytest.mark.parametrize("n", [1, 7, 100, 2200, 10_000])
def test_wilson_interval_holds_its_estimate_exactly_at_zero_and_all(n):
    """0 of n has lower bound exactly 0 and n of n upper bound exactly 1 (floating cancellation
    left 3.5e-16 above 0 at 0 of 100: the estimate fell outside its own interval)."""
    from editbench.evaluation.metrics import aggregate, wilson_interval

    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    assert aggregate([0.0] * n, proportion=True)["ci95"][0] == 0.0
    assert aggregate([1.0] * n, proportion=True)["ci95"][1] == 100.0
    assert 0.0 < wilson_interval(1, n)[0] < wilson_interval(1, n)[1] < 1.0 or n == 1


def test_rates_are_declared_and_pre_edit_zeros_stay_exact():
    from editbench.evaluation import metric_registry as R
    from editbench.evaluation.scope import ZERO_BEFORE_EDIT

    assert all(R.spec_of(m).proportion for m in ("efficacy", "subject_specificity", "cfplus_specificity", "subject_leak"))
    assert not any(R.spec_of(m).proportion for m in ("efficacy_magnitude", "subject_kl", "neutral_kl", "fluency"))
    assert R.spec_of("efficacy", {"efficacy": "lower"}).proportion  # a direction override keeps the rest
    assert "subject_leak" in ZERO_BEFORE_EDIT


def test_wilson_interval_is_scipys_on_whole_counts_and_continuous_between():
    from scipy.stats import binomtest

    from editbench.evaluation.metrics import wilson_interval

    def formula(k, n, z=1.959963984540054):  # the closed form the fractional path uses
        import math
        p, z2 = k / n, z * z
        c = (p + z2 / (2 * n)) / (1 + z2 / n)
        h = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return max(0.0, c - h), min(1.0, c + h)

    for k, n in [(0, 10), (3, 10), (10, 10), (1, 32), (57, 100), (0, 100), (200, 200)]:
        ci = binomtest(k, n).proportion_ci(0.95, "wilson")
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(float(ci.low), abs=1e-15) and hi == pytest.approx(float(ci.high), abs=1e-15)
        assert (lo, hi) == pytest.approx(formula(k, n), abs=1e-15)  # unchanged from the hand-written interval
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(2.5, 10)  # fractional: between its whole neighbours
    assert wilson_interval(2, 10)[0] < lo < wilson_interval(3, 10)[0] and wilson_interval(2, 10)[1] < hi < wilson_interval(3, 10)[1]
