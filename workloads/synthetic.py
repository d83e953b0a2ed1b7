"""Synthetic workload generators: arrival processes, length distributions, tenant mixes.

All randomness comes from ``numpy.random.Generator`` objects seeded from the spec's seed
(tenant i of a mix draws from ``default_rng([seed, i])``); no global RNG. Same spec + seed ⇒
the identical workload. Times in seconds, rates in req/s, lengths in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workloads.transforms import check_rate
from workloads.workload import DEFAULT_SLO, SLOClass, Workload, remap_parent

ARRIVAL_PROCESSES = ("poisson", "gamma", "bursty", "trace")
LENGTH_DISTS = ("fixed", "uniform", "lognormal", "zipf", "trace")
MAX_REQUESTS = 50_000_000


@dataclass(frozen=True, slots=True)
class Arrival:
    """An arrival process.

    poisson: exponential gaps at ``rate``. gamma: Gamma gaps with mean 1/rate and coefficient of
    variation ``cv`` (cv=1 is Poisson, > 1 bursty). bursty: on/off MMPP, Poisson at ``on_rate``
    for exponential periods of mean ``mean_on_s``, then at ``off_rate`` for mean ``mean_off_s``
    (``rate`` is then derived). trace: the gaps of a bundled trace (``trace``), rescaled to
    ``rate`` and repeated cyclically.
    """

    process: str = "poisson"
    rate: float | None = None
    cv: float = 1.0
    on_rate: float | None = None
    off_rate: float = 0.0
    mean_on_s: float | None = None
    mean_off_s: float | None = None
    trace: str | None = None

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise ValueError(f"arrival process {self.process!r}: expected one of {', '.join(ARRIVAL_PROCESSES)}")
        if self.process == "bursty":
            if self.on_rate is None or self.mean_on_s is None or self.mean_off_s is None:
                raise ValueError("bursty arrivals need on_rate, mean_on_s and mean_off_s")
            check_rate(self.on_rate, "on_rate")
            if not (0 <= self.off_rate <= self.on_rate):
                raise ValueError(f"off_rate={self.off_rate!r} must be in 0..on_rate req/s")
            if not (self.mean_on_s > 0 and self.mean_off_s > 0):
                raise ValueError("mean_on_s and mean_off_s must be > 0 (s)")
        else:
            if self.rate is None:
                raise ValueError(f"{self.process} arrivals need a rate (req/s)")
            check_rate(self.rate)
        if self.process == "gamma" and not (0 < self.cv <= 100):
            raise ValueError(f"gamma arrivals: cv={self.cv!r} must be in (0, 100]")
        if self.process == "trace" and not self.trace:
            raise ValueError("trace arrivals need trace: <bundled trace name>")

    @property
    def mean_rate(self) -> float:
        if self.process == "bursty":
            on, off = self.mean_on_s, self.mean_off_s
            return (self.on_rate * on + self.off_rate * off) / (on + off)
        return float(self.rate)

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Arrival times in [0, duration_s), ascending."""
        if self.process == "bursty":
            return _bursty(self, rng, duration_s)
        gaps = self._gaps(rng, int(self.rate * duration_s * 1.1) + 32)
        t = np.cumsum(gaps)
        while t[-1] < duration_s:
            t = np.r_[t, t[-1] + np.cumsum(self._gaps(rng, len(t)))]
        return t[t < duration_s]

    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.process == "poisson":
            return rng.exponential(1.0 / self.rate, n)
        if self.process == "gamma":
            k = 1.0 / self.cv**2
            return rng.gamma(k, 1.0 / (self.rate * k), n)
        from workloads.traces import load_trace

        src = np.diff(load_trace(self.trace).arrival_s)
        src = src / src.mean() / self.rate
        start = int(rng.integers(0, len(src)))
        return np.resize(np.roll(src, -start), n)


def _bursty(a: Arrival, rng: np.random.Generator, duration_s: float) -> np.ndarray:
    cycle = a.mean_on_s + a.mean_off_s
    m = int(duration_s / cycle * 1.5) + 8
    while True:
        lens = np.empty(2 * m)
        lens[0::2] = rng.exponential(a.mean_on_s, m)
        lens[1::2] = rng.exponential(a.mean_off_s, m)
        ends = np.cumsum(lens)
        if ends[-1] >= duration_s:
            break
        m *= 2
    starts = ends - lens
    rates = np.tile([a.on_rate, a.off_rate], m)
    counts = rng.poisson(rates * lens)
    t = np.repeat(starts, counts) + rng.uniform(0, 1, counts.sum()) * np.repeat(lens, counts)
    t.sort()
    return t[t < duration_s]


