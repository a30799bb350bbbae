"""The adaptive black-box attack of `spul audit`: a query-budgeted search over appended words."""

from __future__ import annotations

import numpy as np
import pytest

from spul.audit.adaptive import AttackSettings, adaptive_attack, margin, neutral_vocabulary
from spul.engine import OTHER


def test_neutral_vocabulary_keeps_balanced_words_by_frequency():
    texts = ["a good film", "good film plot", "bad film plot", "a bad plot", "film cast", "film cast"]
    labels = [1, 1, 0, 0, 1, 0]
    # film in 5 texts (3 positive, 2 negative), plot in 3 (1 / 2: smoothed 0.4 / 0.6, a factor 1.5),
    # cast in 2 (1 / 1); good and bad under one label only
    assert neutral_vocabulary(texts, labels, size=10) == ["film", "plot", "cast"]
    assert neutral_vocabulary(texts, labels, size=1) == ["film"]
    assert "plot" not in neutral_vocabulary(texts, labels, size=10, balance=1.2)


def test_margin_is_true_minus_best_other_label():
    logprobs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    expected = [np.log(0.7 / 0.2), np.log(0.3 / 0.6)]
    assert margin(logprobs, np.array([0, 1])) == pytest.approx(expected)


def counting_oracle(word: str, needed: int, calls: list):
    """A served model that answers the true label once `word` was appended `needed` times, "other" before;
    label probabilities move towards the true label with each copy (what the greedy search follows)."""

    def oracle(texts, labels):
        calls.append(len(texts))
        counts = np.array([t.split().count(word) for t in texts])
        predicted = np.where(counts >= needed, labels, OTHER)
        logprobs = np.zeros((len(texts), 2))
        logprobs[np.arange(len(texts)), labels] = counts  # margin = copies of `word`
        return predicted, logprobs, None

    return oracle


VOCABULARY = ["key", "one", "two", "three", "four", "five"]


def test_greedy_search_follows_the_margin_and_random_walk_does_not():
    texts, labels = [f"row {i}" for i in range(20)], [i % 2 for i in range(20)]
    settings = AttackSettings(rows=20, budget=200, words=4, feedback="probabilities")
    greedy = adaptive_attack(counting_oracle("key", 3, []), texts, labels, VOCABULARY, settings, seed=0)
    walk = adaptive_attack(
        counting_oracle("key", 3, []),
        texts,
        labels,
        VOCABULARY,
        AttackSettings(**(vars(settings) | {"feedback": "labels"})),
        seed=0,
    )
    assert greedy["by_budget"]["200"]["recovered"] == 100.0
    assert walk["by_budget"]["200"]["recovered"] < greedy["by_budget"]["200"]["recovered"]
    assert greedy["by_budget"]["1"]["recovered"] == 0.0  # query 1 is the row as it is
    assert set(greedy["by_budget"]) == {"1", "50", "200"}


def test_rows_recovered_stop_spending_queries_and_budget_bounds_the_rest():
    calls: list = []
    texts, labels = ["row key key key", "row", "row"], [1, 0, 1]
    settings = AttackSettings(rows=3, budget=7, words=2)
    result = adaptive_attack(counting_oracle("key", 3, calls), texts, labels, ["a", "b"], settings)
    assert calls == [3] + [2] * 6  # the first row is answered right as it is; the others never
    assert result["queries"] == 15
    outcome = result["by_budget"]["7"]
    assert outcome["recovered"] == pytest.approx(100 / 3)
    assert outcome["answered_a_label"] == pytest.approx(100 / 3) and outcome["first_label_correct"] == 100.0


def test_first_label_answer_counts_a_wrong_label_even_when_recovered_later():
    def oracle(texts, labels):  # answers the wrong label until query 3, then the true one
        oracle.round += 1
        labels = np.asarray(labels)
        predicted = (
            labels
            if oracle.round >= 3
            else (1 - labels if oracle.round == 2 else np.full(len(labels), OTHER))
        )
        return predicted, np.zeros((len(labels), 2)), None

    oracle.round = 0
    result = adaptive_attack(oracle, ["a", "b"], [0, 1], VOCABULARY, AttackSettings(rows=2, budget=5))
    outcome = result["by_budget"]["5"]
    assert outcome["recovered"] == 100.0 and outcome["first_label_correct"] == 0.0


def test_recovered_past_the_guard_counts_rows_the_guard_did_not_flag_when_recovered():
    def oracle(texts, labels):  # "zero": right at once, flagged; the others: right once "key" hides them
        labels = np.asarray(labels)
        hidden = np.array(["key" in t for t in texts])
        right = np.array([t.startswith("zero") for t in texts]) | hidden
        return np.where(right, labels, OTHER), np.zeros((len(texts), 2)), ~hidden

    settings = AttackSettings(rows=3, budget=60, words=2, feedback="labels")
    texts = ["zero", "one", "two two"]
    outcome = adaptive_attack(oracle, texts, [0, 1, 0], ["key", "a", "b"], settings)["by_budget"]["60"]
    assert outcome["recovered"] == 100.0  # rows 1 and 2 both find "key" (a random walk over 3 words)
    assert outcome["recovered_past_guard"] == pytest.approx(200 / 3)
    unguarded = adaptive_attack(counting_oracle("key", 1, []), texts, [0, 1, 0], ["key"], settings)
    assert "recovered_past_guard" not in unguarded["by_budget"]["60"]  # no guard: nothing to get past


def test_attack_is_seeded():
    def noisy(texts, labels):  # the true label when the appended words hash a certain way
        predicted = np.array([hash(t) % 7 == 0 for t in texts], dtype=np.int64)
        predicted = np.where(predicted == 1, labels, OTHER)
        return predicted, np.zeros((len(texts), 2)), None

    texts, labels = [f"row {i}" for i in range(30)], [i % 2 for i in range(30)]
    settings = AttackSettings(rows=30, budget=20, words=3, feedback="labels")
    runs = [adaptive_attack(noisy, texts, labels, VOCABULARY, settings, seed=s) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize(
    "bad", [{"feedback": "logits"}, {"budget": 0}, {"words": 0}, {"rows": -1}, {"vocabulary": 0}]
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AttackSettings(**bad)


def test_markdown_shows_rows_recovered_past_the_guard_for_a_guarded_artifact():
    from spul.audit.markdown import _attack_lines

    def result(past):
        outcome = {"recovered": 30.0, "answered_a_label": 33.0, "first_label_correct": 81.8}
        return {"by_budget": {"200": outcome | ({} if past is None else {"recovered_past_guard": past})}}

    adaptive = {
        "settings": {"rows": 100, "budget": 200, "words": 5, "feedback": "probabilities"},
        "vocabulary_size": 259,
        "fine_tuned": {"test_forget": result(None)},
        "unlearned": {"test_forget": result(10.0)},
    }
    lines = _attack_lines(adaptive, {"attack_met": True})
    assert "| model | split | recovered @200 | past the guard @200 | first label correct |" in lines
    assert "| fine_tuned | test_forget | 30.0 | — | 81.8 (of 33% answered) |" in lines
    assert "| unlearned | test_forget | 30.0 | 10.0 | 81.8 (of 33% answered) |" in lines
    adaptive["unlearned"]["test_forget"] = result(None)  # no guard: no such column
    assert not any("past the guard" in line for line in _attack_lines(adaptive, {"attack_met": True}))
