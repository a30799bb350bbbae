"""SPUL and LoRA fine-tuning: losses against hand computations, resume, best epoch, saved artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from spul.data.splits import UnlearningData
from spul.engine import score
from spul.errors import SpulError
from spul.methods import get_method
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig, TrainingInterrupted, collate, train, trainable_state


def make_method(lm, name="spul", **options):
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    generic = Verbalizer.build(lm.tokenizer, ("neutral", "unknown"), template)
    return get_method(name)(lm, encoder, verbalizer, generic, **options)


def items_of(method, data: UnlearningData, seed=0):
    r, f = data.train_retain, data.train_forget
    return method.items(r.texts + f.texts, r.labels + f.labels, [False] * len(r) + [True] * len(f), seed)


def full_logits(lm, prompt_ids, answer, prefix=None):
    """Log-probs at the positions predicting `answer`, from an unpadded full-sequence forward."""
    ids = torch.tensor([list(prompt_ids) + list(answer)])
    embeds = lm.model.get_input_embeddings()(ids)
    if prefix is not None:
        embeds = torch.cat([prefix.unsqueeze(0), embeds], 1)
    logits = lm.model(inputs_embeds=embeds).logits[0].log_softmax(-1)
    start = embeds.shape[1] - len(answer) - 1
    return logits[start : start + len(answer)]


def test_spul_loss_matches_hand_computation(tiny_lm, toy):
    method = make_method(tiny_lm, alpha=0.7, beta=0.3, num_virtual_tokens=4)
    items = items_of(method, toy)[:6] + items_of(method, toy)[-4:]  # 6 retain + 4 forget rows
    batch = collate(items, method, list(range(len(items))))
    loss, terms = method.loss(batch)

    prefix = method.prompt().detach()
    ce = {True: [], False: []}
    kls = []
    for it in items:
        logp = full_logits(tiny_lm, it.prompt, it.answer, prefix)
        ce[it.is_forget].append(-sum(logp[j, t] for j, t in enumerate(it.answer)))
        if not it.is_forget:
            logq = full_logits(tiny_lm, it.prompt, it.answer)
            kls.append((logp.exp() * (logp - logq)).sum())
    l_f, l_r, l_kl = (torch.stack(x).mean() for x in (ce[True], ce[False], kls))
    assert terms["L_f"] == pytest.approx(l_f.item(), abs=1e-4)
    assert terms["L_r"] == pytest.approx(l_r.item(), abs=1e-4)
    assert terms["L_kl"] == pytest.approx(l_kl.item(), abs=1e-5)
    assert loss.item() == pytest.approx((l_f + 0.7 * l_r + 0.3 * l_kl).item(), abs=1e-4)


@pytest.mark.parametrize("forget_loss", ["random", "set"])
def test_spul_loss_with_three_labels_of_mixed_token_lengths(tiny_lm, toy, forget_loss):
    """Label words of 1, 4 and 8 tokens and generic words of 1 and 5, padded into one batch."""
    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, ("negative", "superb", "dreadful"), template)
    generic = Verbalizer.build(tiny_lm.tokenizer, ("neutral", "so-so"), template)
    assert sorted(len(ids) for ids in verbalizer.token_ids) == [1, 4, 8]
    assert sorted(len(ids) for ids in generic.token_ids) == [1, 5]
    method = get_method("spul")(
        tiny_lm,
        encoder,
        verbalizer,
        generic,
        alpha=0.7,
        beta=0.3,
        num_virtual_tokens=4,
        forget_loss=forget_loss,
    )
    retain, forget = toy.train_retain.texts[:6], toy.train_forget.texts[:4]
    labels = [i % 3 for i in range(10)]
    items = method.items(retain + forget, labels, [False] * 6 + [True] * 4, seed=0)
    loss, terms = method.loss(collate(items, method, list(range(len(items)))))

    prefix = method.prompt().detach()

    def answer_logprob(it, answer, prompt=prefix):
        logp = full_logits(tiny_lm, it.prompt, answer, prompt)
        return sum(logp[j, t] for j, t in enumerate(answer)), logp

    retain_nll, kls, forget_nll = [], [], []
    for it, label in zip(items, labels, strict=True):
        if it.is_forget:
            if forget_loss == "random":
                assert it.answer in generic.token_ids
                forget_nll.append(-answer_logprob(it, it.answer)[0])
            else:  # -log p(any generic word's first token), then the row's own word's later tokens
                logp = full_logits(tiny_lm, it.prompt, it.answer, prefix)
                first = torch.logsumexp(logp[0, [g[0] for g in generic.token_ids]], 0)
                forget_nll.append(-first - sum(logp[j, t] for j, t in enumerate(it.answer) if j > 0))
        else:
            assert it.answer == verbalizer.token_ids[label]
            nll, logp = answer_logprob(it, it.answer)
            retain_nll.append(-nll)
            logq = full_logits(tiny_lm, it.prompt, it.answer)
            kls.append((logp.exp() * (logp - logq)).sum())
    l_f, l_r, l_kl = (torch.stack(x).mean() for x in (forget_nll, retain_nll, kls))
    assert terms["L_f"] == pytest.approx(l_f.item(), abs=1e-4)
    assert terms["L_r"] == pytest.approx(l_r.item(), abs=1e-4)
    assert terms["L_kl"] == pytest.approx(l_kl.item(), abs=1e-5)
    assert loss.item() == pytest.approx((l_f + 0.7 * l_r + 0.3 * l_kl).item(), abs=1e-4)


def test_forget_rows_get_seeded_generic_labels(tiny_lm, toy):
    method = make_method(tiny_lm)
    a, b, c = items_of(method, toy, seed=1), items_of(method, toy, seed=1), items_of(method, toy, seed=2)
    generic = set(method.generic.token_ids)
    forget = [it.answer for it in a if it.is_forget]
    assert set(forget) <= generic and len(set(forget)) == 2  # both generic words are used
    assert [it.answer for it in a] == [it.answer for it in b]
    assert [it.answer for it in a] != [it.answer for it in c]
    retain = [it for it in a if not it.is_forget]
    assert [it.answer for it in retain] == [method.verbalizer.token_ids[y] for y in toy.train_retain.labels]


def test_training_lowers_the_loss(tiny_lm, toy):
    method = make_method(tiny_lm, num_virtual_tokens=4)
    items = items_of(method, toy)
    result = train(
        method, items, TrainConfig(epochs=6, batch_size=8, lr=1e-2, log_every=1), show_progress=False
    )
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < first * 0.8


@pytest.mark.parametrize(
    "name,options",
    [("spul", {"num_virtual_tokens": 4}), ("spul", {"num_virtual_tokens": 4, "weight_ema": 0.8}),
     ("finetune", {"r": 4})],
)  # fmt: skip
def test_resume_reaches_the_same_result(tmp_path, toy, name, options):
    from conftest import make_tiny_lm

    config = TrainConfig(epochs=2, batch_size=5, lr=5e-3, checkpoint_every=2, seed=3)
    whole = make_method(make_tiny_lm(), name, **options)
    train(whole, items_of(whole, toy), config, show_progress=False)

    ckpt = tmp_path / "run.ckpt.pt"
    first = make_method(make_tiny_lm(), name, **options)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(first, items_of(first, toy), config, checkpoint=ckpt, show_progress=False, stop_after_steps=3)
    fresh = make_tiny_lm()  # reseeds torch itself, so the other RNG state comes after it
    torch.manual_seed(1234)  # a different RNG state in the new process must not matter
    second = make_method(fresh, name, **options)
    result = train(second, items_of(second, toy), config, checkpoint=ckpt, resume=True, show_progress=False)
    assert result.steps == 2 * 5  # 24 rows / 5 per batch = 5 steps per epoch
    expected, got = trainable_state(whole.trainable()), trainable_state(second.trainable())
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)


def test_weight_ema_checks_score_and_the_run_keeps_the_moving_average(tiny_lm, toy):
    """With `weight_ema` every check sees the exponential moving average of the weights of the steps so
    far (the first step's weights, then decay * average + (1 - decay) * the step's), and the run keeps
    the average its best check scored, not that step's own weights."""
    decay = 0.8
    method = make_method(tiny_lm, num_virtual_tokens=4, weight_ema=decay)
    module, real_loss = method.trainable(), method.loss
    after_step, checked = [], []  # the weights each step starts from (those after the previous step)

    def loss(batch):
        after_step.append(trainable_state(module))
        return real_loss(batch)

    def check():
        checked.append(trainable_state(module))
        return -float(len(checked)), False, {}  # the first check scores best

    method.loss = loss
    method.training_check = lambda items, seed: (check, set())
    config = TrainConfig(epochs=2, batch_size=5, lr=5e-2, check_every=2, seed=0)
    result = train(method, items_of(method, toy), config, show_progress=False)
    assert result.steps == 10 and result.best_step == 2
    weights = after_step[1:]  # the weights after steps 1..9
    for at, seen in ((2, checked[0]), (4, checked[1])):
        expected = dict(weights[0])
        for w in weights[1:at]:
            expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in w}
        for key in seen:
            torch.testing.assert_close(seen[key], expected[key], atol=1e-6, rtol=1e-5)
            assert not torch.allclose(seen[key], weights[at - 1][key])  # not the step's own weights
    kept = trainable_state(module)
    for key in kept:
        torch.testing.assert_close(kept[key], checked[0][key])