@dataclass(frozen=True, slots=True)
class Lengths:
    """A token-length distribution, clipped to [min, max].

    fixed: ``value``. uniform: integers ``low``..``high``. lognormal: ``mean`` tokens with log-sd
    ``sigma``. zipf: ``low``..``high`` with P(v) ∝ (v - low + 1)^-a. trace: the prompt or output
    lengths of a bundled trace or length table (``trace``), drawn with replacement.
    """

    dist: str = "fixed"
    value: int | None = None
    low: int | None = None
    high: int | None = None
    mean: float | None = None
    sigma: float | None = None
    a: float | None = None
    trace: str | None = None
    min: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        need = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("mean", "sigma"),
                "zipf": ("a", "low", "high"), "trace": ("trace",)}
        if self.dist not in need:
            raise ValueError(f"length dist {self.dist!r}: expected one of {', '.join(LENGTH_DISTS)}")
        for k in need[self.dist]:
            if getattr(self, k) is None:
                raise ValueError(f"{self.dist} lengths need {k}")
        if self.min < 1 or (self.max is not None and self.max < self.min):
            raise ValueError(f"lengths: need 1 <= min <= max (got min={self.min}, max={self.max})")
        if self.dist == "fixed" and self.value < 1:
            raise ValueError(f"fixed lengths: value={self.value} must be >= 1")
        if self.dist in ("uniform", "zipf") and not (1 <= self.low <= self.high):
            raise ValueError(f"{self.dist} lengths: need 1 <= low <= high (got {self.low}, {self.high})")
        if self.dist == "lognormal" and not (self.mean >= 1 and 0 <= self.sigma <= 5):
            raise ValueError(f"lognormal lengths: need mean >= 1 and 0 <= sigma <= 5 (got {self.mean}, {self.sigma})")
        if self.dist == "zipf" and not (self.a > 0):
            raise ValueError(f"zipf lengths: a={self.a} must be > 0")

    def sample(self, rng: np.random.Generator, n: int, column: str = "prompt_len") -> np.ndarray:
        """n lengths (int64 tokens); ``column`` picks prompt_len or output_len of a trace."""
        if self.dist == "fixed":
            x = np.full(n, self.value, np.int64)
        elif self.dist == "uniform":
            x = rng.integers(self.low, self.high + 1, n)
        elif self.dist == "lognormal":
            mu = np.log(self.mean) - self.sigma**2 / 2
            x = np.rint(rng.lognormal(mu, self.sigma, n)).astype(np.int64)
        elif self.dist == "zipf":
            v = np.arange(self.low, self.high + 1)
            p = (v - self.low + 1.0) ** -self.a
            x = v[np.searchsorted(np.cumsum(p) / p.sum(), rng.uniform(0, 1, n), side="right").clip(0, len(v) - 1)]
        else:
            from workloads.registry import load_lengths

            tab = load_lengths(self.trace)
            col = tab.prompt_len if column == "prompt_len" else tab.output_len
            x = col[rng.integers(0, len(col), n)].astype(np.int64)
        return np.clip(x, self.min, self.max if self.max is not None else None)


