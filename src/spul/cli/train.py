"""`spul finetune` (the memorisation stage) and `spul unlearn` (a SPUL prompt or a baseline)."""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from spul.cli.method_flags import METHOD_FLAGS
from spul.cli.options import (
    AdapterOpt,
    CkptOpt,
    DataDirOpt,
    DataOpt,
    DeviceMapOpt,
    DeviceOpt,
    EpochsOpt,
    EvalEachOpt,
    EvalLimitOpt,
    GenericWordsOpt,
    KeywordsOpt,
    LabelWordsOpt,
    LimitOpt,
    LrOpt,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    RegexOpt,
    ResumeOpt,
    SeedOpt,
    TauOpt,
    TemplateOpt,
    TestOpt,
    TrainSeedOpt,
    gathered,
    load_full,
    make_template,
    parse_pairs,
    user_errors,
    words,
)
from spul.data.selection import Selection, parse_limit
from spul.errors import SpulError
from spul.reporting import note


def _parameter(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _method_flag_group() -> type:
    """A dataclass with one field per METHOD_FLAGS row (None = not given; `--lora` is a plain switch)."""
    fields = []
    for flag, kind, help_text in METHOD_FLAGS.values():
        if kind is bool:
            switch = typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text)
            fields.append((_parameter(flag), Annotated[bool, switch], False))
        else:
            fields.append(
                (_parameter(flag), Annotated[kind | None, typer.Option(flag, help=help_text)], None)
            )
    return make_dataclass("MethodFlags", fields, frozen=True)


MethodFlags = _method_flag_group()


def method_options(method: str, flags: Any, method_args: str | None) -> dict[str, Any]:
    """The method's options from its flags and `--method-args k=v,...`; SpulError for an option the method
    does not take or one given twice."""
    from spul.methods import get_method

    given = {name: getattr(flags, _parameter(flag)) for name, (flag, _, _) in METHOD_FLAGS.items()}
    given = {n: v for n, v in given.items() if v is not None and v is not False}  # 0 is given, not unset
    options = dict(given)
    if "init_prompt" in options and not Path(options["init_prompt"]).is_dir():  # before anything loads
        raise SpulError(f"--init-prompt {options['init_prompt']}: the folder does not exist")
    extra = parse_pairs(method_args, "--method-args")
    twice = sorted(set(options) & set(extra))
    if twice:
        raise SpulError(f"--method-args sets {', '.join(twice)}, which a flag sets too")
    names = get_method(method).option_names()
    flag_of = {name: flag for name, (flag, _, _) in METHOD_FLAGS.items()}
    foreign = [flag_of[n] for n in options if n not in names] + [f"{n}" for n in extra if n not in names]
    if foreign:
        raise SpulError(f"--method {method} does not take {', '.join(foreign)}")
    return options | extra


@dataclass(frozen=True)
class RunArgs:
    """The options `finetune` and `unlearn` share: data, row selection, checkpoints, device, output."""

    data: DataOpt = "sst2-paper"
    data_dir: DataDirOpt = None
    limit: LimitOpt = None
    eval_limit: EvalLimitOpt = None
    seed: SeedOpt = 0
    train_seed: TrainSeedOpt = None
    resume: ResumeOpt = False
    eval_each_epoch: EvalEachOpt = False
    checkpoint_every: CkptOpt = 100
    label_words: LabelWordsOpt = "negative,positive"
    generic_words: GenericWordsOpt = "neutral,unknown"
    regex: RegexOpt = None
    keywords: KeywordsOpt = None
    test: TestOpt = None
    device: DeviceOpt = None
    precision: PrecisionOpt = "auto"
    device_map: DeviceMapOpt = None
    template: TemplateOpt = None
    quiet: QuietOpt = False

    @property
    def training_seed(self) -> int:
        """The seed of training: --train-seed, else --seed."""
        return self.seed if self.train_seed is None else self.train_seed

    def selection(self, tau: float = 1.0, ledger: Path | None = None) -> Selection:
        """The row selection these options ask for (limits parsed here, once)."""
        return Selection(
            self.data,
            limit=parse_limit(self.limit),
            tau=tau,
            seed=self.seed,
            eval_limit=parse_limit(self.eval_limit, "--eval-limit"),
            ledger=None if ledger is None else str(ledger),
        )

    def rows(self, selection: Selection):
        """(training rows, evaluation rows, check-only rows or None) of the --data named here."""
        full = load_full(
            self.data,
            self.data_dir,
            self.label_words,
            self.generic_words,
            self.regex,
            self.keywords,
            self.test,
        )
        return (*selection.draw(full), selection.draw_check(full))


