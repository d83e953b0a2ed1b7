"""servetune's command line (Typer).

Each package contributes its commands through a ``register(app)`` function in its
``commands`` module; heavy libraries (optuna, mlflow, torch) are imported inside the
commands, so ``servetune --help`` stays fast.

Errors in user input surface as one line on stderr and exit code 2 (set SERVETUNE_DEBUG=1
for the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from tuner.interrupts import interrupted

COMMAND_MODULES = (
    "workloads.commands",
    "backends.sim.commands",
    "tuner.commands",
    "backends.live.commands",
    "tuner.calibration.commands",
    "backends.sim.catalog_commands",
)

app = typer.Typer(
    name="servetune",
    help="Find the best LLM serving scheduling policy for your workload, model, GPUs and SLOs.\n\n"
    "Runs an Optuna study over vLLM/SGLang scheduling knobs on a calibrated discrete-event "
    "simulator (or a live engine), logs every trial to MLflow and exports the winner.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    try:
        return version("servetune")
    except PackageNotFoundError:  # running from a source tree
        return "0.1.0+src"


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"servetune {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True, help="Print the version and exit."),
) -> None:
    """servetune: tune LLM serving scheduling policies."""


for _mod in COMMAND_MODULES:
    try:
        _m = importlib.import_module(_mod)
    except ModuleNotFoundError as _e:  # a package not built yet in this checkout
        if _e.name and _mod.startswith(_e.name):
            continue
        raise
    _m.register(app)


# By convention, every error in what the user gave us (a file, a flag, a name) is raised as
# ValueError (or an OSError for files and folders) with a one-line message naming the field
# and why.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and exit 2, Ctrl-C
    into ``error: interrupted`` and exit 130, and ``typer.Exit(code)`` into that code."""
    try:
        # typer >= 0.22 (non-standalone) RETURNS the code of a raised ``typer.Exit`` and turns
        # Ctrl-C (KeyboardInterrupt) into a returned 130; older versions raise both
        rc = app(args=argv, standalone_mode=False)
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        rc = 130 if interrupted(e) else _exit_code(e)
    if rc == 130:  # SIGINT: the command stopped (a study keeps its finished trials)
        typer.echo("error: interrupted", err=True)
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        sys.exit(rc)


def _exit_code(e: Exception) -> int:
    """The exit code for an exception a command raised, after printing its one line."""
    # click's exceptions, or typer's vendored copy of click (typer >= 0.22 raises its own
    # ``typer._click`` classes): matched by class name so that either is a usage error
    kinds = {c.__name__ for c in type(e).__mro__}
    if "Exit" in kinds and hasattr(e, "exit_code"):
        return int(e.exit_code)
    if "NoArgsIsHelpError" in kinds:  # a command group alone: its help, as click prints it
        e.show()  # type: ignore[attr-defined]
        return 2
    if "ClickException" in kinds:  # a usage error (unknown flag, missing option): one line
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        typer.echo(f"error: {e.format_message().splitlines()[0]}{hint}", err=True)  # type: ignore[attr-defined]
        return 2
    if "Abort" in kinds:  # a prompt answered with Ctrl-D / Ctrl-C
        typer.echo("error: aborted", err=True)
        return 1
    if os.environ.get("SERVETUNE_DEBUG"):
        raise e
    if isinstance(e, USER_ERRORS):
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        typer.echo(f"error: {msg}", err=True)
        return 2
    typer.echo(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
               " (set SERVETUNE_DEBUG=1 for the traceback)", err=True)
    return 1


if __name__ == "__main__":
    main()
