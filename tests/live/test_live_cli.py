"""``servetune engine ...`` through cli.main (the real error handling); no engine needed."""

from __future__ import annotations

import shlex


def test_engine_flags_prints_command_and_unsupported(run_cli, tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("policy:\n  queue: edf\n  max_num_seqs: 64\n  speculation: ngram\n")
    code, out, err = run_cli("flags", pol, "--port", "9000")
    assert code == 0, err
    cmd = shlex.split(out.splitlines()[0])
    assert cmd[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--max-num-seqs") + 1] == "64" and cmd[cmd.index("--port") + 1] == "9000"
    assert "# not expressible: queue='edf'" in out
    code, out, _ = run_cli("flags", pol, "--engine", "sglang", "--n-gpus", "2")
    assert code == 0 and "sglang.launch_server" in out and "--max-running-requests 64" in out


def test_engine_flags_errors_are_one_line(run_cli, tmp_path):
    code, _, err = run_cli("flags", tmp_path / "missing.yaml")
    assert code == 2 and err.startswith("error: cannot read policy file")
    pol = tmp_path / "p.yaml"
    pol.write_text("{}\n")
    code, _, err = run_cli("flags", pol, "--engine", "trt")
    assert code == 2 and "engine 'trt'" in err
    code, _, err = run_cli("flags", pol, "--engine", "sglang", "--check")
    assert code == 2 and "--check needs --engine vllm" in err
