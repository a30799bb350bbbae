"""The one row selection (`spul.data.selection`): --limit parsing, the draw order, the manifest record, and
the audit rebuilding exactly the rows a prompt was trained on (limit + tau + max_chars)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import toy_data
from typer.testing import CliRunner

from spul.cli import app
from spul.data.selection import Selection, format_limit, parse_limit, trained_selection
from spul.errors import DataError, SpulError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_folder(folder: Path, data) -> Path:
    folder.mkdir(parents=True)
    for name, split in data.splits.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(split.texts, split.labels, strict=True))
    return folder


def test_parse_limit_forms_and_errors():
    assert parse_limit(None) is None
    assert parse_limit("200") == 200
    assert parse_limit("train_retain=16, train_forget=40") == {"train_retain": 16, "train_forget": 40}
    assert format_limit(parse_limit("train_retain=16,train_forget=40")) == "train_retain=16,train_forget=40"
    for bad, says in (
        ("train_retain=3,train_retain=5", "train_retain is given twice"),
        ("train=3", "unknown split 'train'"),
        ("lots", "expected N or split=N"),
        ("0", "positive"),
    ):
        with pytest.raises(SpulError, match=says) as info:
            parse_limit(bad)
        assert "--limit" in str(info.value)
    with pytest.raises(SpulError, match="--eval-limit"):
        parse_limit("x=1", "--eval-limit")


def test_draw_is_cut_then_limit_then_tau():
    full = toy_data(n=30)
    selection = Selection("toy", limit={"train_forget": 20, "test_retain": 10}, tau=0.5, seed=3, max_chars=12)
    training, evaluation = selection.draw(full)
    limited = full.cut(12).sample(limit={"train_forget": 20, "test_retain": 10}, seed=3)
    assert training.train_forget.texts == limited.sample(tau=0.5, seed=3).train_forget.texts
    assert len(training.train_forget) == 10 and len(training.test_retain) == 10
    assert all(len(t) <= 12 for t in training.train_retain.texts)
    assert evaluation is training  # no eval_limit: scored on the rows trained on
    trained, capped = Selection("toy", limit={"train_forget": 20}, tau=0.5, eval_limit=4).draw(full)
    assert set(capped.train_forget.texts) <= set(trained.train_forget.texts)
    assert capped.sizes() == dict.fromkeys(full.splits, 4)


def test_manifest_round_trip_and_old_records():
    selection = Selection("toy", limit={"train_retain": 16}, tau=0.5, seed=2, max_chars=600, eval_limit=8)
    record = selection.to_manifest()
    assert record["limit"] == "train_retain=16" and record["order"] == "limit, then tau"
    assert Selection.from_manifest(json.loads(json.dumps(record))) == selection
    # a record written before max_chars / eval_limit / order existed: defaults apply, the text limit parses
    old = Selection.from_manifest({"data": "toy", "limit": "train_retain=16,train_forget=40", "seed": 0})
    assert old == Selection("toy", limit={"train_retain": 16, "train_forget": 40})
    # before the order was fixed the CLI drew tau first: such a prompt is rebuilt that way
    older = Selection.from_manifest({"data": "toy", "limit": "8", "tau": 0.5, "seed": 0})
    full = toy_data(n=20)
    assert older.draw(full)[0].train_forget.texts == full.sample(tau=0.5, limit=8).train_forget.texts
    ledger = {"data": {"selection": record | {"ledger": "runs/ledger.json"}}}
    assert trained_selection(ledger, "toy") is None
    assert trained_selection({"data": {"selection": record}}, "other") is None


def test_check_rows_lie_outside_the_training_rows_and_are_recorded():
    """`check_retain`: seeded train_retain rows none of whose texts is trained on; the training rows do not
    move; the count is in the manifest record (absent when not asked for)."""
    full = toy_data(n=30)
    limit = {"train_retain": 10}
    selection = Selection("toy", limit=limit, seed=1, check_retain=8)
    check = selection.draw_check(full)
    training = selection.draw(full)[0]
    unchecked = Selection("toy", limit=limit, seed=1).draw(full)[0]
    assert training.train_retain.texts == unchecked.train_retain.texts
    assert len(check) == 8 and not set(check.texts) & set(training.train_retain.texts)
    assert set(check.texts) <= set(full.train_retain.texts)
    assert selection.draw_check(full).texts == check.texts
    assert Selection("toy", limit=limit, seed=2, check_retain=8).draw_check(full).texts != check.texts
    record = selection.to_manifest()
    assert record["check_retain"] == 8 and Selection.from_manifest(record) == selection
    assert "check_retain" not in Selection("toy").to_manifest() and Selection("toy").draw_check(full) is None
    with pytest.raises(SpulError, match="only 20 train_retain rows of toy lie outside"):
        Selection("toy", limit=limit, check_retain=21).draw_check(full)


def test_unlearn_check_retain_is_drawn_recorded_and_refused_where_it_cannot_work(tmp_path, tiny_model_dir):
    data = write_folder(tmp_path / "toy", toy_data(n=30))
    common = ["--model", tiny_model_dir, "--data", data, "--limit", "train_retain=10", "-q"]
    for extra, says in (
        (["--method", "filter", "--check-retain", 5], "scored by spul's training check"),
        (["--check-every", 0, "--check-retain", 5], "scored by spul's training check"),
        (["--check-retain", 0], "must be >= 1"),
        (["--check-retain", 25], "only 20 train_retain rows"),
    ):
        result = invoke("unlearn", *common, "--out", tmp_path / "bad", *extra)
        assert result.exit_code != 0 and says in result.output, result.output
        assert "Traceback" not in result.output
    out = tmp_path / "P"
    result = invoke("unlearn", *common, "--out", out, "--epochs", 1, "--check-every", 1, "--check-retain", 6)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "spul.json").read_text())
    assert manifest["data"]["selection"]["check_retain"] == 6 and manifest["checks"]


def test_unknown_split_in_a_config_limit_is_a_data_error():
    with pytest.raises(DataError, match="unknown split"):
        Selection("toy", limit={"train": 3}).draw(toy_data())


def test_audit_members_are_the_rows_trained_with_limit_and_tau(tmp_path, tiny_model_dir):
    """The issue's reproduction: `unlearn --limit ... --tau 0.5`, then `audit --limit 16` is verified."""
    data = write_folder(tmp_path / "toy", toy_data(n=45))
    prompt, audit = tmp_path / "P", tmp_path / "audit"
    result = invoke(
        "unlearn", "--model", tiny_model_dir, "--data", data, "--limit", "train_retain=16,train_forget=40",
        "--tau", 0.5, "--epochs", 1, "--p", 4, "--out", prompt, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke(
        "audit", "--prompt", prompt, "--data", data, "--limit", 16, "--out", audit, "--bootstrap", 5, "-q"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((audit / "audit.json").read_text())
    assert report["members"]["verified"] is True
    assert report["data"]["splits"]["train_forget"]["size"] == 16
    assert report["models"]["fine_tuned"] == "the fine-tuned model, prompt dropped"


def test_audit_of_an_experiment_prompt_with_max_chars(tmp_path, tiny_model_dir):
    """Members equal the trained rows when the experiment cut the texts (max_chars) and drew tau."""
    from spul.experiments import parse_config, run_experiment

    data = write_folder(tmp_path / "toy", toy_data(n=30))
    dataset = {"data": str(data), "limit": {"train_forget": 20}, "max_chars": 20}
    config = parse_config(
        {
            "name": "cut",
            "models": [{"spec": str(tiny_model_dir)}],
            "datasets": [dataset],
            "runs": [
                {"method": "spul", "options": {"p": 2}, "training": {"epochs": 1}, "sweep": {"tau": [0.5]}}
            ],
            "artefacts": ["table3"],
            "precision": "fp32",
        }
    )
    experiment = run_experiment(config, tmp_path / "exp", log=lambda _: None, show_progress=False)
    (cell,) = [c for c in experiment.cells if c.kind == "train"]
    prompt = experiment.cell_dir(cell) / "artifact"
    trained = experiment.prepared(cell).training
    assert all(len(t) <= 20 for t in trained.train_forget.texts) and len(trained.train_forget) == 10
    out = tmp_path / "audit"
    result = invoke("audit", "--prompt", prompt, "--data", data, "--out", out, "--bootstrap", 5, "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["members"]["verified"] is True
    assert report["data"]["splits"]["train_forget"]["sha256"] == trained.train_forget.fingerprint()
    assert report["data"]["splits"]["test_forget"]["size"] == 30  # non-members: every test row, cut alike


def test_rule_hint_names_real_flags(tmp_path):
    from spul.data import load_data

    raw = tmp_path / "train.csv"
    raw.write_text("text,label\nfine words,1\n")
    with pytest.raises(DataError) as info:
        load_data(str(raw))
    assert "--regex" in str(info.value) and "--keywords" in str(info.value)
    assert "--forget-" not in str(info.value)
    for flag in ("--regex", "--keywords", "--ledger"):
        assert flag in invoke("unlearn", "--help").output


def test_audit_labels_the_run_without_a_prompt_by_what_it_is():
    from spul.audit.report import model_labels

    assert "prompt dropped" in model_labels(True)["fine_tuned"]
    assert model_labels(False)["fine_tuned"] == "the unlearned model itself (no prompt to drop)"


def test_method_args_and_flags(tmp_path):
    from spul.cli.options import parse_pairs
    from spul.cli.train import method_options

    assert parse_pairs("a=1,b=0.5,c=true,d=x", "--method-args") == {"a": 1, "b": 0.5, "c": True, "d": "x"}
    with pytest.raises(SpulError, match="given twice"):
        parse_pairs("a=1,a=2", "--method-args")
    assert parse_pairs("augment=case,punct,label_uniform=1", "--method-args") == {
        "augment": "case,punct",
        "label_uniform": 1,
    }
    with pytest.raises(SpulError, match="expected key=value"):
        parse_pairs("case,punct", "--method-args")
    result = invoke("unlearn", "--method", "ga", "--p", 3, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--method ga does not take --p" in result.output
    result = invoke("unlearn", "--method", "spul", "--method-args", "npo_beta=0.2", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "does not take npo_beta" in result.output

    class Flags:  # what typer hands over: every method flag, unset ones None (--lora False)
        def __getattr__(self, name):
            return {"p": 7, "lora": False}.get(name)

    assert method_options("spul", Flags(), "beta=0.25") == {"num_virtual_tokens": 7, "beta": 0.25}
    with pytest.raises(SpulError, match="a flag sets too"):
        method_options("spul", Flags(), "num_virtual_tokens=3")
