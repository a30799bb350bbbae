"""An adaptive black-box attack on the served answer: a query-budgeted random search over appended words.

The attacker sees only what the service returns for a query: the served label (a label word or a generic
"other"), and with `feedback="probabilities"` the label probabilities beside it (none behind a generic
answer: the answer policy of spul.guardrails.withhold_label makes them uniform). Per forget row it appends
`words` words drawn from a vocabulary and, one query at a time, swaps one of them for another word; with
probabilities it keeps a swap when the true label's margin (log p(true) - max log p(other label)) grows
(greedy random search), with labels alone it keeps every swap (random walk).

Three outcomes per row, reported at several budgets:
- `recovered`: some query within the budget is answered with the true label. This is an *oracle* upper
  bound: the search is told when it has succeeded, which a real attacker who does not know the label is not.
- `first_label`: the first query answered with a label word at all. An attacker who does not know the label
  stops there; if that answer is right far more often than half the time (for two labels), the model still
  holds the label. If it is right about half the time, the search only pushed the answer somewhere.
- `recovered_past_guard` (an artifact with a guard, e.g. gated SPUL): rows whose recovering query the guard
  did not flag, so the model without the prompt answered it: the appended words hid the row from the gate.
  The rest of `recovered` moved the prompted model's own answer.

The vocabulary is label-neutral by construction: frequent words of the retain training texts whose share
among positive-label and negative-label texts is balanced, so that an appended word does not carry the
label by itself.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from spul.engine import OTHER

# (texts, true labels) -> (served label index or OTHER per text, [N, K] label-word log-probabilities,
# whether the artifact's guard flagged each text: None when it has no guard)
Oracle = Callable[[list[str], list[int]], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
REPORT_BUDGETS = (1, 50, 200, 1000)
FEEDBACK = ("probabilities", "labels")


@dataclass(frozen=True)
class AttackSettings:
    """How the attack is bounded: rows per forget split, queries per row, appended words, vocabulary."""

    rows: int = 100
    budget: int = 200
    words: int = 5
    vocabulary: int = 2000
    feedback: str = "probabilities"

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK:
            raise ValueError(f"attack feedback must be one of {', '.join(FEEDBACK)}, got {self.feedback!r}")
        for name in ("rows", "budget", "words", "vocabulary"):
            if getattr(self, name) < (0 if name == "rows" else 1):
                raise ValueError(f"attack {name} must be positive, got {getattr(self, name)}")


def neutral_vocabulary(
    texts: Sequence[str], labels: Sequence[int], size: int, balance: float = 1.5
) -> list[str]:
    """The `size` most frequent words (3+ letters) of the texts whose document frequency under each label
    is within a factor `balance` of the others' (add-one smoothed); ties broken alphabetically."""
    per_label: dict[int, Counter] = {}
    for text, label in zip(texts, labels, strict=True):
        per_label.setdefault(label, Counter()).update(set(re.findall(r"[a-z]{3,}", text.lower())))
    totals = {label: sum(1 for y in labels if y == label) for label in per_label}
    overall = Counter()
    for counts in per_label.values():
        overall.update(counts)
    neutral = []
    for word, _ in sorted(overall.items(), key=lambda item: (-item[1], item[0])):
        rates = [(per_label[y][word] + 1) / (totals[y] + 2) for y in per_label]
        if max(rates) <= balance * min(rates):
            neutral.append(word)
            if len(neutral) == size:
                break
    return neutral


def margin(logprobs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p(true label) minus the largest log p of another label word, per row."""
    rows = np.arange(len(labels))
    true = logprobs[rows, labels]
    others = logprobs.copy()
    others[rows, labels] = -np.inf
    return true - others.max(1)


def adaptive_attack(
    oracle: Oracle,
    texts: Sequence[str],
    labels: Sequence[int],
    vocabulary: Sequence[str],
    settings: AttackSettings,
    seed: int = 0,
    advance: Callable[[int], None] = lambda n: None,
) -> dict[str, object]:
    """Run the search on every row (query 1 is the row as it is) and report the share of rows recovered and
    the first label answers' accuracy at each budget up to `settings.budget`; `advance(1)` after each round
    of queries."""
    if not vocabulary:
        raise ValueError("the attack vocabulary is empty (no label-neutral words in the retain texts)")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels, dtype=np.int64)
    n, words = len(texts), settings.words
    suffix = rng.integers(0, len(vocabulary), (n, words))
    best = np.full(n, -np.inf)
    recovered_at = np.zeros(n, dtype=np.int64)  # query number of the first true-label answer; 0: never
    first_label_at = np.zeros(n, dtype=np.int64)  # query number of the first label answer; 0: never
    first_label_right = np.zeros(n, dtype=bool)
    past_guard = None  # per row: recovered by a query the guard did not flag (an oracle with a guard)
    queries = 0
    for query in range(1, settings.budget + 1):
        active = np.flatnonzero(recovered_at == 0)
        if active.size == 0:
            advance(settings.budget - query + 1)
            break
        if query == 1:
            candidate, probed = suffix[active], [texts[i] for i in active]
        else:
            candidate = suffix[active].copy()
            candidate[np.arange(active.size), rng.integers(0, words, active.size)] = rng.integers(
                0, len(vocabulary), active.size
            )
            appended = [" ".join(vocabulary[w] for w in row) for row in candidate]
            probed = [f"{texts[i]} {words_}" for i, words_ in zip(active, appended, strict=True)]
        predicted, logprobs, flagged = oracle(probed, labels_arr[active].tolist())
        queries += active.size
        hit = predicted == labels_arr[active]
        recovered_at[active[hit]] = query
        if flagged is not None:
            past_guard = np.zeros(n, dtype=bool) if past_guard is None else past_guard
            past_guard[active[hit]] = ~np.asarray(flagged, dtype=bool)[hit]
        first = (first_label_at[active] == 0) & (predicted != OTHER)
        first_label_at[active[first]] = query
        first_label_right[active[first]] = hit[first]
        gain = margin(logprobs, labels_arr[active])
        keep = gain > best[active] if settings.feedback == "probabilities" else np.ones(active.size, bool)
        if query > 1:
            suffix[active[keep]] = candidate[keep]
        best[active[keep]] = gain[keep]
        advance(1)
    return {
        "rows": n,
        "queries": int(queries),
        "by_budget": {
            str(b): _outcome(recovered_at, first_label_at, first_label_right, past_guard, b)
            for b in sorted({*(b for b in REPORT_BUDGETS if b <= settings.budget), settings.budget})
        },
    }


def _outcome(
    recovered_at: np.ndarray,
    first_at: np.ndarray,
    first_right: np.ndarray,
    past_guard: np.ndarray | None,
    budget: int,
) -> dict:
    """Shares (percent) of rows recovered and answered a label within `budget` queries, how often that
    first label answer was the true label, and (a guarded artifact) of rows recovered past the guard."""
    answered = (first_at > 0) & (first_at <= budget)
    recovered = (recovered_at > 0) & (recovered_at <= budget)
    outcome = {
        "recovered": 100.0 * float(np.mean(recovered)) if len(first_at) else 0.0,
        "answered_a_label": 100.0 * float(np.mean(answered)) if len(first_at) else 0.0,
        "first_label_correct": 100.0 * float(np.mean(first_right[answered])) if answered.any() else None,
    }
    if past_guard is not None:
        outcome["recovered_past_guard"] = (
            100.0 * float(np.mean(recovered & past_guard)) if len(first_at) else 0.0
        )
    return outcome
