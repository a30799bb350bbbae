"""The product's verbs as functions: train an artifact (fine-tune or unlearn), load it, predict."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spul.artifacts import (
    check_base_model,
    model_fingerprint,
    read_manifest,
    save_artifact,
    trainable_parameters,
)
from spul.data.splits import UnlearningData
from spul.engine import score
from spul.errors import SpulError
from spul.evaluation import evaluate
from spul.methods import get_method
from spul.methods.spul import load_prompt_encoder
from spul.models import LoadedModel, is_main_process, load_model
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig, train


def checkpoint_path(out: Path) -> Path:
    """Where a run writing `out` keeps its resumable checkpoint."""
    return out.with_name(out.name + ".ckpt.pt")


def train_artifact(
    method_name: str,
    lm: LoadedModel,
    data: UnlearningData,
    out: str | Path,
    *,
    template: Template | None = None,
    method_options: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    eval_data: UnlearningData | None = None,
    eval_each_epoch: bool = False,
    resume: bool = False,
    batch_size_eval: int = 32,
    show_progress: bool = True,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a method on train_retain + train_forget, evaluate, and save the artifact folder atomically.

    `selection` records how the training rows were chosen (data spec, limit, tau, seed), so that a later
    evaluation can score the train splits on the rows actually trained on.
    """
    out = Path(out)
    template = template or Template()
    config = config or TrainConfig()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, data.label_words, template)
    generic = Verbalizer.build(lm.tokenizer, data.generic_words, template)
    base_fingerprint = model_fingerprint(lm.model)
    torch.manual_seed(config.seed)
    method = get_method(method_name)(lm, encoder, verbalizer, generic, **(method_options or {}))
    forget, retain = data.train_forget, data.train_retain
    items = method.items(
        retain.texts + forget.texts,
        retain.labels + forget.labels,
        [False] * len(retain) + [True] * len(forget),
        config.seed,
    )
    eval_data = eval_data or data

    def run_eval() -> dict[str, dict[str, float]]:
        return evaluate(
            lm,
            eval_data,
            template=template,
            prefix_fn=method.prefix_fn(),
            batch_size=batch_size_eval,
            show_progress=show_progress,
        )

    ckpt = checkpoint_path(out)
    result = train(
        method,
        items,
        config,
        checkpoint=ckpt,
        resume=resume,
        evaluate_fn=run_eval if eval_each_epoch else None,
        show_progress=show_progress,
    )
    metrics = run_eval()
    manifest = {
        "method": method.name,
        "kind": method.kind,
        "base_model": {"spec": lm.spec, "adapter": lm.adapter, "fingerprint": base_fingerprint},
        "template": asdict(template),
        "label_words": list(data.label_words),
        "generic_words": list(data.generic_words),
        "hyperparameters": {"method": method.hyperparameters(), "training": asdict(config)},
        "data": {
            "train": data.fingerprint(),
            "forget_sha256": data.train_forget.fingerprint(),
            "eval": eval_data.fingerprint(),
            "selection": selection,
        },
        "metrics": metrics,
        "trainable_parameters": trainable_parameters(method.trainable()),
        "training_time_s": round(result.wall_time_s, 2),
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "epoch_evals": result.epoch_evals,
        "history": result.history,
    }
    if is_main_process():
        save_artifact(out, method.save, manifest)
        ckpt.unlink(missing_ok=True)
    return manifest


class Unlearned:
    """A frozen model with its unlearning prompt always applied: `.predict(texts)`, `.evaluate(data)`."""

    def __init__(self, lm: LoadedModel, folder: Path, manifest: dict[str, Any]):
        self.lm = lm
        self.folder = folder
        self.manifest = manifest
        self.template = Template(**manifest["template"])
        self.encoder = Encoder(lm.tokenizer, self.template)
        self.verbalizer = Verbalizer.build(lm.tokenizer, manifest["label_words"], self.template)
        peft = load_prompt_encoder(lm, folder)
        with torch.no_grad():
            # The prompt is fixed at inference: compute its embeddings once, not per query.
            self.prompt = peft.get_prompt(batch_size=1)[0].detach()

    def prefix_fn(self) -> torch.Tensor:
        """The fixed soft prompt embeddings."""
        return self.prompt

    def predict(
        self, texts: list[str], batch_size: int = 32, show_progress: bool = False
    ) -> list[dict[str, Any]]:
        """Label and label probabilities (normalised over the label words) of each text, prompt applied."""
        scores = score(
            self.lm,
            self.encoder,
            self.verbalizer,
            texts,
            [0] * len(texts),
            batch_size=batch_size,
            prefix_fn=self.prefix_fn,
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
        """The four-split table of the prompted model."""
        return evaluate(self.lm, data, template=self.template, prefix_fn=self.prefix_fn, **kwargs)


def load_unlearned(
    prompt: str | Path,
    *,
    model: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    device_map: str | None = None,
) -> Unlearned:
    """Load a saved unlearning prompt over its base model (checked to be the model it was trained on)."""
    folder = Path(prompt)
    manifest = read_manifest(folder)
    if manifest.get("kind") != "prompt":
        raise SpulError(
            f"{folder} holds a {manifest.get('kind')} ({manifest.get('method')}), not a soft prompt"
        )
    base = manifest["base_model"]
    adapter = adapter if adapter is not None else base.get("adapter")
    if adapter is not None and not Path(adapter).is_dir():
        raise SpulError(
            f"{folder} was trained over the adapter {adapter}, which is not there; pass --adapter"
        )
    lm = load_model(
        model or base["spec"], adapter=adapter, device=device, precision=precision, device_map=device_map
    )
    check_base_model(manifest, model_fingerprint(lm.model), folder)
    return Unlearned(lm, folder, manifest)
