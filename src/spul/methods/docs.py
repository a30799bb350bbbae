"""Help texts generated from the method configs: `spul unlearn --help` and the README's baseline table."""

from __future__ import annotations

from typing import Any

from spul.methods.base import METHODS, Method, get_method
from spul.methods.config import Option, options_of


def format_value(value: Any) -> str:
    """A default as a user writes it: 1 (not 1.0), 1e-5, q_proj,v_proj."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def options(name: str) -> list[Option]:
    """The options of a registered method (name, flag, type, default, help), in its config's order."""
    return options_of(get_method(name).config_class)


def describe(name: str | None = None) -> str:
    """Plain-text help of one method (or of every registered one): what it is, then each option."""
    classes = [get_method(name)] if name is not None else [METHODS[n] for n in sorted(METHODS)]
    blocks = []
    for cls in classes:
        summary = (cls.__doc__ or "").strip().split("\n")[0]
        lines = [f"{cls.name} ({cls.kind}): {summary}"]
        for opt in options_of(cls.config_class):
            default = "" if opt.default is None else f" [default: {format_value(opt.default)}]"
            lines.append(f"  {opt.flag} ({opt.name}, {opt.type}): {opt.help}{default}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def training_text(cls: type[Method]) -> str:
    """The training defaults of a method with its default options (`1 epoch, lr 1e-5`)."""
    defaults = cls.config_class().training_defaults()
    epochs = defaults.get("epochs")
    if epochs == 0:
        return "no training"
    parts = [] if epochs is None else [f"{epochs} epoch{'s' if epochs != 1 else ''}"]
    if "lr" in defaults:
        parts.append(f"lr {format_value(float(defaults['lr']))}")
    return ", ".join(parts)


def defaults_text(cls: type[Method]) -> str:
    """The defaults cell of the method table: training defaults, then options with a default value."""
    parts = [training_text(cls)] if training_text(cls) else []
    for opt in options_of(cls.config_class):
        if opt.default is not None and opt.default is not False:
            parts.append(f"`{opt.flag} {format_value(opt.default)}`")
    text = ", ".join(parts)
    if cls.from_untouched_model:
        text += "; `--adapter` is dropped"
    return text


def method_table() -> str:
    """The README's baseline table (markdown), one row per registered baseline, from the configs."""
    rows = [
        "| method | what it trains | loss | artifact | defaults |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(METHODS):
        cls = METHODS[name]
        if cls.baseline:
            cells = [f"`{name}`", cls.trains_on, cls.objective, f"`{cls.kind}`", defaults_text(cls)]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def command_line_flags() -> dict[str, tuple[str, type, str]]:
    """option name -> (its own `spul unlearn` flag, the flag's type, help): every registered method's
    config field that declares a `flag`; the help names the methods taking it and their defaults. Other
    options are given with `--method-args`."""
    import dataclasses
    import typing

    found: dict[str, tuple[str, type, dict[tuple[str, str], list[str]]]] = {}
    for name in sorted(METHODS, key=lambda n: (n != "spul", n)):
        config = METHODS[name].config_class
        hints = typing.get_type_hints(config)
        for field in dataclasses.fields(config):
            flag = field.metadata.get("flag")
            if not flag:
                continue
            hint = hints[field.name]
            arms = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            kind = arms[0] if arms[0] in (bool, int, float) else str  # lists and paths are written as text
            opt = next(o for o in options_of(config) if o.name == field.name)
            seen = found.setdefault(field.name, (flag, kind, {}))
            if seen[0] != flag:
                raise TypeError(f"option {field.name}: flags {seen[0]} and {flag} (one flag per option name)")
            shown = opt.default is not None and opt.default is not False
            default = f" (default {format_value(opt.default)})" if shown else ""  # rich eats [...]
            seen[2].setdefault((opt.help, default), []).append(name)
    return {
        option: (flag, kind, "; ".join(f"{', '.join(ms)}: {h}{d}" for (h, d), ms in helps.items()))
        for option, (flag, kind, helps) in found.items()
    }


def flags_module() -> str:
    """The source of `spul/cli/method_flags.py` (generated, so the command line need not import the
    methods, which load torch): `python -m spul.methods.docs > src/spul/cli/method_flags.py`."""
    rows = "".join(
        f"    {name!r}: ({flag!r}, {kind.__name__}, {help_text!r}),\n"
        for name, (flag, kind, help_text) in command_line_flags().items()
    )
    return (
        '"""The `spul unlearn` method flags, generated from the method configs (fields with a `flag`) by\n'
        "`python -m spul.methods.docs > src/spul/cli/method_flags.py`; do not edit: the registry's test\n"
        'checks it is current."""\n\n'
        "# method option -> (its flag, the flag's type, help); a flag left out leaves the method's default.\n"
        "# fmt: off\n"
        f"METHOD_FLAGS: dict[str, tuple[str, type, str]] = {{\n{rows}}}\n"
    )


if __name__ == "__main__":
    print(flags_module(), end="")
