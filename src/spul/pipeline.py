"""Train an artifact (fine-tune or unlearn): build the method, train it, evaluate, save `spul.json` with it.

Loading a saved artifact is `spul.unlearned.load_unlearned` (re-exported here with `Unlearned`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from spul.artifacts import model_fingerprint, save_artifact, trainable_parameters
from spul.data.splits import Split, UnlearningData
from spul.evaluation import evaluate
from spul.methods import MethodConfig, get_method, resolve_options
from spul.models import LoadedModel, is_main_process
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig, train
from spul.unlearned import Unlearned, load_unlearned

__all__ = ["Unlearned", "checkpoint_path", "load_unlearned", "train_artifact"]


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
    method_options: dict[str, Any] | MethodConfig | None = None,
    config: TrainConfig | None = None,
    eval_data: UnlearningData | None = None,
    eval_each_epoch: bool = False,
    resume: bool = False,
    batch_size_eval: int = 32,
    show_progress: bool = True,
    selection: dict[str, Any] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    monitor: Callable[[Any], Callable[[int], bool]] | None = None,
    check_retain: Split | None = None,
) -> dict[str, Any]:
    """Train a method on train_retain + train_forget, evaluate, and save the artifact folder atomically.

    `method_options` is the method's config (`spul.methods.resolve_options`) or a dict of its options.
    `selection` records how the training rows were chosen (data spec, limit, tau, seed), so that a later
    evaluation can score the train splits on the rows actually trained on. `extra_manifest` adds keys to
    spul.json (e.g. `requests`: the deletion requests the artifact covers). `monitor(method)` makes the
    callback that `train` calls every `config.monitor_every` steps to stop at a target. `check_retain`:
    retain rows the method's training check scores and training never sees (`Selection.draw_check`).
    """
    out = Path(out)
    template = template or Template()
    config = config or TrainConfig()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, data.label_words, template)
    generic = Verbalizer.build(lm.tokenizer, data.generic_words, template)
    base_fingerprint = model_fingerprint(lm.model)
    torch.manual_seed(config.seed)
    options = method_options
    if not isinstance(options, MethodConfig):
        options = resolve_options(method_name, options)  # refuses unknown or ill-typed options
    method = get_method(method_name)(lm, encoder, verbalizer, generic, config=options)
    forget, retain = data.train_forget, data.train_retain
    items = method.items(
        retain.texts + forget.texts,
        retain.labels + forget.labels,
        [False] * len(retain) + [True] * len(forget),
        config.seed,
    )
    if check_retain is not None:
        items += method.check_items(check_retain.texts, check_retain.labels)
    eval_data = eval_data or data

    def run_eval() -> dict[str, dict[str, float]]:
        return evaluate(
            lm,
            eval_data,
            template=template,
            prefix_fn=method.prefix_fn(),
            encoder=method.inference_encoder(),
            guard=method.inference_guard(),
            withhold=method.unlearns,
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
        "precision": {"asked": lm.precision, "computed_in": lm.compute_precision},  # training and metrics
        "trainable_parameters": trainable_parameters(method.trainable()),
        "training_time_s": round(result.wall_time_s, 2),
        "steps": result.steps,
        "stopped_at": result.stopped_at,
        "best_epoch": result.best_epoch,
        **({"best_step": result.best_step, "checks": result.checks} if result.checks else {}),
        "epoch_evals": result.epoch_evals,
        "history": result.history,
    } | (extra_manifest or {})
    if is_main_process():
        save_artifact(out, method.save, manifest)
        ckpt.unlink(missing_ok=True)
    return manifest
