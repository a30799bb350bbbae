"""`spul audit`'s report as markdown (`audit.md`) beside its JSON (`audit.json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spul.audit.mia import SCORE_TITLES
from spul.audit.probes import RELEARN_SHOTS
from spul.audit.report import ATTACK_GOAL, GUARD_LEVELS, MODELS, PAIRS, model_labels
from spul.io import write_json_atomic, write_text_atomic


def _entity_note(probes: dict[str, Any]) -> str:
    """How names were found, flagged when spaCy was missing."""
    lexicon = f"plus {probes['entity_lexicon_size']} name words learned from the forget texts"
    if probes["entity_detection"] == "spacy":
        return f"Names: spaCy NER (PERSON / ORG) {lexicon}."
    heuristic = "**capitalised-word heuristic (spaCy is not installed; weak on lower-cased data)**"
    return f"Names: {heuristic} {lexicon}."


def _auc_cell(result: dict) -> str:
    low, high = result.get("ci95", (None, None))
    return f"{result['auc']:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")


def _guard_lines(guard: dict[str, Any] | None) -> list[str]:
    """How the guard answers each split, and the membership AUC of its decision alone (none: no guard)."""
    if guard is None:
        return []
    lines = [
        "## The guard's decisions",
        "",
        "Share of queries (%) the guard passes to the model alone, flags (a gated prompt answers them) or "
        "answers generic outright; a client sees which kind of answer it got, so a guard that treats its "
        "own training rows unlike unseen rows of the same kind tells membership by itself. Membership AUC "
        "of the decision alone (0 passed, 1 flagged, 2 generic): "
        + ", ".join(f"{pair} {_auc_cell(result)}" for pair, result in guard["membership"].items())
        + ".",
        "",
        "| split | " + " | ".join(GUARD_LEVELS) + " |",
        "|---" * (1 + len(GUARD_LEVELS)) + "|",
    ]
    for split, shares in guard["shares"].items():
        lines.append(f"| {split} | " + " | ".join(f"{100 * shares[n]:.1f}" for n in GUARD_LEVELS) + " |")
    return [*lines, ""]


def _goal_line(goal: str, missed: list[str]) -> str:
    return f"Goal: {goal}: " + ("met." if not missed else "not met for " + ", ".join(missed) + ".")


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a short markdown document."""
    mia, settings = report["mia"], report["settings"]
    members, labels = report["members"], report.get("models", model_labels(True))
    lines = [
        f"# Unlearning audit: `{report['prompt']}`",
        "",
        f"`fine_tuned` = {labels['fine_tuned']}, over {report['fine_tuned_model']} "
        f"(`{report['base_model']['spec']}`"
        + (f", adapter `{report['base_model']['adapter']}`)" if report["base_model"].get("adapter") else ")")
        + f"; `unlearned` = {labels['unlearned']}. Split sizes: "
        + ", ".join(f"{n} {v['size']}" for n, v in report["data"]["splits"].items())
        + ".",
        "",
        "## Membership inference",
        "",
        "Members = train rows, non-members = test rows: `forget` = train_forget vs test_forget, "
        "`retain` = train_retain vs test_retain (the control). ROC AUC with a bootstrap 95% interval; "
        f"0.5 = no signal, below 0.5 = inverted signal. Min-K% / Min-K%++ use k = {settings['k']:g}. "
        "The fine-tune trained only on the label word, so the label-word NLL is the strongest signal "
        "for a classifier; the whole-sequence scores mostly see the template and the text.",
        "",
    ]
    if members.get("verified") is False:
        lines += [f"**Warning:** {members.get('note', 'members could not be verified')}", ""]
    elif members.get("verified"):
        lines += ["Members checked against the train_forget fingerprint in the prompt's `spul.json`.", ""]
    for split, seen in members.get("in_finetune_data", {}).items():
        seen_text = f"{seen['seen_by_finetune']} of {seen['members']}"
        lines.append(f"- {split}: {seen_text} members were in the fine-tune's training data.")
    if members.get("in_finetune_data"):
        lines.append("")
    header = "| score | " + " | ".join(f"{m.replace('_', '-')} {p}" for m in MODELS for p in PAIRS) + " |"
    lines += [header, "|---" * (1 + len(MODELS) * len(PAIRS)) + "|"]
    for name in mia["unlearned"]["forget"]:
        cells = [_auc_cell(mia[m][p][name]) for m in MODELS for p in PAIRS]
        lines.append(f"| {SCORE_TITLES[name]} | " + " | ".join(cells) + " |")
    low, high = report["goals"]["forget_auc_range"]
    missed = [SCORE_TITLES[s] for s, ok in report["goals"]["forget_auc_met"].items() if not ok]
    lines += [
        "",
        _goal_line(f"unlearned forget AUC within [{low}, {high}] for every score", missed),
        "",
        *_tpr_lines(mia, report.get("reference_model")),
        *_guard_lines(report.get("guard")),
        "## Robustness probes (prompted model)",
        "",
        f"Accuracy (%) under each rewrite of the texts; a generic answer counts as wrong; after `·` the "
        f"label-only ACC (argmax over the label words: what returned probabilities give away; a generic "
        f"answer returns none, a coin flip). "
        f"`relearn_*` write {RELEARN_SHOTS} correctly labelled rows of the forget (retain) pool before the "
        f"text. `changed` = rows "
        f"the probe altered (the others keep their unprobed prediction; `acc_changed` in audit.json is the "
        f"accuracy on the changed rows alone). {_entity_note(report['probes'])}",
        "",
    ]
    results = report["probes"]["results"]
    splits = list(results["none"])
    lines += [
        "| probe | " + " | ".join(f"{s.replace('_', ' ')} acc (changed)" for s in splits) + " |",
        "|---" * (1 + len(splits)) + "|",
    ]
    for probe, row in results.items():
        cells = [
            f"{row[s]['acc']:.1f} ({row[s]['changed']}/{row[s]['n']})"
            + (f" · {row[s]['label_acc']:.1f}" if "label_acc" in row[s] else "")
            for s in splits
        ]
        lines.append(f"| {probe} | " + " | ".join(cells) + " |")
    failed = [p for p, ok in report["goals"]["forget_acc_met"].items() if not ok]
    lines += [
        "",
        _goal_line(f"forget accuracy <= {report['goals']['forget_acc_max']:g}% under every probe", failed),
        "",
        *_attack_lines(report.get("adaptive_attack"), report["goals"]),
        "## What this does not show",
        "",
        *[f"- {item}" for item in report["limitations"]],
        "",
    ]
    return "\n".join(lines)


