"""Deep forgetting: the label-uniform term and input augmentation (seeded copies of forget and retain
rows)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from spul.augment import AUGMENTATIONS, augmented
from spul.errors import SpulError
from spul.methods import get_method
from spul.methods.losses import label_uniform_kl
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import collate

TEXTS = ["a witty film.", "a bleak film!", "john's routine movie", "mary's charming music", "sam, so dull"]
LABELS = [1, 0, 0, 1, 0]
FORGET = [False, False, True, True, True]
WORDS = ("negative", "positive")


def test_label_uniform_kl_is_zero_at_uniform_and_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 11)
    targets = torch.tensor([[-100, 4], [-100, 7], [4, 9]])  # row 2: a two-token answer
    label_first = torch.tensor([5, 8])
    got = label_uniform_kl(logits, targets, label_first)
    expected = []
    for row, pos in ((0, 1), (1, 1), (2, 0)):
        q = torch.softmax(logits[row, pos, [5, 8]], -1)
        expected.append(float(sum(0.5 * math.log(0.5 / float(p)) for p in q)))
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    flat = torch.zeros(1, 1, 11)
    flat[0, 0, 5] = flat[0, 0, 8] = 3.0
    assert float(label_uniform_kl(flat, torch.tensor([[1]]), label_first)) == pytest.approx(0.0, abs=1e-6)


def test_spul_adds_the_label_uniform_term_on_forget_rows_only(tiny_lm, toy):
    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, WORDS, template)
    generic = Verbalizer.build(tiny_lm.tokenizer, ("neutral", "unknown"), template)

    def loss_of(weight):
        method = get_method("spul")(
            tiny_lm, encoder, verbalizer, generic, num_virtual_tokens=2, label_uniform=weight
        )
        torch.manual_seed(0)
        method.trainable().apply(lambda m: None)
        r, f = toy.train_retain, toy.train_forget
        items = method.items(
            r.texts[:4] + f.texts[:4], r.labels[:4] + f.labels[:4], [False] * 4 + [True] * 4, 0
        )
        return method, items, method.loss(collate(items, method, list(range(8))))

    method, items, (total, terms) = loss_of(2.0)
    _, _, (total_off, terms_off) = loss_of(0.0)
    assert "L_u" not in terms_off
    forget = [i for i, it in enumerate(items) if it.is_forget]
    batch = collate([items[i] for i in forget], method, forget).batch
    with torch.no_grad():
        logits = method.logits_pair(batch)[0]
    expected = label_uniform_kl(logits, batch.targets, method.label_first).mean()
    assert terms["L_u"] == pytest.approx(float(expected), abs=1e-5)
    combined = terms["L_f"] + terms["L_r"] + 0.5 * terms["L_kl"] + 2.0 * terms["L_u"]  # alpha 1, beta 0.5
    assert float(total) == pytest.approx(combined, abs=1e-4)
    assert float(total_off) == pytest.approx(
        terms_off["L_f"] + terms_off["L_r"] + 0.5 * terms_off["L_kl"], abs=1e-4
    )


def test_augmented_copies_keep_label_and_kind_and_follow_the_seed():
    texts, labels, forget, source = augmented(TEXTS, LABELS, FORGET, ["case", "demos"], WORDS, seed=0)
    n = len(TEXTS)
    assert texts[:n] == TEXTS and len(texts) == 3 * n
    assert source == list(range(n)) * 3
    assert [labels[s] for s in source] == labels and [FORGET[s] for s in source] == forget
    assert texts[n:] != TEXTS + TEXTS
    # demonstrations come from other rows of the same kind, with their true label words
    for text, s in zip(texts[2 * n :], source[2 * n :], strict=True):
        for j, other in enumerate(TEXTS):
            if f'"{other}" Sentiment:' in text:
                assert j != s and FORGET[j] == FORGET[s]
                assert f'"{other}" Sentiment: {WORDS[LABELS[j]]}.' in text
    assert augmented(TEXTS, LABELS, FORGET, ["case", "demos"], WORDS, seed=0)[0] == texts
    assert augmented(TEXTS, LABELS, FORGET, ["case", "demos"], WORDS, seed=1)[0] != texts
    assert augmented(TEXTS, LABELS, FORGET, [], WORDS, seed=0) == (TEXTS, LABELS, FORGET, list(range(n)))


def test_append_adds_retain_words_to_every_row():
    texts, _, _, source = augmented(TEXTS, LABELS, FORGET, ["append"], WORDS, seed=0)
    retain_words = {
        w for t, f in zip(TEXTS, FORGET, strict=True) if not f for w in re.findall(r"[A-Za-z]+", t)
    }
    for text, s in zip(texts[len(TEXTS) :], source[len(TEXTS) :], strict=True):
        assert text.startswith(TEXTS[s] + " ")
        added = text[len(TEXTS[s]) + 1 :].split()
        assert 3 <= len(added) <= 7 and set(added) <= retain_words  # never a forget row's (names)


def test_forget_rows_get_forget_copies_fresh_copies_and_retain_rows_one():
    one = augmented(TEXTS, LABELS, FORGET, ["append"], WORDS, seed=0)
    texts, labels, forget, source = augmented(
        TEXTS, LABELS, FORGET, ["append"], WORDS, seed=0, forget_copies=3
    )
    copies = {
        i: [t for t, s in zip(texts[len(TEXTS) :], source[len(TEXTS) :], strict=True) if s == i]
        for i in range(5)
    }
    assert [len(copies[i]) for i in range(5)] == [3 if f else 1 for f in FORGET]
    assert all(len(set(copies[i])) == 3 for i in range(5) if FORGET[i])  # each copy drawn anew
    assert all(labels[j] == LABELS[s] and forget[j] == FORGET[s] for j, s in enumerate(source))
    assert one == augmented(TEXTS, LABELS, FORGET, ["append"], WORDS, seed=0, forget_copies=1)  # the default
    with pytest.raises(SpulError, match="forget_copies must be >= 1"):
        augmented(TEXTS, LABELS, FORGET, ["append"], WORDS, seed=0, forget_copies=0)


def test_forget_copies_is_refused_without_an_augmentation(tiny_lm):
    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, WORDS, template)
    generic = Verbalizer.build(tiny_lm.tokenizer, ("neutral", "unknown"), template)
    with pytest.raises(SpulError, match=r"--forget-copies \(forget_copies\) must be given only with augment"):
        get_method("spul")(tiny_lm, encoder, verbalizer, generic, num_virtual_tokens=2, forget_copies=2)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_every_augmentation_rewrites_the_text(name):
    texts = augmented(TEXTS, LABELS, FORGET, [name], WORDS, seed=3)[0][len(TEXTS) :]
    assert sum(t != o for t, o in zip(texts, TEXTS, strict=True)) >= 3


def test_bad_augmentation_names_are_refused(tiny_lm):
    with pytest.raises(SpulError, match="unknown augmentation 'shout'"):
        augmented(TEXTS, LABELS, FORGET, ["shout"], WORDS, seed=0)
    with pytest.raises(SpulError, match="given twice"):
        augmented(TEXTS, LABELS, FORGET, ["case", "case"], WORDS, seed=0)


def test_the_training_check_holds_out_the_copies_of_its_held_out_rows(tiny_lm, toy):
    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, WORDS, template)
    generic = Verbalizer.build(tiny_lm.tokenizer, ("neutral", "unknown"), template)
    method = get_method("spul")(tiny_lm, encoder, verbalizer, generic, num_virtual_tokens=2, augment=["case"])
    r, f = toy.train_retain, toy.train_forget
    items = method.items(r.texts + f.texts, r.labels + f.labels, [False] * len(r) + [True] * len(f), 0)
    assert len(items) == 2 * (len(r) + len(f))
    _, excluded = method.training_check(items, seed=0)
    originals = {i for i in excluded if items[i].source == i}
    assert originals and all(not items[i].is_forget for i in excluded)
    assert excluded == {i for i, it in enumerate(items) if it.source in originals}


def test_unlearn_takes_the_deep_options_and_records_them(tmp_path, tiny_model_dir, toy_dir):
    import json

    from typer.testing import CliRunner

    from spul.cli import app

    out = tmp_path / "prompt"
    args = ["unlearn", "--model", tiny_model_dir, "--data", toy_dir, "--out", out, "--epochs", 1, "--p", 2,
            "-q", "--method-args", "augment=case,demos,label_uniform=0.5"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    method = json.loads((out / "spul.json").read_text())["hyperparameters"]["method"]
    assert method["augment"] == ["case", "demos"] and method["label_uniform"] == 0.5
    bad = CliRunner().invoke(app, [str(a) for a in args[:-1]] + ["augment=shout"])
    assert bad.exit_code == 2 and "unknown augmentation 'shout'" in bad.output
