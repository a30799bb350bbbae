"""`spul export`: an unlearned classifier as a plain HuggingFace model folder (see `spul.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spul.cli.options import AdapterOpt, BaseModelOpt, Machine, PromptOpt, gathered, user_errors
from spul.errors import SpulError


@user_errors
@gathered("machine", Machine)
def export_cmd(
    prompt: PromptOpt = "runs/prompt",
    out: Annotated[Path, typer.Option(help="the model folder to write")] = Path("runs/export"),
    force: Annotated[bool, typer.Option(help="replace an existing non-empty --out")] = False,
    model: BaseModelOpt = None,
    adapter: AdapterOpt = None,
    machine: Machine = None,
) -> None:
    """Write the base model (+ merged adapter) with the soft prompt as reserved tokens, and its template."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SpulError(f"--out {out} exists and is not empty; give --force to replace it")
    if not (Path(prompt) / "spul.json").is_file():
        raise SpulError(f"--prompt {prompt}: no spul.json there (not a saved unlearning artifact)")
    from spul.export import export
    from spul.pipeline import load_unlearned

    unlearned = load_unlearned(prompt, model=model, adapter=adapter, **machine.loading())
    info = export(unlearned, out)
    typer.echo(
        json.dumps({"out": str(out), "template": info["template"], "reserved": info["reserved_tokens"]})
    )
