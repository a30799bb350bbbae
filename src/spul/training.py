"""The training loop shared by every method: AdamW, cosine schedule with warmup, clipping, checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_cosine_schedule_with_warmup

from spul.errors import SpulError
from spul.io import write_file_atomic
from spul.methods.base import Method, TrainBatch, TrainItem
from spul.progress import progress_bar


@dataclass
class TrainConfig:
    """Optimisation hyperparameters (defaults: the paper's reference code)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.001
    warmup_ratio: float = 0.1
    max_grad_norm: float = 0.3
    seed: int = 0
    checkpoint_every: int = 100  # optimizer steps between checkpoints
    log_every: int = 10
    # Balanced batches: this share of every batch is forget rows (an epoch = one pass over the forget
    # rows; retain rows are drawn in turn from reshuffled passes over all of them). None: uniform batches.
    forget_share: float | None = None
    # Steps between calls of the `monitor` given to `train` (which may stop the run); 0 = never.
    monitor_every: int = 0
    # Steps between the method's own check on training rows (`Method.training_check`): the best check's
    # weights are kept and the run stops where the check says the target is met; 0 = never.
    check_every: int = 0


@dataclass
class TrainResult:
    """What a run produced besides the trained module: logs, per-epoch evaluations, timing."""

    history: list[dict[str, float]] = field(default_factory=list)
    epoch_evals: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    wall_time_s: float = 0.0
    steps: int = 0
    stopped_at: int | None = None  # the step where `monitor` or the training check ended the run early
    best_step: int | None = None  # the step whose weights were kept by the training check
    checks: list[dict[str, Any]] = field(default_factory=list)  # step, score, reached, what it measured


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (all that a checkpoint needs of the model)."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy trained parameters back into the module."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def weight_average(module: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the module's weights with this decay (None for 0: no average)."""
    if not decay:
        return None
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


@contextmanager
def averaged_weights(module: torch.nn.Module, average: AveragedModel | None) -> Iterator[None]:
    """Within: the module holds the average's weights (no average: its own); after: its own again."""
    if average is None:
        yield
        return
    own = trainable_state(module)
    load_trainable_state(module, dict(average.module.named_parameters()))  # (copied in, not cloned first)
    try:
        yield
    finally:
        load_trainable_state(module, own)


def collate(items: list[TrainItem], method: Method, index: list[int]) -> TrainBatch:
    """Pad a list of items into a batch on the model's device."""
    batch = method.encoder.batch([it.prompt for it in items], [it.answer for it in items], index)
    flags = torch.tensor([it.is_forget for it in items], dtype=torch.bool)
    return TrainBatch(batch.to(method.lm.device), flags.to(method.lm.device))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch, a pure function of (seed, epoch) so resuming replays it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class BatchPlan:
    """Which item rows make up the batch of each optimizer step: a pure function of the step.

    Uniform: each epoch is a shuffled pass over all items. Balanced (`forget_share`): every batch holds
    `round(share * batch_size)` forget rows (an epoch is one pass over them) and retain rows for the rest,
    taken in turn from shuffled passes over all retain rows, so a large retain split costs nothing extra.
    With `focus_share` (balanced batches only), that share of a batch's retain rows is taken in turn from
    passes over the retain items marked `focus`, the rest from all retain rows as before.
    """

    def __init__(self, items: list[TrainItem], config: TrainConfig, focus_share: float = 0.0):
        self.config = config
        self.forget = [i for i, it in enumerate(items) if it.is_forget]
        self.retain = [i for i, it in enumerate(items) if not it.is_forget]
        self.focus = [i for i in self.retain if items[i].focus]
        self.n = len(items)
        share = config.forget_share
        if share is not None and not 0 < share < 1:
            raise SpulError(f"forget_share {share}: expected a fraction between 0 and 1")
        if not 0 <= focus_share < 1:
            raise SpulError(f"focus share {focus_share}: expected a fraction in [0, 1)")
        self.balanced = share is not None and bool(self.forget) and bool(self.retain)
        self.n_focus = 0
        if self.balanced:
            self.n_forget = min(config.batch_size - 1, max(1, round(share * config.batch_size)))
            self.n_retain = config.batch_size - self.n_forget
            self.steps_per_epoch = math.ceil(len(self.forget) / self.n_forget)
            if focus_share and self.focus:  # none marked: every retain row is drawn alike
                self.n_focus = min(self.n_retain - 1, max(1, round(focus_share * self.n_retain)))
        else:
            if focus_share:
                raise SpulError(
                    "a focus share needs balanced batches (forget_share) with forget and retain rows"
                )
            self.steps_per_epoch = math.ceil(self.n / config.batch_size)
        self._orders: dict[str, tuple[int, list[int]]] = {}

    def _order(self, what: str, rows: list[int], k: int) -> list[int]:
        """Pass `k` over `rows`, shuffled (only the latest pass of each kind is kept)."""
        if self._orders.get(what, (None,))[0] != k:
            salt = {"all": 0, "forget": 1, "retain": 2, "focus": 3}[what]  # "all": old runs' uniform order
            order = epoch_order(len(rows), self.config.seed + 7919 * salt, k)
            self._orders[what] = (k, [rows[i] for i in order])
        return self._orders[what][1]

    def _stream(self, what: str, rows: list[int], start: int, count: int) -> list[int]:
        """Items `start`..`start + count` of the endless sequence of shuffled passes over `rows`."""
        out = []
        for k in range(start, start + count):
            passes, pos = divmod(k, len(rows))
            out.append(self._order(what, rows, passes)[pos])
        return out

    def rows(self, step: int) -> list[int]:
        """The item indices of the batch at `step` (0-based)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        size = self.config.batch_size
        if not self.balanced:
            order = self._order("all", list(range(self.n)), epoch)
            return order[offset * size : (offset + 1) * size]
        n_forget = self.n_forget
        forget = self._order("forget", self.forget, epoch)[offset * n_forget : (offset + 1) * n_forget]
        n_plain = self.n_retain - self.n_focus
        retain = self._stream("retain", self.retain, step * n_plain, n_plain)
        if self.n_focus:
            retain += self._stream("focus", self.focus, step * self.n_focus, self.n_focus)
        return forget + retain


def run_fingerprint(config: TrainConfig, method: Method, items: list[TrainItem]) -> str:
    """Hash of what determines the run: a checkpoint only resumes the same run."""
    h = hashlib.sha256(
        json.dumps([asdict(config), method.name, method.hyperparameters()], default=str).encode()
    )
    for it in items:
        key = (it.prompt, it.answer, it.is_forget) + ((True,) if it.focus else ())  # (older runs: no focus)
        h.update(repr(key).encode())
    return h.hexdigest()


class _StopFlag:
    """First Ctrl-C asks the loop to checkpoint and stop at the next step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopFlag:
        self._previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    write_file_atomic(path, lambda tmp: torch.save(payload, tmp))


def _all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    # Data parallel without wrapping the module: average gradients over processes.
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def train(
    method: Method,
    items: list[TrainItem],
    config: TrainConfig,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    evaluate_fn: Callable[[], dict[str, dict[str, float]]] | None = None,
    show_progress: bool = True,
    stop_after_steps: int | None = None,
    monitor: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train the method's module on the items; resumable from `checkpoint` with `resume=True`.

    With `evaluate_fn`, the model is evaluated after each epoch and the best epoch's weights are kept.
    `monitor(step)` is called every `config.monitor_every` steps (module in eval mode); when it returns
    True training ends there (e.g. the unlearning target is reached). With the method's `weight_ema`, a
    moving average of the weights is updated every step and is what evaluations, checks and the monitor
    score and what the run keeps. `stop_after_steps` simulates an interruption (tests).
    """
    module = method.trainable()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:  # nothing to optimise (in-context methods)
        return TrainResult()
    check, held_out = None, set()
    if config.check_every and (made := method.training_check(items, config.seed)) is not None:
        check, held_out = made
    # References (e.g. the untrained model's answers) come before a checkpoint's weights are loaded.
    method.prepare(items, first=sorted(held_out))
    # rows the check holds out (and check-only rows, with or without a check) are never trained on
    trained = [i for i, it in enumerate(items) if i not in held_out and not it.check_only]
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    plan = BatchPlan([items[i] for i in trained], config, method.focus_share)
    steps_per_epoch = plan.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps
    )
    fingerprint = run_fingerprint(config, method, items)
    result = TrainResult()
    best_state, best_score, step = None, -math.inf, 0
    average = weight_average(module, method.weight_ema)  # checks score it, the run keeps it

    if resume and checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)
        if saved["fingerprint"] != fingerprint:
            raise SpulError(
                f"{checkpoint} belongs to another run (other data or settings); remove it or drop --resume"
            )
        load_trainable_state(module, saved["state"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        step = saved["step"]
        result = TrainResult(**json.loads(saved["result"]))
        best_state, best_score = saved.get("best_state"), saved.get("best_score", -math.inf)
        if average is not None:
            average.load_state_dict(saved["average"])

    def save(at_step: int) -> None:
        if checkpoint is None or rank != 0:
            return
        payload = {
            "fingerprint": fingerprint,
            "state": trainable_state(module),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": at_step,
            "result": json.dumps(asdict(result)),
            "best_score": best_score,
        }
        if best_state is not None:
            payload["best_state"] = best_state
        if average is not None:
            payload["average"] = average.state_dict()
        _save_checkpoint(checkpoint, payload)

    start = time.perf_counter() - result.wall_time_s
    window: list[dict[str, float]] = []
    module.train()
    with _StopFlag() as stop, progress_bar(method.name, total=total_steps, enabled=show_progress) as advance:
        advance(step)
        while step < total_steps:
            chosen = [trained[i] for i in plan.rows(step)[rank::world]]
            batch = collate([items[i] for i in chosen], method, chosen)
            with method.lm.training_attention(batch.batch.input_ids.shape[1]):
                loss, terms = method.loss(batch)  # the kernel chosen here runs the backward too
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if distributed:
                _all_reduce_grads(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update_parameters(module)
            step += 1
            advance(1)
            window.append(terms | {"grad_norm": float(grad_norm)})
            if step % config.log_every == 0 or step == total_steps:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                result.history.append(
                    {"step": step, "epoch": step / steps_per_epoch, "lr": scheduler.get_last_lr()[0]} | mean
                )
                window = []
            if step % steps_per_epoch == 0 and evaluate_fn is not None:
                module.eval()
                with averaged_weights(module, average):
                    table = evaluate_fn()
                    if (score := method.selection_score(table)) > best_score:
                        best_score, best_state = score, trainable_state(module)
                        result.best_epoch = step // steps_per_epoch
                module.train()
                result.epoch_evals.append({"epoch": step // steps_per_epoch, "score": score, "table": table})
            result.wall_time_s = time.perf_counter() - start
            result.steps = step
            if step % config.checkpoint_every == 0 or step == total_steps:
                save(step)
            if check is not None and step % config.check_every == 0:
                module.eval()
                with averaged_weights(module, average):
                    score, reached, measured = check()
                    if score > best_score or reached:
                        best_score, best_state, result.best_step = score, trainable_state(module), step
                module.train()
                measured = {k: round(v, 4) for k, v in measured.items()}
                result.checks.append({"step": step, "score": round(score, 4), "reached": reached} | measured)
                if reached:
                    result.stopped_at = step
                    save(step)
                    break
            if monitor is not None and config.monitor_every and step % config.monitor_every == 0:
                module.eval()
                with averaged_weights(module, average):
                    reached = monitor(step)
                module.train()
                if reached:
                    result.stopped_at = step
                    result.wall_time_s = time.perf_counter() - start
                    save(step)
                    break
            if stop.requested or (stop_after_steps is not None and step >= stop_after_steps):
                save(step)
                where = f" ({checkpoint})" if checkpoint else ""
                raise TrainingInterrupted(
                    f"stopped at step {step}/{total_steps}; checkpoint saved{where}; rerun with --resume"
                )
    module.eval()
    if best_state is None and average is not None:  # (before any step the average is the start weights)
        best_state = trainable_state(average.module)  # no check kept a state: the run ends on the average
    if best_state is not None:
        load_trainable_state(module, best_state)
    return result


class TrainingInterrupted(SpulError):
    """Training stopped early on request; a checkpoint was saved."""
