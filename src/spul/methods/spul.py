"""SPUL: a soft prompt that makes the frozen model forget (Bhaila et al., 2024)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spul.augment import augmented, check_augmentations
from spul.errors import SpulError
from spul.guardrails import MINILM, PROMPT, Guard
from spul.methods.base import TrainBatch, TrainItem, register
from spul.methods.config import option
from spul.methods.guard import NAME_RATIO, fit_text_gate, forget_names, write_guard
from spul.methods.losses import (
    answer_kl,
    answer_kl_topk,
    answer_nll,
    generic_set_nll,
    label_uniform_kl,
    masked_mean,
    topk_reference,
)
from spul.methods.served_check import served_check
from spul.methods.soft_prompt import SoftPromptConfig, SoftPromptMethod
from spul.target import KEEP_RULES, Target

CHECK_ROWS = 64  # the training check's default: forget rows and held-out retain rows it scores


@dataclass
class SpulConfig(SoftPromptConfig):
    """The soft prompt plus the weights of SPUL's retain and KL terms."""

    alpha: float = option(1.0, "weight of the retain term", flag="--alpha")
    beta: float = option(0.5, "weight of the KL to the unprompted model", flag="--beta")
    forget_loss: str = option(
        "random",
        "forget term: random (CE of one generic word drawn per row, the paper's) or set (-log sum p(g))",
    )
    kl_reference: str = option(
        "recompute",
        "KL reference: recompute (a no-grad unprompted forward per step) or cached (once per row)",
    )
    kl_top_k: int | None = option(None, "cached KL reference: keep the top-k log-probs (none: all, exact)")
    label_uniform: float = option(
        0.0,
        "weight of a forget-row term making the label words equally likely (KL(uniform || label "
        "distribution)), so the probabilities do not give the forgotten label back",
    )
    augment: list[str] = option(
        [],
        "input augmentations: each training row (forget and retain alike) gets one seeded rewritten copy "
        "per name (case, punct, inject, template, demos, append; see spul.augment); gated SPUL fits its "
        "gate on the copies too",
    )
    forget_copies: int = option(
        1, "augment: rewritten copies of each forget row per augmentation (each drawn anew; retain rows: one)"
    )
    gate: bool = option(
        False,
        "gated SPUL: also fit the embedding gate on forget vs retain training rows; the prompt is applied "
        "only to the queries it flags, the others see the model alone",
        flag="--gate",
    )
    gate_embedder: str = option(MINILM, "gated SPUL: the gate's sentence embedder")
    gate_recall: float | None = option(
        None,
        "gated SPUL: the gate's threshold flags this share (0-1] of the forget training rows, out of fold "
        "(none: the threshold maximising TPR - FPR); lower touches fewer retain queries",
    )
    gate_refuse: float = option(
        0.0,
        "gated SPUL: queries the gate scores above the level that at most this share [0, 1) of the retain "
        "training rows reach (out of fold) get the generic answer outright, not the prompt (0: none)",
    )
    gate_c: float = option(
        1.0,
        "gated SPUL: the gate's inverse regularisation strength C (logistic regression; lower fits its "
        "training rows less closely, so they score less unlike unseen rows of their kind)",
    )
    gate_names: bool = option(
        False,
        "gated SPUL: the gate also flags every query naming a name word of the forget rows (as `filter` "
        "derives them): words added to such a query cannot take it past the gate",
    )
    gate_names_refuse: bool = option(
        False,
        "gated SPUL with gate_names: a query naming one of those words that the gate's score flags too gets "
        "the generic answer outright (refused), not the prompt",
    )
    gate_focus: float = option(
        0.0,
        "gated SPUL: this share [0, 1) of each batch's retain rows is drawn from the retain training rows "
        "the gate serves the prompt out of fold (flagged, not refused; 0: drawn uniformly)",
    )
    check_rows: int = option(
        CHECK_ROWS,
        "training check: how many forget rows and held-out retain rows it scores (check_every > 0)",
    )
    check_strata: bool = option(
        False,
        "gated SPUL's training check: hold out retain rows among those the gate serves the prompt and "
        "weigh their ACC drop by that share of the retain rows (a passed row cannot drop; a refused row "
        "drops its unprompted ACC): the drop measured on check_rows prompted rows, not the few in a sample",
    )
    check_keep: str = option(
        "nearest",
        "training check: which check's prompt a run that never meets the target keeps: nearest (fewest "
        "points short, a forget point worth a retain point) or retain_first (the deepest forgetting "
        "within target_retain_drop; none within: the smallest drop)",
    )
    weight_ema: float = option(
        0.0,
        "training check: decay [0, 1) of a moving average of the prompt's weights, updated every step; "
        "each check scores the average and a run keeps it, not one step's weights (0: off)",
    )
    target_forget_acc: float = option(
        Target.forget_acc, "training check: the target's forget ACC, at most (%)"
    )
    target_retain_drop: float = option(
        Target.retain_drop,
        "training check: the target's retain ACC drop from the model before unlearning, at most (points)",
    )

    def check(self) -> None:
        """Known forget loss and KL reference, non-negative weights."""
        super().check()
        if self.forget_loss not in FORGET_LOSSES:
            raise SpulError(f"forget_loss {self.forget_loss!r}: choose one of {', '.join(FORGET_LOSSES)}")
        if self.kl_reference not in KL_REFERENCES:
            raise SpulError(f"kl_reference {self.kl_reference!r}: choose one of {', '.join(KL_REFERENCES)}")
        if self.alpha < 0 or self.beta < 0:
            raise SpulError(f"alpha and beta must be >= 0 (got alpha {self.alpha}, beta {self.beta})")
        if self.kl_top_k is not None and self.kl_top_k < 1:
            raise SpulError(f"kl_top_k must be >= 1 (got {self.kl_top_k})")
        self.require("label_uniform", self.label_uniform >= 0, ">= 0")
        self.require("gate_recall", self.gate_recall is None or 0 < self.gate_recall <= 1, "in (0, 1]")
        self.require("gate_recall", self.gate_recall is None or self.gate, "given only with --gate")
        self.require("gate_refuse", 0 <= self.gate_refuse < 1, "in [0, 1)")
        self.require("gate_refuse", not self.gate_refuse or self.gate, "given only with --gate")
        self.require("gate_c", self.gate_c > 0, "> 0")
        self.require("gate_c", self.gate_c == 1.0 or self.gate, "given only with --gate")
        self.require("gate_focus", 0 <= self.gate_focus < 1, "in [0, 1)")
        self.require("gate_names", not self.gate_names or self.gate, "given only with --gate")
        self.require(
            "gate_names_refuse", not self.gate_names_refuse or self.gate_names, "given only with gate_names"
        )
        self.require("gate_focus", not self.gate_focus or self.gate, "given only with --gate")
        self.require("check_strata", not self.check_strata or self.gate, "given only with --gate")
        self.require("check_rows", self.check_rows >= 1, ">= 1")
        self.require("check_keep", self.check_keep in KEEP_RULES, f"one of {', '.join(KEEP_RULES)}")
        self.require("weight_ema", 0 <= self.weight_ema < 1, "in [0, 1)")
        self.require("target_forget_acc", 0 <= self.target_forget_acc <= 100, "between 0 and 100")
        self.require("target_retain_drop", 0 <= self.target_retain_drop <= 100, "between 0 and 100")
        check_augmentations(self.augment)
        self.require("forget_copies", self.forget_copies >= 1, ">= 1")
        self.require(
            "forget_copies", self.forget_copies == 1 or bool(self.augment), "given only with augment"
        )

    def hyperparameters(self) -> dict[str, Any]:
        """The options; the recipe levers only when not the paper's (older manifests stay as they were)."""
        out = super().hyperparameters()
        for name, paper in (("forget_loss", "random"), ("kl_reference", "recompute")):
            if out[name] == paper:
                del out[name]
        if "kl_reference" not in out:
            del out["kl_top_k"]
        if not out["gate"]:
            for name in GATE_OPTIONS:
                del out[name]
        for name in GATE_OPTIONS[2:]:
            if name in out and not out[name]:  # None or 0: as before the option existed
                del out[name]
        defaults = type(self)()  # terms off and the training check as it was: not recorded
        for name in (
            "label_uniform",
            "augment",
            "forget_copies",
            "check_rows",
            "check_keep",
            "weight_ema",
            "target_forget_acc",
            "target_retain_drop",
            "gate_c",
        ):
            if name in out and out[name] == getattr(defaults, name):
                del out[name]
        return out


