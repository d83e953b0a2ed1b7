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

        def run(*args: str) -> tuple[int, str, str]:
            code = 0
            try:
                cli.main([group, *map(str, args)])
            except SystemExit as e:
                code = int(e.code or 0)
            out = capsys.readouterr()
            return code, out.out, out.err

        return run

    return make
