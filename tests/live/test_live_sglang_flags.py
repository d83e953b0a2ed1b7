"""The SGLang mapping uses flags (and choices) that SGLang itself defines.

Checked against ``data/sglang_flags.json``: the flags of SGLang 0.5.23, extracted from the
wheel's ``sglang/srt/arg_groups/fields/*.py`` (``tests/live/sglang_fields.py``; SGLang's
CUDA-only wheels cannot be imported here). When a wheel is at hand
(``SERVETUNE_SGLANG_WHEEL=path.whl``) the same checks run against it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sglang_fields import flags_from_sources, flags_from_wheel

from backends.base import Deployment
from backends.live.flags import sglang_args
from tuner.policy import Policy

FIXTURE = Path(__file__).parent / "data" / "sglang_flags.json"
# From the help text of --speculative-algorithm in SGLang 0.5.23 (free-form str, no choices=):
SPEC_ALGORITHMS = {"EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM", "DFLASH", "DSPARK", "UNO"}

POLICIES = [
    Policy(),
    Policy(batching="continuous", prefix_caching=False, queue="priority", tp=2, max_loras=8),
    Policy(queue="sjf", speculation="ngram", spec_k=5, cpu_offload_gb=8, block_size=64),
    Policy(speculation="draft", spec_draft_model="org/draft", disaggregated=True, kv_watermark=0.2),
]
DEPLOY = Deployment("org/model", "h100-sxm", n_gpus=4, max_model_len=8192, kv_dtype="fp8")


def check(flags: dict[str, list | None]) -> None:
    for p in POLICIES:
        m = sglang_args(p, DEPLOY, port=30000, host="127.0.0.1")
        for args in [m.args, *(list(r.args) for r in m.roles)]:  # a disaggregated policy: each pool's command
            check_args(flags, p, args)


def check_args(flags: dict[str, list | None], p: Policy, args: list[str]) -> None:
    for i, a in enumerate(args):
        if not a.startswith("--"):
            continue
        assert a in flags, f"SGLang has no flag {a} (policy {p.diff()})"
        choices = flags[a]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if choices and nxt is not None and not nxt.startswith("--"):
            assert nxt in choices, f"{a} {nxt}: not one of {choices}"
        if a == "--speculative-algorithm":
            assert nxt in SPEC_ALGORITHMS


def test_mapping_uses_sglang_flags_fixture():
    data = json.loads(FIXTURE.read_text())
    assert data["version"] == "0.5.23"
    check(data["flags"])


def test_extractor_reads_fields_and_add_argument():
    src = {
        "sglang/srt/arg_groups/fields/x.py": (
            "class S:\n"
            "    max_running_requests: A[Optional[int], 'help'] = None\n"
            "    mode: A[Literal['null', 'prefill'], 'help'] = 'null'\n"
            "    model_path: A[str, Arg(help='h', aliases=['--model'])] = ''\n"
            "    hidden: A[int, Arg(no_cli=True)] = 0\n"
            "    policy: A[str, Arg(help='h', choices=['fcfs', 'lpm'])] = 'fcfs'\n"),
        "sglang/srt/server_args.py": "parser.add_argument('--old-flag', choices=['a', 'b'])\n",
    }
    f = flags_from_sources(src)
    assert f == {"--max-running-requests": None, "--mode": ["null", "prefill"], "--model-path": None,
                 "--model": None, "--policy": ["fcfs", "lpm"], "--old-flag": ["a", "b"]}


@pytest.mark.skipif(not os.environ.get("SERVETUNE_SGLANG_WHEEL"), reason="set SERVETUNE_SGLANG_WHEEL to an sglang wheel")
def test_mapping_against_a_wheel():
    _, flags = flags_from_wheel(os.environ["SERVETUNE_SGLANG_WHEEL"])
    check(flags)
