"""The fast-forgetting levers: generic-set loss, compact KL reference, balanced batches, stop at target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spul.errors import SpulError
from spul.methods.base import TrainItem
from spul.methods.losses import answer_kl, answer_kl_topk, generic_set_nll, topk_reference
from spul.methods.recipes import RECIPES, recipe_settings
from spul.target import Target, TargetMonitor
from spul.training import BatchPlan, TrainConfig


def test_generic_set_nll_is_minus_log_of_the_summed_generic_probability():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 11)
    # rows 0-1 single-token answers (left -100), row 2 a two-token word
    targets = torch.tensor([[-100, 4], [-100, 7], [4, 9]])
    generic_first = torch.tensor([4, 7])
    got = generic_set_nll(logits, targets, generic_first)
    logp = torch.log_softmax(logits, -1)
    expected = [
        -math.log(logp[0, 1, 4].exp() + logp[0, 1, 7].exp()),
        -math.log(logp[1, 1, 4].exp() + logp[1, 1, 7].exp()),
        -math.log(logp[2, 0, 4].exp() + logp[2, 0, 7].exp()) - float(logp[2, 1, 9]),
    ]
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    # no floor: putting all mass on the set drives it to 0 (one random word per row could not)
    peaked = torch.full((1, 1, 11), -30.0)
    peaked[0, 0, 4] = peaked[0, 0, 7] = 10.0
    assert float(generic_set_nll(peaked, torch.tensor([[4]]), generic_first)) == pytest.approx(
        math.log(1.0), abs=1e-6
    )


def test_topk_kl_is_exact_with_the_whole_distribution_and_close_with_top_k():
    torch.manual_seed(1)
    # as in training: the prompted distribution stays near the unprompted one on retain rows
    ref = torch.randn(4, 2, 50) * 3
    logits = ref + 0.5 * torch.randn(4, 2, 50)
    targets = torch.tensor([[-100, 1], [2, 3], [-100, 4], [5, 6]])
    exact = answer_kl(logits, ref, targets)
    values, ids = topk_reference(ref, None)
    assert ids is None
    assert answer_kl_topk(logits, values, ids, targets).tolist() == pytest.approx(exact.tolist(), abs=1e-5)
    values, ids = topk_reference(ref, 40)
    approx = answer_kl_topk(logits, values, ids, targets)
    assert approx.tolist() == pytest.approx(exact.tolist(), rel=0.05)
    values, ids = topk_reference(ref, 2)  # a crude reference is measurably off
    assert not torch.allclose(answer_kl_topk(logits, values, ids, targets), exact, rtol=0.01)


def _items(n_retain: int, n_forget: int) -> list[TrainItem]:
    return [TrainItem([1], (2,), False) for _ in range(n_retain)] + [
        TrainItem([1], (3,), True) for _ in range(n_forget)
    ]


def test_balanced_plan_puts_a_fixed_share_of_forget_rows_in_every_batch():
    items = _items(1000, 30)
    plan = BatchPlan(items, TrainConfig(batch_size=16, forget_share=0.5, seed=3))
    assert plan.steps_per_epoch == math.ceil(30 / 8)
    seen_retain = []
    for step in range(plan.steps_per_epoch * 3):
        rows = plan.rows(step)
        forget = [r for r in rows if items[r].is_forget]
        assert len(rows) - len(forget) == 8
        assert 0 < len(forget) <= 8
        seen_retain += [r for r in rows if not items[r].is_forget]
    # retain rows come from passes over the whole retain split, without repeats inside a pass
    assert len(set(seen_retain)) == len(seen_retain)
    # every forget row is used once per epoch
    epoch0 = [r for s in range(plan.steps_per_epoch) for r in plan.rows(s) if items[r].is_forget]
    assert sorted(epoch0) == list(range(1000, 1030))
    # a pure function of the step (resume replays it), and the seed matters
    again = BatchPlan(items, TrainConfig(batch_size=16, forget_share=0.5, seed=3))
    assert [again.rows(s) for s in (5, 0, 2)] == [plan.rows(s) for s in (5, 0, 2)]
    other = BatchPlan(items, TrainConfig(batch_size=16, forget_share=0.5, seed=4))
    assert other.rows(0) != plan.rows(0)


def test_uniform_plan_is_the_old_epoch_order():
    from spul.training import epoch_order

    items = _items(20, 5)
    plan = BatchPlan(items, TrainConfig(batch_size=8, seed=2))
    assert plan.rows(0) == epoch_order(25, 2, 0)[:8]
    assert plan.rows(4) == epoch_order(25, 2, 1)[:8]


def test_focus_share_draws_that_share_of_retain_rows_from_the_focus_rows():
    items = _items(200, 30)
    for i in range(10):
        items[i].focus = True
    plan = BatchPlan(items, TrainConfig(batch_size=16, forget_share=0.5, seed=3), focus_share=0.5)
    focus_seen, other_seen = [], []
    for step in range(40):
        rows = plan.rows(step)
        retain = [r for r in rows if not items[r].is_forget]
        assert len(retain) == 8 and len(rows) - len(retain) == len([r for r in rows if items[r].is_forget])
        focus_seen += retain[4:]
        other_seen += retain[:4]
    assert all(items[r].focus for r in focus_seen)  # the focus half of every batch
    # each focus row once per pass over them (10 rows, 4 a step: 160 draws = 16 passes)
    assert sorted(focus_seen[:10]) == list(range(10)) and focus_seen.count(0) == 16
    assert len(set(other_seen)) == len(other_seen)  # the rest: passes over all retain rows, as before
    # share 0, or no row marked: the plan as it was without focus rows, step for step
    before = BatchPlan(_items(200, 30), TrainConfig(batch_size=16, forget_share=0.5, seed=3))
    share0 = BatchPlan(items, TrainConfig(batch_size=16, forget_share=0.5, seed=3))
    unmarked = BatchPlan(
        _items(200, 30), TrainConfig(batch_size=16, forget_share=0.5, seed=3), focus_share=0.5
    )
    assert [share0.rows(s) for s in range(5)] == [before.rows(s) for s in range(5)]
    assert [unmarked.rows(s) for s in range(5)] == [before.rows(s) for s in range(5)]
    assert [plan.rows(s) for s in range(5)] != [before.rows(s) for s in range(5)]
    with pytest.raises(SpulError, match="balanced batches"):
        BatchPlan(items, TrainConfig(batch_size=16, seed=3), focus_share=0.5)
    with pytest.raises(SpulError, match="focus share"):
        BatchPlan(items, TrainConfig(batch_size=16, forget_share=0.5), focus_share=1.0)


def test_bad_forget_share_is_refused():
    with pytest.raises(SpulError, match="forget_share"):
        BatchPlan(_items(4, 4), TrainConfig(forget_share=1.5))


def test_target_needs_every_split():
    reference = {"train_retain": {"acc": 90.0}, "test_retain": {"acc": 80.0}}
    good = {
        "train_retain": {"acc": 88.0},
        "train_forget": {"acc": 20.0},
        "test_retain": {"acc": 77.5},
        "test_forget": {"acc": 25.0},
    }
    assert Target().reached(good, reference)
    assert not Target().reached(good | {"test_forget": {"acc": 26.0}}, reference)
    assert not Target().reached(good | {"test_retain": {"acc": 76.0}}, reference)


def test_target_shortfall_counts_the_points_beyond_either_limit():
    target = Target(forget_acc=20, retain_drop=3)
    assert target.shortfall(12.0, 1.0) == 0.0  # met: forgetting deeper earns nothing more
    assert target.shortfall(26.0, 1.0) == 6.0
    assert target.shortfall(12.0, 4.5) == 1.5
    assert target.shortfall(26.0, 4.5) == 7.5
    # nearer the target beats forgetting deeper at a retain cost (the training check's best prompt)
    assert target.shortfall(14.0, 3.125) < target.shortfall(6.0, 6.0)


@given(
    # checks as measured: percentages to 2 decimals (a score beyond the allowance is -1000 - excess, so
    # excesses or forget ACCs 1e-35 apart would compare equal in floating point)
    st.lists(
        st.tuples(*(st.floats(low, 100).map(lambda x: round(x, 2)) for low in (0, -5))),
        min_size=2,
        max_size=8,
    ),
    st.floats(0, 100),
    st.floats(0, 10),
)
def test_retain_first_keeps_the_deepest_forgetting_within_the_retain_allowance(checks, forget, allowance):
    """`check_keep=retain_first`: a check within the retain allowance beats every check beyond it;
    among those within, less forget ACC (down to the target) wins; beyond it, the smaller drop."""
    target = Target(forget_acc=forget, retain_drop=allowance)
    kept = max(checks, key=lambda c: target.score(*c, keep="retain_first"))
    within = [c for c in checks if c[1] <= allowance]
    if within:
        assert kept[1] <= allowance
        assert max(kept[0], forget) == min(max(c[0], forget) for c in within)
    else:
        assert kept[1] == min(c[1] for c in checks)
    for f, drop in checks:  # 0 exactly when the check meets the target
        assert (target.score(f, drop, keep="retain_first") == 0.0) == (f <= forget and drop <= allowance)
    # the default rule is minus the shortfall
    assert all(target.score(*c) == -target.shortfall(*c) for c in checks)


def test_recipes_resolve_with_overrides():
    options, config = recipe_settings("paper", {"lr": 5e-4, "beta": 0.0}, seed=7)
    assert config.lr == 5e-4 and config.seed == 7 and config.max_grad_norm == 0.3
    assert options["beta"] == 0.0 and options["forget_loss"] == "random"
    assert set(RECIPES) >= {"paper", "fast"}


def test_spul_stops_at_the_target_and_cached_kl_matches_recompute(tiny_lm, toy, tmp_path):
    """A monitor that reports the target ends training early; a cached exact KL trains like recompute."""
    from spul.pipeline import train_artifact

    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=0, monitor_every=2)
    calls = []

    def monitor(step):
        calls.append(step)
        return step >= 4

    manifest = train_artifact(
        "spul",
        tiny_lm,
        toy,
        tmp_path / "p",
        method_options={"num_virtual_tokens": 2, "forget_loss": "set", "kl_reference": "cached"},
        config=cfg,
        show_progress=False,
        monitor=lambda method: monitor,
    )
    assert calls == [2, 4] and manifest["steps"] == 4 and manifest["stopped_at"] == 4
    assert manifest["hyperparameters"]["method"]["forget_loss"] == "set"


def test_label_only_metrics_see_through_generic_answers():
    import numpy as np

    from spul.metrics import format_table, split_metrics

    labels = [0, 1, 0, 1]
    predicted = [-1, -1, -1, 1]  # three generic answers: ACC 25 %
    logprobs = np.log(np.array([[0.6, 0.1], [0.2, 0.5], [0.3, 0.2], [0.1, 0.8]]))
    m = split_metrics(labels, predicted, 2, logprobs)
    assert m["acc"] == 25.0
    assert m["label_acc"] == 100.0  # the label words still rank the true label first everywhere
    assert m["margin_auc"] == 1.0
    flipped = split_metrics(labels, predicted, 2, logprobs[:, ::-1])
    assert flipped["label_acc"] == 0.0 and flipped["margin_auc"] == 0.0
    assert split_metrics([1, 1], [1, 1], 2, logprobs[:2])["margin_auc"] is None  # one class only
    tied = np.log(np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.1, 0.8]]))  # uniform: a fair coin
    assert split_metrics(labels, predicted, 2, tied)["label_acc"] == 100.0 * (0.5 * 3 + 1) / 4
    three = np.log(np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [1 / 3] * 3, [0.1, 0.8, 0.1]]))
    assert split_metrics(labels, predicted, 3, three)["label_acc"] == pytest.approx(
        100 * (1 / 2 + 1 / 2 + 1 / 3 + 1) / 4
    )
    text = format_table({"SPUL": {"train_forget": m}})
    assert "Label-only ACC" in text and "100.00 / 1.000" in text


def test_unlearn_refuses_recipe_misuse_and_nonpositive_training_flags_before_loading():
    from typer.testing import CliRunner

    from spul.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["unlearn", "--method", "ga", "--recipe", "fast", "--model", "/nonexistent"])
    assert result.exit_code == 2 and "--recipe is a SPUL recipe" in result.output
    for flag, value in (("--lr", "0"), ("--epochs", "0"), ("--batch-size", "-1")):
        result = runner.invoke(app, ["unlearn", flag, value, "--model", "/nonexistent"])
        assert result.exit_code == 2 and f"{flag} must be > 0" in result.output, result.output
    result = runner.invoke(app, ["unlearn", "--recipe", "nope", "--model", "/nonexistent"])
    assert result.exit_code == 2 and "unknown recipe" in result.output
    args = ["--recipe", "paper", "--gate", "--method-args", "gate_focus=0.5", "--model", "/nonexistent"]
    result = runner.invoke(app, ["unlearn", *args])
    assert result.exit_code == 2 and "gate_focus 0.5" in result.output and "--recipe paper" in result.output
    for args in (["--method", "ga", "--check-every", "5"], ["--check-every", "-1"]):
        result = runner.invoke(app, ["unlearn", *args, "--model", "/nonexistent"])
        assert result.exit_code == 2 and "--check-every" in result.output and "SPUL option" in result.output


def test_suffix_prompt_trains_the_same_with_cached_text_and_round_trips(tiny_lm, toy, tmp_path):
    """A suffix prompt: the cached text states give the same training as recomputing them, the unprompted
    KL reference comes from the same pass, and the saved prompt is applied as a suffix when loaded."""
    import json

    import numpy as np

    from spul import engine
    from spul.pipeline import train_artifact
    from spul.unlearned import Unlearned

    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0)
    runs = {}
    for cache_mb in (2048, 0):
        out = tmp_path / f"p{cache_mb}"
        options = {"num_virtual_tokens": 3, "prompt_position": "suffix", "text_cache_mb": cache_mb}
        train_artifact("spul", tiny_lm, toy, out, method_options=options, config=cfg, show_progress=False)
        runs[cache_mb] = json.loads((out / "spul.json").read_text())
    cached, plain = (runs[m]["history"] for m in (2048, 0))
    assert [h["loss"] for h in cached] == pytest.approx([h["loss"] for h in plain], abs=1e-4)
    assert all(h["L_kl"] >= 0 for h in cached) and any(h["L_kl"] > 0 for h in cached)
    assert runs[2048]["hyperparameters"]["method"]["prompt_position"] == "suffix"

    model = Unlearned(tiny_lm, tmp_path / "p2048", runs[2048])
    assert isinstance(model.prompt, engine.SuffixPrompt)
    texts = toy.test_retain.texts[:4]
    served = model.predict(texts)
    plain_scores = engine.score(
        tiny_lm, model.encoder, model.verbalizer, texts, [0] * len(texts), show_progress=False
    )
    moved = [
        abs(s["probabilities"][w] - float(np.exp(p[k])))
        for s, p in zip(served, plain_scores.logprobs, strict=True)
        for k, w in enumerate(model.verbalizer.words)
    ]
    assert max(moved) > 1e-4  # the loaded prompt changes the answers, so it was applied


def test_suffix_text_cache_holds_what_fits_and_reads_the_rest_at_each_step(tiny_lm, toy, monkeypatch):
    """Over its budget the text cache keeps the check's rows, then forget rows, then the rest; a batch
    mixing cached and uncached rows gets the same logits as one that is all cached."""
    import torch

    from spul.methods import get_method, soft_prompt
    from spul.methods.soft_prompt import rows_that_fit
    from spul.prompting import Encoder, Template, Verbalizer
    from spul.training import collate

    assert rows_that_fit([5, 5, 5, 5], [3, 1, 3, 0, 2], 10) == [1, 3]  # first come, repeats ignored
    assert rows_that_fit([5, 20, 5], [0, 1, 2], 10) == [0]  # stops at the first row over the budget
    assert rows_that_fit([5], [0], 4) == []

    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    options = {"num_virtual_tokens": 3, "prompt_position": "suffix"}
    torch.manual_seed(0)
    method = get_method("spul")(tiny_lm, encoder, *words, **options)
    retain, forget = toy.train_retain, toy.train_forget
    flags = [False] * len(retain) + [True] * len(forget)
    items = method.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
    orders = []
    monkeypatch.setattr(
        soft_prompt, "rows_that_fit", lambda s, order, b: orders.append(order) or rows_that_fit(s, order, b)
    )
    method.prepare(items, first=[2])
    assert list(dict.fromkeys(orders[0]))[: 1 + len(forget)] == [2, *range(len(retain), len(items))]
    assert set(method.text_cache) == set(range(len(items)))  # the default budget holds them all
    rows = [0, 2, 5, len(retain), len(items) - 1]
    batch = collate([items[i] for i in rows], method, rows).batch
    with torch.no_grad():
        all_cached = method.logits_pair(batch)
        for i in (0, 5, len(items) - 1):
            del method.text_cache[i]
        mixed = method.logits_pair(batch)
    for a, b in zip(all_cached, mixed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_suffix_prompt_refuses_multi_token_words(tiny_lm, toy, tmp_path):
    from dataclasses import replace

    from spul.errors import SpulError
    from spul.pipeline import train_artifact

    with pytest.raises(SpulError, match="one-token answer words"):
        train_artifact(
            "spul",
            tiny_lm,
            replace(toy, generic_words=("not known at all",)),
            tmp_path / "p",
            method_options={"prompt_position": "suffix", "num_virtual_tokens": 2},
            config=TrainConfig(epochs=1, batch_size=4),
            show_progress=False,
        )


def test_training_check_keeps_the_best_weights_and_stops_at_the_target(tiny_lm, toy, tmp_path):
    """The SPUL training check scores training rows every few steps: the best check's weights are kept
    (the saved prompt scores as that check said) and a met target ends the run."""
    import json

    from spul.methods import spul as spul_method
    from spul.pipeline import train_artifact

    cfg = TrainConfig(epochs=4, batch_size=4, lr=5e-2, seed=0, check_every=2, forget_share=0.5)
    options = {"num_virtual_tokens": 2, "prompt_position": "suffix", "forget_loss": "set"}
    manifest = train_artifact("spul", tiny_lm, toy, tmp_path / "p", method_options=options, config=cfg,
                              show_progress=False)  # fmt: skip
    checks = manifest["checks"]
    assert [c["step"] for c in checks] == list(range(2, 2 * len(checks) + 1, 2))
    assert all({"forget_acc", "retain_acc", "retain_before"} <= set(c) for c in checks)  # what it measured
    best = max(checks, key=lambda c: c["score"])
    reached = [c for c in checks if c["reached"]]
    if reached:  # stopped at the first check that met the target, with those weights
        assert manifest["stopped_at"] == reached[0]["step"] == checks[-1]["step"] == manifest["best_step"]
    else:
        assert manifest["best_step"] == best["step"] and manifest["stopped_at"] is None
    assert json.loads((tmp_path / "p" / "spul.json").read_text())["best_step"] == manifest["best_step"]

    # a check that always reports the target ends the run at the first check
    original = spul_method.Spul.training_check

    def always(self, items, seed):
        return (lambda: (0.0, True, {})), set()

    spul_method.Spul.training_check = always
    try:
        manifest = train_artifact("spul", tiny_lm, toy, tmp_path / "q", method_options=options, config=cfg,
                                  show_progress=False)  # fmt: skip
    finally:
        spul_method.Spul.training_check = original
    assert manifest["stopped_at"] == 2 and manifest["steps"] == 2


def test_rows_the_training_check_holds_out_are_never_trained_on(tiny_lm, toy, tmp_path, monkeypatch):
    from spul.methods import spul as spul_method
    from spul.pipeline import train_artifact

    seen = []
    real_loss = spul_method.Spul.loss

    def loss(self, batch):
        seen.extend(batch.batch.index)
        return real_loss(self, batch)

    monkeypatch.setattr(
        spul_method.Spul, "training_check", lambda self, items, seed: ((lambda: (0.0, False, {})), {0, 1})
    )
    monkeypatch.setattr(spul_method.Spul, "loss", loss)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=0, check_every=2)
    train_artifact("spul", tiny_lm, toy, tmp_path / "p", method_options={"num_virtual_tokens": 2}, config=cfg,
                   show_progress=False)  # fmt: skip
    assert (
        seen
        and not {0, 1} & set(seen)
        and set(seen) == set(range(2, len(toy.train_retain) + len(toy.train_forget)))
    )


def test_check_only_rows_are_what_the_check_scores_and_never_trained_on(tiny_lm, toy, tmp_path, monkeypatch):
    """`check_retain` rows (`train_artifact(check_retain=...)`) replace the held-out training rows: no check
    row is trained on, with or without a check, and without one every training row is."""
    from spul.methods import spul as spul_method
    from spul.pipeline import train_artifact

    seen, held = [], []
    real_loss, real_check = spul_method.Spul.loss, spul_method.Spul.training_check

    def loss(self, batch):
        seen.extend(batch.batch.index)
        return real_loss(self, batch)

    def check(self, items, seed):
        made = real_check(self, items, seed)
        held.append(made[1])
        return made

    monkeypatch.setattr(spul_method.Spul, "loss", loss)
    monkeypatch.setattr(spul_method.Spul, "training_check", check)
    n = len(toy.train_retain) + len(toy.train_forget)
    extra = toy.test_retain  # any labelled rows stand in for train_retain rows outside the training rows
    for every in (2, 0):
        seen.clear()
        cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0, check_every=every)
        manifest = train_artifact("spul", tiny_lm, toy, tmp_path / f"p{every}", config=cfg,
                                  method_options={"num_virtual_tokens": 2}, check_retain=extra,
                                  show_progress=False)  # fmt: skip
        assert seen and set(seen) <= set(range(n))
    assert set(seen) == set(range(n))  # without a check (which may stop early): every training row
    assert held == [set(range(n, n + len(extra)))] and manifest["steps"] > 0


def test_training_check_target_and_rows_are_options(tiny_lm, toy, tmp_path):
    """`target_forget_acc` / `target_retain_drop` set when the check stops, `check_rows` how many rows it
    scores; only non-default values are written to the manifest."""
    import torch

    from spul.errors import SpulError
    from spul.methods import get_method
    from spul.pipeline import train_artifact
    from spul.prompting import Encoder, Template, Verbalizer

    template = Template()
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    retain, forget = toy.train_retain, toy.train_forget
    flags = [False] * len(retain) + [True] * len(forget)

    def check_with(**options):
        method = get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options)
        items = method.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
        first = [t[0] for t in method.verbalizer.token_ids]

        def always_right(batch, prompted=True):  # every row answered with its label: forget ACC 100 %
            logits = torch.zeros(len(batch.index), 1, len(tiny_lm.tokenizer))
            for row, i in enumerate(batch.index):
                logits[row, 0, first[items[i].label]] = 1.0
            return logits

        method.logits = always_right
        method.logits_pair = lambda batch: (always_right(batch), None)
        check, held_out = method.training_check(items, 0)
        return check()[1], held_out

    assert check_with(target_forget_acc=100.0)[0] is True
    assert check_with()[0] is False  # the default target: forget ACC at most 25 %
    assert len(check_with(check_rows=2)[1]) == 2
    with pytest.raises(SpulError, match="target_forget_acc"):
        get_method("spul").resolve({"target_forget_acc": 120})
    with pytest.raises(SpulError, match="check_keep.*nearest, retain_first"):
        get_method("spul").resolve({"check_keep": "deepest"})

    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0, check_every=2, forget_share=0.5)
    base = {"num_virtual_tokens": 2, "prompt_position": "suffix", "forget_loss": "set"}
    for name, options in (("set", base | {"target_forget_acc": 10.0}), ("default", base)):
        manifest = train_artifact("spul", tiny_lm, toy, tmp_path / name, method_options=options, config=cfg,
                                  show_progress=False)  # fmt: skip
        assert manifest["hyperparameters"]["method"].get("target_forget_acc") == options.get(
            "target_forget_acc"
        )


def test_gated_training_check_scores_rows_as_served(tiny_lm, toy, fake_embedder):
    """Gated SPUL's check gives a row the prompt only where the gate flagged it out of fold: with a prompt
    that makes every answer wrong, forget ACC falls only on flagged forget rows and held-out retain ACC
    only on flagged retain rows."""
    import torch

    from spul.methods import get_method
    from spul.prompting import Encoder, Template, Verbalizer

    template = Template()
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    retain, forget = toy.train_retain, toy.train_forget
    flags = [False] * len(retain) + [True] * len(forget)
    options = {"gate": True, "gate_embedder": fake_embedder, "check_rows": 100, "target_forget_acc": 15}
    method = get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options)
    items = method.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
    assert method.gate_flags is not None and len(method.gate_flags) == len(items)
    first = [t[0] for t in method.verbalizer.token_ids]
    wrong = max(first) + 1  # a token that is no label word

    def answering(right: bool):
        def logits(batch, prompted=True):
            out = torch.zeros(len(batch.index), 1, len(tiny_lm.tokenizer))
            for row, i in enumerate(batch.index):
                out[row, 0, first[items[i].label] if right else wrong] = 1.0
            return out

        return logits

    method.logits = answering(True)  # the model alone: always right
    method.logits_pair = lambda batch: (answering(False)(batch), None)  # the prompt: always wrong

    def check_with(gate_flags):
        method.gate_flags = gate_flags
        check, held_out = method.training_check(items, 0)
        score, reached, measured = check()
        drop = measured["retain_before"] - measured["retain_acc"]
        assert score == -Target(15, 3).shortfall(measured["forget_acc"], drop)
        return (measured["forget_acc"], measured["retain_acc"], reached), held_out

    # check-only rows get the gate's own flags (it was fitted without them), as they will be served
    extra = method.check_items(toy.test_retain.texts, toy.test_retain.labels)
    assert method.check_flags == method.gate_rule.flags(toy.test_retain.texts).tolist()
    assert all(it.check_only and not it.is_forget for it in extra)
    items += extra
    method.check_flags = [True] + [False] * (len(extra) - 1)
    measured, held = check_with([it.is_forget for it in items[: len(items) - len(extra)]])
    assert held == set(range(len(items) - len(extra), len(items)))
    assert measured == (0.0, pytest.approx(100.0 - 100.0 / len(extra)), False)
    items[len(items) - len(extra) :], method.check_flags = [], []

    perfect, held_out = check_with([it.is_forget for it in items])
    assert perfect == (0.0, 100.0, True)  # forget rows prompted (wrong), retain rows never prompted
    assert check_with([False] * len(items))[0] == (100.0, 100.0, False)  # nothing flagged: the model alone
    assert check_with(None)[0] == (0.0, 0.0, False)  # ungated: every row prompted
    one_retain = [i == min(held_out) or it.is_forget for i, it in enumerate(items)]
    assert check_with(one_retain)[0] == (0.0, pytest.approx(100.0 - 100.0 / len(held_out)), False)
    # a suffix prompt's pass gives the unprompted answer too: the same result from it
    method.logits_pair = lambda batch: (answering(False)(batch), answering(True)(batch))
    assert check_with(one_retain)[0] == (0.0, pytest.approx(100.0 - 100.0 / len(held_out)), False)
    # a row the gate refuses gets the generic answer (never its label), prompted or not
    method.gate_refused = [i == min(held_out) or it.is_forget for i, it in enumerate(items)]
    assert check_with([False] * len(items))[0] == (0.0, pytest.approx(100.0 - 100.0 / len(held_out)), False)
    method.gate_refused = []


def test_stratified_check_measures_the_retain_drop_where_the_prompt_is_served(tiny_lm, toy, fake_embedder):
    """`check_strata`: the held-out retain rows are drawn from those the gate serves the prompt, and the
    drop is theirs times that share of the retain rows plus the refused rows' unprompted ACC times theirs:
    with a prompt that answers every row wrong, exactly the drop over all retain rows as served."""
    import torch

    from spul.methods import get_method
    from spul.prompting import Encoder, Template, Verbalizer

    template = Template()
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    retain, forget = toy.train_retain, toy.train_forget
    options = {"gate": True, "gate_embedder": fake_embedder, "check_rows": 100, "check_strata": True}
    method = get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options)
    flags = [False] * len(retain) + [True] * len(forget)
    items = method.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
    first = [t[0] for t in method.verbalizer.token_ids]
    wrong = max(first) + 1

    def answering(right):
        def logits(batch, prompted=True):
            out = torch.zeros(len(batch.index), 1, len(tiny_lm.tokenizer))
            for row, i in enumerate(batch.index):
                out[row, 0, first[items[i].label] if right(i) else wrong] = 1.0
            return out

        return logits

    n = len(retain)
    method.gate_flags = [i < 8 or items[i].is_forget for i in range(len(items))]  # 8 retain rows prompted
    method.gate_refused = [i in (8, 9) for i in range(len(items))]  # 2 refused
    method.logits = answering(lambda i: i != 0)  # the model alone: wrong on retain row 0 only
    method.logits_pair = lambda batch: (answering(lambda i: False)(batch), None)  # the prompt: all wrong
    check, held_out = method.training_check(items, 0)
    assert held_out and held_out <= set(range(8))  # held out among the prompted retain rows alone
    score, reached, measured = check()
    before = 100.0 * sum(i != 0 for i in held_out) / len(held_out)
    assert measured["retain_drop"] == pytest.approx(8 / n * before + 2 / n * 100.0)
    assert (measured["prompted_share"], measured["refused_share"]) == (8 / n, 2 / n)
    assert score == -Target(method.config.target_forget_acc, 3).shortfall(0.0, measured["retain_drop"])
    method.config.check_keep = "retain_first"  # beyond the allowance: ranked below every check within it
    assert method.training_check(items, 0)[0]()[0] == pytest.approx(-1000.0 - (measured["retain_drop"] - 3))
    method.config.check_keep = "nearest"
    assert not reached  # 10 of 12 retain rows lose their answer: far past any allowance
    # unstratified, the same gate holds out rows from every retain row
    method.config.check_strata = False
    _, plain = method.training_check(items, 0)
    assert "retain_drop" not in method.training_check(items, 0)[0]()[2]
    assert len(plain) == min(100, n // 4)
    with pytest.raises(SpulError, match="check_strata"):
        get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, check_strata=True)
    # refused, not silently unstratified: too few prompted retain rows, or outside check rows
    method.config.check_strata = True
    method.gate_flags = [i < 3 or items[i].is_forget for i in range(len(items))]
    with pytest.raises(SpulError, match="3 retain training row"):
        method.training_check(items, 0)
    method.gate_flags = [i < 8 or items[i].is_forget for i in range(len(items))]
    extra = method.check_items(toy.test_retain.texts, toy.test_retain.labels)
    with pytest.raises(SpulError, match="--check-retain"):
        method.training_check(items + extra, 0)


def test_gated_spul_gate_recall_sets_how_many_forget_rows_get_the_prompt(tiny_lm, toy, fake_embedder):
    """`gate_recall`: the gate's threshold flags that share of the forget training rows out of fold (the
    flags the training check serves by) and is saved with the gate; without it, TPR - FPR decides."""
    from spul.methods import get_method
    from spul.prompting import Encoder, Template, Verbalizer

    template = Template()
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    retain, forget = toy.train_retain, toy.train_forget
    texts, labels = retain.texts + forget.texts, retain.labels + forget.labels
    is_forget = [False] * len(retain) + [True] * len(forget)
    shares = {}
    for recall in (None, 0.5, 1.0):
        options = {"gate": True, "gate_embedder": fake_embedder, "gate_recall": recall}
        method = get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options)
        method.items(texts, labels, is_forget, 0)
        flags = np.array(method.gate_flags)
        shares[recall] = flags[len(retain) :].mean()
        if recall is not None:
            assert recall <= shares[recall] < recall + 1 / len(forget) + 1e-9
            assert method.config.hyperparameters()["gate_recall"] == recall
        else:
            assert "gate_recall" not in method.config.hyperparameters()  # older manifests stay the same
    assert shares[1.0] == 1.0
    # gate_focus: the retain rows the gate flags out of fold are the items a batch draws more of
    method = get_method("spul")(
        tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options, gate_refuse=0.1, gate_focus=0.5
    )
    items = method.items(texts, labels, is_forget, 0)
    assert method.focus_share == 0.5 and method.config.hyperparameters()["gate_focus"] == 0.5
    served = list(zip(method.gate_flags, method.gate_refused, is_forget, strict=True))
    flagged_retain = [f and not r and not forget for f, r, forget in served]
    assert any(flagged_retain) and [it.focus for it in items] == flagged_retain
    assert any(r and not forget for _, r, forget in served)  # a refused retain row is never focused
    with pytest.raises(SpulError, match="gate_focus"):
        get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, gate_focus=0.5)
    with pytest.raises(SpulError, match="gate_recall"):
        get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, gate=True, gate_recall=0.0)
    # gate_c: the gate's regularisation reaches its fit (a lower C, smaller weights) and is recorded when set
    norms, encoder = {}, Encoder(tiny_lm.tokenizer, template)
    for c in (1.0, 0.01):
        method = get_method("spul")(tiny_lm, encoder, *words, **options, gate_c=c)
        method.items(texts, labels, is_forget, 0)
        norms[c] = np.linalg.norm(method.gate_rule.gate.weights)
        assert method.config.hyperparameters().get("gate_c") == (None if c == 1.0 else c)
    assert norms[0.01] < norms[1.0] / 2
    for bad in ({"gate": True, "gate_c": 0.0}, {"gate_c": 0.5}):  # > 0, and given only with --gate
        with pytest.raises(SpulError, match="gate_c"):
            get_method("spul")(tiny_lm, encoder, *words, **bad)
    with pytest.raises(SpulError, match="only with --gate"):
        get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, gate_recall=0.5)


def test_target_monitor_scores_held_rows_as_served_with_a_gate(monkeypatch):
    """The monitor evaluates held rows with the gated prompt's guard (apply_guard's own tests show a guard
    giving the prompt to flagged rows alone), and records each check's ACC and target."""
    import spul.target

    seen = []

    def fake_evaluate(lm, held, **options):
        seen.append(options)
        return {"train_forget": {"acc": 20.0}, "train_retain": {"acc": 90.0}}

    monkeypatch.setattr(spul.target, "evaluate", fake_evaluate)
    reference = {"train_forget": {"acc": 88.0}, "train_retain": {"acc": 91.0}}
    guard, prefix = object(), object()
    splits = ("train_forget", "train_retain")
    for passed in (None, guard):
        monitor = TargetMonitor(None, None, None, Target(), reference, splits, prefix_fn=prefix, guard=passed)
        assert monitor(5)
        assert seen[-1]["guard"] is passed and seen[-1]["prefix_fn"] is prefix
        assert monitor.checks[-1]["acc"] == {"train_forget": 20.0, "train_retain": 90.0}


