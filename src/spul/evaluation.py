"""Four-split evaluation of a (possibly prompted) model."""

from __future__ import annotations

from spul.data.splits import SPLITS, UnlearningData
from spul.engine import PrefixFn, score
from spul.metrics import split_metrics
from spul.models import LoadedModel
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
