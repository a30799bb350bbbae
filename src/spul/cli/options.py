"""Options shared by several verbs and the helpers that read them (the command line only: no library module
imports this)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from spul.errors import SpulError
from spul.progress import silence_progress
from spul.reporting import console

# -- option checks: each runs as its option is parsed, so a bad value stops the command before any data or
# model loads, with click's one-line "Invalid value for '--option': ..." and exit code 2.


def bounded(
    low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> Callable[[Any], Any]:
    """An option callback refusing a number outside [low, high] (an end left out: unbounded; open_*: that
    end excluded); None (not given) passes."""

    def check(value):
        if value is None:
            return value
        below = low is not None and (value < low or (open_low and value == low))
        above = high is not None and (value > high or (open_high and value == high))
        if below or above:
            if high is None:
                span = f"{'>' if open_low else '>='} {low}"
            elif low is None:
                span = f"{'<' if open_high else '<='} {high}"
            else:
                span = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
            raise typer.BadParameter(f"must be {span}, got {value}")
        return value

    return check


def one_of(*choices: str) -> Callable[[Any], Any]:
    """An option callback refusing a value outside `choices`; None (not given) passes."""

    def check(value):
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _checked(rule):
    """An option callback running `rule(value, ctx.params)`; its SpulError becomes a BadParameter."""

    def check(ctx: typer.Context, value):
        if value is None:
            return value
        try:
            rule(value, ctx.params)
        except SpulError as err:
            raise typer.BadParameter(str(err)) from None
        return value

    return check


def _word_rule(mine: str, other: str):
    """Check this word list and, once the other list is parsed too, that the two agree (one rule set:
    `spul.data.splits.check_words`)."""

    def rule(value: str, params: dict) -> None:
        from spul.data.splits import check_words

        lists = {mine: words(value), other: None}
        if isinstance(params.get(other), str):
            lists[other] = words(params[other])
        check_words(lists["label_words"], lists["generic_words"])

    return rule


def _template_rule(value: str, params: dict) -> None:
    make_template(value)


def _machine_rule(name: str):
    """Check --device / --precision / --device-map with the rules the model loader applies."""

    def rule(value: str, params: dict) -> None:
        Machine.check_value(name, value)

    return rule


def _quiet(value: bool) -> bool:
    """`-q`: silence spul's own bars and transformers' and the hub's progress bars and chatter."""
    if value:
        silence_progress()
        quiet_libraries()
    return value


def quiet_libraries() -> None:
    """Hide the progress bars and info logs of transformers, huggingface_hub and datasets (for `-q`)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when `datasets` (hub data) is imported
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


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
SeedOpt = Annotated[
    int,
    typer.Option(
        help="seed for sampling the rows, and for training unless --train-seed", callback=bounded(0)
    ),
]
TrainSeedOpt = Annotated[
    int | None,
    typer.Option(
        help="seed for training alone (initialisation, batch order, generic labels), the rows staying "
        "those of --seed: several training seeds on the same rows (default: --seed)",
        callback=bounded(0),
    ),
]
BatchOpt = Annotated[int, typer.Option(help="batch size", callback=bounded(1))]
DEVICE_CHECK = _checked(_machine_rule("device"))
DeviceOpt = Annotated[
    str | None, typer.Option(help="cpu, cuda, cuda:1 (default: CUDA when present)", callback=DEVICE_CHECK)
]
PrecisionOpt = Annotated[
    str, typer.Option(help="auto, fp32, bf16 or fp16", callback=_checked(_machine_rule("precision")))
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        help="'auto' spreads a model too big for one GPU over all GPUs (accelerate)",
        callback=_checked(_machine_rule("device_map")),
    ),
]
LabelWordsOpt = Annotated[
    str,
    typer.Option(
        help="comma-separated label words, in label order",
        callback=_checked(_word_rule("label_words", "generic_words")),
    ),
]
GenericWordsOpt = Annotated[
    str,
    typer.Option(
        help="comma-separated generic words for forget targets",
        callback=_checked(_word_rule("generic_words", "label_words")),
    ),
]
RegexOpt = Annotated[str | None, typer.Option(help="forget rule for raw data: rows matching this regex")]
KeywordsOpt = Annotated[str | None, typer.Option(help="forget rule for raw data: comma-separated keywords")]
TestOpt = Annotated[str | None, typer.Option(help="test file, when --data is a raw train file")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars", callback=_quiet)]
TemplateOpt = Annotated[
    str | None,
    typer.Option(
        help="prompt template with {text}, ending where the label word follows",
        callback=_checked(_template_rule),
    ),
]
PromptOpt = Annotated[str, typer.Option(help="saved unlearning prompt folder")]
BaseModelOpt = Annotated[str | None, typer.Option(help="override the base model recorded in the prompt")]
EpochsOpt = Annotated[int, typer.Option(help="training epochs")]
LrOpt = Annotated[float, typer.Option(help="peak learning rate (AdamW, cosine schedule, 10% warmup)")]
ResumeOpt = Annotated[bool, typer.Option(help="continue from OUT.ckpt.pt if a run was interrupted")]
EvalLimitOpt = Annotated[
    str | None, typer.Option(help="cap rows per split for evaluation (default: --limit)")
]
EvalEachOpt = Annotated[bool, typer.Option(help="evaluate after every epoch and keep the best epoch")]
CkptOpt = Annotated[int, typer.Option(help="optimizer steps between checkpoints")]
TauOpt = Annotated[
    float,
    typer.Option(
        help="fraction of train_forget to use (forget-set size experiments)",
        callback=bounded(0, 1, open_low=True),
    ),
]


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where and how a model is loaded: device, precision, layer placement."""

    device: DeviceOpt = None
    precision: PrecisionOpt = "auto"
    device_map: DeviceMapOpt = None

    def loading(self) -> dict[str, Any]:
        """Keywords for `load_model` / `load_unlearned`."""
        return dataclasses.asdict(self)

    @staticmethod
    def check_value(name: str, value: str | None) -> None:
        """SpulError for a device, precision or device map the model loader would refuse (none loaded)."""
        if value is None:
            return
        import torch

        from spul.models import PRECISIONS

        if name == "precision" and value not in PRECISIONS:
            raise SpulError(f"unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")
        if name == "device_map" and value not in DEVICE_MAPS:
            raise SpulError(f"unknown device map {value!r}; choose one of {', '.join(DEVICE_MAPS)}")
        if name == "device":
            try:
                torch.device(value)
            except (RuntimeError, ValueError):
                raise SpulError(f"unknown device {value!r}; e.g. cpu, cuda, cuda:1, mps") from None


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


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


