"""Baselines (GA, RL, GA+KL, GA+GD, NPO, retrain, ICUL): losses against hand computations, and every
registered method trained, saved, reloaded and compared with its in-memory self (API and CLI)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_lm
from typer.testing import CliRunner

import spul.pipeline as pipeline
from spul.cli import app
from spul.data import load_data
from spul.engine import score
from spul.errors import SpulError
from spul.evaluation import evaluate
from spul.guardrails import apply_guard, withhold_label
from spul.methods import METHODS, get_method
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig, collate, train

# ---- helpers --------------------------------------------------------------------------------------


def make_method(lm, name, **options):
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    generic = Verbalizer.build(lm.tokenizer, ("neutral", "unknown"), template)
    return get_method(name)(lm, encoder, verbalizer, generic, **options)


def items_of(method, data, seed=0):
    r, f = data.train_retain, data.train_forget
    return method.items(r.texts + f.texts, r.labels + f.labels, [False] * len(r) + [True] * len(f), seed)


def answer_logprobs(model, prompt_ids, answer):
    """Log-probs [len(answer), vocab] at the positions predicting `answer`: one unpadded full forward."""
    ids = torch.tensor([list(prompt_ids) + list(answer)])
    logits = model(input_ids=ids).logits[0].log_softmax(-1)
    start = ids.shape[1] - len(answer) - 1
    return logits[start : start + len(answer)]


def ce(model, item):
    """-log P(item.answer | item.prompt), by hand."""
    logp = answer_logprobs(model, item.prompt, item.answer)
    return -sum(logp[j, t] for j, t in enumerate(item.answer))


def perturb(method, scale=0.05):
    """Move the trained weights away from the untouched model (LoRA: its B matrices; else every weight)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in method.trainable().named_parameters():
            if p.requires_grad and (method.peft is None or "lora_B" in name):
                p.add_(torch.randn(p.shape, generator=generator) * scale)


def mean(values):
    return torch.stack(list(values)).mean()


@pytest.fixture
def lm():
    return make_tiny_lm()


# ---- losses against hand computations -------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_ga_loss_is_minus_forget_cross_entropy(lm, toy, lora):
    method = make_method(lm, "ga", **({"lora": True, "r": 4} if lora else {}))
    items = items_of(method, toy)
    assert len(items) == len(toy.train_forget) and all(it.is_forget for it in items)  # forget rows only
    assert [it.answer for it in items] == [method.verbalizer.token_ids[y] for y in toy.train_forget.labels]
    if lora:
        perturb(method)  # so that the LoRA path contributes
    method.trainable().eval()
    chosen = items[:5]
    loss, terms = method.loss(collate(chosen, method, list(range(5))))
    want = -mean(ce(lm.model, it) for it in chosen)
    assert loss.item() == pytest.approx(want.item(), abs=1e-4)
    assert terms["L_f"] == pytest.approx(-want.item(), abs=1e-4)


def test_rl_loss_on_seeded_generic_labels(lm, toy):
    method = make_method(lm, "rl")
    items = items_of(method, toy, seed=3)
    assert len(items) == len(toy.train_forget) and all(it.is_forget for it in items)
    # the same random generic labels as SPUL draws for the same seed
    spul_items = items_of(make_method(make_tiny_lm(), "spul", num_virtual_tokens=2), toy, seed=3)
    assert [it.answer for it in items] == [it.answer for it in spul_items if it.is_forget]
    assert {it.answer for it in items} == set(method.generic.token_ids)
    method.trainable().eval()
    loss, _ = method.loss(collate(items[:6], method, list(range(6))))
    assert loss.item() == pytest.approx(mean(ce(lm.model, it) for it in items[:6]).item(), abs=1e-4)


