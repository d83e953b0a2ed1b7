"""The Workload record: validation and selection."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.workload import SLOClass, build_workload


def test_build_sorts_and_keeps_prefix_blocks():
    w = build_workload("t", [2.0, 0.0, 1.0], [30, 10, 20], [3, 1, 2], prefix_blocks=[[7, 8], [1], []])
    assert w.arrival_s.tolist() == [0.0, 1.0, 2.0]
    assert w.prompt_len.tolist() == [10, 20, 30]
    assert w.blocks_of(0).tolist() == [1] and w.blocks_of(2).tolist() == [7, 8]
    sub = w.take(slice(1, 3))
    assert sub.n == 2 and sub.blocks_of(1).tolist() == [7, 8]
    assert w.content_hash() != sub.content_hash()


def test_columns_are_read_only():
    w = build_workload("t", [0.0], [10], [1])
    with pytest.raises(ValueError):
        w.prompt_len[0] = 5


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(prompt_len=[10, 0]), "request 1: prompt_len"),
        (dict(output_len=[1, -3]), "request 1: output_len"),
        (dict(max_output=[1, 1]), "request 1: max_output"),
        (dict(arrival_s=[0.0, np.nan]), "arrival_s"),
        (dict(slo_class=["default", "gold"]), "unknown class 'gold'"),
    ],
)
def test_bad_rows_are_named(kw, msg):
    args = dict(arrival_s=[0.0, 1.0], prompt_len=[10, 10], output_len=[1, 2])
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        build_workload("t", **args)


def test_slo_targets():
    classes = (SLOClass("a", 100, 10), SLOClass("b", 500, 50))
    w = build_workload("t", [0, 1], [5, 5], [2, 2], slo_class=["b", "a"], slo_classes=classes)
    assert w.ttft_slo_ms().tolist() == [500, 100]
    assert w.tpot_slo_ms().tolist() == [50, 10]