def test_weight_ema_is_refused_outside_zero_to_one():
    with pytest.raises(SpulError, match="weight_ema"):
        get_method("spul").resolve({"weight_ema": 1.0})


@pytest.mark.parametrize("name,options", [("spul", {"prompt_position": "suffix"}), ("finetune", {"r": 4})])
def test_training_over_frozen_weights_cast_once_is_bitwise_the_same(monkeypatch, toy, name, options):
    """Under bf16 autocast the frozen weights are cast once (not at every call): the trained prompt or
    adapter is bit for bit what autocast's per-call casts give."""
    from dataclasses import replace

    from conftest import make_tiny_lm

    from spul.models import LoadedModel

    config = TrainConfig(epochs=2, batch_size=6, lr=5e-3, seed=1)

    def trained(cast: bool) -> dict[str, torch.Tensor]:
        lm = replace(make_tiny_lm(), autocast_dtype=torch.bfloat16)
        with monkeypatch.context() as patch:
            if not cast:
                patch.setattr(LoadedModel, "cast_frozen", lambda self: None)
            method = make_method(lm, name, num_virtual_tokens=4, **options) if name == "spul" else None
            method = method or make_method(lm, name, **options)
            train(method, items_of(method, toy), config, show_progress=False)
        assert lm.frozen_cast == cast
        return trainable_state(method.trainable())

    with_cast, without = trained(True), trained(False)
    assert with_cast.keys() == without.keys()
    for key in with_cast:
        assert with_cast[key].dtype == torch.float32  # what is trained is not cast
        torch.testing.assert_close(with_cast[key], without[key], atol=0, rtol=0)


