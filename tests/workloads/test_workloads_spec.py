"""YAML specs: the shipped examples, determinism, seeds, sources, transforms, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import workloads
from workloads import load_workload, write_workload

EXAMPLES = Path(workloads.__file__).parent / "examples"


def _spec(tmp_path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_load_and_are_deterministic(example):
    a = load_workload(EXAMPLES / example)
    b = load_workload(EXAMPLES / example)
    assert a.n > 1000 and a.content_hash() == b.content_hash()
    assert a.meta["spec"] == Path(example).stem


def test_chat_batch_mix_example():
    w = load_workload(EXAMPLES / "chat_batch_mix.yaml")
    assert w.tenants == ("chat", "batch") and [c.name for c in w.slo_classes] == ["interactive", "batch"]
    chat = w.tenant == 0
    assert set(w.slo_class[chat]) == {0} and set(w.priority[~chat]) == {1}
    assert (w.prompt_len.astype(int) + w.max_output <= 8192).all()
    other = load_workload(EXAMPLES / "chat_batch_mix.yaml", seed=8)
    assert other.content_hash() != w.content_hash()


def test_azure_tiers_example():
    w = load_workload(EXAMPLES / "azure_conv_tiers.yaml")
    assert w.arrival_s.max() < 600 and set(w.max_output) == {1024}
    long = w.prompt_len >= 2048
    assert set(w.slo_class[long]) == {1} and set(w.slo_class[~long]) == {0}


def test_single_tenant_shorthand_and_poisson_rate(tmp_path):
    p = _spec(tmp_path, "schema_version: 1\nseed: 3\nsynthetic:\n  num_requests: 20000\n  rate: 25\n"
                        "  prompt: {dist: uniform, low: 10, high: 20}\n  output: 7\n")
    w = load_workload(p)
    assert w.n == 20000 and w.rate == pytest.approx(25, rel=0.03)
    assert set(w.output_len) == {7} and w.prompt_len.min() >= 10 and w.prompt_len.max() <= 20


def test_source_file_relative_to_spec(tmp_path):
    base = load_workload("vtc-lmsys")
    write_workload(base, tmp_path / "reqs.parquet")
    p = _spec(tmp_path, "schema_version: 1\nsource: reqs.parquet\nslo_classes:\n  std: {ttft_ms: 900, tpot_ms: 90}\n"
                        "transforms:\n  - first_n: 100\n  - set_priority: {by: tenant, map: {dummy-lora-7b-rank-8-2: 0}, default: 3}\n")
    w = load_workload(p)
    assert w.n == 100 and np.array_equal(w.prompt_len, base.prompt_len[:100])
    assert w.slo_classes[0].name == "std" and set(w.priority) == {0, 3}


@pytest.mark.parametrize(
    "text, msg",
    [
        ("schema_version: 1\nsource: azure-conv\n  bad: [\n", "spec.yaml line 3: YAML syntax error"),
        ("source: azure-conv\n", "missing schema_version"),
        ("schema_version: 1\nsource: azure-conv\nsauce: 1\n", "unknown key 'sauce'"),
        ("schema_version: 1\nsynthetic:\n  duration_s: 10\n  tenants:\n    - {name: a, rat: 5}\n",
         "synthetic.tenants\\[0\\]: unknown key 'rat'"),
        ("schema_version: 1\nsynthetic: {duration_s: 10, rate: -3}\n", "synthetic.rate=-3.0 must be > 0"),
        ("schema_version: 1\nsynthetic: {duration_s: 10, rate: 5e7}\n", "<= 1e\\+06 req/s"),
        ("schema_version: 1\nsource: azure-conv\ntransforms:\n  - scale_to_rate: -2\n", "transforms\\[0\\].scale_to_rate"),
        ("schema_version: 1\nsource: azure-conv\ntransforms:\n  - shuffle: 1\n", "unknown transform 'shuffle'"),
        ("schema_version: 1\nsource: no-such-trace\n", "source: unknown workload 'no-such-trace'"),
        ("schema_version: 1\nsource: azure-conv\ntransforms:\n  - assign_slo: {by: tenant, map: {default: gold}}\n",
         "'gold' is not a known SLO class"),
        ("schema_version: 1\nsynthetic: {duration_s: 10, rate: 1, slo_class: gold}\n", "slo_class 'gold' is not defined"),
        ("schema_version: 1\nsource: azure-conv\nsynthetic: {duration_s: 10, rate: 1}\n", "exactly one of source"),
        ("schema_version: 1\nslo_classes: {a: {ttft_ms: 0, tpot_ms: 5}}\nsource: azure-conv\n", "slo_classes.a"),
        ("schema_version: 1\nsynthetic: {duration_s: ten, rate: 1}\n", "synthetic.duration_s='ten' is not a number"),
    ],
)
def test_bad_specs_one_line(tmp_path, text, msg):
    p = _spec(tmp_path, text)
    with pytest.raises(ValueError, match=msg) as e:
        load_workload(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown workload 'azure-chat'.*azure-conv.*servegen-mm.*arxiv"):
        load_workload("azure-chat")
    with pytest.raises(FileNotFoundError):
        load_workload("missing.yaml")
