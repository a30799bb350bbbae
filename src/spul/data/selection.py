"""THE row selection: which rows a run trains on and which it is scored on, recorded in its spul.json.

Every caller (`spul finetune` / `unlearn` / `evaluate` / `audit`, the ledger, `spul experiment`) draws
through `Selection.draw`, so an artifact's training rows can be rebuilt exactly from its manifest:

1. every text is cut to `max_chars` characters (None: unchanged);
2. each split is capped at `limit` rows (seeded);
3. a seeded fraction `tau` of the limited train_forget is kept: the training rows;
4. the evaluation rows: train splits drawn from the training rows, test splits from the limited data,
   each capped at `eval_limit` (None: the training rows themselves);
5. `check_retain` (SPUL's training check only): that many train_retain rows from outside the training
   rows (seeded), scored by the check and never trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from spul.data.splits import SPLITS, Split, UnlearningData, sample_indices
from spul.errors import SpulError

Limit = int | dict[str, int] | None
ORDER = "limit, then tau"
CHECK_STREAM = 2000  # the check rows' own random stream (the limits use one per split, tau 1000)


def parse_limit(value: str | int | Mapping[str, int] | None, flag: str = "--limit") -> Limit:
    """`200` caps every split; `train_retain=4000,test_retain=1000` caps the named ones (each once)."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else _checked(dict(value), flag, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _checked(value, flag, value)
    text = str(value).strip()
    try:
        if "=" not in text:
            return _checked(int(text), flag, value)
        limits: dict[str, int] = {}
        for part in text.split(","):
            name, number = (s.strip() for s in part.split("=", 1))
            if name in limits:
                raise SpulError(f"{flag} {value!r}: {name} is given twice")
            limits[name] = int(number)
    except ValueError:
        raise SpulError(f"{flag} {value!r}: expected N or split=N,split=N") from None
    return _checked(limits, flag, value)


def _checked(limit: int | dict[str, int], flag: str, given: object) -> int | dict[str, int]:
    """Positive counts of known splits only."""
    counts = limit.items() if isinstance(limit, dict) else [("", limit)]
    for name, number in counts:
        if name and name not in SPLITS:
            raise SpulError(f"{flag} {given!r}: unknown split {name!r}; splits are {', '.join(SPLITS)}")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise SpulError(f"{flag} {given!r}: row counts must be positive integers")
    return limit


def format_limit(limit: Limit) -> str | None:
    """A limit written the way `--limit` takes it (so manifests read like command lines)."""
    if limit is None or isinstance(limit, int):
        return None if limit is None else str(limit)
    return ",".join(f"{k}={v}" for k, v in limit.items())


@dataclass(frozen=True)
class Selection:
    """How a run's rows are drawn from the full data (see the module docstring for the order)."""

    data: str
    limit: Limit = None
    tau: float = 1.0
    seed: int = 0
    max_chars: int | None = None
    eval_limit: Limit = None
    ledger: str | None = None  # the forget set came from this deletion-request ledger
    tau_first: bool = False  # prompts saved before the order was fixed drew tau, then the limit
    check_retain: int | None = None  # train_retain rows outside the training rows, for the check alone

    def draw(self, full: UnlearningData) -> tuple[UnlearningData, UnlearningData]:
        """(training rows, evaluation rows) of the full, uncut data."""
        cut = full.cut(self.max_chars)
        if self.tau_first:
            limited = training = cut.sample(tau=self.tau, limit=self.limit, seed=self.seed)
        else:
            limited = cut.sample(limit=self.limit, seed=self.seed)
            training = limited.sample(tau=self.tau, seed=self.seed)
        if self.eval_limit is None:
            return training, training
        return training, pick(training, limited, self.eval_limit, self.seed)

    def draw_check(self, full: UnlearningData) -> Split | None:
        """`check_retain` train_retain rows whose text is not among the training rows (seeded); None when
        not asked for."""
        if self.check_retain is None:
            return None
        trained = set(self.draw(full)[0].train_retain.texts)
        pool = full.cut(self.max_chars).train_retain
        outside = [i for i, text in enumerate(pool.texts) if text not in trained]
        if len(outside) < self.check_retain:
            raise SpulError(
                f"--check-retain {self.check_retain}: only {len(outside)} train_retain rows of {self.data} "
                "lie outside the training rows (lower it, or --limit train_retain)"
            )
        picked = sample_indices(len(outside), self.check_retain, self.seed, CHECK_STREAM)
        return pool.subset(outside[i] for i in picked)

    def to_manifest(self) -> dict[str, Any]:
        """The `selection` record of spul.json."""
        record: dict[str, Any] = {
            "data": self.data,
            "limit": format_limit(self.limit),
            "tau": self.tau,
            "seed": self.seed,
            "max_chars": self.max_chars,
            "eval_limit": format_limit(self.eval_limit),
        }
        if not self.tau_first:
            record["order"] = ORDER
        if self.ledger is not None:
            record["ledger"] = self.ledger
        if self.check_retain is not None:
            record["check_retain"] = self.check_retain
        return record

    @classmethod
    def from_manifest(cls, record: Mapping[str, Any]) -> Selection:
        """Read a `selection` record back (older records lack keys: their defaults apply)."""
        return cls(
            data=record["data"],
            limit=parse_limit(record.get("limit"), "selection limit"),
            tau=float(record.get("tau", 1.0)),
            seed=int(record.get("seed", 0)),
            max_chars=record.get("max_chars"),
            eval_limit=parse_limit(record.get("eval_limit"), "selection eval_limit"),
            ledger=record.get("ledger"),
            tau_first="order" not in record and float(record.get("tau", 1.0)) < 1.0,
            check_retain=record.get("check_retain"),
        )


def pick(trained: UnlearningData, pool: UnlearningData, limit: Limit, seed: int) -> UnlearningData:
    """Train splits from the rows trained on, test splits from `pool`, each capped at `limit`."""
    from_train, from_pool = trained.sample(limit=limit, seed=seed), pool.sample(limit=limit, seed=seed)
    splits = {n: (from_train if n.startswith("train") else from_pool)[n] for n in trained.splits}
    return replace(trained, splits=splits, warnings=[])


# whose training rows an audit's members are: the prompt's, or its fine-tune's (a deletion request can cover
# more rows of the forgotten kind than the fine-tune saw; only the rows it saw were memorised)
MEMBER_SOURCES = ("prompt", "finetune")


def trained_selection(manifest: Mapping[str, Any], data: str) -> Selection | None:
    """How a saved artifact's training rows were drawn, when it was trained on this same `--data` alone
    (None: no record, other data, or a forget set that came from a ledger)."""
    record = manifest.get("data", {}).get("selection")
    if not record or record.get("ledger") or record.get("data") != data:
        return None
    return Selection.from_manifest(record)
