"""Every CLI option is checked before any data or model loads; `-q` silences the libraries' bars; a SIGHUP
during `spul serve`'s start-up does not kill it (issue 15's CLI items)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from spul.cli import app


@pytest.fixture
def nothing_loads(monkeypatch):
    """Make every data and model loader raise, so a test sees whether a command got that far."""
    import spul.data
    import spul.models
    import spul.pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("a loader ran before the options were checked")

    monkeypatch.setattr(spul.models, "load_model", loaded)
    monkeypatch.setattr(spul.pipeline, "load_unlearned", loaded)
    monkeypatch.setattr(spul.data, "load_data", loaded)


# (command line, the option the error must name, a word of the rule)
REFUSED = [
    ("unlearn --p 0", "--p", ">= 1"),
    ("unlearn --p -1", "--p", ">= 1"),
    ("unlearn --method-args num_virtual_tokens=0", "num_virtual_tokens", ">= 1"),
    ("unlearn --encoder-hidden 0", "--encoder-hidden", ">= 1"),
    ("unlearn --lr -1", "--lr", "> 0"),
    ("unlearn --lr 0", "--lr", "> 0"),
    ("unlearn --batch-size 0", "--batch-size", "> 0"),
    ("unlearn --epochs 0", "--epochs", "> 0"),
    ("unlearn --checkpoint-every 0", "--checkpoint-every", "> 0"),
    ("unlearn --alpha -5", "alpha", ">= 0"),
    ("unlearn --method npo --npo-beta 0", "beta", "positive"),
    ("unlearn --method ga --lora --lora-r 0", "--lora-r", ">= 1"),
    ("unlearn --method icul --icul-shots 0", "shots", "at least 1"),
    ("unlearn --method filter --filter-ratio 0", "ratio", "positive"),
    ("unlearn --method gate --gate-folds 0", "folds", "at least 2"),
    ("unlearn --prompt-type prompt-tuning --init-prompt /no/such/prompt", "--init-prompt", "does not exist"),
    ("unlearn --generic-words ''", "--generic-words", "at least one"),
    ("unlearn --label-words positive", "--label-words", "two distinct"),
    ("unlearn --label-words good,good", "--label-words", "two distinct"),
    ("unlearn --label-words good,bad --generic-words bad", "--", "also label words"),
    ("unlearn --template 'no slot'", "--template", "{text}"),
    ("unlearn --tau 0", "--tau", "(0, 1]"),
    ("unlearn --tau 1.5", "--tau", "(0, 1]"),
    ("unlearn --seed -1", "--seed", ">= 0"),
    ("finetune --train-seed -1", "--train-seed", ">= 0"),
    ("unlearn --precision fp8", "--precision", "fp32"),
    ("unlearn --device nope", "--device", "cpu"),
    ("unlearn --device-map nope", "--device-map", "auto"),
    ("unlearn --limit train_retain=3,train_retain=5", "--limit", "twice"),
    ("finetune --epochs 0", "--epochs", "> 0"),
    ("finetune --lr 0", "--lr", "> 0"),
    ("finetune --batch-size 0", "--batch-size", "> 0"),
    ("finetune --lora-r 0", "--lora-r", ">= 1"),
    ("finetune --lora-alpha 0", "--lora-alpha", ">= 1"),
    ("finetune --lora-dropout 1.5", "--lora-dropout", "[0, 1)"),
    ("finetune --targets ''", "--targets", "at least one"),
    ("finetune --template 'no slot'", "--template", "{text}"),
    ("evaluate --batch-size 0", "--batch-size", ">= 1"),
    ("evaluate --label-words positive", "--label-words", "two distinct"),
    ("evaluate --generic-words ''", "--generic-words", "at least one"),
    ("evaluate --template 'no slot'", "--template", "{text}"),
    ("evaluate --limit train_retain=3,train_retain=5", "--limit", "twice"),
    ("evaluate --precision fp8", "--precision", "fp32"),
    ("predict --batch-size 0 hello", "--batch-size", ">= 1"),
    ("predict --device nope hello", "--device", "cpu"),
    ("audit --batch-size 0", "--batch-size", ">= 1"),
    ("audit --k 0", "--k", "(0, 1]"),
    ("audit --k 1.5", "--k", "(0, 1]"),
    ("audit --bootstrap -1", "--bootstrap", ">= 0"),
    ("audit --attack-rows -1", "--attack-rows", ">= 0"),
    ("audit --attack-budget 0", "--attack-budget", ">= 1"),
    ("audit --attack-words 0", "--attack-words", ">= 1"),
    ("audit --attack-feedback loud", "--attack-feedback", "probabilities"),
    ("audit --members adapter", "--members", "finetune"),
    ("serve --log-level loud --insecure-no-auth", "--log-level", "info"),
    ("serve --precision fp8 --insecure-no-auth", "--precision", "fp32"),
    ("serve --device nope --insecure-no-auth", "--device", "cpu"),
    ("experiment no-such.yaml --device nope", "--device", "cpu"),
    ("prepare regex {io} --regex a --seed -1", "--seed", ">= 0"),
    ("prepare regex {io} --regex a --label-words x", "--label-words", "two"),
    ("prepare regex {io} --regex a --pool-resplit 1.5", "pool-resplit", "0"),
    ("prepare regex {io} --regex a --max-rows 0", "max rows", "positive"),
    ("prepare cluster --clusters 1 --n-forget 1 {io}", "clusters", "2"),
    ("prepare cluster --clusters 4 --forget-clusters 7 {io}", "clusters", "0..3"),
    ("prepare cluster --clusters 4 --n-forget 1 --n-init 0 {io}", "n_init", "positive"),
    ("prepare cluster --clusters 4 --n-forget 1 --batch-size 0 {io}", "--batch", "1"),
    (
        "prepare cluster --clusters 3 --n-forget 1 {missing_io}",
        "csv",
        "not found",
    ),
]


@pytest.mark.parametrize(("line", "option", "rule"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_option_is_refused_before_loading(line, option, rule, nothing_loads, tmp_path, monkeypatch):
    import shlex

    import spul.data.builders.prepare as builders

    def no_embedder(*args, **kwargs):
        raise AssertionError("the embedder loaded before the options were checked")

    monkeypatch.setattr(builders, "sentence_embedder", no_embedder)
    raw = tmp_path / "raw.csv"
    raw.write_text("text,label\na,0\nb,1\n")
    io = f"--train {raw} --test {raw} --out {tmp_path / 'out'}"
    missing_io = f"--train {tmp_path / 'missing.csv'} --test {raw} --out {tmp_path / 'out'}"
    result = CliRunner().invoke(app, shlex.split(line.format(io=io, missing_io=missing_io)))
    assert result.exit_code == 2, (result.output, result.exception)
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # click's box, unwrapped
    assert option in text and rule in text, result.output
    assert "Traceback" not in result.output


def test_good_options_still_reach_the_loaders(nothing_loads):
    """The checks refuse only nonsense: the defaults and edge values pass on to the data loader."""
    for line in (
        ["unlearn", "--p", "1", "--tau", "1", "--seed", "0", "--alpha", "0"],
        ["unlearn", "--label-words", "good,bad", "--generic-words", "meh", "--template", "Say {text}:"],
        ["finetune", "--lora-dropout", "0", "--precision", "fp32", "--device", "cpu"],
        ["evaluate", "--batch-size", "1", "--device-map", "auto"],
    ):
        result = CliRunner().invoke(app, line)
        assert isinstance(result.exception, AssertionError), (line, result.output)
        assert "before the options were checked" in str(result.exception)


CHATTER_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


@pytest.fixture
def library_chatter():
    """Start with the libraries' default bars and logs (an earlier `-q` test in this process silenced
    them: `-q` is process-wide) and put the state back afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    from spul.progress import silence_progress

    silenced = silence_progress(False)
    saved = {k: os.environ.pop(k, None) for k in CHATTER_ENV}
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    transformers_logging.enable_progress_bar()
    transformers_logging.set_verbosity_warning()
    enable_progress_bars()
    yield
    transformers_logging.set_verbosity(verbosity)
    (transformers_logging.enable_progress_bar if bars[0] else transformers_logging.disable_progress_bar)()
    (enable_progress_bars if bars[1] else disable_progress_bars)()
    silence_progress(silenced)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_quiet_hides_the_loading_weights_bar(tiny_model_dir, toy_dir, tmp_path, library_chatter):
    args = ["evaluate", "--model", tiny_model_dir, "--data", toy_dir, "--limit", 2, "--batch-size", 2]
    args = [str(a) for a in args]
    loud = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert "Loading weights" in loud.output  # the bar this test is about (else it proves nothing)
    quiet = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "quiet"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "Loading weights" not in quiet.output and "it/s" not in quiet.output, quiet.output


