"""``servetune simulate --study`` re-runs a trial of a study on several GPUs: the exported policy
(``--policy``) or the stored trial (``--trial N``) gives the scorecard the trial stored."""

from __future__ import annotations

import json

import pytest

DEPLOYMENT = {"model": "llama-3.1-8b", "gpu": "l40s", "n_gpus": 2, "engine": "vllm-v1", "tp": [1, 2]}


@pytest.fixture
def tuned(write_study, run_cli):
    """A 3-trial study on 2 GPUs (tp=1 trials serve 2 replicas), 120 requests, its own SLOs."""
    p = write_study(name="two-gpu", deployment=DEPLOYMENT, workload={"source": "azure-conv", "first_n": 120, "rate": 6.0},
                    slos={"standard": {"ttft_ms": 1000, "tpot_ms": 80}}, seed=3, trials=3)
    code, _, err = run_cli("tune", str(p), "--no-progress")
    assert code == 0, err
    return p


def _card(project, run_cli, *args: str) -> dict:
    code, out, err = run_cli("simulate", *args, "--out", str(project / "card.json"))
    assert code == 0, err
    return json.loads((project / "card.json").read_text()) | {"stdout": out}


def test_exported_policy_reproduces_the_trial(tuned, project, run_cli, stored):
    code, _, err = run_cli("export", str(tuned), "--out", str(project / "best"))
    assert code == 0, err
    best = max((t for t in stored("two-gpu").get_trials() if t.values), key=lambda t: t.values[0])
    doc = _card(project, run_cli, "--study", str(tuned), "--policy", str(project / "best" / "policy.yaml"))
    want = best.user_attrs["result"]["scorecard"]
    for k in ("goodput_tok_s", "usd_per_1m_tokens", "ttft_p99_ms", "slo_attainment"):
        assert doc["scorecard"][k] == pytest.approx(want[k], rel=1e-9), k
    assert doc["deployment"]["gpu"] == "l40s" and doc["deployment"]["n_gpus"] == 2 and doc["seed"] == 3


def test_every_trial_reproduces_and_says_so(tuned, project, run_cli, stored):
    trials = [t for t in stored("two-gpu").get_trials() if t.values]
    assert any(t.user_attrs["result"]["policy"]["tp"] == 1 for t in trials)  # at least the default: 2 replicas
    for t in trials:
        doc = _card(project, run_cli, "--study", str(tuned), "--trial", str(t.number))
        assert doc["scorecard"]["goodput_tok_s"] == pytest.approx(t.user_attrs["result"]["scorecard"]["goodput_tok_s"],
                                                                  rel=1e-9)
        assert f"scorecard equals the one trial {t.number} stored" in doc["stdout"]
    doc = _card(project, run_cli, "--study", str(tuned), "--trial", "0", "--max-num-seqs", "3")  # a knob overrides
    assert doc["policy"]["max_num_seqs"] == 3 and "stored" not in doc["stdout"]


@pytest.mark.parametrize("argv, fragment", [
    (["--trial", "99"], "no such trial"),
    (["--trial", "0", "--policy", "p.yaml"], "give one"),
    (["-g", "h100", "--first", "10"], "-g, --first: --study takes the workload and deployment"),
])
def test_bad_trial_or_overrides_are_one_line_exit_2(tuned, run_cli, argv, fragment):
    code, out, err = run_cli("simulate", "--study", str(tuned), *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
