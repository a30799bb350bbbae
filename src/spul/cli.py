"""The `spul` command line: one thin function per verb."""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from spul.errors import SpulError

app = typer.Typer(
    help="Machine unlearning for LLM classifiers with soft prompts (SPUL).", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)  # one message = one line, even in narrow terminals

# Options shared by several verbs.
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="smollm2-135m, a HuggingFace id, a folder or a .gguf")
]
AdapterOpt = Annotated[str | None, typer.Option(help="LoRA adapter folder merged into the model on load")]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="preset (sst2-paper, imdb, yelp-paper), folder or hub id")
]
DataDirOpt = Annotated[
    str | None, typer.Option(help="local data folder for presets (default: $SPUL_DATA_DIR)")
]
LimitOpt = Annotated[
    str | None, typer.Option(help="cap rows per split: N, or per split: train_retain=4000,test_retain=1000")
]
SeedOpt = Annotated[int, typer.Option(help="seed for sampling, generic labels and training")]
BatchOpt = Annotated[int, typer.Option(help="batch size")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: CUDA when present)")]
PrecisionOpt = Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16")]
DeviceMapOpt = Annotated[
    str | None, typer.Option(help="'auto' spreads a model too big for one GPU over all GPUs (accelerate)")
]
LabelWordsOpt = Annotated[str, typer.Option(help="comma-separated label words, in label order")]
GenericWordsOpt = Annotated[str, typer.Option(help="comma-separated generic words for forget targets")]
RegexOpt = Annotated[str | None, typer.Option(help="forget rule for raw data: rows matching this regex")]
KeywordsOpt = Annotated[str | None, typer.Option(help="forget rule for raw data: comma-separated keywords")]
TestOpt = Annotated[str | None, typer.Option(help="test file, when --data is a raw train file")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
TemplateOpt = Annotated[
    str | None, typer.Option(help="prompt template with {text}, ending where the label word follows")
]


def make_template(text: str | None):
    """The paper's template, or the one given (escapes like \\n are honoured)."""
    from spul.prompting import Template

    if text is None:
        return Template()
    return Template(text.encode("utf-8").decode("unicode_escape"))


def user_errors(fn):
    """Turn spul's user-facing errors into one red line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpulError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def parse_limit(value: str | None) -> int | dict[str, int] | None:
    """`200` caps every split; `train_retain=4000,test_retain=1000` caps the named ones."""
    if value is None:
        return None
    try:
        if "=" not in value:
            return int(value)
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in value.split(","))}
    except ValueError:
        raise SpulError(f"--limit {value!r}: expected N or split=N,split=N") from None


def words(value: str) -> tuple[str, ...]:
    """Split a comma-separated word list."""
    return tuple(w.strip() for w in value.split(",") if w.strip())


def load_dataset(
    data, data_dir, limit, seed, label_words, generic_words, regex=None, keywords=None, test=None, tau=1.0
):
    """Load and sample the unlearning data named on the command line."""
    from spul.data import load_data, make_rule

    rule = (
        make_rule(regex=regex, keywords=words(keywords) if keywords else None)
        if (regex or keywords)
        else None
    )
    return load_data(
        data,
        data_dir=data_dir,
        label_words=words(label_words),
        generic_words=words(generic_words),
        tau=tau,
        limit=parse_limit(limit),
        seed=seed,
        forget_rule=rule,
        test_path=test,
    )


def report_warnings(data) -> None:
    """Show data warnings (duplicates and the like) without stopping."""
    for warning in data.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


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


def _training_selection(prompt: str | None, data: str) -> dict | None:
    """How the prompt's training rows were drawn, when it was trained on this same --data."""
    if prompt is None:
        return None
    from spul.artifacts import read_manifest

    selection = read_manifest(prompt).get("data", {}).get("selection")
    return selection if selection and selection.get("data") == data else None


@app.command("evaluate")
@user_errors
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
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    device_map: DeviceMapOpt = None,
    template: TemplateOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Print the four-split ACC / F1 table (Vanilla, fine-tuned and SPUL rows with --prompt)."""
    from spul.evaluation import evaluate
    from spul.metrics import format_table
    from spul.models import load_model
    from spul.pipeline import load_unlearned

    selection = _training_selection(prompt, data)
    if selection is not None:  # score the train splits on the rows the prompt was trained on
        _, dataset = _datasets(
            data,
            data_dir,
            selection["limit"],
            limit,
            selection["seed"],
            label_words,
            generic_words,
            regex,
            keywords,
            test,
            selection["tau"],
        )
    else:
        dataset = load_dataset(data, data_dir, limit, seed, label_words, generic_words, regex, keywords, test)
        report_warnings(dataset)
    show = not quiet
    rows: dict[str, dict] = {}
    if prompt is None:
        lm = load_model(model, adapter=adapter, device=device, precision=precision, device_map=device_map)
        rows[lm.name] = evaluate(
            lm, dataset, template=make_template(template), batch_size=batch_size, show_progress=show
        )
    else:
        unlearned = load_unlearned(
            prompt, adapter=adapter, device=device, precision=precision, device_map=device_map
        )
        base = unlearned.manifest["base_model"]
        spec, base_adapter = base["spec"], unlearned.lm.adapter
        template = unlearned.template
        rows["SPUL"] = unlearned.evaluate(dataset, batch_size=batch_size, show_progress=show)
        finetuned = unlearned.lm
        if base_adapter is not None:
            rows["Fine-tuned"] = evaluate(
                finetuned, dataset, template=template, batch_size=batch_size, show_progress=show
            )
        vanilla = load_model(spec, device=device, precision=precision, device_map=device_map)
        rows["Vanilla"] = evaluate(
            vanilla, dataset, template=template, batch_size=batch_size, show_progress=show
        )
        rows = {k: rows[k] for k in ("Vanilla", "Fine-tuned", "SPUL") if k in rows}
    table = format_table(rows)
    typer.echo(table)
    write_results(
        out, rows, {"data": dataset.fingerprint(), "model": model, "adapter": adapter, "prompt": prompt}
    )
    console.print(f"wrote {out / 'results.json'} and {out / 'results.csv'}")


def _train_verb(
    method: str,
    *,
    selection: dict,
    model: str,
    adapter: str | None,
    dataset,
    eval_data,
    out: Path,
    options: dict,
    config,
    resume: bool,
    eval_each_epoch: bool,
    template: str | None,
    device: str | None,
    precision: str,
    device_map: str | None,
    quiet: bool,
    qlora: bool = False,
) -> None:
    from spul.metrics import format_table
    from spul.models import is_main_process, load_model
    from spul.pipeline import train_artifact

    lm = load_model(
        model, adapter=adapter, device=device, precision=precision, device_map=device_map, load_in_4bit=qlora
    )
    manifest = train_artifact(
        method,
        lm,
        dataset,
        out,
        template=make_template(template),
        method_options=options,
        config=config,
        eval_data=eval_data,
        eval_each_epoch=eval_each_epoch,
        resume=resume,
        show_progress=not quiet,
        selection=selection,
    )
    if not is_main_process():
        return
    typer.echo(format_table({method: manifest["metrics"]}))
    console.print(
        f"saved {out} ({manifest['trainable_parameters']:,} trainable parameters, "
        f"{manifest['training_time_s']:.0f} s of training)"
    )


EpochsOpt = Annotated[int, typer.Option(help="training epochs")]
LrOpt = Annotated[float, typer.Option(help="peak learning rate (AdamW, cosine schedule, 10% warmup)")]
ResumeOpt = Annotated[bool, typer.Option(help="continue from OUT.ckpt.pt if a run was interrupted")]
EvalLimitOpt = Annotated[
    str | None, typer.Option(help="cap rows per split for evaluation (default: --limit)")
]
EvalEachOpt = Annotated[bool, typer.Option(help="evaluate after every epoch and keep the best epoch")]
CkptOpt = Annotated[int, typer.Option(help="optimizer steps between checkpoints")]
TauOpt = Annotated[float, typer.Option(help="fraction of train_forget to use (forget-set size experiments)")]


def _datasets(
    data, data_dir, limit, eval_limit, seed, label_words, generic_words, regex, keywords, test, tau
):
    """Training data (sampled with tau and --limit) and evaluation data: its train splits are drawn from
    the rows actually trained on, its test splits from the whole test data (both capped by --eval-limit)."""
    full = load_dataset(data, data_dir, None, seed, label_words, generic_words, regex, keywords, test)
    report_warnings(full)
    training = full.sample(tau=tau, limit=parse_limit(limit), seed=seed)
    if eval_limit is None:
        return training, training
    cap = parse_limit(eval_limit)
    from_train, from_full = training.sample(limit=cap, seed=seed), full.sample(limit=cap, seed=seed)
    splits = {name: (from_train if name.startswith("train") else from_full)[name] for name in full.splits}
    return training, replace(training, splits=splits, warnings=[])


@app.command("finetune")
@user_errors
def finetune_cmd(
    out: Annotated[Path, typer.Option(help="adapter folder to write")] = Path("runs/finetuned"),
    model: ModelOpt = "smollm2-135m",
    data: DataOpt = "sst2-paper",
    data_dir: DataDirOpt = None,
    limit: LimitOpt = None,
    eval_limit: EvalLimitOpt = None,
    epochs: EpochsOpt = 2,
    lr: LrOpt = 1e-4,
    batch_size: BatchOpt = 32,
    r: Annotated[int, typer.Option("--lora-r", help="LoRA rank")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha")] = 64,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.1,
    targets: Annotated[str, typer.Option(help="comma-separated module names to adapt")] = "q_proj,v_proj",
    qlora: Annotated[
        bool | None,
        typer.Option(help="4-bit base model (QLoRA); default: on where CUDA and bitsandbytes are"),
    ] = None,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    eval_each_epoch: EvalEachOpt = False,
    checkpoint_every: CkptOpt = 100,
    label_words: LabelWordsOpt = "negative,positive",
    generic_words: GenericWordsOpt = "neutral,unknown",
    regex: RegexOpt = None,
    keywords: KeywordsOpt = None,
    test: TestOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    device_map: DeviceMapOpt = None,
    template: TemplateOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Memorisation stage: LoRA fine-tune on train_retain + train_forget (label tokens only)."""
    from spul.models import qlora_available
    from spul.training import TrainConfig

    dataset, eval_data = _datasets(
        data, data_dir, limit, eval_limit, seed, label_words, generic_words, regex, keywords, test, 1.0
    )
    options = {
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "targets": list(words(targets)),
    }
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every
    )
    _train_verb(
        "finetune",
        selection={"data": data, "limit": limit, "tau": 1.0, "seed": seed},
        model=model,
        adapter=None,
        dataset=dataset,
        eval_data=eval_data,
        out=out,
        options=options,
        config=config,
        resume=resume,
        eval_each_epoch=eval_each_epoch,
        device=device,
        precision=precision,
        quiet=quiet,
        device_map=device_map,
        template=template,
        qlora=qlora_available() if qlora is None else qlora,
    )


