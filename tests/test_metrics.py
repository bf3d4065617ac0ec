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
