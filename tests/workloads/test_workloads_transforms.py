"""Transformations: rate scaling, windows, context caps, SLO tiers, max_output, priorities."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import (
    SLOClass,
    assign_slo,
    build_workload,
    cap_context,
    first_n,
    load_workload,
    scale_rate,
    scale_to_rate,
    set_max_output,
    set_priority,
    set_slo_classes,
    window,
)

GOLD, BRONZE = SLOClass("gold", 200, 20), SLOClass("bronze", 5000, 200)


def _small():
    return build_workload("s", [0.0, 1.0, 2.0, 4.0], [100, 3000, 50, 9000], [10, 20, 30, 40],
                          tenant=["a", "b", "a", "c"], priority=[0, 1, 0, 2], slo_classes=(GOLD, BRONZE))


def test_scale_to_rate_and_by_factor():
    w = load_workload("azure-conv")
    fast = scale_to_rate(w, 20.0)
    assert fast.rate == pytest.approx(20.0)
    assert np.array_equal(fast.prompt_len, w.prompt_len)
    assert scale_rate(w, 2.0).rate == pytest.approx(2 * w.rate)
    assert "scale_to_rate(20)" in fast.meta["transforms"]
    for bad in (-1, 0, 2e6, float("nan")):
        with pytest.raises(ValueError, match="req/s"):
            scale_to_rate(w, bad)


def test_window_and_first_n_keep_prefix_blocks():
    w = load_workload("mooncake-conv")
    sub = window(w, 600, 1200)
    assert sub.arrival_s.min() >= 0 and sub.arrival_s.max() < 600
    i0 = int(np.searchsorted(w.arrival_s, 600))
    assert np.array_equal(sub.blocks_of(0), w.blocks_of(i0))
    assert sub.n == int(((w.arrival_s >= 600) & (w.arrival_s < 1200)).sum())
    head = first_n(w, 100)
    assert head.n == 100 and np.array_equal(head.prefix_ids, w.prefix_ids[: w.prefix_offsets[100]])
    assert first_n(w, 10**9).n == w.n
    with pytest.raises(ValueError, match="holds no request"):
        window(w, 1e6, 2e6)
    with pytest.raises(ValueError, match="first_n"):
        first_n(w, 0)


def test_cap_context_truncates_and_trims_blocks():
    w = load_workload("mooncake-conv")
    c = cap_context(w, 8192)
    assert (c.prompt_len.astype(int) + c.max_output <= 8192).all()
    assert (c.output_len <= c.max_output).all()
    assert (np.diff(c.prefix_offsets) <= -(-c.prompt_len // 512)).all()
    fits = (w.prompt_len.astype(int) + w.max_output) <= 8192
    assert np.array_equal(c.prompt_len[fits], w.prompt_len[fits])
    d = cap_context(w, 8192, drop=True)
    assert d.n == int(fits.sum())


def test_set_max_output():
    w = _small()
    capped = set_max_output(w, 25)
    assert capped.max_output.tolist() == [25] * 4 and capped.output_len.tolist() == [10, 20, 25, 25]
    assert set_max_output(capped, "output_len").max_output.tolist() == [10, 20, 25, 25]
    with pytest.raises(ValueError, match="set_max_output"):
        set_max_output(w, 0)


def test_assign_slo_rules():
    w = _small()
    by_t = assign_slo(w, "tenant", mapping={"a": "gold"}, default="bronze")
    assert by_t.slo_class.tolist() == [0, 1, 0, 1]
    by_len = assign_slo(w, "prompt_len", threshold=2000, below="gold", above="bronze")
    assert by_len.slo_class.tolist() == [0, 1, 0, 1]
    by_p = assign_slo(w, "priority", mapping={2: "bronze"})
    assert by_p.slo_class.tolist() == [0, 0, 0, 1]  # unmapped keep theirs
    new = assign_slo(w, "all", classes=(SLOClass("x", 1, 1),), default="x")
    assert [c.name for c in new.slo_classes] == ["x"] and set(new.slo_class) == {0}
    with pytest.raises(ValueError, match="'silver' is not a known SLO class"):
        assign_slo(w, "tenant", mapping={"a": "silver"})
    with pytest.raises(ValueError, match="tenant 'zz'"):
        assign_slo(w, "tenant", mapping={"zz": "gold"})
    with pytest.raises(ValueError, match="needs threshold"):
        assign_slo(w, "prompt_len", below="gold")


def test_set_slo_classes_and_priority():
    w = load_workload("vtc-lmsys")
    w2 = set_slo_classes(w, (GOLD, BRONZE))
    assert set(w2.slo_class) == {0}
    top = w.tenants[int(np.bincount(w.tenant).argmax())]
    p = set_priority(w, "tenant", {top: 5}, default=1)
    assert set(p.priority[w.tenant == w.tenants.index(top)]) == {5}
    assert set(p.priority[w.tenant != w.tenants.index(top)]) == {1}
