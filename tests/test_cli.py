"""The command line on the tiny model and toy data: tables, files, predictions, one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from spul.cli import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_help_lists_the_verbs():
    result = invoke("--help")
    assert result.exit_code == 0
    for verb in ("evaluate", "finetune", "unlearn", "predict"):
        assert verb in result.output


def test_evaluate_writes_table_json_and_csv(tmp_path, tiny_model_dir, toy_dir):
    out = tmp_path / "eval"
    result = invoke(
        "evaluate", "--model", tiny_model_dir, "--data", toy_dir, "--out", out, "-q", "--limit", 5
    )
    assert result.exit_code == 0, result.output
    assert "| train retain | train forget | test retain | test forget |" in result.output
    saved = json.loads((out / "results.json").read_text())
    (row,) = saved["rows"].values()
    assert {s: m["n"] for s, m in row.items()} == dict.fromkeys(row, 5)
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 4


def test_finetune_unlearn_predict_and_three_row_table(tmp_path, tiny_model_dir, toy_dir):
    ft, prompt = tmp_path / "ft", tmp_path / "prompt"
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--epochs", 1, "--batch-size", 8, "-q"]
    result = invoke("finetune", "--out", ft, "--lora-r", 4, *common)
    assert result.exit_code == 0, result.output
    result = invoke(
        "unlearn", "--out", prompt, "--adapter", ft, "--p", 3, "--limit", "train_forget=6", *common,
        "--check-every", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((prompt / "spul.json").read_text())
    assert manifest["base_model"]["adapter"] == str(ft)
    assert manifest["hyperparameters"]["method"]["num_virtual_tokens"] == 3
    assert manifest["hyperparameters"]["training"]["check_every"] == 1  # a check after every step
    assert [c["step"] for c in manifest["checks"]] == list(range(1, manifest["steps"] + 1))

    result = invoke("evaluate", "--prompt", prompt, "--data", toy_dir, "--out", tmp_path / "e", "-q")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["rows"]
    assert list(rows) == ["Vanilla", "Fine-tuned", "SPUL"]
    assert rows["SPUL"] == manifest["metrics"]
    # the train splits are scored on the rows the prompt was trained on
    evaluated = json.loads((tmp_path / "e" / "results.json").read_text())["data"]["splits"]["train_forget"]
    assert evaluated == {"size": 6, "sha256": manifest["data"]["forget_sha256"]}
    # --raw-probabilities: the label probabilities behind generic answers, the same served answers
    result = invoke("evaluate", "--prompt", prompt, "--data", toy_dir, "--out", tmp_path / "raw", "-q",
                    "--raw-probabilities")  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = json.loads((tmp_path / "raw" / "results.json").read_text())
    assert raw["raw_probabilities"] is True and raw["rows"]["Fine-tuned"] == rows["Fine-tuned"]
    for split, served in rows["SPUL"].items():
        assert raw["rows"]["SPUL"][split]["acc"] == served["acc"]
        if served["other"] == 100.0:  # every answer generic: a coin flip, whatever the model computes
            assert served["label_acc"] == 50.0 and served["margin_auc"] in (0.5, None)
    assert any(raw["rows"]["SPUL"][s]["label_acc"] != rows["SPUL"][s]["label_acc"] for s in rows["SPUL"])

    args = ["predict", "--prompt", prompt]
    by_arg = invoke(*args, "gorgeous film", "bleak music")
    by_stdin = invoke(*args, input="gorgeous film\nbleak music\n")
    file = tmp_path / "texts.txt"
    file.write_text("gorgeous film\nbleak music\n")
    by_file = invoke(*args, "--file", file)
    for result in (by_arg, by_stdin, by_file):
        assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in by_arg.stdout.splitlines()]
    assert [d["text"] for d in lines] == ["gorgeous film", "bleak music"]
    assert all(d["label"] in ("negative", "positive", "other") for d in lines)
    assert by_arg.stdout == by_stdin.stdout == by_file.stdout


def test_bad_input_is_one_line_error(tmp_path, tiny_model_dir, toy_dir):
    (toy_dir / "test_forget.csv").write_text("text,label\nfine words,1\n,0\n")
    result = invoke("evaluate", "--model", tiny_model_dir, "--data", toy_dir, "--out", tmp_path, "-q")
    assert result.exit_code == 2
    assert "test_forget.csv, row 2" in result.output
    assert "Traceback" not in result.output


def test_unknown_model_is_one_line_error(tmp_path, toy_dir):
    result = invoke("evaluate", "--model", "no-such-model", "--data", toy_dir, "--out", tmp_path, "-q")
    assert result.exit_code == 2
    assert "unknown model 'no-such-model'" in result.output


def test_bad_limit_is_one_line_error(tmp_path, toy_dir, tiny_model_dir):
    result = invoke("evaluate", "--model", tiny_model_dir, "--data", toy_dir, "--limit", "lots", "-q")
    assert result.exit_code == 2
    assert "--limit 'lots'" in result.output


def test_custom_template_and_bad_template(tmp_path, tiny_model_dir, toy_dir):
    args = ["evaluate", "--model", tiny_model_dir, "--data", toy_dir, "--out", tmp_path, "-q", "--limit", 3]
    assert invoke(*args, "--template", "Review: {text}\\nSentiment:").exit_code == 0
    result = invoke(*args, "--template", "Review without placeholder")
    assert result.exit_code == 2
    assert "{text}" in result.output


def test_unlearning_rows_are_a_share_of_the_rows_fine_tuned_on(toy):
    """--limit first, then --tau: with the same --limit as `spul finetune`, the forget rows are ones the
    model was fine-tuned on (the order `spul experiment` uses, so their prompts evaluate alike)."""
    from spul.data.selection import Selection, parse_limit

    limit = parse_limit("train_forget=8,train_retain=10")
    finetuned, _ = Selection("toy", limit=limit).draw(toy)
    unlearned, evaluation = Selection("toy", limit=limit, tau=0.5, eval_limit=3).draw(toy)
    assert len(unlearned.train_forget) == 4
    assert set(unlearned.train_forget.texts) < set(finetuned.train_forget.texts)
    assert unlearned.train_retain.texts == finetuned.train_retain.texts
    assert set(evaluation.train_forget.texts) <= set(unlearned.train_forget.texts)
    assert len(evaluation.test_forget) == 3


def test_unlearn_twice_with_one_seed_is_identical_and_another_seed_differs(tmp_path, tiny_model_dir, toy_dir):
    def unlearn(out, seed, *more):
        result = invoke(
            "unlearn", "--model", tiny_model_dir, "--data", toy_dir, "--out", out, "--seed", seed,
            "--epochs", 2, "--batch-size", 4, "--p", 3, "-q", *more,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        weights = {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}
        assert weights, sorted(p.name for p in out.iterdir())
        manifest = json.loads((out / "spul.json").read_text())
        return weights, manifest["metrics"], manifest["data"], manifest["hyperparameters"]["training"]["seed"]

    first, again, other = (unlearn(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert first == again  # the same bytes and the same table
    assert first[0] != other[0]
    # --train-seed: another training on the rows of --seed
    trained = unlearn(tmp_path / "d", 0, "--train-seed", 1)
    assert trained[0] != first[0] and trained[2] == first[2] and (first[3], trained[3]) == (0, 1)
