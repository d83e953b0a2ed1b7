"""Cross-validation splits of measured batch rows: k-fold stratified by batch kind, repeated over seeds.

A small table (Sarathi: 35 rows, 9 of them decode-only) split at random can leave one batch kind
nearly absent from a training fold (seed 0 of the earlier random 5-fold held out 6 of the 9 decode
rows at once), so the held-out rows of that kind are extrapolated from the prior rather than
predicted from the table. Stratifying by kind keeps each fold's mix like the table's (sklearn's
``StratifiedKFold``); repeating it over several seeds reports a figure that is not one lucky or
unlucky split.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

K = 5
"""Folds of a k-fold evaluation."""
SEEDS = (0, 1, 2, 3, 4)
"""Seeds of the repeated stratified k-fold (fixed: the reported figure is their mean)."""


def batch_kind(row) -> str:
    """``decode`` (no step has prefill tokens), ``prefill`` (no step has decodes) or ``mixed``,
    of an iteration row (``profiles.ProfileRow`` with ``batches``)."""
    prefill = any(b[0] for b in row.batches)
    decode = any(b[3] for b in row.batches)
    return "mixed" if prefill and decode else ("prefill" if prefill else "decode")


def stratified_fold_key(rows: Sequence, k: int = K, seed: int = 0) -> Callable[[object], int]:
    """Fold (0..k-1) of each row (by identity) of a k-fold split stratified by ``batch_kind``,
    rows shuffled within each kind with ``seed``. Deterministic for a seed."""
    from sklearn.model_selection import StratifiedKFold

    kinds = [batch_kind(r) for r in rows]
    with warnings.catch_warnings():  # a kind with fewer than k rows (Sarathi's one mixed batch) sits in one fold
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        split = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(rows)), kinds)
        fold = {id(rows[j]): i for i, (_, test) in enumerate(split) for j in test}
    return lambda r: fold[id(r)]


__all__ = ["K", "SEEDS", "batch_kind", "stratified_fold_key"]
