"""``servetune simulate``: run one policy on one workload in the simulator, print the scorecard.

The run is a tune trial's (``SimBackend.run``: one instance, or the cluster when the policy
needs several); ``--study STUDY.yaml`` takes the workload, deployment and seed from a study file
(``simulate_setup``), so ``--policy best/policy.yaml`` or ``--trial N`` reproduces a trial.

Every Policy knob is also a flag, generated from the Policy dataclass (``--batching``,
``--max-num-seqs``, ``--max-num-batched-tokens`` alias ``--max-batched-tokens``, ``--queue``,
``--prefix-caching/--no-prefix-caching``, ...); flags override ``--policy FILE``.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import MISSING, fields
from functools import cache
from pathlib import Path

import typer

from tuner.policy import Policy, knob_choices, knob_types

ALIASES = {"max_num_batched_tokens": ("--max-batched-tokens",)}
SKIP = {"schema_version"}


@cache
def knob_docs() -> dict[str, str]:
    """First line of each Policy field's docstring (read from the source, as Python drops them)."""
    import tuner.policy as mod

    tree = ast.parse(inspect.getsource(mod))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Policy")
    docs: dict[str, str] = {}
    body = cls.body
    for a, b in zip(body, body[1:], strict=False):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _knob_params() -> list[inspect.Parameter]:
    params = []
    hints, docs = knob_types(), knob_docs()
    for f in fields(Policy):
        if f.name in SKIP:
            continue
        hint, doc = hints[f.name], docs.get(f.name, "")
        default = f.default if f.default is not MISSING else None
        choices = knob_choices(f.name)
        if choices is not None:
            typ, doc = str, f"{doc} [{'|'.join(map(str, choices))}; default {default}]"
        elif hint is bool:
            typ = bool
            opt = typer.Option(None, f"{_flag(f.name)}/--no-{f.name.replace('_', '-')}", help=f"{doc} [default {default}]",
                               rich_help_panel="Policy knobs")
            params.append(inspect.Parameter(f"k_{f.name}", inspect.Parameter.KEYWORD_ONLY, default=opt,
                                            annotation=bool | None))
            continue
        elif hint in (int, float, str):
            typ, doc = hint, f"{doc} [default {default}]"
        else:  # tenant_weights
            typ, doc = str, f"{doc} Give as tenant=weight,tenant=weight."
        opt = typer.Option(None, _flag(f.name), *ALIASES.get(f.name, ()), help=doc, rich_help_panel="Policy knobs")
        params.append(inspect.Parameter(f"k_{f.name}", inspect.Parameter.KEYWORD_ONLY, default=opt,
                                        annotation=typ | None))
    return params


