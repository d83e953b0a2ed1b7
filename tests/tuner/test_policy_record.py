"""The Policy record: defaults, validation, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from tuner.policy import POLICY_SCHEMA_VERSION, Policy, knob_choices


def test_defaults_are_vllm_v1():
    p = Policy()
    assert p.batching == "chunked" and p.prefix_caching and p.queue == "fcfs"
    assert p.preemption == "token" and p.preemption_mode == "recompute"
    assert p.schema_version == POLICY_SCHEMA_VERSION


def test_yaml_round_trip(tmp_path):
    p = Policy(batching="continuous", max_num_seqs=64, tenant_weights={"a": 2, "b": 1.5}, speculation="ngram", spec_k=3)
    path = tmp_path / "p.yaml"
    p.to_yaml(path)
    assert Policy.from_yaml(path) == p
    # a top-level "policy:" key is accepted too
    path.write_text(yaml.safe_dump({"policy": {"queue": "edf"}}))
    assert Policy.from_yaml(path).queue == "edf"


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"queue": "lifo"}, "queue"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_seqs": 2.5}, "max_num_seqs"),
        ({"block_size": 24}, "block_size"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"prefix_caching": "yes"}, "prefix_caching"),
        ({"speculation": "draft"}, "spec_draft_model"),
        ({"ssd_offload_gb": 10}, "ssd_offload_gb"),
        ({"nonsense": 1}, "nonsense"),
        ({"schema_version": 99}, "schema_version"),
    ],
)
def test_bad_knobs_name_the_field(bad, field):
    with pytest.raises(ValueError) as e:
        Policy.from_dict(bad)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("queue: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        Policy.from_yaml(path)
    with pytest.raises(ValueError, match="cannot read"):
        Policy.from_yaml(tmp_path / "missing.yaml")


def test_choices_and_diff():
    assert "edf" in knob_choices("queue")
    assert knob_choices("max_num_seqs") is None
    assert Policy(queue="sjf", max_num_seqs=8).diff() == {"queue": "sjf", "max_num_seqs": 8}
