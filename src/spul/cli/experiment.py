"""`spul experiment`: run (or resume, or list) the cells of a paper experiment config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spul.cli.options import DeviceOpt, QuietOpt, user_errors
from spul.errors import SpulError
from spul.reporting import note


@user_errors
def experiment_cmd(
    config: Annotated[Path, typer.Argument(help="experiment YAML (ready ones in configs/)")],
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: config's out, else runs/experiments/NAME)")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="folder of cached fine-tuned models, shareable by experiments")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="list the cells and which are done; run nothing")] = False,
    cell: Annotated[
        str | None, typer.Option(help="run only the cell with this id (writes its result, no tables)")
    ] = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run (or resume) a paper experiment: tables as markdown/CSV/JSON, figures as PNG."""
    from spul.experiments import Experiment, load_config, run_experiment

    settings = load_config(config)
    if cell is None and not dry_run:
        experiment = run_experiment(
            settings, out, cache_dir=cache_dir, device=device, show_progress=not quiet
        )
        typer.echo((experiment.out / "report.md").read_text(encoding="utf-8"))
        return
    folder = out or Path(settings.out or Path("runs") / "experiments" / settings.name)
    experiment = Experiment(settings, folder, cache_dir=cache_dir, device=device, show_progress=not quiet)
    if dry_run:
        _list_cells(experiment, folder)
        return
    experiment.check()
    chosen = [c for c in experiment.cells if c.id == cell]
    if not chosen:
        raise SpulError(f"{config}: no cell {cell!r}; `--dry-run` lists the cell ids")
    experiment.run_cell(chosen[0])


def _list_cells(experiment, folder: Path) -> None:
    """One line per cell: id, state, what it does; then how many are done."""
    from spul.methods import METHODS

    states = experiment.status()
    for cell, state in states:
        missing = "" if cell.method in (None, *METHODS) else "  (method not registered)"
        typer.echo(f"{cell.id}  {state:<8} {cell.describe()}{missing}")
    done = sum(state == "done" for _, state in states)
    note(f"{done} of {len(states)} cells done; output folder {folder}")
