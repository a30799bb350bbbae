"""`spul evaluate`, `spul predict` and `spul audit`: score, use and audit a model or a saved artifact."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from spul.cli.options import (
    AdapterOpt,
    BaseModelOpt,
    BatchOpt,
    DataDirOpt,
    DataOpt,
    GenericWordsOpt,
    KeywordsOpt,
    LabelWordsOpt,
    LimitOpt,
    Machine,
    ModelOpt,
    PromptOpt,
    QuietOpt,
    RegexOpt,
    SeedOpt,
    TemplateOpt,
    TestOpt,
    bounded,
    gathered,
    load_full,
    make_template,
    one_of,
    user_errors,
)
from spul.data.selection import MEMBER_SOURCES, Limit, Selection, parse_limit
from spul.errors import SpulError
from spul.reporting import note

if TYPE_CHECKING:
    from spul.data.splits import UnlearningData


def write_results(out: Path, rows: dict[str, dict], extra: dict) -> None:
    """Write the table as JSON and CSV (atomically)."""
    from spul.io import write_json_atomic, write_text_atomic

    write_json_atomic(out / "results.json", extra | {"rows": rows})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "split", "acc", "f1", "other", "n"])
    for model, table in rows.items():
        for split, m in table.items():
            writer.writerow([model, split, f"{m['acc']:.2f}", f"{m['f1']:.2f}", f"{m['other']:.2f}", m["n"]])
    write_text_atomic(out / "results.csv", buffer.getvalue())


def _method_title(name: str) -> str:
    """A method's name in result tables (SPUL, GA+KL...), or the name itself if it is not registered."""
    from spul.methods import METHODS

    return METHODS[name].display_name() if name in METHODS else name


def _evaluation_rows(prompt: str | None, data: str, limit: str | None, seed: int, full):
    """The rows to score: for a prompt trained on this --data, its train splits from the rows it was
    trained on (the test splits from its limited data), each capped by --limit; else --limit of `full`."""
    from spul.artifacts import read_manifest
    from spul.data.selection import trained_selection

    selection = trained_selection(read_manifest(prompt), data) if prompt is not None else None
    if selection is None:
        selection = Selection(data, limit=parse_limit(limit), seed=seed)
        return selection.draw(full)[0]
    return replace(selection, eval_limit=parse_limit(limit)).draw(full)[1]


@user_errors
@gathered("machine", Machine)
def evaluate_cmd(
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    prompt: Annotated[
        str | None, typer.Option(help="saved unlearning prompt: also evaluates its base and fine-tuned model")
    ] = None,
    data: DataOpt = "sst2-paper",
    data_dir: DataDirOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 32,
    out: Annotated[Path, typer.Option(help="folder for results.json and results.csv")] = Path(
        "runs/evaluate"
    ),
    label_words: LabelWordsOpt = "negative,positive",
    generic_words: GenericWordsOpt = "neutral,unknown",
    regex: RegexOpt = None,
    keywords: KeywordsOpt = None,
    test: TestOpt = None,
    machine: Machine = None,
    template: TemplateOpt = None,
    quiet: QuietOpt = False,
    raw_probabilities: Annotated[
        bool,
        typer.Option(
            help="--prompt: label-only metrics from the label probabilities as the model computes them, "
            "without the answer policy that withholds them on generic answers (what someone holding the "
            "prompt and the weights sees)"
        ),
    ] = False,
) -> None:
    """Print the four-split ACC / F1 table (Vanilla, fine-tuned and SPUL rows with --prompt)."""
    from spul.evaluation import compare, evaluate
    from spul.metrics import format_table
    from spul.models import load_model
    from spul.pipeline import load_unlearned

    parse_limit(limit)  # a bad --limit fails before the data is read
    full = load_full(data, data_dir, label_words, generic_words, regex, keywords, test)
    dataset = _evaluation_rows(prompt, data, limit, seed, full)
    loading = machine.loading()
    if prompt is None:
        lm = load_model(model, adapter=adapter, **loading)
        table = evaluate(
            lm, dataset, template=make_template(template), batch_size=batch_size, show_progress=not quiet
        )
        rows = {lm.name: table}
    else:
        unlearned = load_unlearned(prompt, adapter=adapter, **loading)
        unlearned.withhold = unlearned.withhold and not raw_probabilities
        title = _method_title(unlearned.manifest["method"])
        rows = compare(
            unlearned, dataset, title=title, batch_size=batch_size, show_progress=not quiet, **loading
        )
    typer.echo(format_table(rows))
    info = {"data": dataset.fingerprint(), "model": model, "adapter": adapter, "prompt": prompt}
    write_results(out, rows, info | ({"raw_probabilities": True} if raw_probabilities else {}))
    note(f"wrote {out / 'results.json'} and {out / 'results.csv'}")


def _read_inputs(texts: list[str] | None, file: Path | None) -> list[str]:
    """The texts given as arguments, else in --file, else on stdin (blank lines dropped)."""
    if texts:
        inputs = list(texts)
    elif file is not None:
        if not file.is_file():
            raise SpulError(f"{file}: file not found")
        inputs = file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    else:
        inputs = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape").splitlines()
    inputs = [t for t in inputs if t.strip()]
    if not inputs:
        raise SpulError("no texts given (pass them as arguments, with --file, or on stdin)")
    for i, text in enumerate(inputs, start=1):
        if any("\ud800" <= c <= "\udfff" for c in text):
            raise SpulError(f"text {i} is not valid UTF-8 / Unicode (a lone surrogate)")
    return inputs


