"""The deletion-request ledger: add, list, show; forget sets from requests; unlearn --ledger; init prompt."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from spul.cli import app
from spul.errors import SpulError
from spul.ledger import Ledger, coverage, covered_ids, ledger_data, locked, mark_covered, text_hash

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_add_list_show_round_trip(tmp_path, toy):
    ledger = tmp_path / "ledger.json"
    file = tmp_path / "mine.txt"
    secret = toy.train_retain.texts[:2]
    file.write_text("\n".join(secret) + "\n\n")
    assert (
        invoke("requests", "add", "--ledger", ledger, "--file", file, "--note", "ticket 7").stdout
        == "req-0001\n"
    )
    assert invoke("requests", "add", "--ledger", ledger, "--regex", r"bleak\s+film").stdout == "req-0002\n"
    assert (
        invoke("requests", "add", "--ledger", ledger, "--keywords", "sandler, de niro").stdout == "req-0003\n"
    )

    listed = invoke("requests", "list", "--ledger", ledger)
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["req-0001", "req-0002", "req-0003"]
    assert all(" open " in line for line in lines) and "2 text(s) by sha256" in lines[0]
    shown = json.loads(invoke("requests", "show", "req-0001", "--ledger", ledger).stdout)
    assert shown["text_sha256"] == sorted(text_hash(t) for t in secret)
    assert (
        shown["source"] == str(file) and shown["note"] == "ticket 7" and shown["created"].endswith("+00:00")
    )
    assert not any(t in ledger.read_text() for t in secret)  # hashes, never the texts
    assert Ledger.load(ledger).get("req-0003").keywords == ["sandler", "de niro"]

    again = invoke("requests", "add", "--ledger", ledger, "--text", secret[1], "--text", " " + secret[0])
    assert again.exit_code == 2 and "already there as req-0001" in again.output
    bad = invoke("requests", "add", "--ledger", ledger, "--regex", "(")
    assert bad.exit_code == 2 and "invalid forget regex" in bad.output
    assert invoke("requests", "show", "req-0009", "--ledger", ledger).exit_code == 2
    assert invoke("requests", "list", "--ledger", tmp_path / "none.json").exit_code == 2
    as_json = json.loads(invoke("requests", "list", "--ledger", ledger, "--json", "--status", "open").stdout)
    assert [r["id"] for r in as_json] == ["req-0001", "req-0002", "req-0003"]


def test_forget_set_is_the_union_of_the_requests(tmp_path, toy, toy_dir):
    with locked(tmp_path / "l.json", missing_ok=True) as book:
        book.add(texts=toy.train_retain.texts[:3])
    data = ledger_data(Ledger.load(tmp_path / "l.json"), str(toy_dir))
    assert sorted(data.train_forget.texts) == sorted(toy.train_retain.texts[:3])
    # the data's own forget split goes back to retain: only the requests decide
    assert len(data.train_retain) == 2 * len(toy.train_retain) - 3
    assert data.test_forget.texts == data.train_forget.texts  # no test row matches: shown again, with a note
    assert any("no test row matches" in w for w in data.warnings)

    with locked(tmp_path / "l.json") as book:
        book.add(keywords=["sandler"])
    book = Ledger.load(tmp_path / "l.json")
    data = ledger_data(book, str(toy_dir))
    assert len(data.train_forget) == 3 + len(toy.train_forget)
    assert sorted(data.test_forget.texts) == sorted(toy.test_forget.texts)
    counts = coverage(book, data, data.sample(tau=0.5, seed=1))
    assert counts["req-0001"]["rows"] == 3 and counts["req-0002"]["rows"] == len(toy.train_forget)
    assert counts["req-0002"]["trained"] < counts["req-0002"]["rows"]  # tau 0.5 drops some of its rows
    assert "req-0002" not in covered_ids(counts)
    assert covered_ids(coverage(book, data, data)) == ["req-0001", "req-0002"]


def test_marking_covered_keeps_requests_added_meanwhile(tmp_path):
    path = tmp_path / "l.json"
    with locked(path, missing_ok=True) as book:
        book.add(pattern="gorgeous")
    with locked(path) as book:  # added while a training run was going on
        book.add(pattern="bleak")
    mark_covered(path, ["req-0001"], tmp_path / "prompt", {"req-0001": {"rows": 4, "trained": 4}})
    book = Ledger.load(path)
    assert [(r.id, r.status) for r in book.requests] == [("req-0001", "covered"), ("req-0002", "open")]
    assert book.get("req-0001").covered_by["prompt"] == str(tmp_path / "prompt")
    with pytest.raises(SpulError, match="no requests"):
        Ledger(tmp_path / "empty.json").rule()


def test_unlearn_with_a_ledger_covers_every_request(tmp_path, tiny_model_dir, toy, toy_dir):
    ledger, first, second = tmp_path / "ledger.json", tmp_path / "p1", tmp_path / "p2"
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--epochs", 1, "--batch-size", 8, "--p", 2, "-q"]
    common += ["--precision", "fp32", "--device", "cpu"]
    invoke("requests", "add", "--ledger", ledger, "--text", toy.train_retain.texts[0])
    invoke("requests", "add", "--ledger", ledger, "--text", "a text that is in no data")
    result = invoke("unlearn", "--ledger", ledger, "--out", first, *common)
    assert result.exit_code == 0, result.output
    assert "req-0002 matches no training row" in result.output
    manifest = json.loads((first / "spul.json").read_text())
    assert (
        manifest["requests"] == ["req-0001"]
        and manifest["data"]["train"]["splits"]["train_forget"]["size"] == 1
    )
    book = Ledger.load(ledger)
    assert [r.status for r in book.requests] == ["covered", "open"]
    assert book.get("req-0001").covered_by == book.get("req-0001").covered_by | {
        "prompt": str(first),
        "rows": 1,
    }

    invoke("requests", "add", "--ledger", ledger, "--keywords", "sandler")  # a later request
    result = invoke("unlearn", "--ledger", ledger, "--out", second, *common)
    assert result.exit_code == 0, result.output
    manifest = json.loads((second / "spul.json").read_text())
    assert manifest["requests"] == ["req-0001", "req-0003"]  # the earlier one is not lost
    assert manifest["data"]["train"]["splits"]["train_forget"]["size"] == 1 + len(toy.train_forget)
    assert [r.status for r in Ledger.load(ledger).requests] == ["covered", "open", "covered"]

    from spul.pipeline import load_unlearned
    from spul.serve import ServedPrompt

    assert ServedPrompt.wrap(load_unlearned(second, precision="fp32")).info["requests"] == [
        "req-0001",
        "req-0003",
    ]

    clash = invoke("unlearn", "--ledger", ledger, "--regex", "x", "--out", tmp_path / "p3", *common)
    assert clash.exit_code == 2 and "drop --regex" in clash.output
    partial = invoke("unlearn", "--ledger", ledger, "--tau", 0.5, "--out", tmp_path / "p4", *common)
    assert partial.exit_code == 2 and "fully cover no request" in partial.output


def test_unlearn_continues_from_a_saved_prompt(tmp_path, tiny_model_dir, toy_dir):
    start, cont = tmp_path / "start", tmp_path / "cont"
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--batch-size", 8, "--p", 3, "-q"]
    common += ["--precision", "fp32", "--device", "cpu", "--prompt-type", "prompt-tuning"]
    assert invoke("unlearn", "--out", start, "--epochs", 1, "--lr", 0.05, *common).exit_code == 0
    result = invoke("unlearn", "--out", cont, "--init-prompt", start, "--epochs", 1, "--lr", 1e-12, *common)
    assert result.exit_code == 0, result.output
    saved = [load_file(f / "adapter_model.safetensors")["prompt_embeddings"] for f in (start, cont)]
    torch.testing.assert_close(saved[1], saved[0])  # lr ~0: the continued prompt starts as the saved one
    manifest = json.loads((cont / "spul.json").read_text())
    assert manifest["hyperparameters"]["method"]["init_prompt"] == str(start)

    fresh = invoke("unlearn", "--out", tmp_path / "fresh", "--epochs", 1, "--lr", 1e-12, *common)
    assert fresh.exit_code == 0
    other = load_file(tmp_path / "fresh" / "adapter_model.safetensors")["prompt_embeddings"]
    assert not torch.allclose(other, saved[0])  # without --init-prompt it starts elsewhere

    ptuning = [a if a != "prompt-tuning" else "ptuning" for a in common]
    refused = invoke("unlearn", "--out", tmp_path / "x", "--init-prompt", start, "--epochs", 1, *ptuning)
    assert refused.exit_code == 2 and "--prompt-type prompt-tuning" in refused.output
    wrong_p = [a if a != 3 else 5 for a in common]
    refused = invoke("unlearn", "--out", tmp_path / "y", "--init-prompt", start, "--epochs", 1, *wrong_p)
    assert refused.exit_code == 2 and "pass --p 3" in refused.output