def test_training_steps_in_bf16_on_a_cpu_run_the_math_attention_kernel(monkeypatch, toy):
    """bf16 on a CPU, short rows: the math attention kernel (its backward is faster there than flash's);
    fp32 or long rows: PyTorch's own choice. The prompt trained either way is about the same."""
    from contextlib import nullcontext
    from dataclasses import replace

    from conftest import make_tiny_lm

    from spul.models import MATH_ATTENTION_MAX_WIDTH, LoadedModel

    bf16 = replace(make_tiny_lm(), autocast_dtype=torch.bfloat16)
    assert isinstance(bf16.training_attention(MATH_ATTENTION_MAX_WIDTH + 1), nullcontext)
    assert isinstance(replace(bf16, autocast_dtype=None).training_attention(8), nullcontext)

    flash_allowed = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        if torch.is_grad_enabled():  # a training step's forward (the check and references run no grad)
            flash_allowed.append(torch.backends.cuda.flash_sdp_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    config = TrainConfig(epochs=2, batch_size=6, lr=5e-3, seed=1)

    def trained(dtype, math: bool) -> torch.Tensor:
        lm = replace(make_tiny_lm(), autocast_dtype=dtype)
        with monkeypatch.context() as patch:
            if not math:
                patch.setattr(LoadedModel, "training_attention", lambda self, width: nullcontext())
            method = make_method(lm, num_virtual_tokens=4)
            flash_allowed.clear()
            train(method, items_of(method, toy), config, show_progress=False)
        return torch.cat([p.flatten() for p in trainable_state(method.trainable()).values()])

    with_math = trained(torch.bfloat16, math=True)
    assert flash_allowed and not any(flash_allowed)  # every training forward ran the math kernel
    trained(None, math=True)
    assert flash_allowed and all(flash_allowed)  # fp32: PyTorch's choice
    with_default = trained(torch.bfloat16, math=False)
    assert not torch.equal(with_math, with_default)  # another kernel, other roundings ...
    assert (with_math - with_default).norm() < 0.05 * with_default.norm()  # ... about the same prompt


def test_full_fine_tuning_refuses_a_model_cast_for_inference(toy):
    """A model whose frozen weights were cast to bf16 for scoring is not the model to fully fine-tune."""
    from dataclasses import replace

    from conftest import make_tiny_lm

    lm = replace(make_tiny_lm(), autocast_dtype=torch.bfloat16)
    lm.cast_frozen()
    with pytest.raises(SpulError, match="freshly loaded"):
        make_method(lm, "ga")


def test_resume_refuses_another_run(tmp_path, tiny_lm, toy):
    ckpt = tmp_path / "run.ckpt.pt"
    method = make_method(tiny_lm, num_virtual_tokens=4)
    with pytest.raises(TrainingInterrupted):
        train(
            method,
            items_of(method, toy),
            TrainConfig(epochs=1, batch_size=4),
            checkpoint=ckpt,
            show_progress=False,
            stop_after_steps=1,
        )
    with pytest.raises(SpulError, match="another run"):
        train(
            method,
            items_of(method, toy),
            TrainConfig(epochs=1, batch_size=4, lr=1.0),
            checkpoint=ckpt,
            resume=True,
            show_progress=False,
        )


def test_best_epoch_is_kept(tiny_lm, toy):
    method = make_method(tiny_lm, num_virtual_tokens=4)
    scores = iter([5.0, 9.0, 1.0])
    snapshots = []

    def fake_eval():
        snapshots.append(trainable_state(method.trainable()))
        return {"train_retain": {"acc": next(scores)}, "train_forget": {"acc": 0.0}}

    result = train(
        method,
        items_of(method, toy),
        TrainConfig(epochs=3, batch_size=8, lr=1e-2),
        evaluate_fn=fake_eval,
        show_progress=False,
    )
    assert result.best_epoch == 2
    for key, value in trainable_state(method.trainable()).items():
        torch.testing.assert_close(value, snapshots[1][key])


def test_prompt_artifact_roundtrip(tmp_path, tiny_model_dir, toy):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    out = tmp_path / "prompt"
    manifest = train_artifact(
        "spul",
        lm,
        toy,
        out,
        method_options={"num_virtual_tokens": 4},
        config=TrainConfig(epochs=1, batch_size=8, lr=1e-2),
        show_progress=False,
    )
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "prompt.ckpt.pt").exists()
    saved = json.loads((out / "spul.json").read_text())
    assert saved["trainable_parameters"] == manifest["trainable_parameters"] > 0
    assert saved["data"]["forget_sha256"] == toy.train_forget.fingerprint()
    text = (out / "spul.json").read_text()
    assert not any(t in text for t in toy.train_forget.texts)  # hashes, never the texts
    assert set(saved["metrics"]) == {"train_retain", "train_forget", "test_retain", "test_forget"}

    unlearned = load_unlearned(out, precision="fp32")
    assert unlearned.evaluate(toy, show_progress=False) == manifest["metrics"]
    # Other tools read it as a plain peft adapter.
    fresh = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    peft = PeftModel.from_pretrained(fresh.model, str(out))
    torch.testing.assert_close(peft.get_prompt(1)[0], unlearned.prompt)
    predictions = unlearned.predict(toy.test_forget.texts[:3])
    assert all(set(p["probabilities"]) == {"negative", "positive"} for p in predictions)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predictions)


