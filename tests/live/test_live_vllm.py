"""A real vLLM (CPU build) serving the tiny local Llama: behaviour, not speed.

One server is shared by most tests (module-scoped backend: same policy + flags -> reused):
max 4 running sequences, 24 KV blocks of 32 tokens (768 tokens: preemption under load),
priority scheduling, prefix caching and n-gram speculation all on.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from backends.base import Deployment
from backends.live.flags import vllm_args
from backends.live.server import VLLMServer
from backends.live.vllm import EngineError, VLLMBackend
from backends.live.vllm_python import check_vllm_args_many
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import build_workload

pytestmark = pytest.mark.live

POLICY = Policy(max_num_seqs=4, max_num_batched_tokens=512, block_size=32, queue="priority",
                speculation="ngram", spec_k=3)
DEPLOY = Deployment("tiny-llama", "cpu", max_model_len=512)
BLOCKS = ("--num-gpu-blocks-override", "24")


@pytest.fixture(scope="module")
def backend(vllm_python, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with VLLMBackend(python=vllm_python, cache_dir=cache, kv_cache_bytes=64 << 20, extra_args=BLOCKS,
                     log_dir=tmp_path_factory.mktemp("logs"), request_timeout_s=60) as b:
        yield b


def run(backend, w, seed=0):
    res = backend.run(POLICY, w, DEPLOY, seed=seed)
    print(f"\n{w.name}: startup_s={backend.last_startup_s:.1f} counters={dict(res.telemetry.counters)}")
    return res


def run_observed(backend, w, invalid, attempts=3):
    """Run ``w`` until ``invalid(result)`` is None (the run tested what the test is about).

    A 2-core CI host can stall the API server for seconds: requests then reach the engine one by
    one, or every response reaches the client in one burst, and such a run says nothing either
    way. Each invalid run is printed with its reason and run again; the test's assertion is then
    made on a valid run, unchanged. If no run is valid the test fails, naming the reason."""
    why = None
    for k in range(attempts):
        res = run(backend, w, seed=k)
        why = invalid(res)
        if why is None:
            return res
        print(f"run {k + 1} not a valid observation: {why}")
    pytest.fail(f"{attempts} runs, none a valid observation: {why}")


def peak_kv_blocks(rec, block):
    """Largest KV demand (blocks) that the client's timings imply at any first-token or finish time:
    each request decoding then holds its prompt plus the tokens it produced so far (its output
    spread evenly between its first token and its finish)."""
    a = rec["first_token_s"].to_numpy()
    f = rec["finish_s"].to_numpy()
    p = rec["prompt_len"].to_numpy()
    o = rec["output_len"].to_numpy()
    peak = 0
    for t in np.r_[a, f]:
        on = (a <= t) & (t <= f)
        done = np.clip((t - a[on]) / np.maximum(f[on] - a[on], 1e-9), 0, 1)
        peak = max(peak, int(np.ceil((p[on] + done * o[on]) / block).sum()))
    return peak


def burst(rec, within_s=0.05, share=0.75):
    """Reason when at least ``share`` of the responses reached the client within ``within_s`` (a
    host stall released them together: served one by one, 32 responses of 120 tokens on 4 seats
    spread over seconds), else None. (A CI run delivered 3 of 32 at 2.96 s and the other 29 within
    8 ms at 3.01 s, so "every response within 50 ms" missed it.)"""
    f = np.sort(rec["finish_s"].to_numpy())
    k = max(int(np.ceil(share * len(f))), 1)
    span = float((f[k - 1:] - f[:len(f) - k + 1]).min())  # tightest window holding k responses
    return f"{k} of {len(f)} responses reached the client within {span * 1e3:.0f} ms" if span < within_s else None


def clumped(rec, until_s=math.inf, seats=POLICY.max_num_seqs, within_s=0.01):
    """Reason when more than twice ``seats`` of the responses that ended by ``until_s`` reached the
    client within ``within_s``, else None. Requests running together on ``seats`` seats finish
    together and the next ones need all their decode steps, so the engine ends at most ``seats``
    requests in such a window: more mean the API server (or the client) stalled and released them
    at once, and the order in which it admitted requests meanwhile says nothing. (A CI run
    delivered 8 lows within 2 ms, then 14 within 5 ms, and admitted the highs after 22 lows. A
    stall after the last high has finished is harmless: local runs released 8 at once then.)"""
    f = np.sort(rec["finish_s"].to_numpy())
    f = f[f <= until_s]
    most = int((np.searchsorted(f, f + within_s, side="right") - np.arange(len(f))).max()) if len(f) else 0
    return f"{most} responses reached the client within {within_s * 1e3:.0f} ms" if most > 2 * seats else None


def test_preemptions_under_small_kv_budget(backend, monkeypatch):
    # The run lasts ~2-3 s: sample /metrics every 0.1 s, not 0.5 s. Only here: scrapes load the API
    # server, and the priority test needs it quick to admit its late requests.
    monkeypatch.setattr(backend, "metrics_interval_s", 0.1)
    # 16 requests of 100 + 300 tokens (13 blocks each); 4 running need 52 blocks > 24.
    w = build_workload("kv-pressure", np.zeros(16), np.full(16, 100), np.full(16, 300))
    blocks = int(BLOCKS[1])

    def invalid(res):  # a run whose requests never needed more KV than there is cannot preempt
        peak = peak_kv_blocks(res.records, POLICY.block_size)
        if res.telemetry.counters["preemptions"] == 0 and peak <= blocks:
            return f"the requests overlapped too little to need more than {blocks} KV blocks (peak {peak})"
        return None

    res = run_observed(backend, w, invalid)
    rec = res.records
    assert not rec["failed"].any(), res.notes
    assert (rec["output_len"] == 300).all()
    assert res.telemetry.counters["preemptions"] > 0
    # The fresh server was warmed up first; the warm-up's tokens are not the trial's.
    assert float(res.meta["warmup_s"]) > 0
    assert res.telemetry.counters["prompt_tokens"] == 16 * 100
    assert res.telemetry.kv_capacity_tokens == 24 * 32
    # The timeline is sampled from /metrics while the trial runs. On a busy 2-core CI machine the API
    # server may answer a scrape only after the burst (two CI runs got no sample mid-run), so check
    # consistency rather than a peak: every sample that saw requests running saw KV in use.
    tl = res.telemetry.timeline
    assert len(tl) >= 2 and tl["kv_used_frac"].between(0.0, 1.0).all()
    busy = tl[tl["running"] > 0]
    assert (busy["kv_used_frac"] > 0).all(), tl
    print(f"timeline: {len(tl)} samples, {len(busy)} with requests running, peak KV use {tl['kv_used_frac'].max():.2f}")
    sc = score(res, w)  # the same scorecard function as the simulator
    assert sc.ttft_p50_ms > 0 and sc.throughput_tok_s > 0
    # Inter-token latency from the streamed chunks: each request's gaps span its first chunk to its
    # last, so they add up to the records' first-token-to-finish times (the finish is stamped when
    # the stream closes, a little after the last chunk); at most one gap per token after the first.
    itl = res.telemetry.itl
    assert itl is not None and 0 < itl.n <= (rec["output_len"] - 1).sum()
    assert itl.total_s == pytest.approx((rec["finish_s"] - rec["first_token_s"]).sum(), rel=0.05)
    assert 0 < sc.itl_p50_ms <= sc.itl_p99_ms
    print(f"ITL p50/p99 {sc.itl_p50_ms:.1f}/{sc.itl_p99_ms:.1f} ms over {itl.n:.0f} gaps; TPOT p50 {sc.tpot_p50_ms:.1f} ms")


def test_priority_order_holds_on_a_saturated_server(backend):
    # 24 low-priority (10) requests, then 8 high-priority (0) 10 ms later, in one burst: only 4 run at
    # once, so 20 lows wait when the highs come. (Highs sent 0.05-0.5 s later flaked: on 2 cores the API
    # server can stall for seconds and admit them after every low was running, even with 48 lows.)
    n_low, n_high = 24, 8
    arrival = np.r_[np.zeros(n_low), np.full(n_high, 0.01)]
    prio = np.r_[np.full(n_low, 10), np.zeros(n_high, int)]
    n = n_low + n_high
    w = build_workload("priority", arrival, np.full(n, 32), np.full(n, 120), priority=prio)
    def invalid(res):
        r = res.records
        return burst(r) or clumped(r, until_s=float(r["finish_s"][prio == 0].max()))

    rec = run_observed(backend, w, invalid).records
    assert not rec["failed"].any()
    high = rec["finish_s"][prio == 0].to_numpy()
    low = rec["finish_s"][prio == 10].to_numpy()
    order = "".join("H" if p == 0 else "L" for p in prio[np.argsort(rec["finish_s"].to_numpy())])
    print(f"finish order {order}; mean finish high={high.mean():.3f}s low={low.mean():.3f}s")
    # Priority: the highs jump the waiting lows (measured: 20-24 lows finish after the first high, 6
    # runs); FCFS finishes every low first (measured: 0 in 3 runs with --scheduling-policy fcfs).
    assert (low > high.min()).sum() >= 4


def test_prefix_cache_hits_with_shared_prefixes(backend):
    # 6 requests, 0.3 s apart, sharing the same 64-token prefix (2 blocks), then unique tails.
    n = 6
    w = build_workload("prefix", np.arange(n) * 0.3, np.full(n, 100), np.full(n, 8),
                       prefix_blocks=[[7]] * n, prefix_block_tokens=64)
    res = run(backend, w, seed=1)
    c = res.telemetry.counters
    assert c["prefix_hit_tokens"] >= 64 * (n - 1) * 0.9
    assert (res.records["cached_tokens"].iloc[1:] >= 64).all()
    assert score(res, w).prefix_hit_rate > 0.3


def test_ngram_speculation_accepts_tokens(backend):
    # the tiny model repeats itself, so the prompt-lookup drafter's guesses are accepted
    w = build_workload("spec", np.arange(4) * 0.05, np.full(4, 40), np.full(4, 100))
    c = run(backend, w, seed=2).telemetry.counters
    assert c["spec_draft_tokens"] > 0
    print(f"spec acceptance {c['spec_accepted_tokens'] / c['spec_draft_tokens']:.2f}")
    assert c["spec_accepted_tokens"] > 0


def test_server_is_reused_for_the_same_flags(backend):
    w = build_workload("tiny", [0.0], [10], [4])
    res = run(backend, w)
    assert np.isnan(backend.last_startup_s)  # no new server
    assert res.meta["warmup_s"] == ""  # and so no warm-up
    assert res.records["output_len"].iloc[0] == 4 and res.meta["engine"] == "vllm"


def test_missing_model_dir_fails_cleanly(vllm_python, tmp_path):
    b = VLLMBackend(python=vllm_python)
    w = build_workload("x", [0.0], [4], [4])
    with pytest.raises(EngineError, match="no such model folder"):
        b.run(Policy(), w, Deployment(str(tmp_path / "nope"), "cpu"))


def test_server_that_cannot_start_raises_and_leaves_nothing(vllm_python, tiny_model, tmp_path):
    args = vllm_args(Policy(block_size=32), DEPLOY, model_path=tiny_model, kv_cache_bytes=64 << 20).args
    server = VLLMServer([*args, "--max-num-seqs", "0"], python=vllm_python, log_path=tmp_path / "bad.log")
    with pytest.raises(EngineError, match="exited with code") as err:
        server.start()
    assert "max_num_seqs" in str(err.value) or "max-num-seqs" in str(err.value) or "error" in str(err.value).lower()
    assert not server.alive() and server.last_pid
    with pytest.raises(ProcessLookupError):  # the whole process group is gone
        os.killpg(server.last_pid, 0)


def test_check_vllm_args_uses_vllms_parser(vllm_python):
    policies = [Policy(), Policy(batching="continuous", queue="priority", prefix_caching=False),
                Policy(speculation="ngram", spec_k=5, cpu_offload_gb=2, long_prefill_token_threshold=128),
                Policy(speculation="draft", spec_draft_model="org/draft", tp=2, disaggregated=True)]
    gpu = Deployment("org/model", "h100-sxm", n_gpus=4, max_model_len=4096)
    maps = [vllm_args(p, d) for p in policies for d in (gpu, DEPLOY)]
    lists = [list(a) for m in maps for a in (m.args, *(r.args for r in m.roles))]  # P/D: each pool's command
    lists.append(["--model", "m", "--scheduling-policy", "sjf"])
    lists.append(["--model", "m", "--no-such-flag"])
    results = check_vllm_args_many(lists, python=vllm_python)
    assert results[:-2] == [None] * (len(lists) - 2), results
    assert "invalid choice: 'sjf'" in results[-2]
    assert "--no-such-flag" in results[-1]


def test_server_dying_mid_trial_raises_engine_error(backend):
    """Last in the module: kills the shared server while a trial runs."""
    import threading

    (server,) = backend.servers()
    pid = server.pid
    w = build_workload("long", np.linspace(0, 3, 12), np.full(12, 64), np.full(12, 400))
    killer = threading.Timer(1.0, lambda: os.killpg(pid, 9))
    killer.start()
    try:
        with pytest.raises(EngineError, match="died"):
            backend.run(POLICY, w, DEPLOY)
    finally:
        killer.cancel()
    assert backend.servers() == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


CHILD = """
import sys
from backends.base import Deployment
from backends.live.vllm import VLLMBackend
from tuner.policy import Policy
from workloads.workload import build_workload
b = VLLMBackend(python=sys.argv[1], cache_dir=sys.argv[2], kv_cache_bytes=64 << 20)
res = b.run(Policy(block_size=32), build_workload("x", [0.0], [8], [4]), Deployment("tiny-llama", "cpu", max_model_len=512))
print("PID", b.servers()[0].pid, int(res.records["output_len"].iloc[0]), flush=True)
# exits without close(): the kept server must not outlive this process
"""


def test_kept_server_does_not_outlive_servetune(vllm_python, tmp_path):
    import subprocess
    import sys
    import time

    out = subprocess.run([sys.executable, "-c", CHILD, vllm_python, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PID")), None)
    assert line, out.stderr[-2000:]
    _, pid, n = line.split()
    assert n == "4"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(int(pid), 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    pytest.fail(f"server group {pid} still alive 60 s after servetune exited")


def test_a_conversation_is_sent_turn_by_turn_and_hits_its_own_context(backend):
    """Multi-turn sessions, live: each later turn is sent when the previous one has ended plus the
    user's pause, and its prompt is the previous prompt + the tokens vLLM generated for it + a new
    message; vLLM's prefix cache then serves the previous turn's prompt AND output (whole 32-token
    blocks up to its last computed token), exactly the hits the simulator predicts."""
    from backends.sim import simulate

    n_conv, turns, prompt, out, msg, think = 3, 3, 100, 40, 30, 0.3
    arr, plen, par, th = [], [], [], []
    for s in range(n_conv):
        for k in range(turns):
            arr.append(0.1 * s)
            plen.append(prompt + k * (out + msg))
            par.append(-1 if k == 0 else len(arr) - 2)
            th.append(0.0 if k == 0 else think)
    w = build_workload("conversations", arr, plen, [out] * len(arr), parent=par, think_s=th)
    rec = run(backend, w).records
    assert not rec.failed.any() and (rec.output_len == out).all()
    kid = w.parent >= 0
    sent, done = rec.arrival_s.to_numpy(), rec.finish_s.to_numpy()
    gap = sent[kid] - done[w.parent[kid]]
    assert (gap >= think - 1e-6).all() and (gap < think + 0.5).all(), gap  # (the client's event loop: < 0.5 s)
    live_hits = rec.cached_tokens.to_numpy()
    sim_hits = simulate(POLICY, w, DEPLOY).records.cached_tokens.to_numpy()
    assert (live_hits[kid] == sim_hits[kid]).all(), (live_hits, sim_hits)
    assert (live_hits[kid] == (w.prompt_len[w.parent[kid]] + out - 1) // 32 * 32).all()
