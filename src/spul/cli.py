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


def _method_title(name: str) -> str:
    """A method's name in result tables (SPUL, GA+KL...), or the name itself if it is not registered."""
    from spul.methods import METHODS

    return METHODS[name].display_name() if name in METHODS else name


def _training_selection(prompt: str | None, data: str) -> dict | None:
    """How the prompt's training rows were drawn, when it was trained on this same --data."""
    if prompt is None:
        return None
    from spul.artifacts import read_manifest

    selection = read_manifest(prompt).get("data", {}).get("selection")
    if selection and selection.get("ledger"):  # its forget set came from a ledger, not from --data alone
        return None
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
            selection.get("max_chars"),
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
        spec, base_adapter = base["spec"], unlearned.base_adapter
        template = unlearned.template
        title = _method_title(unlearned.manifest["method"])
        rows[title] = unlearned.evaluate(dataset, batch_size=batch_size, show_progress=show)
        if base_adapter is not None:
            # a prompt or a context leaves the (fine-tuned) base model as it is; other kinds replace it
            finetuned = unlearned.lm
            if unlearned.kind not in ("prompt", "context"):
                finetuned = load_model(
                    spec, adapter=base_adapter, device=device, precision=precision, device_map=device_map
                )
            rows["Fine-tuned"] = evaluate(
                finetuned, dataset, template=template, batch_size=batch_size, show_progress=show
            )
        vanilla = load_model(spec, device=device, precision=precision, device_map=device_map)
        rows["Vanilla"] = evaluate(
            vanilla, dataset, template=template, batch_size=batch_size, show_progress=show
        )
        rows = {k: rows[k] for k in ("Vanilla", "Fine-tuned", title) if k in rows}
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
    extra_manifest: dict | None = None,
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
        extra_manifest=extra_manifest,
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
    data,
    data_dir,
    limit,
    eval_limit,
    seed,
    label_words,
    generic_words,
    regex,
    keywords,
    test,
    tau,
    max_chars=None,
):
    """Training data (--limit rows per split, then tau of the forget set) and evaluation data: its train
    splits are drawn from the rows actually trained on, its test splits from the limited test data (both
    capped by --eval-limit). The same draw as `spul experiment`, so either's prompt evaluates alike."""
    full = load_dataset(data, data_dir, None, seed, label_words, generic_words, regex, keywords, test)
    report_warnings(full)
    return _training_sets(full.cut(max_chars), limit, eval_limit, seed, tau)


