"""`spul experiment`: a config over tiny models runs end to end, writes every artefact, and resumes."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_tiny_lm, toy_data
from typer.testing import CliRunner

from spul.cli import app
from spul.errors import SpulError
from spul.experiments import ARTEFACTS, Experiment, parse_config, run_experiment
from spul.experiments import stages as runner_module
from spul.experiments.embeddings import last_hidden_states, load_embeddings, select_points
from spul.models import load_model, merge_adapter
from spul.pipeline import load_unlearned

TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-3}
PNG = b"\x89PNG\r\n\x1a\n"


def write_model(folder: Path, seed: int) -> Path:
    lm = make_tiny_lm(seed)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def write_toy(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, split in toy_data().splits.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(split.texts, split.labels, strict=True))
    return folder


def config_dict(models: list[Path], data: Path, **changes) -> dict:
    """Two tiny models, the toy data, a LoRA fine-tune, and runs that feed every table and figure."""
    config = {
        "name": "tiny",
        "description": "tiny models, toy data",
        "models": [{"spec": str(m), "label": f"tiny-{i}"} for i, m in enumerate(models)],
        "datasets": [{"data": str(data), "name": "toy", "eval_limit": 6}],
        "finetune": {"options": {"r": 4}, "training": {"epochs": 1, "batch_size": 8}},
        "runs": [
            {"method": "spul", "options": {"p": 3}, "training": TRAIN, "sweep": {"alpha": [0.5, 1.0]}},
            {
                "method": "spul",
                "label": "SPUL-tau",
                "options": {"p": 3},
                "training": TRAIN,
                "sweep": {"tau": [0.5]},
            },
            {"method": "spul", "label": "SPUL-p", "training": TRAIN, "sweep": {"p": [2, 4]}},
            {"method": "finetune", "label": "LoRA on top", "options": {"r": 2}, "training": TRAIN},
        ],
        "artefacts": list(ARTEFACTS),
        "figure1": {"points_per_label": 3},
        "eval_batch_size": 8,
        "precision": "fp32",  # exact comparisons below (bf16 autocast is the default on some CPUs)
    }
    return config | changes


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("experiment")
    models = [write_model(root / f"model-{seed}", seed) for seed in (0, 1)]
    return {"root": root, "models": models, "data": write_toy(root / "toy")}


@pytest.fixture(scope="module")
def finished(workspace) -> Experiment:
    """The full tiny experiment, run once for the module."""
    config = parse_config(config_dict(workspace["models"], workspace["data"]))
    return run_experiment(config, workspace["root"] / "out", show_progress=False, log=lambda _: None)


def count_calls(monkeypatch, name: str, fail_on: int | None = None) -> list:
    """Wrap a function the runner calls; record each call, optionally raise on the n-th (a kill)."""
    original = getattr(runner_module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else None)
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner_module, name, wrapper)
    return calls


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_table_and_figure_file_is_written(finished):
    out = finished.out
    for name in ("table1", "table2", "table3", "table4", "figure2", "efficiency"):
        for ext in ("md", "csv", "json"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    figures = ["figure1-toy-tiny-0.png", "figure1-toy-tiny-1.png", "figure2.png"]
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG, name
    report = (out / "report.md").read_text()
    assert all(f"]({name})" in report for name in figures)
    assert "**Table 1:" in report and "**Efficiency:" in report


def test_table1_has_the_papers_layout_and_the_cells_numbers(finished):
    out = finished.out
    markdown = (out / "table1.md").read_text()
    assert "| data | method |" in markdown
    assert "| train retain | train forget | test retain | test forget |" in markdown
    table = read_json(out / "table1.json")
    assert table["keys"] == ["data", "method", "model", "alpha", "tau", "p"]  # what tells rows apart
    rows = table["rows"]
    methods = ["Vanilla", "Fine-tuned", "SPUL", "SPUL", "SPUL-tau", "SPUL-p", "SPUL-p", "LoRA on top"]
    assert [r["method"] for r in rows] == methods * 2
    assert [r["model"] for r in rows] == ["tiny-0"] * 8 + ["tiny-1"] * 8
    # every number comes from the cell that produced it, in config order
    main, label_only = markdown.split("Label-only ACC (%) / label-margin AUC")
    lines = [line for line in main.splitlines() if line.startswith("| toy |")]
    label_lines = [line for line in label_only.splitlines() if line.startswith("| toy |")]
    assert len(label_lines) == len(lines)
    entries = [(c, finished.result(c)) for c in finished.cells]
    for row, line, (cell, result) in zip(rows, lines, entries, strict=True):
        assert row["method"] == cell.label
        assert row["test_forget_acc"] == result["metrics"]["test_forget"]["acc"]
        assert row["train_retain_n"] == 6
        metrics = [
            result["metrics"][s] for s in ("train_retain", "train_forget", "test_retain", "test_forget")
        ]
        assert line.endswith(" | ".join(f"{m['acc']:.2f} / {m['f1']:.2f}" for m in metrics) + " |")
        assert row["test_forget_label_acc"] == result["metrics"]["test_forget"]["label_acc"]
    for line, (_, result) in zip(label_lines, entries, strict=True):
        assert f" {result['metrics']['train_forget']['label_acc']:.2f} / " in line
    csv_rows = list(csv.DictReader((out / "table1.csv").open()))
    assert len(csv_rows) == 16 and float(csv_rows[2]["train_forget_acc"]) == rows[2]["train_forget_acc"]


def test_sweep_tables_show_their_swept_runs(finished):
    out = finished.out
    table2 = read_json(out / "table2.json")
    assert table2["keys"][:2] == ["alpha", "beta"]
    assert [(r["model"], r["alpha"], r["beta"]) for r in table2["rows"]] == [
        ("tiny-0", 0.5, 0.5),
        ("tiny-0", 1.0, 0.5),
        ("tiny-1", 0.5, 0.5),
        ("tiny-1", 1.0, 0.5),
    ]
    assert [r["tau"] for r in read_json(out / "table3.json")["rows"]] == [0.5, 0.5]
    assert "| 50% |" in (out / "table3.md").read_text()
    assert [r["p"] for r in read_json(out / "figure2.json")["rows"]] == [2, 4, 2, 4]
    table4 = read_json(out / "table4.json")
    assert table4["keys"][:2] == ["model", "method"]
    assert {r["model"] for r in table4["rows"]} == {"tiny-0", "tiny-1"}


def test_tau_trains_on_that_share_of_the_forget_set(finished):
    (cell,) = [c for c in finished.cells if c.sweep == {"tau": 0.5} and c.model.label == "tiny-0"]
    manifest = read_json(finished.cell_dir(cell) / "artifact" / "spul.json")
    assert manifest["data"]["train"]["splits"]["train_forget"]["size"] == 6  # half of 12
    assert manifest["data"]["train"]["splits"]["train_retain"]["size"] == 12
    assert finished.result(cell)["metrics"]["train_forget"]["n"] == 6


def test_efficiency_table_reports_each_training(finished):
    rows = read_json(finished.out / "efficiency.json")["rows"]
    assert [r["method"] for r in rows][:2] == ["Fine-tuning (LoRA)"] * 2
    trains = [(c, finished.result(c)) for c in finished.cells if c.kind == "train"]
    assert len(rows) == 2 + len(trains)
    for row, (cell, _) in zip(rows[2:], trains, strict=True):
        manifest = read_json(finished.cell_dir(cell) / "artifact" / "spul.json")
        assert row["trainable_parameters"] == manifest["trainable_parameters"] > 0
        assert row["seconds_per_epoch"] == pytest.approx(manifest["training_time_s"], abs=0.01)
        assert row["peak_memory_mib"] > 10 and row["memory"] == "process RSS"
        assert 0 <= row["memory_growth_mib"] <= row["peak_memory_mib"]
    p2, p4 = (r["trainable_parameters"] for r in rows if r["method"] == "SPUL-p" and r["model"] == "tiny-0")
    assert p4 > p2  # more virtual tokens, more parameters


def test_figure1_states_before_and_after_unlearning(finished, workspace):
    cells = [c for c in finished.cells if c.model.label == "tiny-0"]
    before_cell = next(c for c in cells if c.kind == "finetuned")
    before, labels, forget = load_embeddings(finished.cell_dir(before_cell) / "embeddings.safetensors")
    assert len(before) == 12 and forget.sum() == 6  # 3 per label from retain and from forget
    assert {(bool(f), int(y)) for f, y in zip(forget, labels, strict=True)} == {
        (False, 0), (False, 1), (True, 0), (True, 1)
    }  # fmt: skip
    adapter = finished.result(before_cell)["adapter"]

    # after SPUL: the saved soft prompt in front of the fine-tuned model
    prompt_cell = next(c for c in cells if c.kind == "train" and c.label == "SPUL")
    after, _, _ = load_embeddings(finished.cell_dir(prompt_cell) / "embeddings.safetensors")
    unlearned = load_unlearned(finished.cell_dir(prompt_cell) / "artifact", precision="fp32")
    data = finished.prepared(prompt_cell, tau=1.0).training
    points = select_points(data, 3, 0)
    expected = last_hidden_states(unlearned.lm, points.texts, prefix=unlearned.prompt)
    np.testing.assert_allclose(after, expected, atol=1e-4)
    assert not np.allclose(after, before, atol=1e-3)

    # after a weight-changing run: the fine-tuned model with the run's LoRA merged
    lora_cell = next(c for c in cells if c.label == "LoRA on top")
    after_lora, _, _ = load_embeddings(finished.cell_dir(lora_cell) / "embeddings.safetensors")
    lm = load_model(str(workspace["models"][0]), adapter=adapter, precision="fp32")
    lm.model = merge_adapter(lm.model, finished.cell_dir(lora_cell) / "artifact")
    np.testing.assert_allclose(after_lora, last_hidden_states(lm, points.texts), atol=1e-4)


def test_hidden_states_match_an_unpadded_forward(tiny_lm, toy):
    texts = toy.train_retain.texts[:5]
    prefix = torch.randn(3, tiny_lm.model.config.hidden_size) * 0.1
    batched = last_hidden_states(tiny_lm, texts, prefix=prefix, batch_size=4)
    from spul.prompting import Encoder, Template

    encoder = Encoder(tiny_lm.tokenizer, Template())
    for row, ids in zip(batched, encoder.encode(texts), strict=True):
        embeds = torch.cat([prefix, tiny_lm.model.get_input_embeddings()(torch.tensor(ids))]).unsqueeze(0)
        with torch.no_grad():
            out = tiny_lm.model(inputs_embeds=embeds, output_hidden_states=True)
        np.testing.assert_allclose(row, out.hidden_states[-1][0, -1].numpy(), atol=1e-5)


def test_select_points_caps_each_group_and_label(toy):
    points = select_points(toy, 2, seed=3)
    pairs = list(zip(points.is_forget.tolist(), points.labels.tolist(), strict=True))
    assert all(pairs.count(key) <= 2 for key in set(pairs)) and len(pairs) == 8
    assert select_points(toy, 2, seed=3).texts == points.texts
    assert set(points.texts) <= set(toy.train_retain.texts) | set(toy.train_forget.texts)


def test_rerun_skips_finished_cells(finished, monkeypatch):
    trainings = count_calls(monkeypatch, "train_artifact")
    evaluations = count_calls(monkeypatch, "evaluate")
    table = finished.out / "table1.md"
    before = table.read_text()
    table.unlink()
    messages = []
    run_experiment(finished.config, finished.out, show_progress=False, log=messages.append)
    assert trainings == [] and evaluations == []
    assert table.read_text() == before  # the artefacts are rebuilt from the saved results
    assert sum("skipped" in m for m in messages) == len(finished.cells)


def test_killed_run_resumes_where_it_stopped(workspace, monkeypatch, tmp_path):
    config = parse_config(
        config_dict(
            workspace["models"][:1],
            workspace["data"],
            runs=[{"method": "spul", "options": {"p": 2}, "training": TRAIN, "sweep": {"beta": [0, 0.5, 1]}}],
            artefacts=["table1", "efficiency"],
        )
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    # trainings in order: the fine-tune, then beta=0, 0.5, 1; the kill hits beta=0.5
    calls = count_calls(monkeypatch, "train_artifact", fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, cache_dir=cache, show_progress=False, log=lambda _: None)
    assert calls == ["finetune", "spul", "spul"]
    states = [s for _, s in Experiment(config, out, cache_dir=cache).status()]
    assert states == ["done", "done", "done", "pending", "pending"]
    assert not (out / "table1.md").exists()

    monkeypatch.undo()
    calls = count_calls(monkeypatch, "train_artifact")
    experiment = run_experiment(config, out, cache_dir=cache, show_progress=False, log=lambda _: None)
    assert calls == ["spul", "spul"]  # beta=0.5 and beta=1; the fine-tuned model came from the cache
    assert [r["beta"] for r in read_json(out / "table1.json")["rows"][2:]] == [0.0, 0.5, 1.0]
    assert all(s == "done" for _, s in experiment.status())

    # another experiment sharing the cache reuses the fine-tuned model too
    calls.clear()
    other = config.model_copy(update={"runs": config.runs[:0], "name": "other"})
    run_experiment(other, tmp_path / "other", cache_dir=cache, show_progress=False, log=lambda _: None)
    assert calls == []


def test_cell_ids_hash_the_settings_not_the_labels(workspace):
    base = config_dict(workspace["models"], workspace["data"])
    ids = [c.id for c in Experiment(parse_config(base), "x").cells]
    assert ids == [c.id for c in Experiment(parse_config(base), "x").cells]
    assert len(set(ids)) == len(ids)
    relabelled = json.loads(json.dumps(base))
    relabelled["runs"][0]["label"] = "Soft prompt"
    relabelled["models"][0]["label"] = "renamed"
    assert [c.id for c in Experiment(parse_config(relabelled), "x").cells] == ids
    changed = json.loads(json.dumps(base))
    changed["runs"][0]["sweep"]["alpha"] = [0.5, 0.7]
    new_ids = [c.id for c in Experiment(parse_config(changed), "x").cells]
    assert sum(a != b for a, b in zip(ids, new_ids, strict=True)) == 2  # alpha=0.7 on each model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runs": [{"method": "spul", "optionz": {}}]}, "runs.0.optionz"),
        ({"artefacts": ["table9"]}, "artefacts.0"),
        ({"datasets": [{"data": "x", "tau": 1.5}]}, "datasets.0.tau"),
        ({"runs": [{"method": "spul", "training": {"epoch": 2}}]}, "unknown training setting"),
        ({"runs": [{"method": "spul", "training": {"epochs": "many"}}]}, "epochs"),
        ({"runs": [{"method": "spul", "sweep": {"alpha": []}}]}, "sweep 'alpha' has no values"),
        ({"models": ["a", "a"]}, "listed twice"),
        ({"runs": [{"method": "spul", "recipe": "quick"}]}, "unknown recipe 'quick'"),
        ({"runs": [{"method": "ga", "recipe": "fast"}]}, "SPUL recipe"),
        ({"runs": [{"method": "ga", "seeds": [0, 0]}]}, "runs.0.seeds: .*distinct"),
        ({"runs": [{"method": "ga", "seeds": [1], "sweep": {"seed": [2]}}]}, "either as `seeds`"),
        ({"runs": [{"method": "ga", "check_retain": 4}]}, "runs.0: .*check_retain 4: .*training check"),
        ({"runs": [{"method": "spul", "check_retain": 4}]}, "check_every > 0"),  # the default: no check
        (
            {
                "runs": [
                    {"method": "spul", "recipe": "fast", "check_retain": 4, "sweep": {"check_every": [5, 0]}}
                ]
            },
            "check_every > 0",
        ),
        ({"runs": [{"method": "spul", "recipe": "fast", "check_retain": 0}]}, "must be >= 1"),
    ],
)
def test_config_errors_name_the_field(workspace, change, message):
    with pytest.raises(SpulError, match=message):
        parse_config(config_dict(workspace["models"], workspace["data"]) | change)


def test_a_recipe_is_the_starting_point_and_the_run_settings_win(workspace):
    from spul.methods.recipes import RECIPES

    run = {"method": "spul", "recipe": "fast", "options": {"p": 3}, "training": {"epochs": 1}}
    config = parse_config(config_dict(workspace["models"], workspace["data"], runs=[run]))
    fast = RECIPES["fast"]
    assert config.runs[0].training == fast["training"] | {"epochs": 1}
    cell = next(c for c in Experiment(config, "x").cells if c.run is config.runs[0])
    assert cell.options["num_virtual_tokens"] == 3  # `p` in the run beats the recipe's 10
    assert cell.options["prompt_position"] == fast["method"]["prompt_position"]
    assert cell.options["forget_loss"] == fast["method"]["forget_loss"]


def test_unknown_method_fails_before_any_work(workspace, tmp_path):
    config = parse_config(
        config_dict(workspace["models"], workspace["data"], runs=[{"method": "nope", "training": TRAIN}])
    )
    with pytest.raises(SpulError, match="runs.0: unknown method 'nope'; known: .*spul"):
        run_experiment(config, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out" / "cells").exists()


def test_cli_dry_run_lists_cells_and_bad_config_is_one_line(finished, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(finished.config.model_dump()))
    result = CliRunner().invoke(app, ["experiment", str(path), "--out", str(finished.out), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line[:12] in {c.id for c in finished.cells}]
    assert len(lines) == len(finished.cells) and all(" done " in line for line in lines)
    assert f"{len(finished.cells)} of {len(finished.cells)} cells done" in result.output

    path.write_text("name: broken\nmodels: [x]\ndatasets: [y]\nruns: [{method: spul, alfa: 1}]\n")
    result = CliRunner().invoke(app, ["experiment", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "runs.0.alfa" in result.output


def test_ready_configs_parse():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    from spul.experiments import load_config

    listed = (configs[0].parent / "README.md").read_text()
    for path in configs:
        config = load_config(path)
        assert Experiment(config, "x").cells, path.name
        assert f"spul experiment configs/{path.name} " in listed, f"{path.name} is not in configs/README.md"


def test_every_registered_method_runs_in_an_experiment(workspace, tmp_path):
    """Whatever methods are registered now (baselines with weight, adapter or context artifacts)."""
    from spul.methods import METHODS

    names = sorted(METHODS)
    config = parse_config(
        config_dict(
            workspace["models"][:1],
            workspace["data"],
            runs=[
                {"method": name, "training": {"batch_size": 8, "epochs": 1}}
                | ({"options": {"keywords": ["sandler"]}} if name == "filter" else {})
                for name in names
            ],
            artefacts=["table1", "figure1", "efficiency"],
        )
    )
    experiment = run_experiment(config, tmp_path / "out", show_progress=False, log=lambda _: None)
    table = read_json(experiment.out / "table1.json")
    assert table["keys"] == ["data", "method"]  # methods differ in lr, epochs, options: no columns for that
    rows = table["rows"]
    titles = [METHODS[name].display_name() for name in names]
    assert [r["method"] for r in rows] == ["Vanilla", "Fine-tuned", *titles]
    assert (experiment.out / "figure1.png").read_bytes()[:8] == PNG
    for cell in experiment.cells:
        assert (experiment.cell_dir(cell) / "embeddings.safetensors").is_file() == (cell.kind != "vanilla")


def fake_entry(retain: float, forget: float) -> tuple:
    metrics = {"train_retain": {"acc": retain}, "train_forget": {"acc": forget}}
    return (None, {"metrics": metrics})


def test_select_takes_the_most_forgetting_point_that_keeps_retain():
    from spul.experiments.selection import choose

    kept_less, kept_most, broke_retain = fake_entry(78, 60), fake_entry(76, 40), fake_entry(60, 10)
    points = [kept_less, kept_most, broke_retain]
    search = choose(points, reference_acc=80, within=5)
    assert search.chosen is kept_most and search.qualified
    assert [search.kept(p) for p in points] == [True, True, False]
    # nothing within 5 points of 95: the point that keeps most retain, flagged as not qualified
    search = choose(points, reference_acc=95, within=5)
    assert search.chosen is kept_less and not search.qualified


def test_a_selecting_run_shows_one_point_and_writes_the_search(workspace, tmp_path):
    run = {"method": "spul", "options": {"p": 2}, "training": TRAIN, "sweep": {"lr": [1e-4, 3e-2]}}
    config = parse_config(
        config_dict(
            workspace["models"][:1],
            workspace["data"],
            runs=[run | {"select": {"retain_within": 100}}],
            artefacts=["table1"],
        )
    )
    experiment = run_experiment(config, tmp_path / "out", show_progress=False, log=lambda _: None)
    trains = [(c, experiment.result(c)) for c in experiment.cells if c.kind == "train"]
    # every point is within 100 points: the lowest train-forget ACC wins (ties: the higher train retain)
    chosen_cell, chosen = min(
        trains,
        key=lambda e: (e[1]["metrics"]["train_forget"]["acc"], -e[1]["metrics"]["train_retain"]["acc"]),
    )
    rows = read_json(experiment.out / "table1.json")["rows"]
    assert [r["method"] for r in rows] == ["Vanilla", "Fine-tuned", "SPUL"]
    assert rows[2]["lr"] == chosen_cell.sweep["lr"]
    assert rows[2]["test_forget_acc"] == chosen["metrics"]["test_forget"]["acc"]
    assert "Swept runs show one point" in (experiment.out / "table1.md").read_text()
    search = read_json(experiment.out / "search.json")["rows"]
    assert [r["lr"] for r in search] == [1e-4, 3e-2]
    assert sorted(r["status"] for r in search) == ["chosen", "kept"]
    assert "**Search:" in (experiment.out / "report.md").read_text()

    with pytest.raises(SpulError, match="runs.0: `select` picks one point of a sweep"):
        parse_config(
            config_dict(workspace["models"], workspace["data"], runs=[{"method": "ga", "select": {}}])
        )


def test_a_training_setting_equal_to_the_methods_default_is_the_same_cell(workspace):
    def train_ids(runs):
        config = parse_config(config_dict(workspace["models"][:1], workspace["data"], runs=runs))
        return [c.id for c in Experiment(config, "x").cells if c.kind == "train"]

    (plain,) = train_ids([{"method": "ga", "training": {"batch_size": 8}}])
    (explicit,) = train_ids([{"method": "ga", "training": {"batch_size": 8, "epochs": 1, "lr": 1e-5}}])
    swept = train_ids([{"method": "ga", "training": {"batch_size": 8}, "sweep": {"lr": [1e-6, 1e-5]}}])
    assert explicit == plain and swept[1] == plain and swept[0] != plain


def test_adding_figure1_later_embeds_finished_cells_without_training(workspace, tmp_path, monkeypatch):
    runs = [{"method": "spul", "options": {"p": 2}, "training": TRAIN}]
    first = parse_config(
        config_dict(workspace["models"][:1], workspace["data"], runs=runs, artefacts=["table1"])
    )
    run_experiment(first, tmp_path / "out", show_progress=False, log=lambda _: None)
    later = first.model_copy(update={"artefacts": ["table1", "figure1"]})
    calls = count_calls(monkeypatch, "train_artifact")
    messages = []
    experiment = run_experiment(later, tmp_path / "out", show_progress=False, log=messages.append)
    assert calls == []
    assert sum("added the states figure1 needs" in m for m in messages) == 2  # fine-tuned + SPUL
    assert (experiment.out / "figure1.png").read_bytes()[:8] == PNG
    assert all(state == "done" for _, state in experiment.status())


def test_isolated_cells_train_in_their_own_process(workspace, tmp_path, monkeypatch):
    runs = [{"method": "spul", "options": {"p": 2}, "training": TRAIN}]
    config = parse_config(
        config_dict(
            workspace["models"][:1],
            workspace["data"],
            runs=runs,
            artefacts=["table1", "efficiency"],
            isolate_cells=True,
        )
    )
    calls = count_calls(monkeypatch, "train_artifact")  # patched here, not in the child process
    experiment = run_experiment(config, tmp_path / "out", show_progress=False, log=lambda _: None)
    assert calls == ["finetune"]  # the fine-tuned row's stage, in this process; SPUL ran in a child
    (cell,) = [c for c in experiment.cells if c.kind == "train"]
    assert experiment.result(cell)["efficiency"]["peak_memory_mib"] > 10
    assert [r["method"] for r in read_json(experiment.out / "efficiency.json")["rows"]] == [
        "Fine-tuning (LoRA)",
        "SPUL",
    ]
    result = CliRunner().invoke(app, ["experiment", str(experiment.out / "config.json"), "--cell", "nope"])
    assert result.exit_code == 2 and "no cell 'nope'" in result.output


def test_seeds_train_each_point_once_per_seed_and_the_tables_show_mean_and_std(workspace, tmp_path):
    runs = [{"method": "spul", "options": {"p": 2}, "training": TRAIN, "seeds": [0, 1, 2]}]
    config = parse_config(
        config_dict(workspace["models"][:1], workspace["data"], runs=runs, artefacts=["table1", "efficiency"])
    )
    experiment = run_experiment(config, tmp_path / "out", show_progress=False, log=lambda _: None)
    trains = [c for c in experiment.cells if c.kind == "train"]
    assert [c.seed for c in trains] == [0, 1, 2] and len({c.id for c in trains}) == 3
    seeds = [experiment.result(c)["hyperparameters"]["training"]["seed"] for c in trains]
    assert seeds == [0, 1, 2]
    # seed 0 is the dataset's seed: the same cell as the run without `seeds`
    plain = parse_config(
        config_dict(workspace["models"][:1], workspace["data"], runs=[runs[0] | {"seeds": []}])
    )
    assert [c.id for c in Experiment(plain, "x").cells if c.kind == "train"] == [trains[0].id]

    accs = [experiment.result(c)["metrics"]["test_forget"]["acc"] for c in trains]
    mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1))
    (row,) = [r for r in read_json(experiment.out / "table1.json")["rows"] if r["method"] == "SPUL"]
    assert row["test_forget_acc"] == pytest.approx(mean) and row["test_forget_acc_std"] == pytest.approx(std)
    markdown = (experiment.out / "table1.md").read_text()
    assert f"{mean:.2f} ± {std:.2f} / " in markdown
    assert "SPUL: mean ± std over 3 training seed(s) (0, 1, 2)" in markdown
    efficiency = read_json(experiment.out / "efficiency.json")["rows"]
    assert [r["method"] for r in efficiency].count("SPUL") == 1


def test_check_retain_rows_come_from_outside_the_training_rows_and_make_a_cell_of_their_own(
    workspace, tmp_path, monkeypatch
):
    """A run's `check_retain` reaches the training check (as `spul unlearn --check-retain` does): its
    rows lie outside the training rows, the manifest records them, and the cell id changes with them."""
    from spul.data import load_data
    from spul.experiments.stages import selection

    training = TRAIN | {"check_every": 2, "epochs": 2}
    run = {"method": "spul", "options": {"p": 2}, "training": training, "check_retain": 4}
    dataset = {"data": str(workspace["data"]), "name": "toy", "limit": {"train_retain": 6}, "eval_limit": 6}
    config = parse_config(
        config_dict(
            workspace["models"][:1], workspace["data"], runs=[run], datasets=[dataset], artefacts=["table1"]
        )
    )
    given = []
    original = runner_module.train_artifact

    def spy(*args, **kwargs):
        given.append(kwargs.get("check_retain"))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner_module, "train_artifact", spy)
    experiment = run_experiment(config, tmp_path / "out", show_progress=False, log=lambda _: None)
    (cell,) = [c for c in experiment.cells if c.kind == "train"]
    manifest = json.loads((experiment.layout.cell_dir(cell) / "artifact" / "spul.json").read_text())
    assert manifest["data"]["selection"]["check_retain"] == 4 and manifest["checks"]
    drawn, full = selection(config.datasets[0], 1.0), load_data(str(workspace["data"]))
    assert given[0] is None and given[-1].texts == replace(drawn, check_retain=4).draw_check(full).texts
    assert len(given[-1].texts) == 4 and not set(drawn.draw(full)[0].train_retain.texts) & set(
        given[-1].texts
    )
    plain = parse_config(
        config_dict(
            workspace["models"][:1],
            workspace["data"],
            runs=[run | {"check_retain": None}],
            datasets=[dataset],
        )
    )
    assert [c.id for c in Experiment(plain, "x").cells if c.kind == "train"] != [cell.id]


def test_merged_seeds_average_what_is_numeric():
    from spul.experiments.seeds import mean_std

    assert mean_std([1.0]) == (1.0, 0.0)
    mean, std = mean_std([1.0, 2.0, 6.0])
    assert mean == 3.0 and std == pytest.approx(np.std([1, 2, 6], ddof=1))


def test_a_method_revision_makes_its_finished_cells_stale_and_leaves_the_others(workspace, monkeypatch):
    """`Method.revision` above 0 enters the cell id of that method's cells only (GA's is 1: its weights
    moved from bf16 autocast to fp32 under precision auto)."""
    from spul.methods import METHODS

    runs = [{"method": "ga"}, {"method": "spul", "options": {"p": 2}}]
    config = parse_config(config_dict(workspace["models"][:1], workspace["data"], runs=runs))

    def ids():
        cells = [c for c in Experiment(config, "x").cells if c.method]
        return {c.method: (c.id, c.settings.get("revision")) for c in cells}

    before = ids()
    assert before["ga"][1] == METHODS["ga"].revision >= 1 and before["spul"][1] is None
    monkeypatch.setattr(METHODS["ga"], "revision", METHODS["ga"].revision + 1)
    after = ids()
    assert after["ga"] != before["ga"] and after["spul"] == before["spul"]
    # a method may date only some of its runs: gated SPUL's cells are revision 1, plain SPUL's are not
    assert METHODS["spul"].revision_of({"gate": True}) == 1 and METHODS["spul"].revision_of({"p": 2}) == 0


def test_figure2_title_names_the_swept_methods(tmp_path, monkeypatch):
    from spul.experiments import figures
    from spul.experiments.tables import Table

    titles = []

    def keep_title(fig, path):
        titles.append(fig._suptitle.get_text())
        figures.plt.close(fig)

    monkeypatch.setattr(figures, "save_figure", keep_title)
    metrics = {split: {"acc": 50.0, "f1": 40.0} for split in figures.SPLITS}
    table = Table(
        "figure2", "Figure 2 data", ["p"], [{"values": {"p": p}, "metrics": metrics} for p in (2, 4)]
    )
    figures.p_sweep_figure(table, tmp_path / "a.png", ["gated SPUL"])
    figures.p_sweep_figure(table, tmp_path / "b.png")
    assert titles == [
        "Figure 2: effect of the prompt length p (gated SPUL)",
        "Figure 2: effect of the prompt length p",
    ]


def test_figure2_draws_the_seeds_spread_as_error_bars(tmp_path, monkeypatch):
    """A row averaged over training seeds (`<metric>_std` beside each metric) gets error bars of that
    std; a single-seed row gets none."""
    from spul.experiments import figures
    from spul.experiments.tables import Table

    bars = []

    def keep_bars(fig, path):
        for ax in fig.axes:
            bars.append(
                sorted(
                    {round(float(np.ptp(seg[:, 1])), 6) for c in ax.collections for seg in c.get_segments()}
                )
            )
        figures.plt.close(fig)

    monkeypatch.setattr(figures, "save_figure", keep_bars)
    seeded = {split: {"acc": 50.0, "acc_std": 2.5, "f1": 40.0, "f1_std": 1.0} for split in figures.SPLITS}
    rows = [{"values": {"p": p}, "metrics": seeded} for p in (2, 4)]
    figures.p_sweep_figure(Table("figure2", "Figure 2 data", ["p"], rows), tmp_path / "a.png")
    single = {split: {"acc": 50.0, "f1": 40.0} for split in figures.SPLITS}
    rows = [{"values": {"p": p}, "metrics": single} for p in (2, 4)]
    figures.p_sweep_figure(Table("figure2", "Figure 2 data", ["p"], rows), tmp_path / "b.png")
    assert bars == [[5.0], [2.0], [], []]  # bars span mean ± std: 2 x 2.5 (ACC), 2 x 1.0 (F1)
