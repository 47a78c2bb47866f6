"""ROC AUC and gAUC in plain numpy: one implementation for the generator's oracle AUC, the TFMA
gAUC metric, the run report and the benchmarks."""
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


def grouped_auc(groups, labels, scores) -> float:
    """gAUC: per-group AUC weighted by group size, over groups holding both labels."""
    groups, labels, scores = np.asarray(groups), np.asarray(labels), np.asarray(scores)
    total, weight = 0.0, 0
    for group in np.unique(groups):
        member = groups == group
        value = auc(labels[member], scores[member])
        if not np.isnan(value):
            total += value * member.sum()
            weight += member.sum()
    return total / weight if weight else float("nan")
