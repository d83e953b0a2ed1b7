"""Study files: presets validate, bad files fail with one line naming the field (exit 2)."""

from __future__ import annotations

import pytest
import yaml

from studies import PRESETS, preset_names, preset_path
from tuner.study_spec import load_study, parse_study


def test_every_preset_validates_and_explains_itself():
    assert set(PRESETS) <= set(preset_names())
    for name in preset_names():  # every study file shipped in studies/
        spec = load_study(name)  # by preset name
        assert spec.name == name
        assert spec.objectives and spec.search
    for name in PRESETS:
        text = preset_path(name).read_text()
        assert text.lstrip().startswith("#") and "Why" in text, f"{name}: needs a comment explaining its choices"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"search": {"max_num_seqz": {"low": 1, "high": 8}}}, "search.max_num_seqz"),
        ({"search": {"max_num_seqs": {"low": 64, "high": 8}}}, "search.max_num_seqs"),
        ({"search": {"max_num_seqs": {"low": 0, "high": 8, "log": True}}}, "search.max_num_seqs"),
        ({"search": {"queue": ["fcfs", "lifo"]}}, "search.queue"),
        ({"search": {"prefix_caching": {"low": 0, "high": 1}}}, "search.prefix_caching"),
        ({"objectives": [{"metric": "goodness"}]}, "objectives[0].metric"),
        ({"objectives": [{"metric": "goodput", "direction": "up"}]}, "objectives[0].direction"),
        ({"constraints": ["ttft_p99_ms < 500"]}, "constraints[0]"),
        ({"constraints": ["latency <= 500"]}, "constraints[0]"),
        ({"fixed": {"queue": "edf"}}, "fixed.queue"),
        ({"fixed": {"no_such_knob": 1}}, "fixed"),
        ({"sampler": "cmaes"}, "sampler"),
        ({"schema_version": 2}, "schema_version"),
        ({"deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "tp": [1, 2]}}, "deployment.tp"),
        ({"workload": {"source": "no-such-trace"}}, "workload.source"),
        ({"pruning": [0.5, 0.25]}, "pruning"),
        ({"trialz": 3}, "study"),
    ],
)
def test_bad_study_names_the_field(change, field, tiny):
    doc = {**tiny, **change}
    with pytest.raises(ValueError) as e:
        parse_study(doc)
    msg = str(e.value)
    assert "\n" not in msg and field in msg, msg


def test_bad_study_file_exits_2_with_one_line(write_study, run_cli):
    p = write_study(search={"max_num_seqs": {"low": 64, "high": 8}})
    code, out, err = run_cli("tune", str(p), "--no-progress")
    assert code == 2
    assert err.count("\n") == 1 and "search.max_num_seqs" in err and "tiny.yaml" in err, err


def test_yaml_syntax_error_is_one_line(project, run_cli):
    p = project / "broken.yaml"
    p.write_text("schema_version: 1\nname: [unclosed\n")
    code, _, err = run_cli("tune", str(p))
    assert code == 2 and "YAML syntax error" in err and err.count("\n") == 1


def test_tp_list_becomes_a_searched_knob_and_single_tp_is_fixed(tiny):
    spec = parse_study({**tiny, "deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "n_gpus": 4,
                                                      "tp": [1, 2, 4]}})
    assert [r.choices for r in spec.search if r.knob == "tp"] == [(1, 2, 4)]
    spec = parse_study({**tiny, "deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "tp": 1}})
    assert spec.fixed["tp"] == 1 and spec.base_policy().tp == 1


def test_workload_options_are_applied_in_order(tiny):
    doc = {**tiny, "workload": {"source": "azure-conv", "first_n": 50, "rate": 5.0}}
    w = parse_study(doc).load_workload()
    assert w.n == 50 and w.rate == pytest.approx(5.0)
    assert [c.name for c in w.slo_classes] == ["chat"] and set(w.ttft_slo_ms()) == {300.0}


def test_inline_workload_spec(tmp_path, tiny):
    inline = {"schema_version": 1, "synthetic": {"num_requests": 40, "rate": 4.0, "prompt": 100, "output": 20}}
    doc = {**tiny, "workload": {"spec": inline}}
    w = parse_study(doc, base_dir=tmp_path).load_workload()
    assert w.n == 40 and set(w.prompt_len.tolist()) == {100}


def test_study_file_relative_workload_path(tmp_path, tiny):
    from workloads import first_n, load_workload, write_workload

    write_workload(first_n(load_workload("azure-conv"), 30), tmp_path / "w.parquet")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**tiny, "workload": "w.parquet"}))
    assert load_study(tmp_path / "s.yaml").load_workload().n == 30


def test_workload_transforms_apply_last_and_bad_ones_name_their_place(tmp_path):
    """workload.transforms take any workload-spec transform (here LoRA adapters, so max_loras is
    searched); a bad item fails with its key path."""
    spec = load_study(preset_path("full-checklist"))
    w = spec.workload.load(spec.slos)
    assert len(w.adapters) == 8 and 0.4 < float((w.adapter >= 0).mean()) < 0.6
    doc = yaml.safe_load(preset_path("full-checklist").read_text())
    doc["workload"]["transforms"] = [{"assign_adapters": {"n": 0}}]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"workload\.transforms\[0\]"):
        bad = load_study(p)
        bad.workload.load(bad.slos)


def test_deployment_cost_model_is_a_study_key(tiny):
    dep = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "profile": "splitwise", "cost_model": "terms"}
    spec = parse_study({**tiny, "deployment": dep})
    assert spec.deployment.cost_model == "terms" and spec.deployment.profile == "splitwise"
    assert parse_study(tiny).deployment.cost_model == "auto"
    with pytest.raises(ValueError, match="auto or terms"):
        parse_study({**tiny, "deployment": {**dep, "cost_model": "vidur"}})