@user_errors
@gathered("machine", Machine)
def predict_cmd(
    texts: Annotated[
        list[str] | None, typer.Argument(help="texts to classify (else --file, else stdin)")
    ] = None,
    prompt: PromptOpt = "runs/prompt",
    file: Annotated[Path | None, typer.Option(help="file with one text per line")] = None,
    model: BaseModelOpt = None,
    adapter: AdapterOpt = None,
    batch_size: BatchOpt = 32,
    machine: Machine = None,
) -> None:
    """Classify texts with the unlearning prompt applied; prints one JSON object per line."""
    from spul.pipeline import load_unlearned

    inputs = _read_inputs(texts, file)
    unlearned = load_unlearned(prompt, model=model, adapter=adapter, **machine.loading())
    for text, result in zip(inputs, unlearned.predict(inputs, batch_size=batch_size), strict=True):
        typer.echo(json.dumps({"text": text} | result, ensure_ascii=False))


@dataclass
class AuditOptions:
    """What `spul audit` measures besides the attack."""

    k: Annotated[
        float,
        typer.Option(
            "--k", help="Min-K% / Min-K%++: fraction of lowest tokens", callback=bounded(0, 1, open_low=True)
        ),
    ] = 0.2
    bootstrap: Annotated[
        int, typer.Option(help="bootstrap resamples for the AUC intervals (0: none)", callback=bounded(0))
    ] = 1000
    probe_retain: Annotated[bool, typer.Option(help="also probe the retain splits (control)")] = True
    reference: Annotated[
        bool,
        typer.Option(help="reference-calibrated scores: the base model without the fine-tuned adapter"),
    ] = True
    members: Annotated[
        str,
        typer.Option(
            help="members: the train rows the prompt was trained on, or those its fine-tune was (when "
            "unlearning covered rows the fine-tune never saw)",
            callback=one_of(*MEMBER_SOURCES),
        ),
    ] = "prompt"


@dataclass
class AttackOptions:
    """The adaptive attack's bounds (`spul.audit.adaptive.AttackSettings`, without the `attack_` prefix)."""

    attack_rows: Annotated[
        int,
        typer.Option(
            help="rows per forget split the adaptive attack searches (0: no attack)", callback=bounded(0)
        ),
    ] = 100
    attack_budget: Annotated[int, typer.Option(help="queries per row", callback=bounded(1))] = 200
    attack_words: Annotated[int, typer.Option(help="words appended per query", callback=bounded(1))] = 5
    attack_feedback: Annotated[
        str,
        typer.Option(
            help="what the attacker sees: probabilities (greedy search) or labels (random walk)",
            callback=one_of("probabilities", "labels"),
        ),
    ] = "probabilities"

    def settings(self):
        """The library's settings object (imported here: the command line does not import torch)."""
        from spul.audit.adaptive import AttackSettings

        return AttackSettings(**{k.removeprefix("attack_"): v for k, v in asdict(self).items()})


def audited_rows(
    prompt: Path | str,
    data: str,
    data_dir: Path | str | None,
    cap: Limit,
    seed: int,
    adapter: str | None,
    regex: str | None = None,
    keywords: str | None = None,
    test: str | None = None,
    members: str = "prompt",
) -> tuple[UnlearningData, dict]:
    """The rows `spul audit` scores for a saved prompt (its label and generic words, `cap` rows per split)
    and its member record (`spul.audit.members.audit_data`; `members`: whose training rows)."""
    from spul.artifacts import read_manifest
    from spul.audit.members import audit_data

    manifest = read_manifest(prompt)
    words = [",".join(manifest[key]) for key in ("label_words", "generic_words")]
    full = load_full(data, data_dir, *words, regex, keywords, test)
    return audit_data(manifest, full, data, cap, seed, adapter, members)


# Verbs list the shared option aliases of cli/options.py in one order, so their signatures look alike
# (typer reads the signature; there is nothing to factor out).
@user_errors
@gathered("machine", Machine)
@gathered("checks", AuditOptions)
@gathered("attack", AttackOptions)
def audit_cmd(
    prompt: PromptOpt = "runs/prompt",
    data: DataOpt = "sst2-paper",
    data_dir: DataDirOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="folder for audit.json and audit.md")] = Path("runs/audit"),
    adapter: AdapterOpt = None,
    batch_size: BatchOpt = 16,
    regex: RegexOpt = None,
    keywords: KeywordsOpt = None,
    test: TestOpt = None,
    machine: Machine = None,
    checks: AuditOptions = None,
    attack: AttackOptions = None,
    quiet: QuietOpt = False,
) -> None:
    """Membership inference without / with the prompt, probes and an adaptive attack: audit.md + .json."""
    from spul.audit.markdown import to_markdown, write_report
    from spul.audit.report import run_audit
    from spul.pipeline import load_unlearned

    dataset, members = audited_rows(
        prompt, data, data_dir, parse_limit(limit), seed, adapter, regex, keywords, test, checks.members
    )
    unlearned = load_unlearned(prompt, adapter=adapter, **machine.loading())
    reference = None
    if checks.reference:
        from spul.models import load_model

        reference = unlearned.untouched_base(lambda spec: load_model(spec, **machine.loading()))
    report = run_audit(
        unlearned,
        dataset,
        k=checks.k,
        batch_size=batch_size,
        seed=seed,
        bootstrap=checks.bootstrap,
        probe_retain=checks.probe_retain,
        members=members,
        show_progress=not quiet,
        attack=attack.settings(),
        reference=reference,
    )
    json_path, md_path = write_report(out, report)
    typer.echo(to_markdown(report))
    note(f"wrote {json_path} and {md_path}")