def test_prompt_refuses_another_base_model(tmp_path, tiny_model_dir, toy):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    out = tmp_path / "prompt"
    train_artifact(
        "spul",
        lm,
        toy,
        out,
        method_options={"num_virtual_tokens": 2},
        config=TrainConfig(epochs=1, batch_size=12),
        show_progress=False,
    )
    other = tmp_path / "other-model"
    changed = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    with torch.no_grad():
        changed.model.model.layers[0].self_attn.q_proj.weight.mul_(1.1)
    changed.model.save_pretrained(other)
    changed.tokenizer.save_pretrained(other)
    with pytest.raises(SpulError, match="different weights"):
        load_unlearned(out, model=str(other), precision="fp32")


def test_finetune_adapter_merges_on_load(tmp_path, tiny_model_dir, toy):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    out = tmp_path / "ft"
    manifest = train_artifact(
        "finetune",
        lm,
        toy,
        out,
        method_options={"r": 4},
        config=TrainConfig(epochs=2, batch_size=8, lr=5e-2),
        show_progress=False,
    )
    assert manifest["kind"] == "adapter"
    merged = load_model(str(tiny_model_dir), adapter=str(out), device="cpu", precision="fp32")
    template = Template()
    verbalizer = Verbalizer.build(merged.tokenizer, toy.label_words, template)
    texts = toy.train_retain.texts
    got = score(
        merged,
        Encoder(merged.tokenizer, template),
        verbalizer,
        texts,
        toy.train_retain.labels,
        show_progress=False,
    )
    # the merged model scores like the trained (unmerged) LoRA model
    want = score(
        lm, Encoder(lm.tokenizer, template), verbalizer, texts, toy.train_retain.labels, show_progress=False
    )
    torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=1e-4)
    base = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.model.state_dict()[q], base.model.state_dict()[q])


def test_first_ctrl_c_checkpoints_and_stops(tmp_path, tiny_lm, toy):
    """A SIGINT during training is turned into a checkpoint and a clean stop that says how to resume."""
    import os
    import signal

    method = make_method(tiny_lm, num_virtual_tokens=2)
    original = method.loss
    calls = []

    def loss_then_interrupt(batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 2
        return original(batch)

    method.loss = loss_then_interrupt
    ckpt = tmp_path / "run.ckpt.pt"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, Python's default elsewhere
    with pytest.raises(TrainingInterrupted, match="stopped at step 2/"):
        train(
            method,
            items_of(method, toy),
            TrainConfig(epochs=2, batch_size=4),
            checkpoint=ckpt,
            show_progress=False,
        )
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
