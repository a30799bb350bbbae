"""The unlearning target, checked while training: forget ACC low enough, retain ACC kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spul.data.splits import UnlearningData
from spul.evaluation import evaluate
from spul.guardrails import Guard
from spul.models import LoadedModel
from spul.prompting import Template


@dataclass(frozen=True)
class Target:
    """Forget ACC at most `forget_acc` (%) on every forget split checked; retain ACC at most
    `retain_drop` points below the reference (the model before unlearning) on every retain split."""

    forget_acc: float = 25.0
    retain_drop: float = 3.0

    def reached(self, table: dict[str, dict[str, float]], reference: dict[str, dict[str, float]]) -> bool:
        """True when every split of `table` meets the target."""
        for split, metrics in table.items():
            if "forget" in split and metrics["acc"] > self.forget_acc:
                return False
            if "retain" in split and metrics["acc"] < reference[split]["acc"] - self.retain_drop:
                return False
        return True

    def shortfall(self, forget_acc: float, retain_drop: float) -> float:
        """Points short of the target: forget ACC above its limit plus retain drop beyond its allowance."""
        return max(0.0, forget_acc - self.forget_acc) + max(0.0, retain_drop - self.retain_drop)

    def score(self, forget_acc: float, retain_drop: float, keep: str = "nearest") -> float:
        """How good a check is, higher better (0: the target met). `nearest`: minus the shortfall, a
        forget point worth a retain point; `retain_first`: any check within the retain allowance beats
        every check beyond it, then the deeper forgetting wins (beyond it: the smaller drop)."""
        if keep == "nearest":
            return 0.0 - self.shortfall(forget_acc, retain_drop)  # (0.0 - 0.0: never -0.0)
        excess = retain_drop - self.retain_drop
        if excess > 0:
            return -1000.0 - excess  # forget ACC is at most 100: below every check within the allowance
        return 0.0 - max(0.0, forget_acc - self.forget_acc)


KEEP_RULES = ("nearest", "retain_first")  # Target.score's rules: which check's prompt a run keeps


@dataclass
class TargetMonitor:
    """Evaluates held rows every few steps (a `train(monitor=...)` callback) and says when the target
    is reached. Records each check with the training seconds spent so far (checking time excluded)."""

    lm: LoadedModel
    held: UnlearningData
    template: Template
    target: Target
    reference: dict[str, dict[str, float]]
    splits: tuple[str, ...]
    prefix_fn: Callable[[], Any] | None = None
    encoder: Any = None
    guard: Guard | None = None  # gated SPUL: held rows are scored as served (the prompt where it flags)
    batch_size: int = 32
    checks: list[dict[str, Any]] = field(default_factory=list)
    _started: float = field(default_factory=time.perf_counter)
    _checking_s: float = 0.0

    def __call__(self, step: int) -> bool:
        """Evaluate now; True when the target is reached."""
        began = time.perf_counter()
        table = evaluate(
            self.lm,
            self.held,
            template=self.template,
            prefix_fn=self.prefix_fn,
            encoder=self.encoder,
            guard=self.guard,
            batch_size=self.batch_size,
            splits=self.splits,
            show_progress=False,
        )
        reached = self.target.reached(table, self.reference)
        now = time.perf_counter()
        self.checks.append(
            {
                "step": step,
                "train_s": round(began - self._started - self._checking_s, 2),
                "acc": {split: round(m["acc"], 2) for split, m in table.items()},
                "reached": reached,
            }
        )
        self._checking_s += now - began
        return reached


def check_retain_problem(check_retain: int | None, method: str, check_every: int) -> str | None:
    """Why `check_retain` outside rows cannot be used by this run (None: they can, or none are asked for);
    the one rule behind `spul unlearn --check-retain` and an experiment run's `check_retain`."""
    if check_retain is None:
        return None
    if check_retain < 1:
        return "must be >= 1"
    if method != "spul" or check_every <= 0:
        return "the rows are scored by spul's training check (method spul, check_every > 0)"
    return None
