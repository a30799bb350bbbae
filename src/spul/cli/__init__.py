"""The `spul` command line: the app and its verbs (each verb lives in a module of this package)."""

from __future__ import annotations

import typer

from spul.cli.evaluate import audit_cmd, evaluate_cmd, predict_cmd
from spul.cli.experiment import experiment_cmd
from spul.cli.export import export_cmd
from spul.cli.prepare import prepare_app
from spul.cli.serve import requests_app, serve_cmd
from spul.cli.train import finetune_cmd, unlearn_cmd

app = typer.Typer(
    help="Machine unlearning for LLM classifiers with soft prompts (SPUL).", no_args_is_help=True
)
app.command("evaluate")(evaluate_cmd)
app.command("finetune")(finetune_cmd)
app.command("unlearn")(unlearn_cmd)
app.command("predict")(predict_cmd)
app.command("audit")(audit_cmd)
app.command("experiment")(experiment_cmd)
app.add_typer(prepare_app, name="prepare")
app.command("serve")(serve_cmd)
app.command("export")(export_cmd)
app.add_typer(requests_app, name="requests")


def main() -> None:
    """Entry point of the `spul` script."""
    app()
