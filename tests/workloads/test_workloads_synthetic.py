"""Synthetic generators: rates and CV for large N, determinism, tenant mixes, lengths, prefixes."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import Arrival, Lengths, SLOClass, Tenant, generate_mix, poisson
from workloads.stats import prefix_reuse


def _cv(w):
    gaps = np.diff(w.arrival_s)
    return gaps.std() / gaps.mean()


def test_poisson_rate_and_cv():
    w = poisson(50.0, num_requests=200_000, seed=1)
    assert w.n == 200_000
    assert w.rate == pytest.approx(50.0, rel=0.01)
    assert _cv(w) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_cv(cv):
    w = generate_mix("g", [Tenant("a", Arrival("gamma", rate=20.0, cv=cv))], num_requests=200_000, seed=2)
    assert w.rate == pytest.approx(20.0, rel=0.03)
    assert _cv(w) == pytest.approx(cv, rel=0.05)


def test_bursty_mean_rate_and_burstiness():
    a = Arrival("bursty", on_rate=40.0, off_rate=2.0, mean_on_s=5.0, mean_off_s=20.0)
    assert a.mean_rate == pytest.approx((40 * 5 + 2 * 20) / 25)
    w = generate_mix("b", [Tenant("a", a)], duration_s=20_000, seed=3)
    assert w.n / 20_000 == pytest.approx(a.mean_rate, rel=0.05)
    assert _cv(w) > 1.5  # on/off arrivals are far burstier than Poisson


def test_trace_arrivals_rescaled():
    w = generate_mix("t", [Tenant("a", Arrival("trace", rate=30.0, trace="azure-conv"))], num_requests=50_000, seed=0)
    assert w.rate == pytest.approx(30.0, rel=0.05)


def test_same_seed_same_workload_other_seed_differs():
    tenants = [Tenant("a", Arrival("gamma", rate=3.0, cv=2.0), lengths="sharegpt"),
               Tenant("b", Arrival("poisson", rate=1.0), prompt=Lengths("zipf", a=1.2, low=10, high=5000))]
    h = [generate_mix("m", tenants, duration_s=600, seed=s).content_hash() for s in (7, 7, 8)]
    assert h[0] == h[1] != h[2]


def test_tenant_mix_shares_priorities_and_classes():
    classes = (SLOClass("gold", 200, 20), SLOClass("bronze", 5000, 200))
    tenants = [
        Tenant("chat", Arrival("poisson", rate=30.0), priority=0, slo_class="gold", max_output=256),
        Tenant("batch", Arrival("poisson", rate=10.0), priority=2, slo_class="bronze",
               output=Lengths("uniform", low=100, high=900)),
    ]
    w = generate_mix("mix", tenants, num_requests=40_000, seed=4, slo_classes=classes)
    share = np.bincount(w.tenant) / w.n
    assert share[0] == pytest.approx(0.75, abs=0.01)
    chat = w.tenant == 0
    assert set(w.priority[chat]) == {0} and set(w.priority[~chat]) == {2}
    assert set(w.slo_class[chat]) == {0} and set(w.slo_class[~chat]) == {1}
    assert set(w.max_output[chat]) == {256} and (w.output_len[chat] <= 256).all()
    assert w.output_len[~chat].min() >= 100 and w.output_len[~chat].max() <= 900
    assert w.rate == pytest.approx(40.0, rel=0.03)


def test_length_distributions():
    rng = np.random.default_rng(0)
    ln = Lengths("lognormal", mean=1000, sigma=0.8).sample(rng, 200_000)
    assert ln.mean() == pytest.approx(1000, rel=0.02)
    z = Lengths("zipf", a=1.5, low=1, high=1000).sample(rng, 100_000)
    assert z.min() >= 1 and z.max() <= 1000 and (z == 1).mean() > 0.3
    u = Lengths("uniform", low=5, high=9).sample(rng, 10_000)
    assert set(np.unique(u)) == {5, 6, 7, 8, 9}
    c = Lengths("lognormal", mean=1000, sigma=2.0, min=50, max=2000).sample(rng, 10_000)
    assert c.min() >= 50 and c.max() <= 2000
    t = Lengths("trace", trace="arxiv").sample(rng, 100_000, "output_len")
    assert t.mean() == pytest.approx(291, rel=0.05)


def test_joint_lengths_from_table_keep_pairs():
    from workloads.traces import load_length_table

    tab = load_length_table("sharegpt")
    pairs = set(zip(tab.prompt_len.tolist(), tab.output_len.tolist(), strict=True))
    w = generate_mix("s", [Tenant("a", Arrival("poisson", rate=5.0), lengths="sharegpt")], num_requests=2000, seed=0)
    assert all(p in pairs for p in zip(w.prompt_len.tolist(), w.output_len.tolist(), strict=True))


def test_prefix_groups_share_system_prompt_blocks():
    t = Tenant("a", Arrival("poisson", rate=10.0), prompt=Lengths("fixed", value=600), prefix_groups=4, prefix_tokens=100)
    w = generate_mix("p", [t], num_requests=1000, seed=0, prefix_block_tokens=16)
    assert (np.diff(w.prefix_offsets) == 6).all()  # 100 // 16 full blocks per request
    firsts = {tuple(w.blocks_of(i)) for i in range(w.n)}
    assert len(firsts) == 4
    assert prefix_reuse(w) == pytest.approx(1 - 4 * 6 / (6 * 1000))


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda: Arrival("poisson", rate=-1.0), "must be > 0"),
        (lambda: Arrival("poisson", rate=2e6), "<= 1e\\+06"),
        (lambda: Arrival("gamma", rate=1.0, cv=0), "cv=0"),
        (lambda: Arrival("bursty", on_rate=5.0), "bursty arrivals need"),
        (lambda: Arrival("weird", rate=1.0), "arrival process 'weird'"),
        (lambda: Lengths("lognormal", mean=100), "need sigma"),
        (lambda: Lengths("uniform", low=10, high=5), "low <= high"),
        (lambda: generate_mix("x", [Tenant("a", Arrival(rate=1.0))], duration_s=10, num_requests=5), "exactly one"),
        (lambda: generate_mix("x", [Tenant("a", Arrival(rate=1.0), slo_class="gold")], duration_s=10), "not defined"),
    ],
)
def test_bad_generator_input(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
