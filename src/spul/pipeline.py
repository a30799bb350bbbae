"""The product's verbs as functions: train an artifact (fine-tune or unlearn), load it, predict."""

from __future__ import annotations

from collections.abc import Callable
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
from spul.engine import PrefixKV, prefix_kv, score
from spul.errors import SpulError
from spul.evaluation import evaluate
from spul.methods import ARTIFACT_KINDS, get_method
from spul.methods.icul import load_context_encoder
from spul.methods.spul import load_prompt_encoder
from spul.models import LoadedModel, cast_frozen_linears, is_main_process, load_model, merge_adapter
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
    extra_manifest: dict[str, Any] | None = None,
    monitor: Callable[[Any], Callable[[int], bool]] | None = None,
) -> dict[str, Any]:
    """Train a method on train_retain + train_forget, evaluate, and save the artifact folder atomically.

    `selection` records how the training rows were chosen (data spec, limit, tau, seed), so that a later
    evaluation can score the train splits on the rows actually trained on. `extra_manifest` adds keys to
    spul.json (e.g. `requests`: the deletion requests the artifact covers). `monitor(method)` makes the
    callback that `train` calls every `config.monitor_every` steps to stop at a target.
    """
    out = Path(out)
    template = template or Template()
    config = config or TrainConfig()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, data.label_words, template)
    generic = Verbalizer.build(lm.tokenizer, data.generic_words, template)
    base_fingerprint = model_fingerprint(lm.model)
    torch.manual_seed(config.seed)
    method_class = get_method(method_name)
    unknown = sorted(set(method_options or {}) - method_class.option_names())
    if unknown:
        known = ", ".join(sorted(method_class.option_names())) or "none"
        raise SpulError(f"method {method_name!r} has no option {', '.join(unknown)} (its options: {known})")
    method = method_class(lm, encoder, verbalizer, generic, **(method_options or {}))
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
            encoder=method.inference_encoder(),
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
        monitor=monitor(method) if monitor is not None else None,
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
        "stopped_at": result.stopped_at,
        "best_epoch": result.best_epoch,
        "epoch_evals": result.epoch_evals,
        "history": result.history,
    } | (extra_manifest or {})
    if is_main_process():
        save_artifact(out, method.save, manifest)
        ckpt.unlink(missing_ok=True)
    return manifest


class Unlearned:
    """An unlearned model ready to use: `.predict(texts)`, `.evaluate(data)`.

    Whatever the artifact kind: a soft prompt always applied over the base model ("prompt"), an adapter
    merged into it ("adapter"), the unlearned weights themselves ("weights"), or demonstrations put before
    every query ("context"). `lm` is the model that answers; `base_adapter` the fine-tuned base's adapter.
    """

    def __init__(
        self, lm: LoadedModel, folder: Path, manifest: dict[str, Any], base_adapter: str | None = None
    ):
        self.lm = lm
        self.folder = folder
        self.manifest = manifest
        self.kind = manifest.get("kind")
        self.base_adapter = base_adapter if base_adapter is not None else lm.adapter
        self.template = Template(**manifest["template"])
        self.encoder = Encoder(lm.tokenizer, self.template)
        self.verbalizer = Verbalizer.build(lm.tokenizer, manifest["label_words"], self.template)
        self.prompt: torch.Tensor | None = None
        self.prompt_states: PrefixKV | None = None
        if self.kind == "context":
            self.encoder = load_context_encoder(lm, folder, self.template, self.verbalizer)
        if self.kind != "prompt":
            return
        peft = load_prompt_encoder(lm, folder)
        with torch.no_grad(), lm.autocast():
            # The prompt is fixed at inference: its embeddings and its key/value states in every layer
            # are computed once here and reused by every query (None where the model cannot share them).
            self.prompt = peft.get_prompt(batch_size=1)[0].detach()
            self.prompt_states = prefix_kv(lm.model, self.prompt)
        if lm.autocast_dtype is not None:
            # serving only reads the frozen weights: cast them once instead of at every query
            cast_frozen_linears(lm.model, lm.autocast_dtype)

    def prefix_fn(self) -> torch.Tensor | PrefixKV | None:
        """The fixed soft prompt: its precomputed key/value states, else its embeddings (None: no prompt)."""
        return self.prompt_states or self.prompt

    def _prefix(self):
        return self.prefix_fn if self.prompt is not None else None

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
            prefix_fn=self._prefix(),
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
            self.lm, data, template=self.template, prefix_fn=self._prefix(), encoder=self.encoder, **kwargs
        )


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
    kind = manifest.get("kind")
    if kind not in ARTIFACT_KINDS:
        raise SpulError(f"{folder}: unknown artifact kind {kind!r} (known: {', '.join(ARTIFACT_KINDS)})")
    base = manifest["base_model"]
    base_adapter = adapter if adapter is not None else base.get("adapter")
    if kind == "weights":  # a whole model folder: no base model to load or check
        if model is not None or adapter is not None:
            raise SpulError(f"{folder} holds the whole unlearned model; --model and --adapter do not apply")
        lm = load_model(str(folder), device=device, precision=precision, device_map=device_map)
        return Unlearned(lm, folder, manifest, base_adapter=base_adapter)
    if base_adapter is not None and not Path(base_adapter).is_dir():
        raise SpulError(
            f"{folder} was trained over the adapter {base_adapter}, which is not there; pass --adapter"
        )
    lm = load_model(
        model or base["spec"], adapter=base_adapter, device=device, precision=precision, device_map=device_map
    )
    check_base_model(manifest, model_fingerprint(lm.model), folder)
    if kind == "adapter":
        lm.model = merge_adapter(lm.model, folder).eval()
    return Unlearned(lm, folder, manifest)
