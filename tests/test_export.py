"""`spul export`: the exported folder, through plain transformers, answers as `spul predict` does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from spul.cli import app
from spul.pipeline import load_unlearned

TEXTS = ["a gorgeous witty film", "bleak and routine music", "ends with a newline\n", "sandler movie"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def train(tmp_path, tiny_model_dir, toy_dir, name, *extra):
    out = tmp_path / name
    p = [] if "--method" in extra else ["--p", 3]
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--out", out, "--epochs", 1, "-q"]
    result = invoke("unlearn", *common, *p, *extra)
    assert result.exit_code == 0, result.output
    return out


def plain_transformers(folder, texts):
    """Label-word log-probs and argmax ids of the exported folder, from plain transformers."""
    info = json.loads((folder / "spul-export.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    first = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in info["label_words"]]
    logprobs, answers, top = [], [], []
    for text in texts:
        ids = tokenizer(info["template"].replace("{text}", text), return_tensors="pt")
        with torch.no_grad():
            row = model(**ids).logits[0, -1].log_softmax(-1)
        logprobs.append(row[first].log_softmax(-1).numpy())  # over the label words, as spul predict
        top.append(int(row.argmax()))
        # as spul answers: the greedy token over the whole vocabulary, "other" (-1) unless a label word's
        answers.append(first.index(top[-1]) if top[-1] in first else -1)
    reserved = tokenizer.convert_tokens_to_ids(info["reserved_tokens"])
    return np.stack(logprobs), answers, top, reserved, info


def spul_answers(prompt):
    """What `spul predict` computes: label-normalised log-probabilities (before the answer policy, which
    is the serving layer's and not in an exported folder) and the answer (-1: other)."""
    unlearned = load_unlearned(prompt, device="cpu", precision="fp32")
    unlearned.withhold = False
    got = unlearned.predict(TEXTS)
    words = list(unlearned.verbalizer.words)
    logprobs = np.log([[r["probabilities"][w] for w in words] for r in got])
    return logprobs, [words.index(r["label"]) if r["label"] in words else -1 for r in got]


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_export_answers_like_spul_predict(tmp_path, tiny_model_dir, toy_dir, position):
    prompt = train(tmp_path, tiny_model_dir, toy_dir, "p", "--method-args", f"prompt_position={position}")
    result = invoke(
        "export", "--prompt", prompt, "--out", tmp_path / "hf", "--device", "cpu", "--precision", "fp32"
    )
    assert result.exit_code == 0, result.output
    expected, answers = spul_answers(prompt)
    logprobs, exported_answers, top, reserved, info = plain_transformers(tmp_path / "hf", TEXTS)
    np.testing.assert_allclose(logprobs, expected, atol=1e-4)  # predict rounds probabilities to 1e-6
    assert exported_answers == answers
    assert not set(top) & set(reserved)  # a reserved token is never the model's answer
    assert len(info["prompt_tokens"]) == 3
    if position == "prefix":
        assert info["template"].startswith("".join(info["prompt_tokens"]))
    else:
        assert info["template"].endswith("".join(info["prompt_tokens"]) + "### Sentiment:")
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert sorted(generation["suppress_tokens"]) == sorted(reserved)
    # without the reserved tokens the folder is the model before unlearning: the template is the unlearning
    assert not np.allclose(plain_transformers_without_prompt(tmp_path / "hf", info), logprobs[:1], atol=1e-3)


def plain_transformers_without_prompt(folder, info):
    """The first text scored with the reserved prompt tokens left out (what a raw-prompt client sends)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = info["template"].replace("{text}", TEXTS[0])
    for token in info["prompt_tokens"]:
        text = text.replace(token, "")
    label_ids = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in info["label_words"]]
    with torch.no_grad():
        row = model(**tokenizer(text, return_tensors="pt")).logits[0, -1].log_softmax(-1)
    return row[label_ids].log_softmax(-1).numpy()[None]


def test_export_merges_the_fine_tuned_adapter(tmp_path, tiny_model_dir, toy_dir):
    ft = tmp_path / "ft"
    result = invoke("finetune", "--model", tiny_model_dir, "--data", toy_dir, "--out", ft, "--epochs", 1,
                    "--lora-r", 4, "--lr", 5e-2, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    prompt = train(tmp_path, tiny_model_dir, toy_dir, "p", "--adapter", ft)
    assert invoke("export", "--prompt", prompt, "--out", tmp_path / "hf", "--device", "cpu").exit_code == 0
    expected, answers = spul_answers(prompt)
    logprobs, exported_answers, *_ = plain_transformers(tmp_path / "hf", TEXTS)
    np.testing.assert_allclose(logprobs, expected, atol=1e-4)
    assert exported_answers == answers


def test_export_refuses_guards_contexts_and_a_full_out(tmp_path, tiny_model_dir, toy_dir):
    guard = train(
        tmp_path, tiny_model_dir, toy_dir, "g", "--method", "filter", "--filter-keywords", "sandler"
    )
    result = invoke("export", "--prompt", guard, "--out", tmp_path / "hf")
    assert result.exit_code == 2 and "cannot export a guard" in result.output
    context = train(tmp_path, tiny_model_dir, toy_dir, "c", "--method", "icul")
    result = invoke("export", "--prompt", context, "--out", tmp_path / "hf")
    assert result.exit_code == 2 and "context artifact" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    result = invoke("export", "--prompt", guard, "--out", tmp_path / "full")
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "full" / "keep.txt").exists()
    result = invoke("export", "--prompt", tmp_path / "nothing", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "no spul.json" in result.output