def _training_sets(full, limit, eval_limit, seed, tau):
    """Sample the training data from `full` and draw the evaluation data as `_datasets` describes."""
    limited = full.sample(limit=parse_limit(limit), seed=seed)
    training = limited.sample(tau=tau, seed=seed)
    if eval_limit is None:
        return training, training
    cap = parse_limit(eval_limit)
    from_train, from_limited = training.sample(limit=cap, seed=seed), limited.sample(limit=cap, seed=seed)
    splits = {name: (from_train if name.startswith("train") else from_limited)[name] for name in full.splits}
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
    out: Annotated[Path, typer.Option(help="artifact folder to write")] = Path("runs/prompt"),
    method: Annotated[
        str, typer.Option(help="spul, or a baseline: ga, rl, ga_kl, ga_gd, npo, retrain, icul")
    ] = "spul",
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    data: DataOpt = "sst2-paper",
    data_dir: DataDirOpt = None,
    limit: LimitOpt = None,
    eval_limit: EvalLimitOpt = None,
    tau: TauOpt = 1.0,
    p: Annotated[int | None, typer.Option("--p", help="spul: number of virtual tokens [default: 30]")] = None,
    prompt_type: Annotated[
        str | None, typer.Option(help="spul: ptuning (the paper's) or prompt-tuning [default: ptuning]")
    ] = None,
    encoder_hidden: Annotated[
        int | None, typer.Option(help="spul: P-tuning MLP hidden size [default: 128]")
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help="weight of the retain term (spul, ga_gd, ga_kl, npo) [default: 1; npo: 0]"),
    ] = None,
    beta: Annotated[
        float | None, typer.Option(help="spul: weight of the KL to the unprompted model [default: 0.5]")
    ] = None,
    lora: Annotated[
        bool, typer.Option(help="ga, rl, ga_kl, ga_gd, npo: train a LoRA adapter, not every weight")
    ] = False,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (--lora, retrain) [default: 16]")] = None,
    npo_beta: Annotated[float | None, typer.Option(help="npo: inverse temperature [default: 0.1]")] = None,
    icul_shots: Annotated[
        int | None, typer.Option(help="icul: demonstrations per query, the first flipped [default: 4]")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="training epochs [default: spul 10, retrain 2, other baselines 1]")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="peak learning rate [default: 1e-4; full fine-tuning baselines 1e-5]"),
    ] = None,
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
    ledger: Annotated[
        Path | None, typer.Option(help="forget every deletion request of this ledger (spul requests)")
    ] = None,
    init_prompt: Annotated[
        Path | None,
        typer.Option(help="spul: start from this saved prompt (needs --prompt-type prompt-tuning)"),
    ] = None,
) -> None:
    """Make the (fine-tuned) model forget train_forget: a SPUL soft prompt, or a baseline (--method)."""
    from spul.methods import get_method
    from spul.training import TrainConfig

    method_class = get_method(method)
    given = {  # option name -> (flag, value); flags left out are the method's defaults
        "num_virtual_tokens": ("--p", p),
        "prompt_type": ("--prompt-type", prompt_type),
        "encoder_hidden": ("--encoder-hidden", encoder_hidden),
        "alpha": ("--alpha", alpha),
        "beta": ("--beta", beta),
        "lora": ("--lora", lora or None),
        "r": ("--lora-r", lora_r),
        "npo_beta": ("--npo-beta", npo_beta),
        "shots": ("--icul-shots", icul_shots),
        "init_prompt": ("--init-prompt", str(init_prompt) if init_prompt is not None else None),
    }
    options = {name: value for name, (_, value) in given.items() if value is not None}
    foreign = [given[name][0] for name in options if name not in method_class.option_names()]
    if foreign:
        raise SpulError(f"--method {method} does not take {', '.join(foreign)}")
    if method_class.from_untouched_model and adapter is not None:
        console.print(f"note: {method} starts from the untouched model; --adapter {adapter} is not used")
        adapter = None
    covers: tuple = ()
    if ledger is not None:  # the forget set is the ledger's requests
        from spul.cli_serve import ledger_datasets

        if regex or keywords:
            raise SpulError("--ledger defines the forget set; drop --regex / --keywords")
        dataset, eval_data, *covers = ledger_datasets(
            ledger, data, data_dir, limit, eval_limit, seed, label_words, generic_words, test, tau
        )
    else:
        dataset, eval_data = _datasets(
            data, data_dir, limit, eval_limit, seed, label_words, generic_words, regex, keywords, test, tau
        )
    defaults = method_class.training_defaults(options)
    config = TrainConfig(
        epochs=epochs if epochs is not None else defaults.get("epochs", TrainConfig.epochs),
        batch_size=batch_size,
        lr=lr if lr is not None else defaults.get("lr", TrainConfig.lr),
        max_grad_norm=max_grad_norm,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    selection = {"data": data, "limit": limit, "tau": tau, "seed": seed, "order": "limit, then tau"}
    if ledger is not None:
        selection["ledger"] = str(ledger)
    _train_verb(
        method,
        selection=selection,
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
        extra_manifest={"requests": covers[0], "ledger": str(ledger)} if covers else None,
    )
    if covers:
        from spul.cli_serve import finish_ledger

        finish_ledger(ledger, covers[0], out, covers[1])


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
        inputs = file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    else:
        inputs = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape").splitlines()
    inputs = [t for t in inputs if t.strip()]
    if not inputs:
        raise SpulError("no texts given (pass them as arguments, with --file, or on stdin)")
    for i, text in enumerate(inputs, start=1):
        if any("\ud800" <= c <= "\udfff" for c in text):
            raise SpulError(f"text {i} is not valid UTF-8 / Unicode (a lone surrogate)")
    unlearned = load_unlearned(
        prompt, model=model, adapter=adapter, device=device, precision=precision, device_map=device_map
    )
    for text, result in zip(inputs, unlearned.predict(inputs, batch_size=batch_size), strict=True):
        typer.echo(json.dumps({"text": text} | result, ensure_ascii=False))


@app.command("audit")
@user_errors
def audit_cmd(
    prompt: Annotated[str, typer.Option(help="saved unlearning prompt folder")] = "runs/prompt",
    data: DataOpt = "sst2-paper",
    data_dir: DataDirOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="folder for audit.json and audit.md")] = Path("runs/audit"),
    k: Annotated[float, typer.Option("--k", help="Min-K% / Min-K%++: fraction of lowest tokens")] = 0.2,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the AUC intervals")] = 1000,
    probe_retain: Annotated[bool, typer.Option(help="also probe the retain splits (control)")] = True,
    adapter: AdapterOpt = None,
    batch_size: BatchOpt = 16,
    regex: RegexOpt = None,
    keywords: KeywordsOpt = None,
    test: TestOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    device_map: DeviceMapOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Membership inference without / with the prompt and robustness probes: audit.md + audit.json."""
    from spul.audit.members import audit_data
    from spul.audit.report import run_audit, to_markdown, write_report
    from spul.pipeline import load_unlearned

    dataset, members = audit_data(
        prompt, data, data_dir, parse_limit(limit), seed, regex, keywords, test, adapter
    )
    unlearned = load_unlearned(
        prompt, adapter=adapter, device=device, precision=precision, device_map=device_map
    )
    report = run_audit(
        unlearned,
        dataset,
        k=k,
        batch_size=batch_size,
        seed=seed,
        bootstrap=bootstrap,
        probe_retain=probe_retain,
        members=members,
        show_progress=not quiet,
    )
    json_path, md_path = write_report(out, report)
    typer.echo(to_markdown(report))
    console.print(f"wrote {json_path} and {md_path}")


@app.command("experiment")
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
    if cell is not None:
        folder = out or Path(settings.out or Path("runs") / "experiments" / settings.name)
        experiment = Experiment(settings, folder, cache_dir=cache_dir, device=device, show_progress=not quiet)
        experiment.check()
        chosen = [c for c in experiment.cells if c.id == cell]
        if not chosen:
            raise SpulError(f"{config}: no cell {cell!r}; `--dry-run` lists the cell ids")
        experiment.run_cell(chosen[0])
        return
    if dry_run:
        folder = out or Path(settings.out or Path("runs") / "experiments" / settings.name)
        experiment = Experiment(settings, folder, cache_dir=cache_dir, device=device)
        from spul.methods import METHODS

        for cell, state in experiment.status():
            missing = "" if cell.method in (None, *METHODS) else "  (method not registered)"
            typer.echo(f"{cell.id}  {state:<8} {cell.describe()}{missing}")
        states = [s for _, s in experiment.status()]
        console.print(f"{states.count('done')} of {len(states)} cells done; output folder {folder}")
        return
    experiment = run_experiment(settings, out, cache_dir=cache_dir, device=device, show_progress=not quiet)
    report = experiment.out / "report.md"
    typer.echo(report.read_text(encoding="utf-8"))


# `spul prepare ...` (forget-set builders) lives in its own module, which uses the helpers above.
from spul.cli_prepare import prepare_app  # noqa: E402

app.add_typer(prepare_app, name="prepare")

# `spul serve` and `spul requests ...` (the HTTP service, the deletion-request ledger).
from spul.cli_serve import requests_app, serve_cmd  # noqa: E402

app.command("serve")(serve_cmd)
app.add_typer(requests_app, name="requests")


def main() -> None:
    """Entry point of the `spul` script."""
    # peft still asks transformers for a deprecated attribute; the warning is noise for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    app()
