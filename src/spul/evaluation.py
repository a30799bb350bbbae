"""Four-split evaluation of a (possibly prompted) model; the paper's Vanilla / Fine-tuned / method rows."""

from __future__ import annotations

from typing import Any

from spul.data.splits import SPLITS, UnlearningData
from spul.engine import PrefixFn, score
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
    batch_size: int = 32,
    max_length: int = 512,
    splits: tuple[str, ...] = SPLITS,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """ACC / weighted F1 on each split of the data, with or without a soft prompt.

    `encoder` replaces the plain template encoding (in-context methods put demonstrations before each text).
    """
    template = template or Template()
    encoder = encoder or Encoder(lm.tokenizer, template, max_length)
    verbalizer = Verbalizer.build(lm.tokenizer, data.label_words, template)
    table = {}
    for name in splits:
        split = data[name]
        scores = score(
            lm,
            encoder,
            verbalizer,
            split.texts,
            split.labels,
            batch_size=batch_size,
            prefix_fn=prefix_fn,
            description=name,
            show_progress=show_progress,
        )
        table[name] = split_metrics(split.labels, scores.predicted, len(verbalizer), scores.logprobs)
    return table


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
    rows = {title: unlearned.evaluate(data, batch_size=batch_size, show_progress=show)}
    finetuned = unlearned.finetuned_reference(
        lambda base, adapter: load_model(base, adapter=adapter, **load_options)
    )
    if finetuned is not None:
        rows["Fine-tuned"] = evaluate(
            finetuned, data, template=template, batch_size=batch_size, show_progress=show
        )
    vanilla = load_model(spec, **load_options)
    rows["Vanilla"] = evaluate(vanilla, data, template=template, batch_size=batch_size, show_progress=show)
    return {k: rows[k] for k in ("Vanilla", "Fine-tuned", title) if k in rows}