@dataclass(frozen=True, slots=True)
class Session:
    """Multi-turn conversations: each arrival of the tenant starts a session of ``turns``
    requests. Turn k > 1 is sent ``think_s`` seconds (exponential with this mean; 0: at once)
    after turn k - 1's last token, and its prompt is the conversation so far (the previous
    turn's prompt and output) plus a new user message of ``message`` tokens, so its prefix is
    the KV the previous turn computed. The first turn's prompt is the tenant's ``prompt``."""

    turns: Lengths
    message: Lengths = field(default_factory=lambda: Lengths("fixed", value=128))
    think_s: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.think_s <= 86_400):
            raise ValueError(f"session think_s={self.think_s!r} must be in 0..86400 s")


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant of a mix: its arrivals, lengths, priority, SLO class and max_tokens.

    ``lengths`` (a length table or trace name) draws (prompt, output) pairs jointly and overrides
    ``prompt`` / ``output``. ``max_output``: None ⇒ max_output = output_len; an int caps output.
    ``prefix_groups`` / ``prefix_tokens``: each request starts with one of G shared system prompts
    of T tokens (drawn uniformly). Its prefix_ids list only those shareable full blocks; the rest
    of the prompt is unique and not listed (a cache can never hit it).
    """

    name: str
    arrival: Arrival
    prompt: Lengths = field(default_factory=lambda: Lengths("fixed", value=512))
    output: Lengths = field(default_factory=lambda: Lengths("fixed", value=128))
    lengths: str | None = None
    priority: int = 0
    slo_class: str | None = None
    max_output: int | None = None
    prefix_groups: int = 0
    prefix_tokens: int = 0
    session: Session | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("tenant needs a name")
        if not (0 <= self.prefix_groups <= 1_000_000):
            raise ValueError(f"tenant {self.name!r}: prefix_groups={self.prefix_groups} must be in 0..1000000")
        if self.prefix_groups and not (1 <= self.prefix_tokens <= 1_000_000):
            raise ValueError(f"tenant {self.name!r}: prefix_tokens={self.prefix_tokens} must be in 1..1000000")
        if self.max_output is not None and self.max_output < 1:
            raise ValueError(f"tenant {self.name!r}: max_output={self.max_output} must be >= 1")


def _tenant_requests(t: Tenant, rng: np.random.Generator, duration_s: float) -> dict[str, np.ndarray]:
    arr = t.arrival.times(rng, duration_s)
    turns = None
    if t.session is not None:  # one row per turn, session-major; arrival_s: the session's start
        turns = t.session.turns.sample(rng, len(arr), "turns")
        arr = np.repeat(arr, turns)
    n = len(arr)
    if t.lengths:
        from workloads.registry import load_lengths

        p, o = load_lengths(t.lengths).sample(rng, n)
    else:
        p = t.prompt.sample(rng, n, "prompt_len")
        o = t.output.sample(rng, n, "output_len")
    p, o = p.astype(np.int32), np.maximum(o, 1).astype(np.int32)
    mx = o if t.max_output is None else np.full(n, t.max_output, np.int32)
    if t.max_output is not None:
        np.minimum(o, mx, out=o)
    cols = {"arrival_s": arr, "prompt_len": p, "output_len": o, "max_output": mx}
    if t.prefix_groups > 0:
        cols["group"] = rng.integers(0, t.prefix_groups, n).astype(np.int32)
        np.maximum(p, t.prefix_tokens + 1, out=p)
    else:
        cols["group"] = np.full(n, -1, np.int32)
    if turns is not None:
        _conversations(t.session, turns, cols, rng)  # type: ignore[arg-type]
    return cols


def _conversations(s: Session, turns: np.ndarray, cols: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Turn the rows of ``cols`` (session-major, ``turns[j]`` rows for session j) into
    conversations: later turns get a parent (the previous row), a think time, and a prompt of
    the previous prompt + output + a new message; only first turns keep a prefix group (a later
    turn's prefix is its parent's KV)."""
    n = int(turns.sum())
    start = np.repeat(np.cumsum(turns) - turns, turns)      # row of each row's first turn
    first = np.arange(n) == start
    msg = s.message.sample(rng, n, "prompt_len")
    p, o = cols["prompt_len"].astype(np.int64), cols["output_len"].astype(np.int64)
    # prompt_k = p_first + sum_{j<k} out_j + sum_{1<=j<=k} msg_j, within each session
    add = np.where(first, 0, msg) + np.r_[0, o[:-1]] * ~first
    c = np.cumsum(np.where(first, p, add))
    cols["prompt_len"] = c - np.r_[0, c[:-1]][start]
    cols["parent"] = np.where(first, -1, np.arange(n) - 1).astype(np.int64)
    cols["think_s"] = np.where(first, 0.0, rng.exponential(s.think_s, n) if s.think_s > 0 else 0.0)
    cols["group"] = np.where(first, cols["group"], -1).astype(np.int32)