SCORE_ROWS = (
    ("requests", "n_requests", "{:.0f}"), ("completed", "n_completed", "{:.0f}"),
    ("rejected", "n_rejected", "{:.0f}"), ("failed", "n_failed", "{:.0f}"), ("makespan s", "makespan_s", "{:.1f}"),
    ("TTFT p50/p90/p99 ms", ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"), "{:.1f}"),
    ("TPOT p50/p90/p99 ms", ("tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms"), "{:.2f}"),
    ("ITL p50/p90/p99 ms", ("itl_p50_ms", "itl_p90_ms", "itl_p99_ms"), "{:.2f}"),
    ("E2E p50/p90/p99 ms", ("e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms"), "{:.0f}"),
    ("throughput tok/s", "throughput_tok_s", "{:.1f}"), ("requests/s", "requests_s", "{:.3f}"),
    ("goodput tok/s", "goodput_tok_s", "{:.1f}"), ("SLO attainment", "slo_attainment", "{:.3f}"),
    ("busy / MFU / MBU", ("busy_frac", "mfu", "mbu"), "{:.3f}"),
    ("KV util mean/peak", ("kv_util_mean", "kv_util_peak"), "{:.3f}"), ("fragmentation", "fragmentation", "{:.3f}"),
    ("preemptions", "preemptions", "{:.0f}"), ("prefix hit rate", "prefix_hit_rate", "{:.3f}"),
    ("mean batch size", "mean_batch_size", "{:.1f}"), ("Jain index", "jain_index", "{:.3f}"),
    ("$ / 1M output tokens", "usd_per_1m_tokens", "{:.3f}"),
)


SESSION_ROWS = (  # shown when the workload has multi-turn sessions (NaN otherwise)
    ("follow-up TTFT p50/p90 ms", ("followup_ttft_p50_ms", "followup_ttft_p90_ms"), "{:.1f}"),
    ("follow-up prompt cached", "followup_cached_frac", "{:.3f}"),
)


def print_scorecard(card, title: str, notes: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    d = card.as_dict()
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = SCORE_ROWS + (SESSION_ROWS if card.has_followups else ())
    for label, key, fmt in rows:
        keys = key if isinstance(key, tuple) else (key,)
        table.add_row(label, " / ".join(fmt.format(d[k]) for k in keys))
    console = Console(width=100)
    console.print(table)
    for n in notes:
        console.print(f"note: {n}")


def simulate_cmd(ctx: typer.Context, **kw) -> None:
    """Run one policy on one workload in the simulator and print the scorecard.

    Serves the whole deployment as a tune trial does (replicas, P/D pools, autoscaling, spot).
    --study STUDY.yaml: the study's workload, deployment and seed (re-run a trial's policy)."""
    from backends.sim.simulate_setup import compare_stored, setup_from_flags, setup_from_study

    knobs = {k[2:]: v for k, v in kw.items() if k.startswith("k_")}
    given = {name for name in kw if _given(ctx, name)}
    setup = setup_from_study(kw, knobs, given) if kw["study"] is not None else setup_from_flags(kw, knobs)
    res, card, wall = _run(setup, kw["trace"])
    notes = (*setup.notes, *res.notes)
    if setup.stored:
        notes = (*notes, compare_stored(card.metrics(), setup.stored, setup.trial))
    wrote = _write_out(kw["out"], setup, res, card, notes) if kw["out"] is not None else ""  # before any print
    print_scorecard(card, _title(setup, res, wall), notes)
    print_tenants(res.records)
    if wrote:
        typer.echo(wrote)
    if kw["trace"] is not None:
        typer.echo(f"wrote trace {kw['trace']}")


def print_tenants(records) -> None:
    """The per-tenant table (``tuner.tenants``) of a run with several tenants; nothing otherwise."""
    from rich.console import Console
    from rich.table import Table

    from tuner.tenants import n_tenants, tenant_table

    if n_tenants(records) < 2:
        return
    t = tenant_table(records)
    table = Table(title="per tenant (service share: of 1 x prompt + 2 x output tokens served)")
    for col, head in (("tenant", "tenant"), ("requests", "requests"), ("rejected", "rejected"),
                      ("service_share", "service share"), ("ttft_p99_ms", "TTFT p99 ms"),
                      ("tpot_p99_ms", "TPOT p99 ms"), ("slo_attainment", "SLO attainment")):
        if col == "tenant":
            table.add_column(head, no_wrap=True, overflow="fold", min_width=min(32, int(t.tenant.astype(str).str.len().max())))
        else:
            table.add_column(head, justify="right")
    for row in t.itertuples(index=False):
        table.add_row(str(row.tenant), str(row.requests), str(row.rejected), f"{row.service_share:.1%}",
                      f"{row.ttft_p99_ms:.1f}", f"{row.tpot_p99_ms:.2f}", f"{row.slo_attainment:.1%}")
    Console(width=110).print(table)


def _given(ctx: typer.Context, name: str) -> bool:
    """True when parameter ``name`` was given on the command line (or the environment)."""
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def _run(setup, trace: Path | None):
    """Serve the setup as ``SimBackend.run`` (the path of a tune trial): (result, scorecard, wall s)."""
    import time

    from backends.sim import SimBackend
    from backends.sim.cluster import needs_cluster
    from tuner.scorecard import score

    if trace is not None and needs_cluster(setup.policy, setup.deployment):
        raise ValueError("--trace: writes one instance's timeline; this policy serves several (replicas, "
                         "disaggregated, autoscale or spot_fraction)")
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = SimBackend().run(setup.policy, setup.workload, setup.deployment, seed=setup.seed, trace_path=trace)
    wall = time.perf_counter() - t0
    return res, score(res, setup.workload), wall


def _title(setup, res, wall: float) -> str:
    w, dep = setup.workload, setup.deployment
    where = f"{dep.model} / {dep.gpu} tp={res.policy.tp}"
    if "instances" in res.meta:
        where = f"{dep.model} / {dep.n_gpus}x {dep.gpu}, {res.meta['instances']} instances of tp={res.policy.tp}"
    src = f"{setup.source}: " if setup.source else ""
    return f"{src}{w.name}: {w.n} requests on {where} (simulated in {wall:.2f} s)"


def _write_out(out: Path, setup, res, card, notes: tuple[str, ...]) -> str:
    """The scorecard JSON at ``out``, with the records (Parquet), the effective policy and, for a
    multi-tenant workload, the per-tenant table (CSV) beside; returns the line saying so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    w, dep = setup.workload, setup.deployment
    rec_path = out.with_name(out.stem + ".records.parquet")
    pol_path = out.with_name(out.stem + ".policy.yaml")
    res.records.to_parquet(rec_path, index=False)
    res.policy.to_yaml(pol_path)
    files = [rec_path.name, pol_path.name]
    from backends.itl import write_itl_csv
    from tuner.tenants import write_tenant_csv

    if write_tenant_csv(res.records, out.with_name(out.stem + ".tenants.csv")):
        files.append(out.stem + ".tenants.csv")
    if write_itl_csv(res.telemetry.itl, out.with_name(out.stem + ".itl.csv")):
        files.append(out.stem + ".itl.csv")
    doc = {"scorecard": card.as_dict(), "policy": res.policy.to_dict(), "notes": list(notes),
           "workload": {"name": w.name, "n": w.n, "hash": w.content_hash()},
           "deployment": {"model": dep.model, "gpu": dep.gpu, "n_gpus": dep.n_gpus, "engine": dep.engine,
                          "profile": dep.profile, "cost_model": dep.cost_model,
                          "calibration": dep.calibration},
           "records": rec_path.name, "policy_file": pol_path.name, "meta": dict(res.meta),
           "counters": dict(res.telemetry.counters), "seed": setup.seed, "source": setup.source}
    out.write_text(json.dumps(doc, indent=1, default=float))
    return f"wrote {out}, {', '.join(files)}"


def _signature() -> inspect.Signature:
    K = inspect.Parameter.KEYWORD_ONLY
    base = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("workload", K, annotation=str | None, default=typer.Option(
            None, "--workload", "-w", help="Bundled workload name (azure-conv, ...) or a workload file.")),
        inspect.Parameter("study", K, annotation=str | None, default=typer.Option(
            None, "--study", "-s", help="A study file (or preset name): its workload (first_n, rate, SLOs, "
            "transforms), deployment and seed, as its trials ran; the workload and deployment flags are then "
            "refused, knob flags still override the policy. --policy: that file over the study's base policy; "
            "--trial N: that trial's policy; neither: the study's base policy.")),
        inspect.Parameter("trial", K, annotation=int | None, default=typer.Option(
            None, "--trial", help="With --study: run trial N's policy (at the rate a max_rate trial found) and "
            "compare with its stored scorecard.")),
        inspect.Parameter("storage", K, annotation=str | None, default=typer.Option(
            None, "--storage", help="With --trial: the study's Optuna storage (default .servetune/optuna.journal).")),
        inspect.Parameter("model", K, annotation=str, default=typer.Option(
            "llama-3.1-8b", "--model", "-m", help="Catalog model name or a path to config.json / model YAML.")),
        inspect.Parameter("gpu", K, annotation=str, default=typer.Option(
            "h100", "--gpu", "-g", help="Catalog GPU name or a GPU YAML.")),
        inspect.Parameter("n_gpus", K, annotation=int, default=typer.Option(
            0, "--n-gpus", help="GPUs of the deployment (0 = what the policy's instances need: tp for one; "
            "replicas x tp; the P/D pools; autoscale_max_replicas x tp).")),
        inspect.Parameter("engine", K, annotation=str, default=typer.Option(
            "vllm-v1", "--engine", help="Engine preset: vllm-v1, vllm-v0, sglang, tensorrt-llm.")),
        inspect.Parameter("max_model_len", K, annotation=int, default=typer.Option(
            0, "--max-model-len", min=0, help="Context limit, tokens (0 = the model's).")),
        inspect.Parameter("profile", K, annotation=str, default=typer.Option(
            "none", "--profile", help="Calibration profile: a file from `servetune calibrate`, a shared table "
            "(vidur, splitwise, sarathi, shared) or none (the roofline fitted to real vLLM V1 runs).")),
        inspect.Parameter("calibration", K, annotation=Path | None, default=typer.Option(
            None, "--calibration", help="Calibration file from `servetune calibrate --live`: the engine overheads, "
            "efficiencies and client lag fitted to a live run (same model, GPU and engine; not with --profile).")),
        inspect.Parameter("cost_model", K, annotation=str, default=typer.Option(
            "auto", "--cost-model", help="auto (the profile where it measured this model/GPU/TP, the roofline "
            "elsewhere) or terms (operator-class terms fitted to the profile's batch rows).")),
        inspect.Parameter("policy", K, annotation=Path | None, default=typer.Option(
            None, "--policy", "-p", help="Policy YAML; knob flags override it.")),
        inspect.Parameter("rate", K, annotation=float | None, default=typer.Option(
            None, "--rate", help="Then rescale the kept requests' arrivals to R req/s (as a study's rate).")),
        inspect.Parameter("first", K, annotation=int | None, default=typer.Option(
            None, "--first", help="Keep the first N requests (before --rate, as a study's first_n).")),
        inspect.Parameter("seed", K, annotation=int | None, default=typer.Option(
            None, "--seed", help="Seed of the run (default: the study's with --study, else 0).")),
        inspect.Parameter("out", K, annotation=Path | None, default=typer.Option(
            None, "--out", "-o", help="Write the scorecard JSON here, with FILE.records.parquet, FILE.policy.yaml, FILE.itl.csv (the inter-token latency histogram) and (several tenants) FILE.tenants.csv beside.")),
        inspect.Parameter("trace", K, annotation=Path | None, default=typer.Option(
            None, "--trace", help="Write a Chrome trace (chrome://tracing, Perfetto) JSON here.")),
    ]
    return inspect.Signature(base + _knob_params())


def register(app: typer.Typer) -> None:
    simulate_cmd.__signature__ = _signature()
    app.command("simulate", help=inspect.cleandoc(simulate_cmd.__doc__) + "\n\nEvery policy knob is a flag (see below); "
                "flags override --policy FILE.")(simulate_cmd)
