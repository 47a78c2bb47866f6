"""ROC AUC in plain numpy: one implementation for the generator's oracle AUC, the TFMA gAUC metric
(``pipeline.metrics``: the AUC of each user) and the run report."""
from __future__ import annotations

import numpy as np


def auc(labels, scores) -> float:
    """Rank-based ROC AUC (tied scores count one half); NaN unless both labels are present."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, tie_counts = np.unique(scores, return_inverse=True, return_counts=True)
    tie_end = np.cumsum(tie_counts)
    ranks = (tie_end - (tie_counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))