def _prefix_blocks(prompt: np.ndarray, group: np.ndarray, tenant: np.ndarray, shared_blocks: np.ndarray,
                   block: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR prefix blocks holding only the shareable system-prompt blocks: ``shared_blocks[tenant]``
    full blocks with ids common to one (tenant, group). The rest of a prompt is unique and unlisted."""
    nblk = np.where(group >= 0, np.minimum(shared_blocks[tenant], prompt // block), 0).astype(np.int64)
    off = np.r_[0, np.cumsum(nblk)].astype(np.int64)
    pos = np.arange(off[-1], dtype=np.int64) - np.repeat(off[:-1], nblk)
    req = np.repeat(np.arange(len(prompt)), nblk)
    ids = (tenant[req] * 1_000_000 + group[req]) * 4096 + pos
    return off, ids


def generate_mix(
    name: str,
    tenants: list[Tenant] | tuple[Tenant, ...],
    *,
    seed: int = 0,
    duration_s: float | None = None,
    num_requests: int | None = None,
    slo_classes: tuple[SLOClass, ...] = (DEFAULT_SLO,),
    prefix_block_tokens: int = 16,
) -> Workload:
    """Generate a tenant mix over ``duration_s`` seconds or until ``num_requests`` requests.

    Tenants run concurrently from t=0; with ``num_requests`` the mix is cut at the N-th arrival.
    """
    if not tenants:
        raise ValueError("synthetic: needs at least one tenant")
    if (duration_s is None) == (num_requests is None):
        raise ValueError("synthetic: give exactly one of duration_s or num_requests")
    names = [t.name for t in tenants]
    if len(set(names)) != len(names):
        raise ValueError(f"synthetic: duplicate tenant name in {names}")
    classes = {c.name: i for i, c in enumerate(slo_classes)}
    for t in tenants:
        if t.slo_class is not None and t.slo_class not in classes:
            raise ValueError(f"tenant {t.name!r}: slo_class {t.slo_class!r} is not defined (known: {', '.join(classes)})")
    total_rate = sum(t.arrival.mean_rate for t in tenants)
    check_rate(total_rate, "synthetic: total rate")
    if duration_s is not None:
        if not (0 < duration_s < 1e9):
            raise ValueError(f"synthetic: duration_s={duration_s!r} must be > 0 s")
        horizon = float(duration_s)
    else:
        if not (1 <= num_requests <= MAX_REQUESTS):
            raise ValueError(f"synthetic: num_requests={num_requests!r} must be in 1..{MAX_REQUESTS}")
        horizon = num_requests / total_rate * 1.05 + 10 / total_rate
    if total_rate * horizon > MAX_REQUESTS:
        raise ValueError(f"synthetic: ~{total_rate * horizon:.3g} requests exceeds {MAX_REQUESTS}")
    while True:
        parts = [_tenant_requests(t, np.random.default_rng([seed, i]), horizon) for i, t in enumerate(tenants)]
        if num_requests is None or sum(len(p["arrival_s"]) for p in parts) >= num_requests:
            break
        horizon *= 2
    if any(t.session is not None for t in tenants):  # every part gets the session columns
        base = 0
        for p in parts:
            m = len(p["arrival_s"])
            if "parent" in p:
                p["parent"] = np.where(p["parent"] >= 0, p["parent"] + base, -1)
            else:
                p["parent"], p["think_s"] = np.full(m, -1, np.int64), np.zeros(m)
            base += m
    if len(parts) == 1:  # already sorted: no copies (a 1M-request workload stays small)
        cols = parts[0]
        tenant = np.zeros(len(cols["arrival_s"]), np.int32)
        order = slice(0, num_requests)
        n = len(cols["arrival_s"][order])
    else:
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        tenant = np.concatenate([np.full(len(p["arrival_s"]), i, np.int32) for i, p in enumerate(parts)])
        order = np.argsort(cols["arrival_s"], kind="stable")[:num_requests]
        n = len(order)
    del parts
    if not n:
        raise ValueError(f"synthetic: no request arrived within {horizon:g} s (rate too low?)")
    tenant = tenant[order]
    prio = np.array([t.priority for t in tenants], np.int32)[tenant]
    slo = np.array([classes.get(t.slo_class, 0) for t in tenants], np.int32)[tenant]
    prompt = cols["prompt_len"][order]
    kw = {}
    if any(t.prefix_groups > 0 for t in tenants):
        if any(t.prefix_tokens // prefix_block_tokens >= 4096 for t in tenants):
            raise ValueError(f"synthetic: prefix_tokens must be < {4096 * prefix_block_tokens} (4096 blocks)")
        shared = np.array([t.prefix_tokens // prefix_block_tokens if t.prefix_groups else 0 for t in tenants])
        off, ids = _prefix_blocks(prompt, cols["group"][order], tenant.astype(np.int64), shared, prefix_block_tokens)
        kw = {"prefix_offsets": off, "prefix_ids": ids, "prefix_block_tokens": prefix_block_tokens}
    if "parent" in cols:
        sel = np.arange(len(cols["arrival_s"]))[order]
        kw.update(parent=remap_parent(cols["parent"], sel, len(cols["arrival_s"])), think_s=cols["think_s"][order])
    return Workload(
        name=name,
        arrival_s=cols["arrival_s"][order],
        prompt_len=prompt,
        output_len=cols["output_len"][order],
        max_output=cols["max_output"][order],
        tenant=tenant,
        priority=prio,
        slo_class=slo,
        tenants=tuple(names),
        slo_classes=tuple(slo_classes),
        meta={"source": f"synthetic mix of {len(tenants)} tenant(s), seed {seed}"},
        **kw,
    )


def poisson(rate: float, *, num_requests: int | None = None, duration_s: float | None = None, seed: int = 0,
            prompt: Lengths | None = None, output: Lengths | None = None, name: str = "poisson") -> Workload:
    """A one-tenant Poisson workload (the common case, e.g. ``poisson(10, num_requests=1_000_000)``)."""
    t = Tenant("default", Arrival("poisson", rate=rate), **{k: v for k, v in (("prompt", prompt), ("output", output)) if v})
    return generate_mix(name, [t], seed=seed, duration_s=duration_s, num_requests=num_requests)