@app.command("unlearn")
@user_errors
def unlearn_cmd(
    out: Annotated[Path, typer.Option(help="prompt folder to write")] = Path("runs/prompt"),
    method: Annotated[str, typer.Option(help="unlearning method")] = "spul",
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    data: DataOpt = "sst2-paper",
    data_dir: DataDirOpt = None,
    limit: LimitOpt = None,
    eval_limit: EvalLimitOpt = None,
    tau: TauOpt = 1.0,
    p: Annotated[int, typer.Option("--p", help="number of virtual tokens")] = 30,
    prompt_type: Annotated[str, typer.Option(help="ptuning (the paper's) or prompt-tuning")] = "ptuning",
    encoder_hidden: Annotated[int, typer.Option(help="P-tuning MLP hidden size")] = 128,
    alpha: Annotated[float, typer.Option(help="weight of the retain loss")] = 1.0,
    beta: Annotated[float, typer.Option(help="weight of the KL to the unprompted model")] = 0.5,
    epochs: EpochsOpt = 10,
    lr: LrOpt = 1e-4,
    batch_size: BatchOpt = 32,
    max_grad_norm: Annotated[float, typer.Option(help="gradient clipping norm")] = 0.3,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    eval_each_epoch: EvalEachOpt = False,
    checkpoint_every: CkptOpt = 100,
    label_words: LabelWordsOpt = "negative,positive",
    generic_words: GenericWordsOpt = "neutral,unknown",
    regex: RegexOpt = None,
    keywords: KeywordsOpt = None,
    test: TestOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    device_map: DeviceMapOpt = None,
    template: TemplateOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Learn a soft prompt that makes the frozen (fine-tuned) model forget train_forget."""
    from spul.training import TrainConfig

    dataset, eval_data = _datasets(
        data, data_dir, limit, eval_limit, seed, label_words, generic_words, regex, keywords, test, tau
    )
    options = {
        "prompt_type": prompt_type,
        "num_virtual_tokens": p,
        "encoder_hidden": encoder_hidden,
        "alpha": alpha,
        "beta": beta,
    }
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_grad_norm=max_grad_norm,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    _train_verb(
        method,
        selection={"data": data, "limit": limit, "tau": tau, "seed": seed},
        model=model,
        adapter=adapter,
        dataset=dataset,
        eval_data=eval_data,
        out=out,
        options=options,
        config=config,
        resume=resume,
        eval_each_epoch=eval_each_epoch,
        device=device,
        precision=precision,
        quiet=quiet,
        device_map=device_map,
        template=template,
    )


@app.command("predict")
@user_errors
def predict_cmd(
    texts: Annotated[
        list[str] | None, typer.Argument(help="texts to classify (else --file, else stdin)")
    ] = None,
    prompt: Annotated[str, typer.Option(help="saved unlearning prompt folder")] = "runs/prompt",
    file: Annotated[Path | None, typer.Option(help="file with one text per line")] = None,
    model: Annotated[str | None, typer.Option(help="override the base model recorded in the prompt")] = None,
    adapter: AdapterOpt = None,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    device_map: DeviceMapOpt = None,
) -> None:
    """Classify texts with the unlearning prompt applied; prints one JSON object per line."""
    from spul.pipeline import load_unlearned

    if texts:
        inputs = list(texts)
    elif file is not None:
        if not file.is_file():
            raise SpulError(f"{file}: file not found")
        inputs = file.read_text(encoding="utf-8").splitlines()
    else:
        inputs = sys.stdin.read().splitlines()
    inputs = [t for t in inputs if t.strip()]
    if not inputs:
        raise SpulError("no texts given (pass them as arguments, with --file, or on stdin)")
    unlearned = load_unlearned(
        prompt, model=model, adapter=adapter, device=device, precision=precision, device_map=device_map
    )
    for text, result in zip(inputs, unlearned.predict(inputs, batch_size=batch_size), strict=True):
        typer.echo(json.dumps({"text": text} | result, ensure_ascii=False))


def main() -> None:
    """Entry point of the `spul` script."""
    # peft still asks transformers for a deprecated attribute; the warning is noise for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    app()