def test_quiet_hides_spuls_own_loops_too(tiny_model_dir, toy_dir, tmp_path, library_chatter):
    """The suffix prompt's text-state cache reports progress from inside the method, where no
    show_progress argument reaches: `-q` silences it all the same."""
    args = ["unlearn", "--model", tiny_model_dir, "--data", toy_dir, "--epochs", 1, "--p", 2]
    args = [str(a) for a in args]
    loud = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert "text states" in loud.output  # the loop this test is about (else it proves nothing)
    assert re.search(r"spul \d+/\d+", loud.output), loud.output  # and the training bar
    quiet = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "quiet"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "text states" not in quiet.output and not re.search(r"spul \d+/\d+", quiet.output), quiet.output


# A wrapper that starts the installed `spul` entry point exactly as its console script does, with a SIGHUP
# delivered while `spul.cli` (the heavy part of start-up, before `serve_cmd` runs) is being imported.
SIGHUP_DURING_IMPORT = textwrap.dedent(
    """
    import importlib.metadata, os, signal, sys

    class SighupOnImport:
        def find_spec(self, name, path=None, target=None):
            if name == "spul.cli":
                os.kill(os.getpid(), signal.SIGHUP)
            return None

    sys.meta_path.insert(0, SighupOnImport())
    sys.argv = ["spul", *sys.argv[1:]]
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="spul")
    sys.exit(entry.load()())
    """
)


def default_sighup() -> None:
    """In the child, SIGHUP's default action: a parent started under `nohup` would pass it on ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_sighup_during_serve_start_up_does_not_kill_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SPUL_API_TOKEN", "SPUL_ADMIN_TOKEN")}
    serve = ["serve", "--prompt", str(tmp_path / "no-prompt"), "--port", "8123"]
    done = subprocess.run(
        [sys.executable, "-c", SIGHUP_DURING_IMPORT, *serve],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=default_sighup,
    )
    assert done.returncode != -signal.SIGHUP, "killed by the SIGHUP during start-up"
    assert done.returncode == 2 and "no API token" in done.stdout + done.stderr, (done.stdout, done.stderr)


def test_other_verbs_keep_the_default_sighup(tmp_path):
    """Only `serve` holds SIGHUP back during start-up; another verb still ends on it as before."""
    done = subprocess.run(
        [sys.executable, "-c", SIGHUP_DURING_IMPORT, "requests", "list", "--ledger", str(tmp_path / "l")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=default_sighup,
    )
    assert done.returncode == -signal.SIGHUP