FORGET_LOSSES = ("set", "random")
GATE_FOLDS = 5  # gated SPUL: cross-validation folds choosing the gate's threshold
# gated SPUL's options: recorded only with --gate, and from gate_recall on only when set
GATE_OPTIONS = (
    "gate",
    "gate_embedder",
    "gate_recall",
    "gate_refuse",
    "gate_c",
    "gate_focus",
    "gate_names",
    "gate_names_refuse",
    "check_strata",
)
KL_REFERENCES = ("cached", "recompute")


@register
class Spul(SoftPromptMethod):
    """L = L_f + alpha * L_r + beta * L_kl; forget rows learn a generic label, retain rows their true one."""

    name = "spul"
    config_class = SpulConfig
    baseline = False

    @classmethod
    def revision_of(cls, options: dict[str, Any]) -> int:
        """1 for gated SPUL (its gate's thresholds now chosen on out-of-fold scores that read sentences and
        word runs, as served); plain SPUL's runs are as they were."""
        return 1 if options.get("gate") else 0

    def __init__(self, *args, **kwargs):
        """SPUL over its soft prompt; the generic words' first tokens and the KL cache are set up once."""
        super().__init__(*args, **kwargs)
        self.generic_first = torch.tensor(sorted({w[0] for w in self.generic.token_ids}))
        self.label_first = torch.tensor([w[0] for w in self.verbalizer.token_ids])
        self.reference: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # cached KL references
        self.gate_rule = None  # gated SPUL: the gate fitted on the training rows
        self.gate_flags: list[bool] | None = None  # ... and its out-of-fold flag of each training row
        self.gate_refused: list[bool] = []  # ... and whether it refuses the row out of fold
        self.check_flags: list[bool] = []  # ... and its flag of each check-only row (check_items)
        self.check_refused: list[bool] = []  # ... and whether it refuses it
        self.focus_share = self.config.gate_focus
        self.weight_ema = self.config.weight_ema

    def items(self, texts, labels, is_forget, seed):
        """Forget rows get a generic word drawn once per row (seeded); retain rows keep their label.
        Gated SPUL fits its gate on the rows and their rewritten copies (`augment`), so a rewrite does
        not carry a forget query past the gate; a row and its copies share a fold."""
        rng, c = random.Random(seed), self.config
        texts, labels, is_forget, sources = augmented(
            texts, labels, is_forget, c.augment, self.verbalizer.words, seed, c.forget_copies
        )
        if c.gate:
            forget = [i for i, f in enumerate(is_forget) if f]
            retain = [i for i, f in enumerate(is_forget) if not f]
            rows = [[texts[i] for i in forget], [texts[i] for i in retain]]
            groups = np.asarray([sources[i] for i in forget + retain]) if c.augment else None
            self.gate_rule, scores = fit_text_gate(
                *rows, c.gate_embedder, GATE_FOLDS, seed, c.gate_recall, groups, c.gate_refuse, c.gate_c
            )
            in_order = np.zeros(len(texts))
            in_order[forget + retain] = scores  # the gate's scores come forget rows first
            flags, refused = self.gate_rule.gate.bands(in_order)
            if c.gate_names:  # the names of the rows themselves (a copy's appended words are not theirs)
                own = [[texts[i] for i in part if sources[i] == i] for part in (forget, retain)]
                self.gate_rule.names = forget_names(*own, NAME_RATIO, "gate_names", "train without it")
                self.gate_rule.names_refuse = c.gate_names_refuse
                flags, refused = self.gate_rule.named(texts, flags, refused)
            self.gate_flags, self.gate_refused = flags.tolist(), refused.tolist()
        prompts = self.encoder.encode(texts)
        items, none = [], [False] * len(texts)
        flags, refused = self.gate_flags or none, self.gate_refused or none
        for prompt, label, forget, source, flag, refuse in zip(
            prompts, labels, is_forget, sources, flags, refused, strict=True
        ):
            answer = rng.choice(self.generic.token_ids) if forget else self.verbalizer.token_ids[label]
            focus = flag and not refuse and not forget  # a retain row the prompt is served
            items.append(TrainItem(prompt, answer, forget, label, source, focus=focus))
        return items

    def check_items(self, texts, labels):
        """Check-only retain rows, encoded as training rows are; gated SPUL flags them with its gate
        (fitted without them), as they would be served."""
        if self.gate_rule is not None:
            flags, refused = self.gate_rule.bands(texts)
            self.check_flags, self.check_refused = flags.tolist(), refused.tolist()
        prompts = self.encoder.encode(texts)
        answers = [self.verbalizer.token_ids[label] for label in labels]
        return [
            TrainItem(prompt, answer, False, label, check_only=True)
            for prompt, answer, label in zip(prompts, answers, labels, strict=True)
        ]

    def inference_guard(self) -> Guard | None:
        """Gated SPUL: the gate, whose flagged queries get the prompt."""
        return Guard(self.gate_rule, PROMPT) if self.gate_rule is not None else None

    def save(self, folder: Path) -> None:
        """The prompt (peft folder); gated SPUL adds the gate's files and guard.json."""
        super().save(folder)
        if self.gate_rule is not None:
            self.gate_rule.save(Path(folder))
            write_guard(Path(folder), "gate", PROMPT)

    def training_check(self, items, seed):
        """The forget and retain rows scored as served (`spul.methods.served_check`)."""
        return served_check(self, items, seed)

    def loss(self, batch: TrainBatch):
        """The three SPUL terms; each averaged over the forget or retain rows of the batch."""
        forget, retain = batch.is_forget, ~batch.is_forget
        # a suffix prompt's pass also gives the unprompted logits (the exact KL reference) for free
        logits, unprompted = self.logits_pair(batch.batch)
        targets = batch.batch.targets
        nll = answer_nll(logits, targets)
        if self.config.forget_loss == "set" and forget.any():
            loss_f = generic_set_nll(logits[forget], targets[forget], self.generic_first).mean()
        else:
            loss_f = masked_mean(nll, forget)
        loss_r = masked_mean(nll, retain)
        loss_kl = logits.sum() * 0.0
        if self.config.beta > 0 and retain.any():
            if unprompted is not None:
                loss_kl = answer_kl(logits[retain], unprompted[retain], batch.batch.targets[retain]).mean()
            else:
                loss_kl = self._kl(logits[retain], batch.batch.select(retain)).mean()
        total = loss_f + self.config.alpha * loss_r + self.config.beta * loss_kl
        terms = {"L_f": loss_f.item(), "L_r": loss_r.item(), "L_kl": loss_kl.item()}
        if self.config.label_uniform > 0 and forget.any():
            loss_u = label_uniform_kl(logits[forget], targets[forget], self.label_first).mean()
            total = total + self.config.label_uniform * loss_u
            terms["L_u"] = loss_u.item()
        return total, {"loss": total.item()} | terms

    def _kl(self, logits: torch.Tensor, ref_batch) -> torch.Tensor:
        """KL(prompted || unprompted) at the answer positions of the retain rows."""
        if self.config.kl_reference == "recompute":
            # The frozen model's own unprompted distribution, recomputed here with no grad: no second
            # copy of the model, and only a [retain rows, answer length, vocab] tensor at a time.
            with torch.no_grad():
                ref = self.logits(ref_batch, prompted=False)
            return answer_kl(logits, ref, ref_batch.targets)
        # Cached: the unprompted model never changes, so each retain row's reference is computed the
        # first time the row is seen and kept (top-k log-probs + tail mass, or all of it with k None).
        cache = self.reference
        missing = [i for i, row in enumerate(ref_batch.index) if row not in cache]
        if missing:
            wanted = torch.zeros(len(ref_batch.index), dtype=torch.bool)
            wanted[missing] = True
            sub = ref_batch.select(wanted.to(ref_batch.input_ids.device))
            with torch.no_grad():
                values, ids = topk_reference(self.logits(sub, prompted=False), self.config.kl_top_k)
            for j, row in enumerate(sub.index):
                cache[row] = (values[j].cpu(), None if ids is None else ids[j].cpu())
        refs = [cache[row] for row in ref_batch.index]
        ref_logq = torch.stack([r[0] for r in refs]).to(logits.device)
        ref_ids = None if refs[0][1] is None else torch.stack([r[1] for r in refs]).to(logits.device)
        return answer_kl_topk(logits, ref_logq, ref_ids, ref_batch.targets)