def _train(method: str, run: RunArgs, selection: Selection, rows, lm, out: Path, options, config, extra=None):
    """Train, save and print the method's table (main process only)."""
    from spul.metrics import format_table
    from spul.models import is_main_process
    from spul.pipeline import train_artifact

    manifest = train_artifact(
        method,
        lm,
        rows[0],
        out,
        template=make_template(run.template),
        method_options=options,
        config=config,
        eval_data=rows[1],
        eval_each_epoch=run.eval_each_epoch,
        resume=run.resume,
        show_progress=not run.quiet,
        selection=selection.to_manifest(),
        extra_manifest=extra,
        check_retain=rows[2],
    )
    if is_main_process():
        typer.echo(format_table({method: manifest["metrics"]}))
        note(
            f"saved {out} ({manifest['trainable_parameters']:,} trainable parameters, "
            f"{manifest['training_time_s']:.0f} s of training)"
        )


def _load(model: str, run: RunArgs, adapter: str | None = None, qlora: bool = False):
    from spul.models import load_model

    return load_model(
        model,
        adapter=adapter,
        device=run.device,
        precision=run.precision,
        device_map=run.device_map,
        load_in_4bit=qlora,
    )


@user_errors
@gathered("run", RunArgs)
def finetune_cmd(
    out: Annotated[Path, typer.Option(help="adapter folder to write")] = Path("runs/finetuned"),
    model: ModelOpt = "smollm2-135m",
    epochs: EpochsOpt = 2,
    lr: LrOpt = 1e-4,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 32,
    r: Annotated[int, typer.Option("--lora-r", help="LoRA rank")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha")] = 64,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.1,
    targets: Annotated[str, typer.Option(help="comma-separated module names to adapt")] = "q_proj,v_proj",
    qlora: Annotated[
        bool | None,
        typer.Option(help="4-bit base model (QLoRA); default: on where CUDA and bitsandbytes are"),
    ] = None,
    run: RunArgs = RunArgs(),
) -> None:
    """Memorisation stage: LoRA fine-tune on train_retain + train_forget (label tokens only)."""
    from spul.methods import get_method
    from spul.models import qlora_available
    from spul.training import TrainConfig

    flags = training_flags(run, epochs=epochs, lr=lr, batch_size=batch_size)
    config = TrainConfig(**flags, seed=run.training_seed)
    options = {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout}
    options["targets"] = list(words(targets))
    get_method("finetune").resolve(options)  # nonsense refused before anything loads
    selection = run.selection()
    rows = run.rows(selection)
    lm = _load(model, run, qlora=qlora_available() if qlora is None else qlora)
    _train("finetune", run, selection, rows, lm, out, options, config)


MethodOpt = Annotated[
    str, typer.Option(help="spul, or a baseline: ga, rl, ga_kl, ga_gd, npo, retrain, icul, filter, gate")
]
MethodArgsOpt = Annotated[
    str | None, typer.Option(help="more method options: key=value,key=value (e.g. npo_beta=0.2)")
]
UnlearnEpochsOpt = Annotated[
    int | None,
    typer.Option(help="training epochs [default: spul fast 4, paper 10; retrain 2; other baselines 1]"),
]
UnlearnLrOpt = Annotated[
    float | None,
    typer.Option(
        help="peak learning rate [default: spul fast 2e-3, paper 1e-4; full fine-tuning baselines 1e-5]"
    ),
]
UnlearnBatchOpt = Annotated[int | None, typer.Option(help="batch size [default: spul fast 16, others 32]")]
UnlearnClipOpt = Annotated[
    float | None, typer.Option(help="gradient clipping norm [default: spul fast 1.0, others 0.3]")
]
RecipeOpt = Annotated[
    str | None,
    typer.Option(
        help="spul: a named recipe as the starting point: fast (the default: a suffix prompt over the "
        "cached text, balanced batches, generic-set loss) or paper (the paper's settings); the flags "
        "given override it"
    ),
]
CheckEveryOpt = Annotated[
    int | None,
    typer.Option(
        help="spul: optimizer steps between training checks, which stop at the target (0: no check) "
        "[default: fast 5, paper 0]"
    ),
]
CheckRetainOpt = Annotated[
    int | None,
    typer.Option(
        help="spul: the training check scores this many train_retain rows from outside the training rows "
        "(seeded, never trained on) instead of holding out a quarter of at most check_rows training rows"
    ),
]
LedgerOpt = Annotated[
    Path | None, typer.Option(help="forget every deletion request of this ledger (spul requests)")
]


# Verbs list the shared option aliases of cli/options.py in one order, so their signatures look alike
# (typer reads the signature; there is nothing to factor out).
@user_errors
@gathered("flags", MethodFlags)
@gathered("run", RunArgs)
def unlearn_cmd(
    out: Annotated[Path, typer.Option(help="artifact folder to write")] = Path("runs/prompt"),
    method: MethodOpt = "spul",
    method_args: MethodArgsOpt = None,
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    tau: TauOpt = 1.0,
    epochs: UnlearnEpochsOpt = None,
    lr: UnlearnLrOpt = None,
    batch_size: UnlearnBatchOpt = None,
    max_grad_norm: UnlearnClipOpt = None,
    recipe: RecipeOpt = None,
    check_every: CheckEveryOpt = None,
    check_retain: CheckRetainOpt = None,
    ledger: LedgerOpt = None,
    run: RunArgs = RunArgs(),
    flags: Any = None,
) -> None:
    """Make the (fine-tuned) model forget train_forget: a SPUL soft prompt, or a baseline (--method)."""
    from spul.methods import get_method
    from spul.methods.guard import with_forget_rule

    method_class = get_method(method)
    options = method_options(method, flags, method_args)
    options = with_forget_rule(method_class, options, run.regex, run.keywords)  # the filter's default rule
    recipe = _recipe(method, recipe)
    if check_every is not None and (method != "spul" or check_every < 0):
        raise SpulError(f"--check-every {check_every}: a SPUL option, >= 0 (0: no training check)")
    config = _train_config(method_class, options, recipe, run, epochs, lr, batch_size, max_grad_norm)
    if check_every is not None:
        config = replace(config, check_every=check_every)
    _check_retain_allowed(check_retain, method, config.check_every, ledger)
    if recipe is not None:
        from spul.methods.recipes import recipe_settings

        options = recipe_settings(recipe)[0] | options
    method_class.resolve(options)  # the method's own rules (e.g. --p >= 1), before anything loads
    if options.get("gate_focus") and config.forget_share is None:  # (balanced batches: forget_share)
        raise SpulError(
            f"gate_focus {options['gate_focus']}: needs balanced batches; --recipe {recipe} has none"
        )
    if method_class.from_untouched_model and adapter is not None:
        note(f"note: {method} starts from the untouched model; --adapter {adapter} is not used")
        adapter = None
    selection = replace(run.selection(tau, ledger), check_retain=check_retain)
    rows, covers = _unlearning_rows(run, selection)
    extra = {"requests": covers[0], "ledger": str(ledger)} if covers else None
    _train(method, run, selection, rows, _load(model, run, adapter), out, options, config, extra)
    if covers:
        _finish_ledger(ledger, covers[0], out, covers[1])


def _check_retain_allowed(check_retain: int | None, method: str, check_every: int, ledger: Path | None):
    """--check-retain only where a training check runs on rows drawn from --data (not a ledger)."""
    from spul.target import check_retain_problem

    if problem := check_retain_problem(check_retain, method, check_every):
        raise SpulError(f"--check-retain {check_retain}: {problem}")
    if check_retain is not None and ledger is not None:
        raise SpulError("--check-retain draws from --data; it is not available with --ledger")


def _recipe(method: str, recipe: str | None) -> str | None:
    """The SPUL recipe to start from (the default one for spul); refused for other methods."""
    if recipe is not None and method != "spul":
        raise SpulError(f"--recipe is a SPUL recipe; --method {method} does not take it")
    if method == "spul" and recipe is None:
        from spul.methods.recipes import DEFAULT_RECIPE

        return DEFAULT_RECIPE
    return recipe


def _train_config(method_class, options, recipe, run: RunArgs, epochs, lr, batch_size, max_grad_norm):
    """The TrainConfig: the recipe's (or the method's defaults), then the flags given; nonsense refused."""
    from spul.training import TrainConfig

    if recipe is not None:
        from spul.methods.recipes import recipe_settings

        base = recipe_settings(recipe, seed=run.training_seed)[1]
    else:
        defaults = method_class.training_defaults(options)
        base = TrainConfig(
            epochs=defaults.get("epochs", TrainConfig.epochs), lr=defaults.get("lr", TrainConfig.lr)
        )
    given = training_flags(run, epochs=epochs, lr=lr, batch_size=batch_size, max_grad_norm=max_grad_norm)
    return replace(base, seed=run.training_seed, **given)


def training_flags(run: RunArgs, **given: float | None) -> dict[str, Any]:
    """The TrainConfig fields the training flags give (None: not given), with --checkpoint-every; a value
    <= 0 (a crash, or a run that trains nothing) refused, naming its flag."""
    given = {k: v for k, v in given.items() if v is not None} | {"checkpoint_every": run.checkpoint_every}
    for name, value in given.items():
        if value <= 0:
            raise SpulError(f"--{name.replace('_', '-')} must be > 0 (got {value})")
    return given


def _unlearning_rows(run: RunArgs, selection: Selection):
    """The rows to train and score on, and (ids, counts) of the ledger's requests they cover (or ())."""
    if selection.ledger is None:
        return run.rows(selection), ()
    from spul.ledger import ledger_rows

    if run.regex or run.keywords:
        raise SpulError("--ledger defines the forget set; drop --regex / --keywords")
    training, evaluation, ids, counts = ledger_rows(
        selection,
        data_dir=run.data_dir,
        test_path=run.test,
        label_words=words(run.label_words),
        generic_words=words(run.generic_words),
    )
    return (training, evaluation, None), (ids, counts)


def _finish_ledger(ledger: Path, ids: list[str], out: Path, counts: dict) -> None:
    """Mark the requests covered by the new prompt (main process only)."""
    from spul.ledger import mark_covered
    from spul.models import is_main_process

    if is_main_process():
        mark_covered(ledger, ids, out, counts)
        note(f"{out} covers {', '.join(ids)}; marked covered in {ledger}")
