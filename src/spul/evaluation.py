"""Four-split evaluation of a (possibly prompted) model; the paper's Vanilla / Fine-tuned / method rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spul.data.splits import SPLITS, UnlearningData
from spul.engine import PrefixFn, Scores, score, score_with_and_without
from spul.guardrails import PROMPT, Decision, Guard, apply_guard, withhold_label
from spul.metrics import split_metrics
from spul.models import LoadedModel, load_model
from spul.prompting import Encoder, Template, Verbalizer


def evaluate(
    lm: LoadedModel,
    data: UnlearningData,
    *,
    template: Template | None = None,
    prefix_fn: PrefixFn | None = None,
    encoder: Encoder | None = None,
    guard: Guard | None = None,
    withhold: bool = False,
    batch_size: int = 32,
    max_length: int = 512,
    splits: tuple[str, ...] = SPLITS,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """ACC / weighted F1 on each split of the data, with or without a soft prompt.

    `encoder` replaces the plain template encoding (in-context methods put demonstrations before each text);
    `guard` answers the texts it flags with its action (spul.guardrails.apply_guard); `withhold`: an
    unlearned model's answer policy (spul.guardrails.withhold_label).
    """
    template = template or Template()
    encoder = encoder or Encoder(lm.tokenizer, template, max_length)
    verbalizer = Verbalizer.build(lm.tokenizer, data.label_words, template)
    options = {
        "prefix_fn": prefix_fn,
        "guard": guard,
        "withhold": withhold,
        "batch_size": batch_size,
        "show_progress": show_progress,
    }

    def one(texts, labels, name):
        return (guarded_score(lm, encoder, verbalizer, texts, labels, description=name, **options),)

    return _tables(data, splits, len(verbalizer), one)[0]


def _tables(data: UnlearningData, splits, num_labels: int, scorer) -> list[dict[str, dict[str, float]]]:
    """One four-split table per Scores that `scorer(texts, labels, split name)` returns."""
    tables: list[dict[str, dict[str, float]]] = []
    for name in splits:
        split = data[name]
        results = scorer(split.texts, split.labels, name)
        tables = tables or [{} for _ in results]
        for table, scores in zip(tables, results, strict=True):
            table[name] = split_metrics(split.labels, scores.predicted, num_labels, scores.logprobs)
    return tables


def guarded_score(
    lm: LoadedModel,
    encoder: Encoder,
    verbalizer: Verbalizer,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    prefix_fn: PrefixFn | None = None,
    guard: Guard | None = None,
    withhold: bool = False,
    decision: Decision | None = None,
    **options: Any,
) -> Scores:
    """`engine.score` with the artifact's guard applied (a gated prompt: prompted where the guard flags
    the text, the model alone elsewhere; both from one pass for a suffix prompt); `withhold`: the
    unlearned model's answer policy (spul.guardrails.withhold_label). The texts the guard answers generic
    whatever the model says are never scored: a refused query costs the gate alone. `decision`: the
    guard's decision on these texts when the caller already has it."""
    n = len(texts)
    if decision is None and guard is not None and n:
        decision = guard.decide(texts)
    asked = np.arange(n) if decision is None else np.flatnonzero(~decision.generic)
    some_texts, some_labels = [texts[i] for i in asked], [labels[i] for i in asked]
    if guard is not None and guard.action == PROMPT and prefix_fn is not None:
        prompted, plain = score_with_and_without(
            lm, encoder, verbalizer, some_texts, some_labels, prefix_fn, **options
        )
        prompted, plain = prompted.placed(asked, n), plain.placed(asked, n)
        return served(prompted, texts, guard, withhold, plain, decision)
    scores = score(lm, encoder, verbalizer, some_texts, some_labels, prefix_fn=prefix_fn, **options)
    return served(scores.placed(asked, n), texts, guard, withhold, decision=decision)


def served(
    scores: Scores,
    texts: Sequence[str],
    guard: Guard | None,
    withhold: bool,
    unprompted: Scores | None = None,
    decision: Decision | None = None,
) -> Scores:
    """An artifact's answers from its model's scores: the guard's action, then the answer policy."""
    scores = apply_guard(scores, texts, guard, unprompted, decision)
    return withhold_label(scores) if withhold else scores


def evaluate_with_and_without(
    lm: LoadedModel,
    data: UnlearningData,
    prefix_fn: PrefixFn,
    *,
    template: Template | None = None,
    guard: Guard | None = None,
    withhold: bool = False,
    batch_size: int = 32,
    show_progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(table with the soft prompt, table of the same model without it): one pass for a suffix prompt.
    A gated prompt's `guard` gives the first table the prompt only where it flags the text; `withhold`
    applies the unlearned model's answer policy to the first table."""
    template = template or Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, data.label_words, template)

    def pair(texts, labels, name):
        prompted, plain = score_with_and_without(
            lm, encoder, verbalizer, texts, labels, prefix_fn,
            batch_size=batch_size, description=name, show_progress=show_progress,
        )  # fmt: skip
        return served(prompted, texts, guard, withhold, plain), plain

    with_prompt, without = _tables(data, SPLITS, len(verbalizer), pair)
    return with_prompt, without


def compare(
    unlearned: Any,
    data: UnlearningData,
    *,
    title: str,
    batch_size: int = 32,
    show_progress: bool = True,
    **load_options: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """Table 1's rows for a saved artifact (an `Unlearned`): the untouched base model ("Vanilla"), the
    fine-tuned model it started from ("Fine-tuned", when it has one) and the artifact itself (`title`).
    `load_options` (device, precision, device_map) load the other two models."""
    spec = unlearned.manifest["base_model"]["spec"]
    template, show = unlearned.template, show_progress
    finetuned = unlearned.finetuned_reference(
        lambda base, adapter: load_model(base, adapter=adapter, **load_options)
    )
    rows = {}
    guard = unlearned.guard
    plain_prompt = unlearned.prompt is not None and unlearned.plain_encoder
    if finetuned is unlearned.lm and plain_prompt and (guard is None or guard.action == PROMPT):
        # a soft prompt (gated or not) over the fine-tuned model itself: both rows from one pass where it can
        rows[title], rows["Fine-tuned"] = evaluate_with_and_without(
            finetuned, data, unlearned.prefix_fn, template=template, guard=guard,
            withhold=unlearned.withhold, batch_size=batch_size, show_progress=show,
        )  # fmt: skip
    else:
        rows[title] = unlearned.evaluate(data, batch_size=batch_size, show_progress=show)
    if finetuned is not None and "Fine-tuned" not in rows:
        rows["Fine-tuned"] = evaluate(
            finetuned, data, template=template, batch_size=batch_size, show_progress=show
        )
    vanilla = load_model(spec, **load_options)
    rows["Vanilla"] = evaluate(vanilla, data, template=template, batch_size=batch_size, show_progress=show)
    return {k: rows[k] for k in ("Vanilla", "Fine-tuned", title) if k in rows}
