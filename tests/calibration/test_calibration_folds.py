from __future__ import annotations

import numpy as np
import pytest

from backends.sim.profiles import ProfileRow, load_rows
from tuner.calibration.fidelity import kfold_lines, stats
from tuner.calibration.folds import SEEDS, batch_kind, stratified_fold_key


def _row(*batches: tuple) -> ProfileRow:
    return ProfileRow("t", "yi-34b", "a100-80gb-pcie", 2, 0.1, batches, label="x")


def test_batch_kind_reads_the_steps():
    assert batch_kind(_row((0, 0.0, 0, 4, 4, 2048.0))) == "decode"
    assert batch_kind(_row((512, 512 * 256.5, 1, 0, 0, 0.0), (512, 512 * 768.5, 1, 0, 0, 0.0))) == "prefill"
    assert batch_kind(_row((1021, 1021 * 511.0, 1, 3, 3, 3000.0))) == "mixed"


def test_stratified_folds_spread_every_batch_kind_over_the_folds():
    """Sarathi's 8 decode rows are dealt 1-2 per fold (a random 5-fold put 6 of 9 in one fold),
    every row sits in exactly one fold of 6-7 (32 rows), the split is the same for a seed and
    differs across seeds."""
    rows = list(load_rows("sarathi"))
    kinds = [batch_kind(r) for r in rows]
    assert len(rows) == 32 and kinds.count("decode") == 8 and kinds.count("mixed") == 1
    splits = []
    for seed in SEEDS:
        key = stratified_fold_key(rows, 5, seed)
        folds = [key(r) for r in rows]
        assert sorted(set(folds)) == [0, 1, 2, 3, 4] and sorted(folds.count(f) for f in range(5)) == [6, 6, 6, 7, 7]
        decode_per_fold = [sum(1 for f, k in zip(folds, kinds, strict=True) if f == i and k == "decode")
                           for i in range(5)]
        assert min(decode_per_fold) >= 1 and max(decode_per_fold) <= 2
        assert folds == [stratified_fold_key(rows, 5, seed)(r) for r in rows]
        splits.append(tuple(folds))
    assert len(set(splits)) == len(SEEDS)


def test_kfold_lines_report_the_first_seed_and_the_mean_over_seeds():
    rows = list(load_rows("sarathi"))
    fake = {}

    def errs_for(key):  # a deterministic error per (split, row): the fold index and the row's position
        errs = [10.0 * key(r) + i for i, r in enumerate(rows)]
        fake[len(fake)] = errs
        return errs

    first, mean = kfold_lines("sarathi", rows, "x: ", errs_for)
    assert first.evaluation == "x: OOS stratified 5-fold (seed 0)" and (first.median, first.p90) == stats(fake[0])
    want = np.mean([stats(fake[i]) for i in range(len(SEEDS))], axis=0)
    assert mean.n == len(rows) and (mean.median, mean.p90) == pytest.approx(tuple(want), rel=1e-12)
    assert mean.target == "8/15" and mean.met is False
