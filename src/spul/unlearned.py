"""A saved artifact of any kind loaded over its model, ready to predict and evaluate: `load_unlearned`.

What differs between kinds (which model answers, what is put before each query) is looked up in the
artifact-kind registry (spul.methods.kinds); nothing here branches on the kind's name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spul.artifacts import read_manifest
from spul.data.splits import UnlearningData
from spul.engine import PrefixKV
from spul.evaluation import evaluate, guarded_score
from spul.guardrails import Guard
from spul.methods import METHODS, get_kind
from spul.methods.kinds import base_adapter_of
from spul.models import LoadedModel
from spul.prompting import Encoder, Template, Verbalizer
from spul.suffix import SuffixPrompt


class Unlearned:
    """An unlearned model ready to use: `.predict(texts)`, `.evaluate(data)`.

    Whatever the artifact kind: a soft prompt always applied over the base model ("prompt"), an adapter
    merged into it ("adapter"), the unlearned weights themselves ("weights"), demonstrations put before
    every query ("context"), or a rule before the model whose flagged queries get the generic answer
    ("guard"). `lm` is the model that answers; `base_adapter` the fine-tuned base's adapter.
    """

    def __init__(
        self, lm: LoadedModel, folder: Path, manifest: dict[str, Any], base_adapter: str | None = None
    ):
        self.lm = lm
        self.folder = Path(folder)
        self.manifest = manifest
        self.artifact_kind = get_kind(manifest.get("kind"), folder)
        self.kind = self.artifact_kind.name
        self.base_adapter = base_adapter if base_adapter is not None else lm.adapter
        self.template = Template(**manifest["template"])
        self.verbalizer = Verbalizer.build(lm.tokenizer, manifest["label_words"], self.template)
        attached = self.artifact_kind.attach(lm, self.folder, self.template, self.verbalizer)
        self.plain_encoder = attached.encoder is None  # the template alone, no demonstrations
        self.encoder = attached.encoder or Encoder(lm.tokenizer, self.template)
        self.prompt: torch.Tensor | SuffixPrompt | None = attached.prompt
        self.prompt_states: PrefixKV | None = attached.prompt_states
        self.guard: Guard | None = attached.guard
        # the answer policy (spul.guardrails.withhold_label); False: the label probabilities as computed
        method = METHODS.get(manifest.get("method", ""))
        self.withhold = method.unlearns if method is not None else True

    def prefix_fn(self) -> torch.Tensor | PrefixKV | None:
        """The fixed soft prompt: its precomputed key/value states, else its embeddings (None: no prompt)."""
        return self.prompt_states or self.prompt

    def _prefix(self):
        return self.prefix_fn if self.prompt is not None else None

    def shares_model_with(self, manifest: dict[str, Any]) -> bool:
        """True when the artifact of `manifest` goes over this one's loaded model as it is (both leave the
        base model untouched, and it was trained on the same weights): a reload reads only the artifact."""
        other = get_kind(manifest.get("kind"))
        same = manifest["base_model"].get("fingerprint") == self.manifest["base_model"]["fingerprint"]
        return self.artifact_kind.shares_base_model and other.shares_base_model and same

    def with_artifact(self, folder: str | Path, manifest: dict[str, Any]) -> Unlearned:
        """Another artifact over this loaded model (check `shares_model_with(manifest)` first)."""
        return Unlearned(self.lm, Path(folder), manifest, base_adapter=self.base_adapter)

    def finetuned_reference(self, load_model_fn: Callable[[str, str], LoadedModel]) -> LoadedModel | None:
        """The model of the "Fine-tuned" row: None without a fine-tuned base; this loaded model where the
        artifact leaves it as it is (prompt, context); else `load_model_fn(spec, adapter)` (the base model
        with its adapter, reloaded: the loaded one *is* the unlearned model)."""
        if self.base_adapter is None:
            return None
        if self.artifact_kind.shares_base_model:
            return self.lm
        return load_model_fn(self.manifest["base_model"]["spec"], self.base_adapter)

    def untouched_base(self, load_model_fn: Callable[[str], LoadedModel]) -> LoadedModel | None:
        """The base model before any fine-tune, which saw no row (the reference of calibrated membership
        scores), loaded by `load_model_fn(spec)`; None where it is the answering model itself (no fine-tuned
        adapter, and an artifact that leaves the model as it is)."""
        if self.base_adapter is None and self.artifact_kind.shares_base_model:
            return None
        return load_model_fn(self.manifest["base_model"]["spec"])

    def predict(
        self, texts: list[str], batch_size: int = 32, show_progress: bool = False
    ) -> list[dict[str, Any]]:
        """Label and label probabilities (normalised over the label words) of each text, prompt applied (a
        text the guard flags, or answered generic under the answer policy: label "other", uniform
        probabilities)."""
        scores = guarded_score(
            self.lm,
            self.encoder,
            self.verbalizer,
            texts,
            [0] * len(texts),
            prefix_fn=self._prefix(),
            guard=self.guard,
            withhold=self.withhold,
            batch_size=batch_size,
            show_progress=show_progress,
        )
        probs = np.exp(scores.logprobs - scores.logprobs.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        words = self.verbalizer.words
        return [
            {
                "label": words[p] if p >= 0 else "other",
                "probabilities": {w: round(float(x), 6) for w, x in zip(words, row, strict=True)},
            }
            for p, row in zip(scores.predicted, probs, strict=True)
        ]

    def evaluate(self, data: UnlearningData, **kwargs: Any) -> dict[str, dict[str, float]]:
        """The four-split table of the unlearned model."""
        return evaluate(
            self.lm,
            data,
            template=self.template,
            prefix_fn=self._prefix(),
            encoder=self.encoder,
            guard=self.guard,
            withhold=self.withhold,
            **kwargs,
        )


# Keyword options also taken by serve.server.run_server, which passes them on to this loader.
def load_unlearned(
    prompt: str | Path,
    *,
    model: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    device_map: str | None = None,
) -> Unlearned:
    """Load a saved unlearning artifact of any kind (a prompt, adapter or context over its base model,
    checked to be the model it was trained on, or the unlearned weights themselves)."""
    folder = Path(prompt)
    manifest = read_manifest(folder)
    kind = get_kind(manifest.get("kind"), folder)
    load = {"device": device, "precision": precision, "device_map": device_map}
    lm = kind.load_model(folder, manifest, model=model, adapter=adapter, **load)
    return Unlearned(lm, folder, manifest, base_adapter=base_adapter_of(manifest, adapter))