def test_ga_gd_loss(lm, toy):
    method = make_method(lm, "ga_gd", alpha=0.4)
    items = items_of(method, toy)
    chosen = items[:6] + items[-4:]  # 6 retain + 4 forget rows
    method.trainable().eval()
    loss, terms = method.loss(collate(chosen, method, list(range(10))))
    l_r = mean(ce(lm.model, it) for it in chosen[:6])
    l_f = mean(ce(lm.model, it) for it in chosen[6:])
    assert terms["L_f"] == pytest.approx(l_f.item(), abs=1e-4)
    assert terms["L_r"] == pytest.approx(l_r.item(), abs=1e-4)
    assert loss.item() == pytest.approx((-l_f + 0.4 * l_r).item(), abs=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_ga_kl_loss_against_the_untouched_model(lm, toy, lora):
    untouched = make_tiny_lm()  # same seed: the model before unlearning, kept only by the test
    method = make_method(lm, "ga_kl", alpha=0.7, **({"lora": True, "r": 4} if lora else {}))
    items = items_of(method, toy)
    chosen = items[:6] + items[-4:]
    method.prepare(chosen)
    # full fine-tuning precomputes the retain rows' reference; LoRA disables its adapter instead
    assert sorted(method.reference) == ([] if lora else list(range(6)))
    perturb(method)
    method.trainable().eval()
    loss, terms = method.loss(collate(chosen, method, list(range(10))))
    kls = []
    for it in chosen[:6]:
        logp = answer_logprobs(lm.model, it.prompt, it.answer)
        logq = answer_logprobs(untouched.model, it.prompt, it.answer)
        kls.append((logp.exp() * (logp - logq)).sum())
    l_f, l_kl = mean(ce(lm.model, it) for it in chosen[6:]), mean(kls)
    assert l_kl.item() > 1e-4  # the perturbation matters
    assert terms["L_f"] == pytest.approx(l_f.item(), abs=1e-4)
    assert terms["L_kl"] == pytest.approx(l_kl.item(), abs=1e-5)
    assert loss.item() == pytest.approx((-l_f + 0.7 * l_kl).item(), abs=1e-4)


def test_ga_kl_without_prepare_is_a_clear_error(lm, toy):
    method = make_method(lm, "ga_kl")
    items = items_of(method, toy)
    with pytest.raises(SpulError, match="prepare"):
        method.loss(collate(items[:4], method, list(range(4))))


@pytest.mark.parametrize("lora", [False, True])
def test_npo_loss_against_the_untouched_model(lm, toy, lora):
    untouched = make_tiny_lm()
    beta, alpha = 0.5, 0.3
    method = make_method(lm, "npo", npo_beta=beta, alpha=alpha, **({"lora": True} if lora else {}))
    items = items_of(method, toy)
    chosen = items[:5] + items[-5:]
    method.prepare(chosen)
    assert sorted(method.reference) == list(range(5, 10))  # one number per forget row
    method.trainable().eval()
    batch = collate(chosen, method, list(range(10)))
    _, terms = method.loss(batch)
    assert terms["L_npo"] == pytest.approx(2 / beta * math.log(2), abs=1e-5)  # log ratio 0 at the start
    perturb(method)
    method.trainable().eval()
    loss, terms = method.loss(batch)
    ratios = torch.stack([ce(untouched.model, it) - ce(lm.model, it) for it in chosen[5:]])
    l_npo = (-(2 / beta) * F.logsigmoid(-beta * ratios)).mean()
    l_r = mean(ce(lm.model, it) for it in chosen[:5])
    assert terms["L_npo"] == pytest.approx(l_npo.item(), abs=1e-4)
    assert terms["L_r"] == pytest.approx(l_r.item(), abs=1e-4)
    assert loss.item() == pytest.approx((l_npo + alpha * l_r).item(), abs=1e-4)


def test_npo_without_retain_weight_trains_on_forget_rows_only(lm, toy):
    method = make_method(lm, "npo")
    assert method.hyperparameters() == {"lora": False, "npo_beta": 0.1, "alpha": 0.0}
    assert all(it.is_forget for it in items_of(method, toy))


def test_retrain_learns_retain_labels_from_the_untouched_model(lm, toy):
    method = make_method(lm, "retrain", r=4)
    items = items_of(method, toy)
    assert len(items) == len(toy.train_retain) and not any(it.is_forget for it in items)
    assert [it.answer for it in items] == [method.verbalizer.token_ids[y] for y in toy.train_retain.labels]
    method.trainable().eval()
    loss, _ = method.loss(collate(items[:6], method, list(range(6))))
    assert loss.item() == pytest.approx(mean(ce(lm.model, it) for it in items[:6]).item(), abs=1e-4)
    with pytest.raises(SpulError, match="untouched model"):
        make_method(dataclasses.replace(make_tiny_lm(), adapter="runs/ft"), "retrain")


def test_icul_contexts_by_hand(lm, toy):
    method = make_method(lm, "icul", shots=3)
    assert items_of(method, toy, seed=5) == []
    assert sum(p.numel() for p in method.trainable().parameters()) == 0
    context, encoder = method.context, method.inference_encoder()
    plain = Encoder(lm.tokenizer, Template())
    sep = lm.tokenizer("\n\n", add_special_tokens=False).input_ids
    label_ids = method.verbalizer.token_ids
    retain = dict(zip(toy.train_retain.texts, toy.train_retain.labels, strict=True))
    forget = dict(zip(toy.train_forget.texts, toy.train_forget.labels, strict=True))

    for query in (toy.train_forget.texts[2], toy.test_forget.texts[0], toy.train_retain.texts[1]):
        demos = context.demonstrations(query)
        assert len(demos) == 3
        first_text, first_label = demos[0]
        assert first_text in forget and first_label == 1 - forget[first_text]  # flipped
        if query in forget:
            assert first_text == query  # the row to forget is its own demonstration
        assert all(retain[t] == y and t != query for t, y in demos[1:])  # true labels, never the query
        want = []
        for text, label in demos:
            want += plain.encode([text])[0] + list(label_ids[label]) + sep
        want += plain.encode([query])[0]
        assert encoder.encode([query]) == [want]
    # seeded per text: the same context in any batch or order
    texts = toy.test_retain.texts[:4]
    assert encoder.encode(texts) == [encoder.encode([t])[0] for t in reversed(texts)][::-1]
    other = make_method(make_tiny_lm(), "icul", shots=3)
    items_of(other, toy, seed=6)
    assert [other.context.demonstrations(t) for t in texts] != [context.demonstrations(t) for t in texts]
    assert train(method, [], TrainConfig(), show_progress=False).steps == 0  # nothing to optimise


def test_icul_single_shot_is_the_flipped_forget_row(lm, toy):
    method = make_method(lm, "icul", shots=1)
    items_of(method, toy)
    query = toy.train_forget.texts[0]
    assert method.context.demonstrations(query) == [(query, 1 - toy.train_forget.labels[0])]
    with pytest.raises(SpulError, match="at least 1"):
        make_method(lm, "icul", shots=0)


@pytest.mark.parametrize("name", ["ga", "rl", "ga_gd", "ga_kl", "npo"])
def test_weight_baselines_lower_their_own_loss(lm, toy, name):
    method = make_method(lm, name)
    result = train(
        method,
        items_of(method, toy),
        TrainConfig(epochs=3, batch_size=8, lr=1e-2, log_every=1),
        show_progress=False,
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_full_fine_tuning_upcasts_half_precision_weights(toy):
    lm = make_tiny_lm()
    lm.model.to(torch.bfloat16)  # as CUDA loads them under --precision bf16 (no autocast)
    lm.precision = "bf16"
    method = make_method(lm, "ga")
    assert all(p.dtype == torch.float32 and p.requires_grad for p in lm.model.parameters())
    assert lm.autocast_dtype == torch.bfloat16
    loss, _ = method.loss(collate(items_of(method, toy)[:4], method, list(range(4))))
    assert torch.isfinite(loss)


def test_whole_model_weights_train_and_score_in_fp32_unless_half_precision_is_asked_for(
    monkeypatch, tmp_path, tiny_model_dir, toy
):
    """bf16 rounding makes the scored weights other than the trained ones (GA at lr 1e-8 lost 10 points of
    retain that way): under `auto` whole-model weights train and load in fp32; an explicit bf16 keeps
    autocast and warns, with the way out. LoRA and prompt methods keep autocast."""
    from spul.methods import weights

    said = []
    monkeypatch.setattr(weights, "warn", said.append)
    lm = make_tiny_lm()
    lm.model.to(torch.bfloat16)  # as CUDA loads them under auto
    lm.autocast_dtype = torch.bfloat16
    make_method(lm, "ga")
    assert lm.autocast_dtype is None and next(lm.model.parameters()).dtype == torch.float32 and not said
    lm = make_tiny_lm()
    lm.precision, lm.autocast_dtype = "bf16", torch.bfloat16
    make_method(lm, "npo")
    assert lm.autocast_dtype == torch.bfloat16
    assert len(said) == 1 and "npo:" in said[0] and "--precision fp32" in said[0] and "bfloat16" in said[0]
    lm = make_tiny_lm()
    lm.autocast_dtype = torch.bfloat16
    make_method(lm, "ga", lora=True)
    assert lm.autocast_dtype == torch.bfloat16 and len(said) == 1

    base = load_model(str(tiny_model_dir), device="cpu")  # auto: bf16 autocast where the CPU has it
    config = TrainConfig(epochs=1, batch_size=4, lr=1e-5, seed=0)
    manifest = train_artifact("ga", base, toy, tmp_path / "ga", config=config, show_progress=False)
    assert manifest["precision"] == {"asked": "auto", "computed_in": "float32"}  # what the metrics saw
    for asked, precision, autocast in [("auto", "fp32", None), ("bf16", "bf16", torch.bfloat16)]:
        unlearned = load_unlearned(tmp_path / "ga", device="cpu", precision=asked)
        assert (unlearned.lm.precision, unlearned.lm.autocast_dtype) == (precision, autocast)


def test_options_are_checked(tmp_path, tiny_model_dir, toy):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    with pytest.raises(SpulError, match="no option num_virtual_tokens"):
        train_artifact("ga", lm, toy, tmp_path / "x", method_options={"num_virtual_tokens": 3})
    with pytest.raises(SpulError, match="--lora"):
        make_method(lm, "ga_gd", r=4)
    assert get_method("ga_kl").option_names() == {"alpha", "lora", "r", "lora_alpha"}
    spul_options = {"alpha", "beta", "prompt_type", "num_virtual_tokens", "encoder_hidden"}
    assert spul_options <= get_method("spul").option_names()


# ---- every registered method: train, save, reload, compare ---------------------------------------

# One row per method (adding a method = one file + one row here); extra rows cover the LoRA variants.
CASES = [
    ("spul", {"num_virtual_tokens": 3}, "prompt"),
    ("finetune", {"r": 4}, "adapter"),
    ("ga", {}, "weights"),
    ("rl", {}, "weights"),
    ("ga_kl", {}, "weights"),
    ("ga_gd", {}, "weights"),
    ("npo", {"alpha": 0.5}, "weights"),
    ("retrain", {"r": 4}, "adapter"),
    ("icul", {"shots": 2}, "context"),
    ("filter", {"keywords": ["sandler"]}, "guard"),
    ("gate", {"embedder": "test-hashing"}, "guard"),
    ("ga_kl", {"lora": True, "r": 4}, "adapter"),
    ("rl", {"lora": True}, "adapter"),
]
ARTIFACT_FILES = {
    "prompt": "adapter_model.safetensors",
    "adapter": "adapter_model.safetensors",
    "weights": "model.safetensors",
    "context": "context.json",
    "guard": "guard.json",
}


def test_every_registered_method_has_a_case():
    assert {name for name, _, _ in CASES} == set(METHODS)


def probabilities(scores):
    logprobs = torch.tensor(scores.logprobs)
    return torch.softmax(logprobs, dim=1)


@pytest.mark.parametrize("name,options,kind", CASES)
def test_method_trains_saves_and_reloads(
    tmp_path, tiny_model_dir, toy, monkeypatch, fake_embedder, name, options, kind
):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    calls = []
    real = pipeline.evaluate

    def spy(*args, **kwargs):  # records the in-memory evaluation of the trained method
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", spy)
    out = tmp_path / "artifact"
    manifest = train_artifact(
        name,
        lm,
        toy,
        out,
        method_options=options,
        config=TrainConfig(epochs=1, batch_size=8, lr=5e-2),
        show_progress=False,
    )
    assert manifest["kind"] == kind and manifest["method"] == name
    assert (out / ARTIFACT_FILES[kind]).is_file() and (out / "spul.json").is_file()
    assert not [f for f in out.rglob("*") if f.suffix in (".pt", ".bin", ".pkl", ".pickle")]
    assert (manifest["trainable_parameters"] == 0) == (name in ("icul", "filter", "gate"))
    if kind == "weights":
        assert manifest["trainable_parameters"] == sum(p.numel() for p in lm.model.parameters())

    # in memory: the trained method exactly as train_artifact evaluated it
    (model, _), kwargs = calls[-1]
    template = kwargs["template"]
    verbalizer = Verbalizer.build(model.tokenizer, toy.label_words, template)
    encoder = kwargs["encoder"] or Encoder(model.tokenizer, template)
    texts = toy.test_forget.texts + toy.train_retain.texts[:4]
    in_memory = score(
        model,
        encoder,
        verbalizer,
        texts,
        [0] * len(texts),
        prefix_fn=kwargs["prefix_fn"],
        show_progress=False,
    )
    in_memory = apply_guard(in_memory, texts, kwargs.get("guard"))

    unlearned = load_unlearned(out, device="cpu", precision="fp32")
    assert unlearned.kind == kind and unlearned.withhold == (name != "finetune")  # the answer policy
    unlearned.withhold = False  # the label probabilities as computed: where the round trip shows
    predicted = unlearned.predict(texts)
    got = torch.tensor([[p["probabilities"][w] for w in verbalizer.words] for p in predicted])
    torch.testing.assert_close(got, probabilities(in_memory).float(), atol=2e-6, rtol=0)
    labels = [verbalizer.words[i] if i >= 0 else "other" for i in in_memory.predicted]
    assert [p["label"] for p in predicted] == labels
    unlearned.withhold = True  # as served: a generic answer withholds the label probabilities
    served = torch.tensor(
        [[p["probabilities"][w] for w in verbalizer.words] for p in unlearned.predict(texts)]
    )
    torch.testing.assert_close(served, probabilities(withhold_label(in_memory)).float(), atol=2e-6, rtol=0)
    unlearned.withhold = name != "finetune"  # its own policy, as train_artifact evaluated it
    assert unlearned.evaluate(toy, show_progress=False) == manifest["metrics"]

    # and it is not the base model any more
    base = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    plain = score(
        base, Encoder(base.tokenizer, template), verbalizer, texts, [0] * len(texts), show_progress=False
    )
    assert np.abs(probabilities(plain).numpy() - got.numpy()).max() > 1e-3


def test_weights_artifact_is_a_plain_model_folder(tmp_path, tiny_model_dir, toy):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    out = tmp_path / "ga"
    train_artifact(
        "ga", lm, toy, out, config=TrainConfig(epochs=1, batch_size=8, lr=5e-2), show_progress=False
    )
    plain = load_model(str(out), device="cpu", precision="fp32")  # any tool can load it as a model
    for key, value in lm.model.state_dict().items():
        torch.testing.assert_close(plain.model.state_dict()[key], value)
    with pytest.raises(SpulError, match="whole unlearned model"):
        load_unlearned(out, model=str(tiny_model_dir))


# ---- the command line -----------------------------------------------------------------------------

runner = CliRunner()

CLI_CASES = [
    ("spul", ["--p", 3]),
    ("ga", []),
    ("rl", ["--lora", "--lora-r", 4]),
    ("ga_kl", ["--alpha", 0.5]),
    ("ga_gd", []),
    ("npo", ["--npo-beta", 0.2]),
    ("retrain", ["--lora-r", 4]),
    ("icul", ["--icul-shots", 2]),
]


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def finetuned(tmp_path, tiny_model_dir, toy):
    """A fine-tuned (LoRA) base to unlearn from, and its four-split table."""
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    ft = tmp_path / "ft"
    train_artifact(
        "finetune",
        lm,
        toy,
        ft,
        method_options={"r": 4},
        config=TrainConfig(epochs=1, batch_size=8, lr=5e-2),
        show_progress=False,
    )
    return ft


@pytest.mark.parametrize("name,flags", CLI_CASES)
def test_cli_unlearn_evaluate_predict(tmp_path, tiny_model_dir, toy_dir, finetuned, name, flags):
    out = tmp_path / name
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--batch-size", 8, "--precision", "fp32", "-q"]
    result = invoke("unlearn", "--method", name, "--out", out, "--adapter", finetuned, *flags, *common)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "spul.json").read_text())
    cls = get_method(name)
    # default epochs: spul 4 (the fast recipe), retrain 2 (the finetune recipe), icul none, the others 1
    assert manifest["hyperparameters"]["training"]["epochs"] == {"spul": 4, "retrain": 2, "icul": 0}.get(
        name, 1
    )
    if name == "retrain":
        assert "is not used" in result.output and manifest["base_model"]["adapter"] is None
    else:
        assert manifest["base_model"]["adapter"] == str(finetuned)

    result = invoke(
        "evaluate", "--prompt", out, "--data", toy_dir, "--out", tmp_path / "e", "--precision", "fp32", "-q"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["rows"]
    title = cls.display_name()
    assert list(rows) == (["Vanilla", title] if name == "retrain" else ["Vanilla", "Fine-tuned", title])
    assert rows[title] == manifest["metrics"]
    if name != "retrain":  # the fine-tuned row is the fine-tuned model, whatever the artifact kind
        ft = load_model(str(tiny_model_dir), adapter=str(finetuned), device="cpu", precision="fp32")
        assert rows["Fine-tuned"] == evaluate(ft, load_data(str(toy_dir)), show_progress=False)

    result = invoke("predict", "--prompt", out, "gorgeous film", "bleak music")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["text"] for d in lines] == ["gorgeous film", "bleak music"]


def test_cli_rejects_options_of_other_methods(tmp_path, tiny_model_dir, toy_dir):
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--out", tmp_path / "x", "-q"]
    result = invoke("unlearn", "--method", "ga", "--p", 3, "--npo-beta", 0.1, *common)
    assert result.exit_code == 2
    assert "--method ga does not take --p, --npo-beta" in result.output
    result = invoke("unlearn", "--method", "nope", *common)
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output
    assert "Traceback" not in result.output
