"""Multi-turn sessions in workloads: generation, validation, selection, files and specs."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import cap_context, first_n, load_workload, read_requests, write_workload
from workloads.synthetic import Arrival, Lengths, Session, Tenant, generate_mix
from workloads.workload import build_workload, session_roots


def _chat(rate=0.5, turns=Lengths("uniform", low=1, high=6), think=20.0, duration=2000.0, seed=3, **kw):
    t = Tenant("chat", Arrival("poisson", rate=rate), prompt=Lengths("fixed", value=500),
               output=Lengths("uniform", low=50, high=400),
               session=Session(turns, Lengths("uniform", low=20, high=200), think_s=think), **kw)
    return generate_mix("chat", [t, Tenant("bg", Arrival("poisson", rate=0.2))], duration_s=duration, seed=seed)


def test_conversations_accumulate_their_context():
    w = _chat()
    par, kid = w.parent, w.parent >= 0
    assert w.has_sessions and kid.sum() > 1000 and (par[kid] < np.flatnonzero(kid)).all()
    # a later turn's prompt: the previous prompt + its output + a new message of 20..200 tokens
    msg = w.prompt_len[kid].astype(int) - w.prompt_len[par[kid]] - w.output_len[par[kid]]
    assert msg.min() >= 20 and msg.max() <= 200
    assert (w.arrival_s[kid] == w.arrival_s[par[kid]]).all()  # the earliest a turn may go: its session's start
    assert abs(w.think_s[kid].mean() / 20.0 - 1) < 0.1 and (w.think_s[~kid] == 0).all()
    # turns per conversation 1..6 (uniform: mean 3.5); first turns keep the tenant's prompt
    chat = (w.tenant == w.tenants.index("chat")) & ~kid
    turns = 1 + np.bincount(session_roots(w.parent)[kid], minlength=w.n)[chat]
    assert turns.min() == 1 and turns.max() == 6 and abs(turns.mean() - 3.5) < 0.25
    assert (w.prompt_len[chat] == 500).all()
    # the other tenant has no sessions; same seed, same workload
    assert (par[w.tenant == w.tenants.index("bg")] == -1).all()
    assert _chat().content_hash() == w.content_hash() != _chat(seed=4).content_hash()


def test_bad_session_columns_are_one_line_errors():
    base = dict(name="x", arrival_s=[0, 1, 2], prompt_len=[10, 20, 30], output_len=[5, 5, 5])
    with pytest.raises(ValueError, match="request 1: parent=1 must be -1"):
        build_workload(**base, parent=[-1, 1, 0], sort=False)
    with pytest.raises(ValueError, match="request 2: think_s=-1.0 must be a finite number >= 0"):
        build_workload(**base, parent=[-1, 0, 1], think_s=[0, 1, -1])
    with pytest.raises(ValueError, match="think_s needs the parent column"):
        build_workload(**base).replace(think_s=np.zeros(3))
    with pytest.raises(ValueError, match="think_s=-5"):
        Session(Lengths("fixed", value=2), think_s=-5)


def test_selections_keep_conversations_together_or_end_them():
    w = _chat(duration=400)
    # sorting renumbers parents: unsorted input, same workload
    perm = np.random.default_rng(0).permutation(w.n)
    inv = np.empty(w.n, np.int64)
    inv[perm] = np.arange(w.n)
    shuffled = build_workload("chat", w.arrival_s[perm], w.prompt_len[perm], w.output_len[perm],
                              parent=np.where(w.parent[perm] >= 0, inv[np.maximum(w.parent[perm], 0)], -1),
                              think_s=w.think_s[perm])
    # (a stable sort of equal arrivals keeps the shuffled order: compare conversations, not rows)
    assert sorted(_conversations(shuffled)) == sorted(_conversations(w))
    # a later turn whose previous turn is not selected becomes a first turn
    sub = w.take(np.flatnonzero(np.arange(w.n) != np.flatnonzero(w.parent >= 0)[0] - 1))
    assert (sub.parent >= -1).all() and (sub.parent < np.arange(sub.n)).all() and (sub.parent == -1).sum() == \
        (w.parent == -1).sum()
    # first_n keeps whole beginnings; cap_context(drop) ends a conversation at its first turn that does not fit
    assert first_n(w, 50).parent.max() < 50
    capped = cap_context(w, 1500, drop=True)
    assert (capped.prompt_len.astype(int) + capped.max_output <= 1500).all()
    assert capped.n < w.n and (capped.parent == -1).sum() == (w.parent == -1).sum()  # no turn left orphaned


def _conversations(w):
    """Each conversation as its tuple of prompt lengths, turn by turn."""
    root = session_roots(w.parent)
    out: dict[int, list[int]] = {}
    for i in range(w.n):
        out.setdefault(int(root[i]), []).append(int(w.prompt_len[i]))
    return [tuple(v) for v in out.values()]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_sessions_round_trip_through_request_files(tmp_path, suffix):
    w = _chat(duration=300)
    back = read_requests(write_workload(w, tmp_path / f"w{suffix}"))
    assert back.content_hash() == w.content_hash()


@pytest.mark.parametrize(("text", "error"), [
    ("arrival_s,prompt_len,output_len,parent,think_s\n0,10,5,,\n1,20,5,0,2\n2,30,5,7,1\n",
     r"row 3: parent=7 is not -1 or the 0-based row of another request"),
    ("arrival_s,prompt_len,output_len,parent\n5,10,5,-1\n1,20,5,0\n", r"row 2: arrival_s is before its parent's \(row 1\)"),
    ("arrival_s,prompt_len,output_len,think_s\n0,10,5,1\n", r"column 'think_s' needs the 'parent' column"),
])
def test_a_bad_session_column_in_a_request_file_names_its_row(tmp_path, text, error):
    p = tmp_path / "w.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=error):
        read_requests(p)


def test_empty_session_cells_mean_a_first_turn_and_no_pause(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("arrival_s,prompt_len,output_len,parent,think_s\n0,10,5,,\n1,20,5,0,2\n")
    w = read_requests(p)
    assert w.parent.tolist() == [-1, 0] and w.think_s.tolist() == [0.0, 2.0]


SPEC = "schema_version: 1\nsynthetic:\n  duration_s: 600\n  rate: 1\n  prompt: 300\n  output: 100\n  session: "


def test_a_spec_describes_conversations(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC + "{turns: 3, message: 50, think_s: 10}\n")
    w = load_workload(spec)
    assert w.has_sessions and (w.parent >= 0).sum() == 2 * (w.parent < 0).sum()
    assert sorted(set(w.prompt_len.tolist())) == [300, 450, 600]


@pytest.mark.parametrize(("session", "error"), [("{turn: 3}", r"synthetic.session: unknown key 'turn'"),
                                                ("{think_s: 3}", r"synthetic.session: missing turns"),
                                                ("{turns: 2, think_s: -1}", r"synthetic.session: session think_s=-1")])
def test_a_bad_session_spec_is_a_one_line_error(tmp_path, session, error):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC + session + "\n")
    with pytest.raises(ValueError, match=error):
        load_workload(spec)
