"""Run an experiment cell by cell: resumable, with the fine-tuned model trained once and cached.

The output folder's layout is in `layout.py`; the work of each cell in `stages.py`. A cell id hashes the
cell's settings, so a rerun skips finished cells; a cell killed while training continues from its
checkpoint (cells/<id>/artifact.ckpt.pt).
"""

from __future__ import annotations

import datetime as dt
import gc
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spul.errors import SpulError
from spul.experiments.cells import Cell, expand
from spul.experiments.config import ExperimentConfig
from spul.experiments.layout import RESULT, Layout
from spul.experiments.outputs import write_outputs
from spul.experiments.stages import Prepared, Stages
from spul.io import write_json_atomic
from spul.methods import get_method
from spul.pipeline import checkpoint_path


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Experiment:
    """An expanded config bound to an output folder; `run()` does the pending cells, then the artefacts."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: str | Path,
        *,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        show_progress: bool = True,
        log: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.out = Path(out)
        # absolute: artifacts record the fine-tuned adapter they were trained over by this path
        self.cache_dir = Path(cache_dir or config.cache_dir or self.out / "cache").resolve()
        self.device = device or config.device
        self.show_progress = show_progress
        self.log = log or _stderr
        self.layout = Layout(config, self.out)
        self.stages = Stages(self.layout, self.cache_dir, self.device, show_progress, self.log)
        self.cells = expand(config)

    # ---- where things are -------------------------------------------------------------------------
    def cell_dir(self, cell: Cell) -> Path:
        """The cell's folder."""
        return self.layout.cell_dir(cell)

    def result(self, cell: Cell) -> dict[str, Any] | None:
        """The saved result of a finished cell, else None."""
        return self.layout.result(cell)

    def prepared(self, cell: Cell, tau: float | None = None) -> Prepared:
        """The rows the cell trains on (at `tau`, else its own) and is scored on."""
        return self.stages.rows(cell, tau)

    def status(self) -> list[tuple[Cell, str]]:
        """Each cell with `done`, `partial` (a training checkpoint exists) or `pending`."""
        states = []
        for cell in self.cells:
            if self.layout.is_done(cell):
                state = "done"
            elif checkpoint_path(self.cell_dir(cell) / "artifact").is_file():
                state = "partial"
            else:
                state = "pending"
            states.append((cell, state))
        return states

    # ---- checks -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail before any work when a method is unknown, takes no such option or cannot serve its role."""
        if self.config.finetune is not None:
            stage = get_method(self.config.finetune.method)
            if stage.kind != "adapter":
                raise SpulError(
                    f"finetune.method {stage.name!r} makes a {stage.kind}; the fine-tuning stage needs a "
                    "method that trains a LoRA adapter (e.g. finetune)"
                )
        for index, run in enumerate(self.config.runs):
            try:
                method = get_method(run.method)
            except SpulError as err:
                raise SpulError(f"runs.{index}: {err}") from None
            names = method.option_names()
            for cell in self.cells:
                unknown = sorted(set(cell.options) - names) if cell.run is run else []
                if unknown:
                    raise SpulError(
                        f"runs.{index}: method {run.method!r} has no option {', '.join(unknown)} "
                        f"(its options: {', '.join(sorted(names)) or 'none'})"
                    )

    # ---- cells ------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Do one cell and write its result (the last file written, atomically)."""
        start = time.perf_counter()
        folder = self.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        work = self.stages.train if cell.kind == "train" else self.stages.evaluate
        result = work(cell, folder)
        result = {
            "id": cell.id,
            "kind": cell.kind,
            "label": cell.label,
            "model": cell.model.spec,
            "data": cell.dataset.label,
            "sweep": cell.sweep,
            "settings": cell.settings,
        } | result
        result["wall_time_s"] = round(time.perf_counter() - start, 2)
        result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(folder / RESULT, result)
        gc.collect()
        return result

    def run_cell_in_child(self, cell: Cell) -> None:
        """Run one cell in a fresh `spul experiment --cell` process (its own peak memory); on Ctrl-C wait
        for the child to save its checkpoint before stopping."""
        command = [sys.executable, "-m", "spul", "experiment", str(self.out / "config.json")]
        command += ["--out", str(self.out), "--cache-dir", str(self.cache_dir), "--cell", cell.id]
        command += ["--device", self.device] if self.device else []
        command += [] if self.show_progress else ["--quiet"]
        child = subprocess.Popen(command)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            child.wait()  # the child got the same Ctrl-C and checkpoints
            raise
        if code != 0 or self.result(cell) is None:
            raise SpulError(f"cell {cell.id} ({cell.describe()}) failed in its own process (exit {code})")

    # ---- the whole experiment ---------------------------------------------------------------------

    def run(self) -> list[tuple[Cell, dict[str, Any]]]:
        """Run every pending cell in order, then write the tables and figures; return (cell, result)."""
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "config.json", self.config.model_dump())
        total = len(self.cells)
        done = sum(self.layout.is_done(c) for c in self.cells)
        self.log(f"experiment {self.config.name}: {total} cells, {done} already done, output in {self.out}")
        results = []
        for number, cell in enumerate(self.cells, 1):
            where = f"[{number}/{total}] {cell.id} {cell.describe()}"
            if self.layout.is_done(cell):
                self.log(f"{where}: done before, skipped")
            elif self.result(cell) is not None and self.stages.add_embeddings(cell):
                self.log(f"{where}: done before; added the states figure1 needs")
            else:
                self.log(f"{where}: running")
                start = time.perf_counter()
                if self.config.isolate_cells and cell.kind == "train":
                    self.run_cell_in_child(cell)
                else:
                    self.run_cell(cell)
                self.log(f"{where}: finished in {time.perf_counter() - start:.0f} s")
            results.append((cell, self.result(cell)))
        written = write_outputs(self.layout, results)
        self.log(f"wrote {', '.join(str(p.name) for p in written)} in {self.out}")
        return results


def run_experiment(
    config: ExperimentConfig,
    out: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Experiment:
    """Run (or resume) an experiment in `out` (else the config's `out`, else runs/experiments/NAME)."""
    folder = Path(out or config.out or Path("runs") / "experiments" / config.name)
    experiment = Experiment(
        config, folder, cache_dir=cache_dir, device=device, show_progress=show_progress, log=log
    )
    experiment.run()
    return experiment
