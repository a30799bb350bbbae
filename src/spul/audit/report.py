"""`spul audit`: membership inference and robustness probes on a prompted model, as markdown and JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from spul.audit.adaptive import AttackSettings, adaptive_attack, neutral_vocabulary
from spul.audit.mia import (
    TokenStats,
    calibrated_scores,
    example_scores,
    membership_auc,
)
from spul.audit.probes import (
    ENTITY_PROBES,
    PROBES,
    RELEARN_PROBES,
    EntityFinder,
    apply_probe,
    relearn,
)
from spul.audit.tokens import sequence_stats
from spul.data.splits import FORGET_SPLITS, SPLITS, UnlearningData
from spul.evaluation import guarded_score
from spul.guardrails import PROMPT, Decision
from spul.metrics import split_metrics
from spul.models import LoadedModel
from spul.pipeline import Unlearned
from spul.progress import progress_bar
from spul.prompting import Verbalizer

AUC_GOAL = (0.45, 0.55)  # forget membership AUC of the unlearned model: no better than chance
ACC_GOAL = 25.0  # forget accuracy (percent) under every probe
ATTACK_GOAL = (200, 30.0)  # at 200 queries per row, at most 30% of test-forget rows recovered
PAIRS = {"forget": ("train_forget", "test_forget"), "retain": ("train_retain", "test_retain")}
MODELS = ("fine_tuned", "unlearned")
GUARD_LEVELS = ("passed", "flagged", "generic")  # a guard's decision on a query, in order

LIMITATIONS = [
    "The prompt lives outside the weights: anyone holding the weights can drop it and gets the "
    "fine-tuned model back, memorisation included (the fine_tuned rows of this report).",
    "Membership inference here sees the output distribution only; an attacker with the weights can also "
    "use gradients, hidden states or the base model as a reference.",
    "The probes are fixed rewrites and the adaptive attack a bounded random search over appended words; "
    "passing them bounds nothing against a stronger attacker (more queries, gradient-based suffixes "
    "transferred from the public base model).",
]


def mia_table(
    scores: dict[str, dict[str, np.ndarray]], bootstrap: int, seed: int
) -> dict[str, dict[str, dict]]:
    """AUC (and TPR at low FPR) of every score for the forget pair (train vs test forget) and the retain
    control pair; `scores[split][name]` holds one value per row."""
    names = list(next(iter(scores.values())))
    return {
        pair: {
            name: membership_auc(scores[m][name], scores[n][name], bootstrap=bootstrap, seed=seed)
            for name in names
        }
        for pair, (m, n) in PAIRS.items()
    }


def guard_table(decisions: dict[str, Decision], bootstrap: int, seed: int) -> dict[str, Any]:
    """What the artifact's guard did with each split (`decisions`: shares passed to the model alone,
    flagged, answered generic outright) and, per pair, the membership AUC of its decision alone (0 passed,
    1 flagged, 2 generic): a gate fit on the forget rows may treat its own training rows unlike unseen rows
    of the same kind, and a client sees which kind of answer it got."""
    levels, shares = {}, {}
    for split, decision in decisions.items():
        level = np.where(decision.generic, 2, np.where(decision.flagged, 1, 0))
        levels[split] = level
        shares[split] = {name: float(np.mean(level == i)) for i, name in enumerate(GUARD_LEVELS)}
    membership = {
        pair: membership_auc(levels[m], levels[n], bootstrap=bootstrap, seed=seed)
        for pair, (m, n) in PAIRS.items()
    }
    return {"shares": shares, "membership": membership}


def served_answers(
    unlearned: Unlearned,
    texts: list[str],
    labels: list[int],
    batch_size: int,
    what: str = "scoring",
    show_progress: bool = False,
    prompted: bool = True,
    decision: Decision | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What the service answers: the label index (or OTHER) and the label-word log-probabilities of each
    text, with the prompt and guard as the artifact applies them (a gated prompt only where its gate
    flags the text; `decision`: its guard's, when already made); `prompted=False`: the fine-tuned model,
    both dropped."""
    scores = guarded_score(
        unlearned.lm,
        unlearned.encoder,
        unlearned.verbalizer,
        texts,
        labels,
        prefix_fn=unlearned.prefix_fn if prompted else None,
        guard=unlearned.guard if prompted else None,
        withhold=unlearned.withhold and prompted,
        batch_size=batch_size,
        decision=decision if prompted else None,
        description=what,
        show_progress=show_progress,
    )
    return scores.predicted, scores.logprobs