def gathered(name: str, group: type):
    """Decorator: the command also takes every field of the dataclass `group` as an option (its annotation,
    an `Annotated[..., typer.Option(...)]`, and its default) and receives them as one `group` object in
    the keyword `name`; so options shared by several verbs are written once."""
    hints = typing.get_type_hints(group, include_extras=True)
    fields = [f.name for f in dataclasses.fields(group)]
    missing = (dataclasses.MISSING, inspect.Parameter.empty)
    defaults = {
        f.name: missing[1] if f.default is missing[0] else f.default for f in dataclasses.fields(group)
    }

    def wrap(fn):
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != name]
        extra = [
            inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f], default=defaults[f])
            for f in fields
        ]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any):
            kwargs[name] = group(**{f: kwargs.pop(f) for f in fields})
            return fn(*args, **kwargs)

        command.__signature__ = signature.replace(parameters=own + extra)
        return command

    return wrap


def parse_value(text: str) -> bool | int | float | str:
    """A `--method-args` value: true/false, an integer, a float, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_pairs(value: str | None, flag: str) -> dict[str, Any]:
    """`k=v,k=v` as a dict of parsed values (SpulError naming the flag for a malformed or repeated key); a
    part without `=` continues the previous value as a list (`augment=case,punct`)."""
    texts: dict[str, str] = {}
    key = None
    for part in (value or "").split(","):
        if not part.strip():
            continue
        name, sep, text = (s.strip() for s in part.partition("="))
        if not sep and key is not None:
            texts[key] += "," + name
            continue
        if not sep or not name:
            raise SpulError(f"{flag} {value!r}: expected key=value,key=value")
        if name in texts:
            raise SpulError(f"{flag} {value!r}: {name} is given twice")
        key, texts[name] = name, text
    return {k: (t if "," in t else parse_value(t)) for k, t in texts.items()}


def words(value: str) -> tuple[str, ...]:
    """Split a comma-separated word list."""
    return tuple(w.strip() for w in value.split(",") if w.strip())


def make_template(text: str | None):
    """The paper's template, or the one given (escapes like \\n are honoured)."""
    from spul.prompting import Template

    if text is None:
        return Template()
    return Template(text.encode("utf-8").decode("unicode_escape"))


def load_full(data, data_dir, label_words, generic_words, regex=None, keywords=None, test=None):
    """The whole dataset named on the command line (no row selection yet), its warnings shown."""
    from spul.data import load_data
    from spul.data.rules import rule_from
    from spul.reporting import report_warnings

    full = load_data(
        data,
        data_dir=data_dir,
        label_words=words(label_words),
        generic_words=words(generic_words),
        forget_rule=rule_from(regex, words(keywords) if keywords else None),
        test_path=test,
    )
    report_warnings(full)
    return full
