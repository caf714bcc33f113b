"""The ``nas`` command line: one typer app, one module per command group.

Errors a user can act on (``nas_errors.NasError``) are caught once, here: the message on stderr and
exit status 2, without a traceback unless ``nas --debug`` asks for one.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from nas_errors import NasError
from nas_service.cli.arch import arch_app
from nas_service.cli.controller import controller_app
from nas_service.cli.dataset import dataset_app
from nas_service.cli.export import export_app
from nas_service.cli.proxy import proxy_app
from nas_service.cli.search import search_app
from nas_service.cli.serve import serve
from nas_service.cli.train import eval_command, train_command


class _ErrorsCaughtOnce(TyperGroup):
    """The root command group: every subcommand runs inside its ``invoke``."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except NasError as error:
            if ctx.meta.get("debug"):
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_ErrorsCaughtOnce, help="Search NAS-FPN cells with reinforcement learning.", no_args_is_help=True
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error, not only its message."),
) -> None:
    ctx.meta["debug"] = debug


app.add_typer(arch_app, name="arch")
app.add_typer(controller_app, name="controller")
app.add_typer(dataset_app, name="dataset")
app.add_typer(search_app, name="search")
app.add_typer(export_app, name="export")
app.command("serve")(serve)
app.add_typer(proxy_app, name="proxy")
app.command("train")(train_command)
app.command("eval")(eval_command)
