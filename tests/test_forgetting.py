"""Unlearning moves the forget rows and not the retain rows: every registered method, trained through
`train_artifact`, saved and reloaded, on the tiny model (and SPUL once on the real SmolLM2).

Each row gets a score whose rise means "forgotten": for the methods that teach forget rows a generic word
(SPUL, RL) the log-odds of a generic answer over a label answer; for the rest -log P(true label). The mean
change on the forget rows must exceed the mean change on the retain rows by a clear margin, so swapping
the forget/retain flags anywhere on the way from the data to the loss fails these tests. The guards
(filter, gate) train nothing: every forget row must get the generic answer and every retain row the
untouched model's, so a swap there fails too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import WordFinder, make_tiny_lm

from spul.audit.probes import EntityFinder
from spul.data.splits import Split, UnlearningData
from spul.engine import score
from spul.guardrails import apply_guard
from spul.methods import METHODS
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig

# The text is the whole prompt: the row's last word (the forget tag) sits right before the answer.
TEMPLATE = Template("{text}")
WORDS = ["gorgeous", "witty", "bleak", "routine", "charming", "desperate", "film", "movie", "music"]
MARGIN = 0.5  # nats; measured gaps are 1.2 to 5.7
EPOCHS = 4

# method -> (what forgetting raises, options, learning rate)
CASES = {
    "spul": ("generic", {"num_virtual_tokens": 4}, 3e-2),
    "rl": ("generic", {}, 3e-3),
    "ga": ("true_loss", {}, 3e-3),
    "ga_gd": ("true_loss", {}, 3e-3),
    "ga_kl": ("true_loss", {}, 3e-3),
    "npo": ("true_loss", {}, 3e-3),
    "retrain": ("true_loss", {"r": 4}, 3e-3),
    "finetune": ("learns_all", {"r": 4}, 3e-3),
    "icul": ("context", {}, 0.0),
    "filter": ("guard", {}, 0.0),  # names derived from the forget rows (WordFinder stands in for spaCy)
    "gate": ("guard", {"embedder": "test-hashing"}, 0.0),  # the fake embedder of conftest
}


def rows(tag: str, n: int, offset: int) -> list[str]:
    """n distinct three-word texts ending in `tag`."""
    return [" ".join(WORDS[(offset + i * k) % len(WORDS)] for k in (1, 2, 4)) + f" {tag}" for i in range(n)]


def split(name: str, texts: list[str]) -> Split:
    return Split(name, texts, [i % 2 for i in range(len(texts))], f"{name}.csv")


def tagged_data() -> UnlearningData:
    """8 retain rows ending in 'acting', 8 forget rows ending in 'sandler' (labels alternate)."""
    parts = {
        "train_retain": rows("acting", 8, 0),
        "train_forget": rows("sandler", 8, 1),
        "test_retain": rows("acting", 4, 5),
        "test_forget": rows("sandler", 4, 6),
    }
    return UnlearningData({name: split(name, texts) for name, texts in parts.items()}, name="tagged")


def row_scores(
    lm, encoder, prefix_fn, data: UnlearningData, split_name: str, guard=None
) -> dict[str, np.ndarray]:
    """Per row: log P(true label word), and log-odds of a generic word over a label word (label words
    answered through `guard` when given)."""
    part = data[split_name]
    found = {}
    for key, words in (("label", data.label_words), ("generic", data.generic_words)):
        verbalizer = Verbalizer.build(lm.tokenizer, words, TEMPLATE)
        scores = score(
            lm, encoder, verbalizer, part.texts, part.labels, prefix_fn=prefix_fn, show_progress=False
        )
        found[key] = apply_guard(scores, part.texts, guard if key == "label" else None).logprobs
    true = found["label"][np.arange(len(part)), part.labels]
    odds = np.logaddexp.reduce(found["generic"], axis=1) - np.logaddexp.reduce(found["label"], axis=1)
    return {"true_loss": -true, "generic": odds, "true_logp": true}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model saved as a folder, the data, and the untouched model's row scores (one thread:
    a hidden-32 model gains nothing from more, and on a busy CPU they make it ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("forgetting") / "tiny-model"
    lm = make_tiny_lm()
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    data = tagged_data()
    base = load_model(str(folder), device="cpu", precision="fp32")
    encoder = Encoder(base.tokenizer, TEMPLATE)
    before = {s: row_scores(base, encoder, None, data, s) for s in ("train_forget", "train_retain")}
    yield folder, data, before
    torch.set_num_threads(threads)


def test_every_registered_method_has_a_forgetting_case():
    assert set(CASES) == set(METHODS)


def unlearn(name, folder, data, out):
    _, options, lr = CASES[name]
    lm = load_model(str(folder), device="cpu", precision="fp32")
    config = TrainConfig(epochs=EPOCHS, batch_size=8, lr=lr, warmup_ratio=0.0, seed=0)
    train_artifact(
        name, lm, data, out, template=TEMPLATE, method_options=options, config=config, show_progress=False
    )
    return load_unlearned(out, device="cpu", precision="fp32")


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[0] not in ("context", "guard")])
def test_training_moves_forget_rows_not_retain_rows(setup, tmp_path, name):
    folder, data, before = setup
    goal = CASES[name][0]
    unlearned = unlearn(name, folder, data, tmp_path / name)
    after = {
        s: row_scores(unlearned.lm, unlearned.encoder, unlearned.prefix_fn, data, s)
        for s in ("train_forget", "train_retain")
    }

    def change(split_name, key):
        return float(np.mean(after[split_name][key] - before[split_name][key]))

    if goal == "learns_all":  # fine-tuning memorises every row alike: both true labels become likelier
        assert change("train_forget", "true_logp") > MARGIN
        assert change("train_retain", "true_logp") > MARGIN
        return
    forget, retain = change("train_forget", goal), change("train_retain", goal)
    assert forget - retain > MARGIN, (
        f"{name}: {goal} changed by {forget:+.2f} on forget, {retain:+.2f} on retain"
    )


def test_icul_puts_each_forget_row_before_itself_and_no_retain_row(setup, tmp_path):
    folder, data, _ = setup
    unlearned = unlearn("icul", folder, data, tmp_path / "icul")
    tokenizer = unlearned.lm.tokenizer

    def seen(text):  # how often the text occurs in the prompt the model answers
        return tokenizer.decode(unlearned.encoder.encode([text])[0]).count(text)

    assert [seen(t) for t in data.train_forget.texts] == [2] * len(data.train_forget)  # demo + query
    assert [seen(t) for t in data.train_retain.texts] == [1] * len(data.train_retain)  # the query only
    plain = Encoder(tokenizer, TEMPLATE)
    assert unlearned.encoder.encode(data.test_retain.texts) != plain.encode(data.test_retain.texts)


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[0] == "guard"])
def test_guards_answer_forget_rows_generic_and_retain_rows_as_before(
    setup, tmp_path, monkeypatch, fake_embedder, name
):
    monkeypatch.setattr(EntityFinder, "create", staticmethod(WordFinder))
    folder, data, before = setup
    unlearned = unlearn(name, folder, data, tmp_path / name)
    after = {
        s: row_scores(unlearned.lm, unlearned.encoder, unlearned.prefix_fn(), data, s, unlearned.guard)
        for s in ("train_forget", "train_retain")
    }
    uniform = np.log(1 / len(data.label_words))
    assert np.allclose(after["train_forget"]["true_logp"], uniform), f"{name}: a forget row got through"
    assert not np.allclose(before["train_forget"]["true_logp"], uniform)  # so the guard changed them
    assert np.array_equal(after["train_retain"]["true_logp"], before["train_retain"]["true_logp"]), (
        f"{name}: a retain row was answered generic"
    )
