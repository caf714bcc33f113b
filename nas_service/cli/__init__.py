"""The ``nas`` command line: one typer app, one module per command group."""

from __future__ import annotations

import typer

from nas_service.cli.arch import arch_app
from nas_service.cli.controller import controller_app
from nas_service.cli.dataset import dataset_app
from nas_service.cli.export import export_app
from nas_service.cli.proxy import proxy
from nas_service.cli.search import search_app
from nas_service.cli.serve import serve
from nas_service.cli.train import eval_command, train_command

app = typer.Typer(help="Search NAS-FPN cells with reinforcement learning.", no_args_is_help=True)
app.add_typer(arch_app, name="arch")
app.add_typer(controller_app, name="controller")
app.add_typer(dataset_app, name="dataset")
app.add_typer(search_app, name="search")
app.add_typer(export_app, name="export")
app.command("serve")(serve)
app.command("proxy")(proxy)
app.command("train")(train_command)
app.command("eval")(eval_command)
