"""Where the attribute is linearly decodable: per-layer linear-probe accuracy on a sweep's probe set
(the diagnostic of ITI and RepE, an optional part of a sweep's analysis: ``linear_probe: true``).

For every layer, a logistic regression (scikit-learn, standardised features, L2, ``C`` = 1) separates
the positive from the negative probe examples by their residual stream after that layer, averaged
over the probe window (:func:`editbench.modeling.directions.example_features`); the accuracy is
stratified ``folds``-fold cross-validated (seeded). It says where a direction exists, not whether
editing there moves the behaviour; with a few dozen examples per side the per-layer accuracies
carry several points of noise (their std over folds is reported).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from editbench.errors import DataError
from editbench.modeling.directions import example_features


def layer_probe_accuracy(lm, positives: Sequence, negatives: Sequence, folds: int = 5, seed: int = 0,
                         batch_size: int = 16) -> dict:
    """``{"layers": [{"layer", "accuracy", "std"}], "best_layer", "n_pos", "n_neg", "folds"}``
    (accuracies in [0, 1])."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(folds, len(positives), len(negatives))
    if k < 2:
        raise DataError(f"a linear probe needs at least 2 examples per side, got {len(positives)} and {len(negatives)}")
    X = example_features(lm, [*positives, *negatives], batch_size=batch_size).numpy()
    y = np.array([1] * len(positives) + [0] * len(negatives))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    rows = []
    for layer in range(X.shape[1]):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        scores = cross_val_score(clf, X[:, layer], y, cv=cv)
        rows.append({"layer": layer, "accuracy": float(scores.mean()), "std": float(scores.std())})
    best = max(rows, key=lambda r: (r["accuracy"], -r["layer"]))
    return {"layers": rows, "best_layer": best["layer"], "n_pos": len(positives), "n_neg": len(negatives), "folds": k}
