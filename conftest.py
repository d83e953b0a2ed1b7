"""Fixtures shared by every test package (here at the root: a tests/conftest.py would put tests/ on
sys.path, where tests/workloads would shadow the workloads package)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import typer


@pytest.fixture
def cli_with(monkeypatch, capsys):
    """cli_with(register, group) -> run(*args) -> (exit code, stdout, stderr): ``servetune GROUP ARGS``
    through cli.main (the real error handling) with only ``register``'s commands on the app."""
    import cli

    monkeypatch.delenv("SERVETUNE_DEBUG", raising=False)

    def make(register: Callable[[typer.Typer], None], group: str) -> Callable[..., tuple[int, str, str]]:
        app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

        @app.callback()
        def _root() -> None:
            """root"""

        register(app)
        monkeypatch.setattr(cli, "app", app)

        return lambda *args: invoke(capsys, [group, *map(str, args)])

    return make


@pytest.fixture
def run_cli_full(monkeypatch, capsys):
    """run(*args) -> (exit code, stdout, stderr): ``servetune ARGS`` on the whole app."""
    monkeypatch.delenv("SERVETUNE_DEBUG", raising=False)
    return lambda *args: invoke(capsys, list(map(str, args)))


def invoke(capsys, argv: list[str]) -> tuple[int, str, str]:
    """cli.main(argv) as a user runs it: (exit code, stdout, stderr)."""
    import cli

    code = 0
    try:
        cli.main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
