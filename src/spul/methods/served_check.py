"""SPUL's training check: forget rows and held-out retain rows scored as they will be served."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from spul.errors import SpulError
from spul.methods.base import TrainItem
from spul.target import Target

Check = Callable[[], tuple[float, bool, dict[str, float]]]


def served_check(method: Any, items: list[TrainItem], seed: int) -> tuple[Check, set[int]] | None:
    """Every check scores `check_rows` training forget rows and retain rows the prompt never trains
    on: the check-only rows when given (`check_items`), else `check_rows` retain rows held out of
    training (seeded; at most a quarter of them). Cheap with a suffix prompt's cached text. The
    target is met when the forget rows' greedy answer is their label at most `target_forget_acc` %
    of the time and the retain rows' within `target_retain_drop` points of the unprompted model's on
    them, which a prompt cannot reach by memorising its training rows.
    Gated SPUL is checked as it is served: a row gets the prompt only if the gate flagged it out of
    fold. With `check_strata` its held-out retain rows are drawn from those the gate serves the prompt,
    and the drop is their drop times that share of the retain training rows, plus the refused rows'
    unprompted ACC times theirs (a row the gate passes is answered as before: it adds nothing).
    Score (Target.score): with `check_keep=nearest` minus the points the check is short of the target,
    so a run that never meets it keeps the prompt nearest to it, not the one that forgets deepest; with
    `retain_first` the deepest-forgetting prompt within the retain allowance."""
    from spul.training import collate

    rng, c = random.Random(seed), method.config
    check_only = [i for i, it in enumerate(items) if it.check_only]
    trainable = [i for i, it in enumerate(items) if it.source in (None, i) and not it.check_only]
    forget = [i for i in trainable if items[i].is_forget]  # (augmented copies left out)
    retain = [i for i in trainable if not items[i].is_forget]
    gate_flags, refused = None, set()
    if method.gate_flags is not None:
        gate_flags = dict(enumerate(method.gate_flags))
        gate_flags |= dict(zip(check_only, method.check_flags, strict=True))
        refused = {i for i, r in enumerate(method.gate_refused) if r}  # (none refused: empty)
        refused |= {i for i, r in zip(check_only, method.check_refused, strict=False) if r}
    strata = None  # check_strata: (the retain rows served the prompt, those refused)
    if c.check_strata and gate_flags is not None:
        if check_only:
            raise SpulError(
                "check_strata holds out training retain rows: drop --check-retain or check_strata"
            )
        strata = (
            [i for i in retain if gate_flags[i] and i not in refused],
            [i for i in retain if i in refused],
        )
        if len(strata[0]) < 4:
            raise SpulError(
                f"check_strata: the gate serves the prompt {len(strata[0])} retain training row(s), "
                "too few to hold a quarter out (at least 4); drop check_strata"
            )
    pool = strata[0] if strata else retain
    n_held = len(check_only) or min(c.check_rows, len(pool) // 4)
    if not forget or n_held < 1:
        return None
    forget = sorted(rng.sample(forget, min(c.check_rows, len(forget))))
    held_out = check_only or sorted(rng.sample(pool, n_held))
    refused_rows = sorted(rng.sample(strata[1], min(c.check_rows, len(strata[1])))) if strata else []
    # a held-out row's augmented copies are held out with it
    held = set(held_out)
    excluded = held | {i for i, it in enumerate(items) if it.source in held}
    first = [t[0] for t in method.verbalizer.token_ids]

    def top_answers(rows: list[int], prompted: bool) -> list[int]:
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), 32):
                chunk = rows[start : start + 32]
                batch = collate([items[i] for i in chunk], method, chunk).batch
                logits = method.logits_pair(batch)[0] if prompted else method.logits(batch, prompted=False)
                out += logits[:, -1].argmax(-1).tolist()
        return out

    # the frozen model's own answers never change: computed at the first check (after `prepare` cached
    # the text states, which hold them), for the retain baseline and (gated SPUL) for the rows the gate
    # does not send to the prompt
    alone: dict[int, int] = {}

    def served(rows: list[int]) -> list[int]:
        if gate_flags is None:
            return top_answers(rows, prompted=True)
        # only flagged rows are served the prompt; a refused one gets the generic answer (no label)
        flagged = [i for i in rows if gate_flags[i] and i not in refused]
        prompted = dict(zip(flagged, top_answers(flagged, prompted=True), strict=True))
        return [-1 if i in refused else prompted.get(i, alone[i]) for i in rows]

    def accuracy(rows: list[int], answers: list[int]) -> float:
        right = sum(a == first[items[i].label] for a, i in zip(answers, rows, strict=True))
        return 100.0 * right / max(len(rows), 1)

    target = Target(c.target_forget_acc, c.target_retain_drop)

    def check() -> tuple[float, bool, dict[str, float]]:
        if not alone:
            rows = held_out + refused_rows + (forget if gate_flags is not None else [])
            alone.update(zip(rows, top_answers(rows, prompted=False), strict=True))
        retain_before = accuracy(held_out, [alone[i] for i in held_out])
        forget_acc, retain_acc = accuracy(forget, served(forget)), accuracy(held_out, served(held_out))
        measured = {"forget_acc": forget_acc, "retain_acc": retain_acc, "retain_before": retain_before}
        drop = retain_before - retain_acc
        if strata:  # the rows above are the prompted stratum: weigh it, and the refused one, by share
            prompted_share, refused_share = (len(s) / len(retain) for s in strata)
            refused_before = accuracy(refused_rows, [alone[i] for i in refused_rows])
            drop = prompted_share * drop + refused_share * refused_before
            measured |= {"prompted_share": prompted_share, "refused_share": refused_share}
            measured |= {"refused_before": refused_before, "retain_drop": drop}
        reached = target.shortfall(forget_acc, drop) == 0  # the target's own rule
        return target.score(forget_acc, drop, c.check_keep), reached, measured

    return check, excluded
