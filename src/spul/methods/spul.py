"""SPUL: a soft prompt that makes the frozen model forget (Bhaila et al., 2024)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

from spul.engine import PrefixFn, answer_logits
from spul.errors import SpulError
from spul.methods.base import Method, TrainBatch, TrainItem, register
from spul.methods.losses import (
    answer_kl,
    answer_kl_topk,
    answer_nll,
    generic_set_nll,
    masked_mean,
    topk_reference,
)
from spul.prompting import Batch

PROMPT_TYPES = ("ptuning", "prompt-tuning")
FORGET_LOSSES = ("set", "random")  # -log sum_g p(g), or CE of one generic word drawn per row (paper)
KL_REFERENCES = ("cached", "recompute")


def prompt_config(prompt_type: str, num_virtual_tokens: int, encoder_hidden: int, token_dim: int):
    """The peft config of a soft prompt: P-tuning (MLP re-parametrised, as the paper) or prompt tuning."""
    if prompt_type == "ptuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=num_virtual_tokens,
            encoder_hidden_size=encoder_hidden,
            token_dim=token_dim,
        )
    if prompt_type == "prompt-tuning":
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens, token_dim=token_dim
        )
    raise SpulError(f"unknown prompt type {prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")


class SoftPromptMethod(Method):
    """Shared machinery of methods that train a soft prompt over the frozen model."""

    kind = "prompt"

    def __init__(
        self,
        lm,
        encoder,
        verbalizer,
        generic,
        *,
        prompt_type="ptuning",
        num_virtual_tokens=30,
        encoder_hidden=128,
        init_prompt=None,
        **options,
    ):
        prompt = {
            "prompt_type": prompt_type,
            "num_virtual_tokens": num_virtual_tokens,
            "encoder_hidden": encoder_hidden,
        }
        if init_prompt is not None:  # recorded only when used: other manifests stay as they were
            prompt["init_prompt"] = str(init_prompt)
        options = prompt | options
        super().__init__(lm, encoder, verbalizer, generic, **options)
        config = prompt_config(
            options["prompt_type"],
            options["num_virtual_tokens"],
            options["encoder_hidden"],
            lm.model.get_input_embeddings().embedding_dim,
        )
        # peft wraps the model without copying it; we use the prompt encoder and feed embeddings ourselves
        # (peft's own forward ignores position ids, which matters with padding).
        start = saved_prompt(lm, init_prompt, prompt_type, num_virtual_tokens) if init_prompt else None
        self.peft = get_peft_model(lm.model, config)
        self.peft.prompt_encoder.to(lm.device)
        if start is not None:
            with torch.no_grad():
                self.peft.prompt_encoder["default"].embedding.weight.copy_(start)

    def trainable(self) -> torch.nn.Module:
        """The prompt encoder (P-tuning MLP or plain embeddings)."""
        return self.peft.prompt_encoder

    def prompt(self) -> torch.Tensor:
        """The p virtual-token embeddings, [p, hidden]."""
        return self.peft.get_prompt(batch_size=1)[0]

    def prefix_fn(self) -> PrefixFn:
        """The current soft prompt."""
        return self.prompt

    def save(self, folder: Path) -> None:
        """Save as a peft adapter folder (loadable with PeftModel.from_pretrained)."""
        self.peft.save_pretrained(str(folder))

    def logits(self, batch: Batch, prompted: bool = True) -> torch.Tensor:
        """Answer-position logits with or without the soft prompt."""
        with self.lm.autocast():
            return answer_logits(self.lm.model, batch, self.prompt() if prompted else None)


@register
class Spul(SoftPromptMethod):
    """L = L_f + alpha * L_r + beta * L_kl; forget rows learn a generic label, retain rows their true one."""

    name = "spul"

    def __init__(
        self,
        lm,
        encoder,
        verbalizer,
        generic,
        *,
        alpha=1.0,
        beta=0.5,
        forget_loss="random",
        kl_reference="recompute",
        kl_top_k=None,
        **options,
    ):
        if forget_loss not in FORGET_LOSSES:
            raise SpulError(f"forget_loss {forget_loss!r}: choose one of {', '.join(FORGET_LOSSES)}")
        if kl_reference not in KL_REFERENCES:
            raise SpulError(f"kl_reference {kl_reference!r}: choose one of {', '.join(KL_REFERENCES)}")
        extra = {}  # recorded only when not the paper's setting: older manifests stay as they were
        if forget_loss != "random":
            extra["forget_loss"] = forget_loss
        if kl_reference != "recompute":
            extra |= {"kl_reference": kl_reference, "kl_top_k": kl_top_k}
        super().__init__(lm, encoder, verbalizer, generic, alpha=alpha, beta=beta, **extra, **options)
        self.alpha, self.beta = alpha, beta
        self.forget_loss, self.kl_reference, self.kl_top_k = forget_loss, kl_reference, kl_top_k
        self.generic_first = torch.tensor(sorted({w[0] for w in generic.token_ids}))
        self._reference: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row -> top-k log q, ids

    def items(self, texts, labels, is_forget, seed):
        """Forget rows get a generic word drawn once per row (seeded); retain rows keep their label."""
        rng = random.Random(seed)
        prompts = self.encoder.encode(texts)
        items = []
        for prompt, label, forget in zip(prompts, labels, is_forget, strict=True):
            answer = rng.choice(self.generic.token_ids) if forget else self.verbalizer.token_ids[label]
            items.append(TrainItem(prompt, answer, forget))
        return items

    def loss(self, batch: TrainBatch):
        """The three SPUL terms; each averaged over the forget or retain rows of the batch."""
        forget, retain = batch.is_forget, ~batch.is_forget
        logits = self.logits(batch.batch)
        targets = batch.batch.targets
        nll = answer_nll(logits, targets)
        if self.forget_loss == "set" and forget.any():
            forget_nll = generic_set_nll(logits[forget], targets[forget], self.generic_first)
            loss_f = forget_nll.mean()
        else:
            loss_f = masked_mean(nll, forget)
        loss_r = masked_mean(nll, retain)
        loss_kl = logits.sum() * 0.0
        if self.beta > 0 and retain.any():
            loss_kl = self._kl(logits[retain], batch.batch.select(retain)).mean()
        total = loss_f + self.alpha * loss_r + self.beta * loss_kl
        return total, {
            "loss": total.item(),
            "L_f": loss_f.item(),
            "L_r": loss_r.item(),
            "L_kl": loss_kl.item(),
        }

    def _kl(self, logits: torch.Tensor, ref_batch) -> torch.Tensor:
        """KL(prompted || unprompted) at the answer positions of the retain rows."""
        if self.kl_reference == "recompute":
            # The frozen model's own unprompted distribution, recomputed here with no grad: no second
            # copy of the model, and only a [retain rows, answer length, vocab] tensor at a time.
            with torch.no_grad():
                ref = self.logits(ref_batch, prompted=False)
            return answer_kl(logits, ref, ref_batch.targets)
        # Cached: the unprompted model never changes, so each retain row's reference is computed the
        # first time the row is seen and kept (top-k log-probs + tail mass, or exact with k None).
        missing = [i for i, row in enumerate(ref_batch.index) if row not in self._reference]
        if missing:
            wanted = torch.zeros(len(ref_batch.index), dtype=torch.bool)
            wanted[missing] = True
            sub = ref_batch.select(wanted.to(ref_batch.input_ids.device))
            with torch.no_grad():
                values, ids = topk_reference(self.logits(sub, prompted=False), self.kl_top_k)
            for j, row in enumerate(sub.index):
                self._reference[row] = (values[j].cpu(), None if ids is None else ids[j].cpu())
        refs = [self._reference[row] for row in ref_batch.index]
        ref_logq = torch.stack([r[0] for r in refs]).to(logits.device)
        ref_ids = None if refs[0][1] is None else torch.stack([r[1] for r in refs]).to(logits.device)
        return answer_kl_topk(logits, ref_logq, ref_ids, ref_batch.targets)


def load_prompt_encoder(lm, folder: Path) -> PeftModel:
    """Attach a saved soft prompt (peft folder) to a loaded model."""
    peft = PeftModel.from_pretrained(lm.model, str(folder))
    peft.prompt_encoder.to(lm.device)
    peft.eval()
    return peft


def saved_prompt(lm, folder: str | Path, prompt_type: str, num_virtual_tokens: int) -> torch.Tensor:
    """The embeddings of a saved prompt, to continue training from (plain prompt tuning only).

    peft saves a P-tuning prompt as its output embeddings, without the MLP that made them, so training
    can continue from a saved prompt only as plain prompt tuning of those embeddings.
    """
    from safetensors.torch import load_file

    from spul.artifacts import check_base_model, model_fingerprint, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("kind") != "prompt":
        raise SpulError(f"--init-prompt {folder}: holds a {manifest.get('kind')}, not a soft prompt")
    check_base_model(manifest, model_fingerprint(lm.model), folder)
    if prompt_type != "prompt-tuning":
        raise SpulError(
            "--init-prompt continues a saved prompt as plain prompt tuning (peft saves a P-tuning prompt "
            "without its MLP): add --prompt-type prompt-tuning"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise SpulError(f"--init-prompt {folder}: no adapter_model.safetensors")
    embeddings = load_file(str(weights)).get("prompt_embeddings")
    if embeddings is None or embeddings.dim() != 2:
        raise SpulError(f"--init-prompt {weights}: no prompt_embeddings tensor")
    if embeddings.shape[0] != num_virtual_tokens:
        raise SpulError(
            f"--init-prompt {folder} has {embeddings.shape[0]} virtual tokens: pass --p {embeddings.shape[0]}"
        )
    return embeddings.float()


# Named SPUL recipes: method options and training settings. "paper" is the paper's reference setting
# (Bhaila et al. 2024: P-tuning p 30, lr 1e-4, clip 0.3, batch 32, AdamW + cosine, a random generic word,
# a KL reference, 10 epochs); "fast" is spul's default, chosen by benchmarks/bench_forgetting.py.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "method": {"prompt_type": "ptuning", "num_virtual_tokens": 30, "alpha": 1.0, "beta": 0.5},
        "training": {"lr": 1e-4, "max_grad_norm": 0.3, "batch_size": 32, "epochs": 10},
    },
    "fast": {
        "method": {
            "prompt_type": "ptuning",
            "num_virtual_tokens": 30,
            "alpha": 1.0,
            "beta": 0.5,
            "forget_loss": "set",
            "kl_reference": "cached",
        },
        "training": {"lr": 2e-3, "max_grad_norm": 1.0, "batch_size": 16, "epochs": 10, "forget_share": 0.5},
    },
}


def recipe_settings(name: str, overrides: dict[str, Any] | None = None, seed: int = 0):
    """A recipe's method options and TrainConfig, with `overrides` (method options or training fields)."""
    from dataclasses import fields

    from spul.training import TrainConfig

    if name not in RECIPES:
        raise SpulError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    method, training = dict(recipe["method"]), dict(recipe["training"]) | {"seed": seed}
    train_fields = {f.name for f in fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        (training if key in train_fields else method)[key] = value
    return method, TrainConfig(**training)