def test_training_check_reads_the_unprompted_answers_from_the_text_cache(tiny_lm, toy, monkeypatch):
    """A suffix prompt's check takes the frozen model's own answers (its retain baseline) from the cached
    text states, with no forward of its own, and gets the same baseline as a check without a cache."""
    from spul.methods import get_method, soft_prompt
    from spul.prompting import Encoder, Template, Verbalizer

    template = Template()
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    retain, forget = toy.train_retain, toy.train_forget
    flags = [False] * len(retain) + [True] * len(forget)
    measured = {}
    for cache_mb in (2048, 0):
        options = {"num_virtual_tokens": 2, "prompt_position": "suffix", "text_cache_mb": cache_mb}
        method = get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options)
        items = method.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
        check, held_out = method.training_check(items, 0)
        method.prepare(items, first=sorted(held_out))
        assert bool(method.text_cache) == (cache_mb > 0)
        with monkeypatch.context() as patch:
            if cache_mb:
                full_forward = soft_prompt.answer_logits

                def prompted_only(model, batch, prefix=None, full_forward=full_forward, **kwargs):
                    assert prefix is not None, "the unprompted answers should come from the text cache"
                    return full_forward(model, batch, prefix, **kwargs)

                patch.setattr(soft_prompt, "answer_logits", prompted_only)
            measured[cache_mb] = check()[2]
    assert measured[2048]["retain_before"] == measured[0]["retain_before"]
    assert measured[2048]["forget_acc"] == measured[0]["forget_acc"]