def attack_table(
    unlearned: Unlearned,
    data: UnlearningData,
    settings: AttackSettings,
    batch_size: int,
    seed: int,
    show_progress: bool = False,
    models: tuple[str, ...] = MODELS,
    splits: tuple[str, ...] = FORGET_SPLITS,
) -> dict[str, Any]:
    """The adaptive attack on a seeded subset of each forget split (`splits`), against both audited models
    (`models`); a split's rows are the same whichever others are attacked."""
    vocabulary = neutral_vocabulary(data.train_retain.texts, data.train_retain.labels, settings.vocabulary)
    results: dict[str, Any] = {"settings": asdict(settings), "vocabulary_size": len(vocabulary)}
    rng = np.random.default_rng(seed)
    picks = {split: np.sort(rng.permutation(len(data[split]))[: settings.rows]) for split in FORGET_SPLITS}
    for model, prompted in zip(MODELS, (False, True), strict=True):
        if model not in models:
            continue

        def oracle(texts: list[str], labels: list[int], prompted: bool = prompted):
            guard = unlearned.guard if prompted else None
            decision = guard.decide(texts) if guard is not None and texts else None
            answers = served_answers(
                unlearned, texts, labels, batch_size, prompted=prompted, decision=decision
            )
            return *answers, None if decision is None else decision.flagged

        results[model] = {}
        for split in splits:
            with progress_bar(f"attack {model} {split}", settings.budget, show_progress) as advance:
                results[model][split] = adaptive_attack(
                    oracle,
                    [data[split].texts[i] for i in picks[split]],
                    [data[split].labels[i] for i in picks[split]],
                    vocabulary,
                    settings,
                    seed=seed,
                    advance=advance,
                )
    return results


