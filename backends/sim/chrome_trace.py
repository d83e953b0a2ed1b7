"""Chrome trace (chrome://tracing, Perfetto) of a simulated run, for debugging a policy.

Thread "engine" holds one slice per iteration (a decode-only segment of n iterations is one
slice with ``iters`` = n in its args) with the batch composition in args; each request is an
async slice from arrival to finish with an instant at its first token. Times in µs. The
trace is capped (``max_events``) so a huge run still writes a small file; what was left
out is counted in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

PID = 1
ENGINE_TID = 1


class TraceWriter:
    """Collects trace events in memory and writes them once."""

    __slots__ = ("events", "max_events", "dropped")

    def __init__(self, max_events: int = 200_000) -> None:
        self.events: list[dict] = [
            {"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "servetune sim instance"}},
            {"name": "thread_name", "ph": "M", "pid": PID, "tid": ENGINE_TID, "args": {"name": "engine"}},
        ]
        self.max_events = max_events
        self.dropped = 0

    def _room(self, k: int) -> bool:
        if len(self.events) + k > self.max_events:
            self.dropped += k
            return False
        return True

    def iteration(self, t0: float, dt: float, iters: int, decodes: int, prefill_tokens: int,
                  prefill_seqs: int) -> None:
        if not self._room(1):
            return
        name = f"decode x{iters}" if iters > 1 else ("prefill+decode" if prefill_tokens and decodes else
                                                     "prefill" if prefill_tokens else "decode")
        self.events.append({"name": name, "ph": "X", "pid": PID, "tid": ENGINE_TID, "ts": t0 * 1e6,
                            "dur": dt * 1e6, "args": {"iters": iters, "decode_seqs": decodes,
                                                      "prefill_tokens": prefill_tokens,
                                                      "prefill_seqs": prefill_seqs}})

    def request(self, rid: int, arrival: float, first_token: float, finish: float, prompt: int, output: int,
                preemptions: int) -> None:
        if not self._room(3):
            return
        base = {"cat": "request", "pid": PID, "id": rid, "name": f"req {rid}"}
        self.events.append({**base, "ph": "b", "ts": arrival * 1e6,
                            "args": {"prompt": prompt, "output": output, "preemptions": preemptions}})
        self.events.append({**base, "ph": "n", "ts": first_token * 1e6, "name": "first token"})
        self.events.append({**base, "ph": "e", "ts": finish * 1e6})

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        doc = {"traceEvents": self.events, "displayTimeUnit": "ms",
               "metadata": {"generator": "servetune sim", "dropped_events": self.dropped}}
        p.write_text(json.dumps(doc))
        return p