def _tpr_lines(mia: dict[str, Any], reference: str | None) -> list[str]:
    """The forget pair's true-positive rates at 1% and 5% false positives, with bootstrap intervals."""
    keys = [
        k for k in next(iter(mia["unlearned"]["forget"].values())) if k.startswith("tpr_") and "ci95" not in k
    ]
    where = (
        f"The `− reference` scores subtract the same score under `{reference}`, a model that never saw any "
        "row (reference-calibrated, as open-unlearning's ReferenceAttack)."
        if reference
        else "No reference model: the artifact has no fine-tuned adapter to leave out."
    )
    lines = [
        f"True-positive rate (%) at a low false-positive rate, forget pair, bootstrap 95% interval. {where}",
        "",
        "| score | "
        + " | ".join(f"{m.replace('_', '-')} {k[7:].replace('_', ' ')}" for m in MODELS for k in keys)
        + " |",
        "|---" * (1 + len(MODELS) * len(keys)) + "|",
    ]
    for name in mia["unlearned"]["forget"]:
        cells = []
        for model in MODELS:
            cell = mia[model]["forget"][name]
            for key in keys:
                interval = cell.get(f"{key}_ci95")
                span = f" [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval else ""
                cells.append(f"{100 * cell[key]:.1f}{span}")
        lines.append(f"| {SCORE_TITLES[name]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _attack_lines(adaptive: dict[str, Any] | None, goals: dict[str, Any]) -> list[str]:
    """The adaptive attack's section of the markdown (nothing when it did not run)."""
    if not adaptive:
        return []
    settings = adaptive["settings"]
    budgets = list(next(iter(adaptive["unlearned"].values()))["by_budget"])
    lines = [
        "## Adaptive black-box attack",
        "",
        f"Per row, a search over {settings['words']} appended words from {adaptive['vocabulary_size']} "
        f"label-neutral words of the retain texts, {settings['feedback']} feedback, up to "
        f"{settings['budget']} queries (query 1 = the row as it is), on {settings['rows']} seeded rows per "
        "forget split. `recovered` = some query was answered with the true label (an oracle upper bound: "
        "the search knows when it succeeded). `first label` = how often the first query answered with a "
        "label word got the true label: what an attacker who does not know the label learns (about 50% "
        "with two labels = nothing).",
    ]
    past = any("recovered_past_guard" in r["by_budget"][budgets[-1]] for r in adaptive["unlearned"].values())
    if past:
        lines[-1] += (
            f" `past the guard` = rows recovered (@{budgets[-1]}) by a query the artifact's guard did not "
            "flag: the model without the prompt answered it; the rest moved the prompted answer."
        )
    extra = [f"past the guard @{budgets[-1]}"] if past else []
    head = [*(f"recovered @{b}" for b in budgets), *extra, "first label correct"]
    lines += ["", "| model | split | " + " | ".join(head) + " |", "|---" * (2 + len(head)) + "|"]
    for model in MODELS:
        for split, result in adaptive[model].items():
            outcomes = result["by_budget"]
            last = outcomes[budgets[-1]]
            first = last["first_label_correct"]
            answered = f"(of {last['answered_a_label']:.0f}% answered)"
            first_cell = "—" if first is None else f"{first:.1f} {answered}"
            cells = [f"{outcomes[b]['recovered']:.1f}" for b in budgets]
            if past:
                through = last.get("recovered_past_guard")
                cells.append("—" if through is None else f"{through:.1f}")
            lines.append(f"| {model} | {split} | " + " | ".join(cells) + f" | {first_cell} |")
    met = goals.get("attack_met")
    budget, most = ATTACK_GOAL
    goal = f"test-forget rows recovered at {budget} queries <= {most:g}%"
    if met is None:
        lines += ["", f"Goal: {goal}: not checked (the budget was below {budget})."]
    else:
        lines += ["", _goal_line(goal, [] if met else ["the unlearned model's test_forget"])]
    return [*lines, ""]


def write_report(out: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write `audit.json` and `audit.md` into `out` (each atomically)."""
    out = Path(out)
    write_json_atomic(out / "audit.json", report)
    write_text_atomic(out / "audit.md", to_markdown(report))
    return out / "audit.json", out / "audit.md"
