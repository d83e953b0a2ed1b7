"""ServeGen per-client fits → requests: rates, lengths, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import load_workload
from workloads.servegen import client_table, client_volume, client_windows, load_servegen


def test_client_windows_parse_the_published_rows():
    start, rate, cv, dist, shape, scale = client_windows("reason", 0)
    assert len(start) == 144 and start[0] == 0 and start[-1] == 86400 - 600
    i = int(np.flatnonzero(start == 3000)[0])  # "3000,0.39,0.9137...,Gamma,1.1977...,2.0745..."
    assert (rate[i], dist[i]) == (0.39, "Gamma")
    assert shape[i] == pytest.approx(1.1977013397371243) and scale[i] == pytest.approx(2.074553310327594)
    assert cv[i] == pytest.approx(1 / np.sqrt(shape[i]), rel=0.05)  # a Gamma fit: CV = 1/sqrt(shape)


def test_length_tables_are_probability_tables():
    vals, probs = client_table("reason", 0, 0, "input_tokens")
    assert vals[0] == 45 and probs.sum() == pytest.approx(1.0)
    assert client_table("mm", 0, 0, "image_tokens") is not None


@pytest.mark.parametrize("category, client", [("reason", 35), ("mm", 12)])
def test_generated_count_matches_fitted_rates(category, client):
    t0, t1 = 43200.0, 43200.0 + 3600
    w = load_servegen(category, clients=[client], start_s=t0, duration_s=3600, seed=1)
    expected = client_volume(category, client, t0, t1)
    assert expected > 1000
    assert w.n == pytest.approx(expected, rel=0.1)
    assert w.tenants == (f"client-{client}",)
    assert w.arrival_s[0] >= 0 and w.arrival_s[-1] < 3600


def test_multimodal_prompt_adds_text_and_image_tokens():
    w = load_servegen("mm", clients=[0], start_s=0, duration_s=1800)
    text = client_table("mm", 0, 0, "text_tokens")[0]
    image = client_table("mm", 0, 0, "image_tokens")[0]
    assert w.prompt_len.min() >= text.min() + image.min()


def test_deterministic_and_clients_independent():
    a = load_servegen("reason", clients=[3, 35], duration_s=600, seed=5)
    b = load_servegen("reason", clients=[3, 35], duration_s=600, seed=5)
    c = load_servegen("reason", clients=[35], duration_s=600, seed=5)
    d = load_servegen("reason", clients=[35], duration_s=600, seed=6)
    assert a.content_hash() == b.content_hash()
    only35 = a.take(np.flatnonzero(a.tenant == a.tenants.index("client-35")))
    assert np.array_equal(only35.arrival_s, c.arrival_s) and np.array_equal(only35.prompt_len, c.prompt_len)
    assert c.content_hash() != d.content_hash()


def test_top_clients_and_registry_options():
    from workloads.servegen import servegen_clients

    w = load_workload("servegen-reason", seed=0, top=2, duration_s=600)
    vol = {c: client_volume("reason", c, 43200, 43800) for c in servegen_clients("reason")}
    best = sorted(vol, key=lambda c: -vol[c])[:2]
    assert w.tenants == tuple(f"client-{c}" for c in best)
    assert min(vol[c] for c in best) >= sorted(vol.values())[-3]


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(clients=[999]), "unknown client 999"),
        (dict(start_s=86000, duration_s=3600), "servegen window"),
        (dict(top=0), "top=0"),
        (dict(category="text"), "servegen category"),
    ],
)
def test_bad_options(kw, msg):
    kw.setdefault("category", "reason")
    with pytest.raises(ValueError, match=msg):
        load_servegen(**kw)