def test_gated_spul_fits_its_gate_on_the_augmented_copies_too(tiny_lm, toy, fake_embedder, monkeypatch):
    """With `augment`, the gate trains on every row and its rewritten copies (a row and its copies in one
    fold), and flags every item; without it, on the rows alone and with plain folds."""
    from spul.methods import get_method
    from spul.methods import spul as spul_method
    from spul.prompting import Encoder, Template, Verbalizer

    template = Template()
    words = [Verbalizer.build(tiny_lm.tokenizer, w, template) for w in (toy.label_words, toy.generic_words)]
    retain, forget = toy.train_retain, toy.train_forget
    flags = [False] * len(retain) + [True] * len(forget)
    seen = []
    real_fit = spul_method.fit_text_gate

    def spy(forget_texts, retain_texts, *args):
        seen.append((list(forget_texts), list(retain_texts), args[4]))
        return real_fit(forget_texts, retain_texts, *args)

    monkeypatch.setattr(spul_method, "fit_text_gate", spy)
    n = len(flags)
    for augment in ([], ["case"]):
        options = {"gate": True, "gate_embedder": fake_embedder, "augment": augment}
        method = get_method("spul")(tiny_lm, Encoder(tiny_lm.tokenizer, template), *words, **options)
        items = method.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
        assert len(method.gate_flags) == len(items) == n * (1 + len(augment))
    (plain_f, plain_r, no_groups), (aug_f, aug_r, groups) = seen
    assert no_groups is None and len(plain_f) == len(forget) and len(plain_r) == len(retain)
    assert len(aug_f) == 2 * len(forget) and len(aug_r) == 2 * len(retain)
    assert set(plain_f) < set(aug_f) and any(t.isupper() or t.istitle() for t in set(aug_f) - set(plain_f))
    # forget rows first: each source row's id twice (the row, its copy)
    assert sorted(groups[: len(aug_f)].tolist()) == sorted(list(range(len(retain), n)) * 2)
