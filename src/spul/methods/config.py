"""Method options as data: each method's config dataclass, its fields' help text, and their checking.

A field is one option: its name (the `method_options` key, the experiment config's `options:` key), its
type and default, `metadata={"help": ...}` and optionally `"flag"` (the command-line flag, when it is not
`--` + the name with dashes). `resolve` turns a given dict (values typed, or text such as `--method-args`
gives) into a checked config instance.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from spul.errors import SpulError

TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def option(default: Any, help: str, flag: str | None = None, **kwargs: Any) -> Any:
    """A config field: its default, its help text and (optionally) its command-line flag."""
    metadata = {"help": help} | ({"flag": flag} if flag else {})
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


@dataclass
class MethodConfig:
    """A method's options (subclasses add fields) and what follows from them: artifact kind, defaults."""

    # The artifact kind the method saves (see spul.methods.kinds); a config may compute it (e.g. from lora).
    kind: ClassVar[str]

    def check(self) -> None:
        """Refuse values that are typed right but make no sense (subclasses add their rules)."""

    def require(self, name: str, ok: bool, rule: str) -> None:
        """Unless `ok`, a SpulError naming the option (its flag and its name), the rule and the value."""
        if not ok:
            field = {f.name: f for f in dataclasses.fields(self)}[name]
            flag = field.metadata.get("flag") or "--" + name.replace("_", "-")
            raise SpulError(f"{flag} ({name}) must be {rule}, got {getattr(self, name)!r}")

    def training_defaults(self) -> dict[str, Any]:
        """TrainConfig fields this method changes by default (e.g. 1 epoch for the baselines)."""
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        """The options as recorded in manifests (`hyperparameters.method`)."""
        return dataclasses.asdict(self)


@dataclass
class UntrainedConfig(MethodConfig):
    """A method the training loop does not train (a guard is fitted, ICUL only builds its context)."""

    def training_defaults(self) -> dict[str, Any]:
        """No epochs."""
        return {"epochs": 0}


@dataclass(frozen=True)
class Option:
    """One option of a method, described for help texts and command lines."""

    name: str
    flag: str
    type: str
    default: Any
    help: str


def options_of(config_class: type[MethodConfig]) -> list[Option]:
    """The options of a config class, in field order."""
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append(Option(f.name, flag, type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return out


def type_name(hint: Any) -> str:
    """A short readable name of a field's type (`int`, `float or none`, `list of str`)."""
    args = typing.get_args(hint)
    if _is_union(hint):
        return " or ".join("none" if a is type(None) else type_name(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"list of {type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def resolve(method: str, config_class: type[MethodConfig], given: dict[str, Any]) -> MethodConfig:
    """A checked config from `given` options: unknown names and ill-typed values are refused, naming them."""
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise SpulError(f"method {method!r} has no option {', '.join(unknown)} (its options: {known})")
    values = {name: coerce(method, name, hints[name], value) for name, value in given.items()}
    config = config_class(**values)
    config.check()
    return config


def coerce(method: str, name: str, hint: Any, value: Any) -> Any:
    """`value` as the field's type: text is parsed (`--method-args k=v`), other values must fit as is."""
    if _is_union(hint):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in typing.get_args(hint):
                return None
        errors = []
        for arm in typing.get_args(hint):
            if arm is type(None):
                continue
            try:
                return coerce(method, name, arm, value)
            except SpulError as err:
                errors.append(err)
        raise errors[0]
    bad = SpulError(f"method {method!r}: option {name} must be {type_name(hint)}, got {value!r}")
    if typing.get_origin(hint) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise bad
        arm = typing.get_args(hint)[0]
        return [coerce(method, name, arm, v.strip() if isinstance(v, str) else v) for v in items]
    if hint is bool:
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise bad
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                raise bad from None
        ok = isinstance(value, int) if hint is int else isinstance(value, int | float)
        if not ok or isinstance(value, bool):
            raise bad
        return value
    raise TypeError(f"option {name}: unsupported field type {hint!r}")  # a config class's own mistake


def parse_method_args(text: str | None) -> dict[str, str]:
    """`k=v,k2=v2` (as lm-evaluation-harness's --model_args) as texts for `resolve_options`; a part without
    `=` continues the previous value as a list (`targets=q_proj,v_proj`)."""
    out: dict[str, str] = {}
    key = None
    for part in (text or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            key = name.strip()
            out[key] = value.strip()
        elif key is not None and not sep:  # a list value: targets=q_proj,v_proj
            out[key] += "," + part.strip()
        elif part.strip():
            raise SpulError(f"--method-args: expected key=value, got {part.strip()!r}")
    return out