def probe_table(
    unlearned: Unlearned,
    data: UnlearningData,
    finder: EntityFinder,
    splits: tuple[str, ...],
    batch_size: int,
    show_progress: bool,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """Accuracy (and label-only ACC / margin AUC) of the prompted model on each split under each probe;
    only changed texts are re-scored."""

    def predict(texts: list[str], labels: list[int], what: str) -> tuple[np.ndarray, np.ndarray]:
        return served_answers(unlearned, texts, labels, batch_size, what, show_progress)

    k = len(unlearned.verbalizer)
    words = unlearned.verbalizer.words
    pools = {  # the relearning probes' demonstrations: (text, true label word) of train + test rows
        kind: [
            (t, words[y])
            for s in (f"train_{kind}", f"test_{kind}")
            for t, y in zip(data[s].texts, data[s].labels, strict=True)
        ]
        for kind in ("forget", "retain")
    }
    table: dict[str, dict[str, dict]] = {"none": {}, **{p: {} for p in PROBES}}
    for split_name in splits:
        split = data[split_name]
        labels = np.asarray(split.labels)
        base, base_logprobs = predict(split.texts, split.labels, split_name)
        table["none"][split_name] = split_metrics(labels, base, k, base_logprobs) | {"changed": 0}
        spans = finder.spans(split.texts)
        for probe in PROBES:
            if probe in RELEARN_PROBES:
                probed = relearn(split.texts, pools[RELEARN_PROBES[probe]], seed)
            else:
                probed = apply_probe(probe, split.texts, spans if probe in ENTITY_PROBES else None)
            changed = np.array([a != b for a, b in zip(probed, split.texts, strict=True)], dtype=bool)
            predicted, logprobs = base.copy(), base_logprobs.copy()
            if changed.any():
                rows = np.flatnonzero(changed)
                texts = [probed[i] for i in rows]
                predicted[rows], logprobs[rows] = predict(
                    texts, labels[rows].tolist(), f"{split_name} {probe}"
                )
            row = split_metrics(labels, predicted, k, logprobs) | {"changed": int(changed.sum())}
            if changed.any():
                row["acc_changed"] = 100.0 * float(np.mean(predicted[changed] == labels[changed]))
            table[probe][split_name] = row
    return table


def run_audit(
    unlearned: Unlearned,
    data: UnlearningData,
    *,
    k: float = 0.2,
    batch_size: int = 16,
    seed: int = 0,
    bootstrap: int = 1000,
    probe_retain: bool = True,
    members: dict[str, Any] | None = None,
    show_progress: bool = True,
    attack: AttackSettings | None = None,
    reference: LoadedModel | None = None,
) -> dict[str, Any]:
    """Membership inference (model without and with the prompt; with `reference`, a model that never saw
    any row, also the reference-calibrated scores), probes on the prompted model and the adaptive attack
    on both (`attack=None` or `rows=0`: no attack)."""
    lm, manifest = unlearned.lm, unlearned.manifest
    generic = Verbalizer.build(lm.tokenizer, manifest["generic_words"], unlearned.template)
    k_labels = len(unlearned.verbalizer)

    def stats_of(model: LoadedModel, prefix_fn, name: str) -> dict[str, list[TokenStats]]:
        return {
            split: sequence_stats(
                model,
                unlearned.encoder,
                unlearned.verbalizer,
                generic,
                data[split].texts,
                data[split].labels,
                prefix_fn=prefix_fn,
                batch_size=batch_size,
                description=f"{name} {split}",
                show_progress=show_progress,
            )
            for split in SPLITS
        }

    baseline = None
    if reference is not None:
        baseline = {s: example_scores(v, k) for s, v in stats_of(reference, None, "reference").items()}
    guard = unlearned.guard
    # the guard's decisions on the audited rows, made once: the gate embeds every text
    decisions = {s: guard.decide(data[s].texts) for s in SPLITS} if guard is not None else None
    mia, alone = {}, None
    for model_name, prefix_fn in zip(MODELS, (None, unlearned.prefix_fn), strict=True):
        # without a soft prompt both runs score the same model the same way: computed once
        same_run = model_name == "unlearned" and unlearned.prompt is None
        stats = alone if same_run else stats_of(lm, prefix_fn, model_name)
        if model_name == "fine_tuned":
            alone = stats
        elif guard is not None:
            stats = {
                s: guarded_stats(v, alone[s], decisions[s], guard.action == PROMPT, k_labels)
                for s, v in stats.items()
            }
        scores = {s: example_scores(v, k) for s, v in stats.items()}
        if baseline is not None:
            scores = {s: v | calibrated_scores(v, baseline[s]) for s, v in scores.items()}
        mia[model_name] = mia_table(scores, bootstrap, seed)
    finder = EntityFinder.create().fit(
        data.train_forget.texts + data.test_forget.texts, data.train_retain.texts + data.test_retain.texts
    )
    splits = SPLITS if probe_retain else FORGET_SPLITS
    probes = probe_table(unlearned, data, finder, splits, batch_size, show_progress, seed)
    forget_aucs = {s: v["auc"] for s, v in mia["unlearned"]["forget"].items()}
    attacked = attack is not None and attack.rows > 0
    adaptive = attack_table(unlearned, data, attack, batch_size, seed, show_progress) if attacked else None
    return {
        "models": model_labels(unlearned.prompt is not None, unlearned.guard is not None),
        "prompt": str(unlearned.folder),
        "base_model": manifest["base_model"],
        "fine_tuned_model": "base model + adapter" if manifest["base_model"].get("adapter") else "base model",
        "data": data.fingerprint(),
        "members": members or {"verified": None},
        "settings": {"k": k, "batch_size": batch_size, "seed": seed, "bootstrap": bootstrap},
        "reference_model": None if reference is None else reference.spec,
        "mia": mia,
        "guard": None if guard is None else guard_table(decisions, bootstrap, seed),
        "probes": {
            "entity_detection": finder.method,
            "entity_lexicon_size": len(finder.lexicon),
            "injection": apply_probe("injection_before", [""])[0].strip(),
            "results": probes,
        },
        "goals": {
            "forget_auc_range": list(AUC_GOAL),
            "forget_auc_met": {s: AUC_GOAL[0] <= a <= AUC_GOAL[1] for s, a in forget_aucs.items()},
            "forget_acc_max": ACC_GOAL,
            "forget_acc_met": {
                p: all(probes[p][s]["acc"] <= ACC_GOAL for s in FORGET_SPLITS) for p in probes
            },
            "attack_recovered_max": ATTACK_GOAL[1],
            "attack_met": _attack_met(adaptive),
        },
        "adaptive_attack": adaptive,
        "limitations": LIMITATIONS,
    }


def _attack_met(adaptive: dict[str, Any] | None) -> bool | None:
    """Whether the unlearned model's test-forget rows stay unrecovered at the goal's budget (None: the
    attack did not run, or with a smaller budget)."""
    budget, most = ATTACK_GOAL
    test_forget = (adaptive or {}).get("unlearned", {}).get("test_forget", {})
    outcome = test_forget.get("by_budget", {}).get(str(budget))
    return None if outcome is None else outcome["recovered"] <= most


def guarded_stats(
    stats: list[TokenStats], alone: list[TokenStats], decision: Decision, prompt: bool, num_labels: int
) -> list[TokenStats]:
    """The statistics a guarded model shows, given its guard's `decision` on the rows. A row the guard
    flags: with a generic-answer guard the same answer for every flagged row (uniform label
    log-probabilities, no membership signal); with a gated prompt (`prompt`) the prompted row's `stats`,
    unless its gate refuses the row (then as a generic-answer guard). A row it does not flag: the model
    alone's (`alone`)."""
    uniform = -float(np.log(num_labels))
    same = TokenStats(np.array([uniform]), np.array([uniform]), np.zeros(1), uniform, 0.0, "")
    rows = zip(stats, alone, decision.flagged, decision.generic, strict=True)
    return [same if generic else s if prompt and f else a for s, a, f, generic in rows]


def model_labels(prompted: bool, guarded: bool = False) -> dict[str, str]:
    """What the two audited runs are: with a soft prompt (or a guard), `fine_tuned` is the model with it
    dropped; an adapter, new weights or demonstrations have nothing to drop, so both runs are the
    unlearned model."""
    if prompted or guarded:
        what = "prompt" if prompted else "guard"
        return {
            "fine_tuned": f"the fine-tuned model, {what} dropped",
            "unlearned": f"the same model with the {what}",
        }
    itself = "the unlearned model itself (no prompt to drop)"
    return {"fine_tuned": itself, "unlearned": itself}
