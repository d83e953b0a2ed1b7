"""Live-backend pieces that need no engine: /metrics parsing, prompts, replay against a fake
OpenAI server, the server's argument handling, backend construction and clean errors."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from backends.base import RECORD_COLUMNS, Deployment
from backends.live.metrics import (
    Snapshot,
    counter_delta,
    kv_capacity_tokens,
    parse_prometheus,
    timeline_frame,
)
from backends.live.replay import ReplayConfig, prompt_tokens, replay
from backends.live.server import VLLMServer, _strip_host_port
from backends.live.vllm_python import EngineError, find_vllm_python
from backends.registry import get_backend
from tuner.policy import Policy
from workloads.workload import build_workload

METRICS = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7e9
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 800.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 320.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 5.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 2.0
vllm:cache_config_info{block_size="32",engine="0",kv_cache_size_tokens="768",num_gpu_blocks="24"} 1.0
"""


def test_metrics_parse_and_delta():
    v = parse_prometheus(METRICS)
    assert v["vllm:request_success_total"] == 7.0 and v["vllm:num_preemptions_total"] == 7.0
    s = Snapshot.from_text(1.5, METRICS)
    assert s.gauges == {"kv_used_frac": 0.25, "running": 3.0, "waiting": 1.0}
    assert s.counters["preemptions"] == 7 and s.counters["prefix_hit_tokens"] == 320
    start = Snapshot(0.0, {}, {"preemptions": 2.0, "prefix_hit_tokens": 20.0})
    d = counter_delta(start, s)
    assert d["preemptions"] == 5 and d["prefix_hit_tokens"] == 300 and d["prefix_query_tokens"] == 800
    assert kv_capacity_tokens(METRICS) == 768
    tl = timeline_frame([start, s])
    assert list(tl.columns) == ["t_s", "kv_used_frac", "running", "waiting"] and tl["running"].iloc[1] == 3


def test_prompt_tokens_share_prefix_blocks_exactly():
    w = build_workload("p", [0, 1, 2, 3], [100, 100, 40, 100], [1, 1, 1, 1],
                       prefix_blocks=[[5, 6], [5, 6], [5], [9]], prefix_block_tokens=32)
    p = prompt_tokens(w, seed=3, token_range=(3, 400))
    assert [len(x) for x in p] == [100, 100, 40, 100]
    assert p[0][:64] == p[1][:64] and p[0][64:] != p[1][64:]
    assert p[2][:32] == p[0][:32]
    assert p[3][:32] != p[0][:32]
    assert all(3 <= t < 400 for x in p for t in x)
    assert prompt_tokens(w, seed=3, token_range=(3, 400)) == p
    assert prompt_tokens(w, seed=4, token_range=(3, 400)) != p


class FakeServer:
    """An OpenAI-ish streaming completions server: 2 ms per token, one token per chunk;
    a prompt of length 13 gets HTTP 500; /metrics serves METRICS."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        async def completions(request):
            body = await request.json()
            self.bodies.append(body)
            if len(body["prompt"]) == 13:
                return web.Response(status=500, text="boom")
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(body["max_tokens"]):
                await asyncio.sleep(0.002)
                await resp.write(b"data: " + json.dumps({"choices": [{"text": "x"}]}).encode() + b"\n\n")
            usage = {"completion_tokens": body["max_tokens"], "prompt_tokens": len(body["prompt"]),
                     "prompt_tokens_details": {"cached_tokens": 16}}
            await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n")
            return resp

        async def metrics(request):
            return web.Response(text=METRICS)

        async def start():
            app = web.Application()
            app.router.add_post("/v1/completions", completions)
            app.router.add_get("/metrics", metrics)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self.ready.set()

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def __enter__(self) -> FakeServer:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_replay_records_times_usage_and_failures():
    w = build_workload("r", [0.0, 0.05, 0.1, 0.1], [20, 13, 30, 40], [10, 5, 20, 3], priority=[1, 0, 2, 0])
    with FakeServer() as srv:
        out = replay(f"http://127.0.0.1:{srv.port}", w,
                     ReplayConfig(model="m", token_range=(3, 100), use_priority=True, metrics_interval_s=0.05))
        bodies = sorted(srv.bodies, key=lambda b: len(b["prompt"]))
    rec = out.records
    assert set(RECORD_COLUMNS) <= set(rec.columns)
    assert rec["failed"].tolist() == [False, True, False, False]
    assert rec["output_len"].tolist() == [10, 0, 20, 3]
    ok = rec[~rec["failed"]]
    assert (ok["first_token_s"] >= ok["arrival_s"]).all() and (ok["finish_s"] > ok["first_token_s"]).all()
    # 20 tokens at 2 ms each: decode takes at least ~38 ms after the first token
    assert rec["finish_s"].iloc[2] - rec["first_token_s"].iloc[2] > 0.03
    assert np.isnan(rec["finish_s"].iloc[1])
    assert (ok["cached_tokens"] == 16).all()
    assert out.errors and "HTTP 500" in out.errors[0]
    assert len(out.snapshots) >= 2
    assert all(b["ignore_eos"] and b["stream_options"] == {"include_usage": True} for b in bodies)
    assert [b["priority"] for b in bodies] == [0, 1, 2, 0]


def test_replay_check_alive_aborts():
    w = build_workload("r", [0.0, 5.0], [10, 10], [3, 3])

    def dead():
        raise EngineError("server died")

    with FakeServer() as srv, pytest.raises(EngineError, match="died"):
        replay(f"http://127.0.0.1:{srv.port}", w, ReplayConfig(model="m", token_range=(3, 100)), check_alive=dead)


def test_server_args_handling(tmp_path):
    assert _strip_host_port(["--model", "m", "--host", "0.0.0.0", "--port=1", "--port", "2", "-x"]) == ["--model", "m", "-x"]
    py = str(tmp_path / "python")
    with pytest.raises(ValueError, match="kv-cache-memory-bytes"):
        VLLMServer(["--model", "m"], python=py)
    s = VLLMServer(["--model", "m", "--kv-cache-memory-bytes", "1000", "--host", "0.0.0.0"], python=py)
    cmd = s.command()
    assert cmd[:3] == [py, "-m", "vllm.entrypoints.openai.api_server"] and "--enforce-eager" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd.count("--host") == 1
    s.stop()  # never started: a no-op


def test_backends_construct_without_arguments():
    b = get_backend("vllm")
    assert b.name == "vllm" and b.servers() == []
    assert get_backend("sglang").name == "sglang"


def test_sglang_run_says_not_installed(monkeypatch):
    pytest.importorskip("aiohttp")
    monkeypatch.delenv("SERVETUNE_SGLANG_PYTHON", raising=False)
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here")
    b = get_backend("sglang")
    w = build_workload("x", [0.0], [4], [4])
    with pytest.raises(EngineError, match="SGLang is not installed"):
        b.run(Policy(), w, Deployment("m", "h100-sxm"))
    assert "--model-path" in b.flags(Policy(), Deployment("m", "h100-sxm")).args


def test_missing_vllm_python_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVETUNE_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(EngineError, match="setup_vllm_cpu.sh"):
        find_vllm_python()
