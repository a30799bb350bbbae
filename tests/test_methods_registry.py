"""The method and artifact-kind registries: options as config data, kinds per instance, adding a method."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_tiny_lm

from spul.errors import SpulError
from spul.methods import (
    ARTIFACT_KINDS,
    METHODS,
    describe,
    get_method,
    method_table,
    option,
    options,
    parse_method_args,
    register,
    register_kind,
    resolve_options,
)
from spul.methods.base import TrainBatch
from spul.methods.kinds import ArtifactKind
from spul.methods.losses import answer_nll, masked_mean
from spul.methods.weights import WeightConfig, WeightMethod
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig
from spul.unlearned import Unlearned

README = Path(__file__).resolve().parents[1] / "README.md"


def make_method(lm, name, **options):
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    generic = Verbalizer.build(lm.tokenizer, ("neutral", "unknown"), template)
    return get_method(name)(lm, encoder, verbalizer, generic, **options)


# ---- the registries refuse a taken name -----------------------------------------------------------


def test_registry_refuses_a_duplicate_method_name():
    class AnotherGa(WeightMethod):
        name = "ga"

    with pytest.raises(ValueError, match="method 'ga' is already registered"):
        register(AnotherGa)
    assert METHODS["ga"] is not AnotherGa and METHODS["ga"].__name__ == "GradientAscent"


def test_registry_refuses_a_duplicate_artifact_kind():
    class AnotherPrompt(ArtifactKind):
        name = "prompt"

    before = ARTIFACT_KINDS["prompt"]
    with pytest.raises(ValueError, match="artifact kind 'prompt' is already registered"):
        register_kind(AnotherPrompt)
    assert ARTIFACT_KINDS["prompt"] is before


# ---- options come from the config -----------------------------------------------------------------


def test_unknown_options_are_refused_naming_the_method_and_its_options():
    with pytest.raises(SpulError) as err:
        resolve_options("ga", {"num_virtual_tokens": 3, "alpha": 1})
    assert (
        str(err.value)
        == "method 'ga' has no option alpha, num_virtual_tokens (its options: lora, lora_alpha, r)"
    )
    with pytest.raises(SpulError, match=r"method 'spul': option alpha must be float, got 'high'"):
        resolve_options("spul", {"alpha": "high"})
    with pytest.raises(SpulError, match=r"option num_virtual_tokens must be int, got 2\.5"):
        resolve_options("spul", {"num_virtual_tokens": 2.5})
    with pytest.raises(SpulError, match=r"option lora must be bool, got 1"):
        resolve_options("ga", {"lora": 1})
    with pytest.raises(SpulError, match="unknown method 'nope'"):
        resolve_options("nope", {})
    with pytest.raises(SpulError, match="--lora"):  # the config's own rule
        resolve_options("ga_gd", {"r": 4})
    with pytest.raises(SpulError, match="npo: beta must be positive"):
        resolve_options("npo", {"npo_beta": 0})


def test_options_given_as_text_are_typed():
    given = parse_method_args("num_virtual_tokens=4, alpha=0.5,prompt_type=prompt-tuning")
    assert given == {"num_virtual_tokens": "4", "alpha": "0.5", "prompt_type": "prompt-tuning"}
    config = resolve_options("spul", given)
    assert (config.num_virtual_tokens, config.alpha, config.prompt_type) == (4, 0.5, "prompt-tuning")
    lora = resolve_options("ga", parse_method_args("lora=true,r=8"))
    assert (lora.lora, lora.r, lora.kind) == (True, 8, "adapter")
    targets = resolve_options("finetune", parse_method_args("targets=q_proj,k_proj,v_proj,r=4"))
    assert targets.targets == ["q_proj", "k_proj", "v_proj"] and targets.r == 4
    with pytest.raises(SpulError, match="expected key=value"):
        parse_method_args("=3")


def test_option_names_are_the_config_fields():
    assert get_method("ga_kl").option_names() == {"alpha", "lora", "r", "lora_alpha"}
    assert get_method("spul").option_names() == {
        "forget_loss",
        "kl_reference",
        "kl_top_k",
        "prompt_type",
        "num_virtual_tokens",
        "encoder_hidden",
        "init_prompt",
        "prompt_position",
        "prompt_init",
        "text_cache_mb",
        "gate",
        "gate_embedder",
        "gate_recall",
        "gate_refuse",
        "gate_c",
        "gate_focus",
        "gate_names",
        "gate_names_refuse",
        "check_strata",
        "alpha",
        "beta",
        "label_uniform",
        "augment",
        "forget_copies",
        "check_rows",
        "check_keep",
        "weight_ema",
        "target_forget_acc",
        "target_retain_drop",
    }
    flags = {o.name: o.flag for o in options("spul")}
    assert flags["num_virtual_tokens"] == "--p" and flags["alpha"] == "--alpha"
    assert {o.name: o.flag for o in options("icul")}["shots"] == "--icul-shots"
    assert all(o.help for name in METHODS for o in options(name))  # every option says what it does


# The manifest's hyperparameters.method of each method with default options: exactly what older versions
# wrote (keys in order: the JSON bytes, and the checkpoint fingerprints hashed from them, stay the same).
PROMPT = {"prompt_type": "ptuning", "num_virtual_tokens": 30, "encoder_hidden": 128}
RECORDED = [
    ("spul", {}, PROMPT | {"alpha": 1.0, "beta": 0.5}),
    ("spul", {"init_prompt": Path("p")}, PROMPT | {"init_prompt": "p", "alpha": 1.0, "beta": 0.5}),
    ("finetune", {}, {"r": 16, "lora_alpha": 64, "lora_dropout": 0.1, "targets": ["q_proj", "v_proj"]}),
    ("retrain", {"r": 4}, {"r": 4, "lora_alpha": 64, "lora_dropout": 0.1, "targets": ["q_proj", "v_proj"]}),
    ("ga", {}, {"lora": False}),
    ("rl", {"lora": True}, {"lora": True, "r": 16, "lora_alpha": 64}),
    ("ga_gd", {}, {"lora": False, "alpha": 1.0}),
    ("ga_kl", {"lora": True, "r": 4}, {"lora": True, "r": 4, "lora_alpha": 64, "alpha": 1.0}),
    ("npo", {}, {"lora": False, "npo_beta": 0.1, "alpha": 0.0}),
    ("icul", {}, {"shots": 4, "retain_pool": 1000}),
    ("filter", {}, {"regex": None, "keywords": None, "ratio": 10.0}),
    ("filter", {"keywords": "a,b"}, {"regex": None, "keywords": ["a", "b"], "ratio": 10.0}),
    ("gate", {}, {"embedder": "all-MiniLM-L6-v2", "folds": 5}),
]


@pytest.mark.parametrize("name,given,recorded", RECORDED)
def test_recorded_hyperparameters_are_unchanged(name, given, recorded):
    got = resolve_options(name, given).hyperparameters()
    assert got == recorded and list(got) == list(recorded)


def test_training_defaults_come_from_the_config():
    defaults = {name: get_method(name).training_defaults({}) for name in METHODS}
    weights = {"epochs": 1, "lr": 1e-5}
    assert defaults == {
        "spul": {},
        "finetune": {},
        "retrain": {"epochs": 2, "lr": 1e-4},
        "icul": {"epochs": 0},
        "filter": {"epochs": 0},
        "gate": {"epochs": 0},
        **{name: weights for name in ("ga", "rl", "ga_gd", "ga_kl", "npo")},
    }
    assert get_method("ga").training_defaults({"lora": True}) == {"epochs": 1, "lr": 1e-4}
    assert resolve_options("ga", {"lora": True}).training_defaults() == {"epochs": 1, "lr": 1e-4}


def test_readme_method_table_is_generated_from_the_configs():
    text = README.read_text(encoding="utf-8")
    start = text.index("| method | what it trains |")
    assert text[start : text.index("\n\n", start) + 1] == method_table()
    assert "`npo` | forget rows (+ retain if alpha > 0)" in method_table()
    assert "`--npo-beta 0.1`, `--alpha 0`" in method_table()


def test_describe_lists_every_option_with_its_flag_and_default():
    text = describe("spul")
    assert text.startswith("spul (prompt): ")
    assert "--p (num_virtual_tokens, int): number of virtual tokens [default: 30]" in text
    assert re.search(r"^ga \(weights\): ", describe(), re.M) and "icul (context)" in describe()
    assert "filter (guard)" in describe() and "gate (guard)" in describe()
    assert "--gate-embedder (embedder, str): " in describe("gate")


# ---- the artifact kind belongs to the instance ----------------------------------------------------


def test_kind_is_decided_per_instance_and_saved_in_the_manifest(tmp_path, tiny_model_dir, toy):
    assert make_method(make_tiny_lm(), "ga").kind == "weights"
    assert make_method(make_tiny_lm(), "ga", lora=True).kind == "adapter"
    assert get_method("ga").kind == "weights"  # on the class: the kind with default options
    assert resolve_options("ga", {"lora": True}).kind == "adapter"

    config = TrainConfig(epochs=1, batch_size=8, lr=5e-2)
    for lora, kind, weights in (
        (True, "adapter", "adapter_model.safetensors"),
        (False, "weights", "model.safetensors"),
    ):
        lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
        out = tmp_path / kind
        options = {"lora": True, "r": 2} if lora else {}
        manifest = train_artifact(
            "ga", lm, toy, out, method_options=options, config=config, show_progress=False
        )
        assert manifest["kind"] == kind and (out / weights).is_file()
        unlearned = load_unlearned(out, device="cpu", precision="fp32")
        assert unlearned.kind == kind and unlearned.artifact_kind is ARTIFACT_KINDS[kind]


def _stub(kind, base_adapter="ft", fingerprint="f1"):
    manifest = {"kind": kind, "base_model": {"spec": "tiny", "fingerprint": fingerprint}}
    return SimpleNamespace(
        lm="loaded", base_adapter=base_adapter, artifact_kind=ARTIFACT_KINDS[kind], manifest=manifest
    )


def test_finetuned_reference_and_model_sharing_come_from_the_kind():
    def load(spec, adapter):
        return f"reloaded {spec}+{adapter}"

    reference = Unlearned.finetuned_reference
    assert reference(_stub("prompt"), load) == "loaded" and reference(_stub("context"), load) == "loaded"
    assert reference(_stub("adapter"), load) == "reloaded tiny+ft"
    assert reference(_stub("weights"), load) == "reloaded tiny+ft"
    assert reference(_stub("prompt", base_adapter=None), load) is None

    shares = Unlearned.shares_model_with
    assert shares(_stub("prompt"), _stub("prompt").manifest)
    assert shares(_stub("prompt"), _stub("context").manifest)
    assert not shares(_stub("prompt"), _stub("prompt", fingerprint="f2").manifest)
    assert not shares(_stub("prompt"), _stub("adapter").manifest)
    assert not shares(_stub("weights"), _stub("prompt").manifest)


# ---- adding a method = one class + one config -----------------------------------------------------


@dataclass
class FlipConfig(WeightConfig):
    """The weight options plus how strongly the flipped label is taught."""

    weight: float = option(1.0, "weight of the flipped-label CE")


class FlipLabels(WeightMethod):
    """L = weight * mean over forget rows of CE(h(x), the other label): a toy method for this test."""

    name = "toy_flip"
    config_class = FlipConfig
    rows = "forget"

    def answer(self, label, forget, rng):
        """The other label word."""
        return self.verbalizer.token_ids[1 - label]

    def loss(self, batch: TrainBatch):
        """The flipped-label CE of the forget rows."""
        nll = answer_nll(self.logits(batch.batch), batch.batch.targets)
        loss = self.config.weight * masked_mean(nll, batch.is_forget)
        return loss, {"loss": loss.item()}


@pytest.fixture
def toy_method():
    register(FlipLabels)
    try:
        yield FlipLabels
    finally:
        del METHODS[FlipLabels.name]


@pytest.mark.parametrize("lora", [False, True])
def test_a_new_method_is_one_class_and_one_config(tmp_path, tiny_model_dir, toy, toy_method, lora):
    assert "toy_flip (weights)" in describe() and get_method("toy_flip") is toy_method
    with pytest.raises(SpulError, match=r"has no option alpha \(its options: lora, lora_alpha, r, weight\)"):
        resolve_options("toy_flip", {"alpha": 1})
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    out = tmp_path / "flip"
    options = {"weight": "2", "lora": lora}
    config = TrainConfig(epochs=2, batch_size=8, lr=5e-2)
    manifest = train_artifact(
        "toy_flip", lm, toy, out, method_options=options, config=config, show_progress=False
    )
    assert manifest["method"] == "toy_flip" and manifest["kind"] == ("adapter" if lora else "weights")
    assert manifest["hyperparameters"]["method"]["weight"] == 2.0
    assert manifest["hyperparameters"]["training"]["epochs"] == 2

    unlearned = load_unlearned(out, device="cpu", precision="fp32")
    assert unlearned.evaluate(toy, show_progress=False) == manifest["metrics"]
    predicted = unlearned.predict(toy.train_forget.texts)
    assert {p["label"] for p in predicted} <= {"negative", "positive", "other"}
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predicted)


def test_method_flags_are_generated_from_the_configs():
    """src/spul/cli/method_flags.py is `python -m spul.methods.docs` output for today's method configs."""
    from pathlib import Path

    from spul.methods.docs import command_line_flags, flags_module

    generated = Path(__file__).resolve().parents[1] / "src" / "spul" / "cli" / "method_flags.py"
    assert generated.read_text() == flags_module(), "regenerate: python -m spul.methods.docs > " + str(
        generated
    )
    flags = command_line_flags()
    assert flags["num_virtual_tokens"][:2] == ("--p", int) and flags["lora"][1] is bool
    assert "npo: " in flags["alpha"][2] and "(default 0)" in flags["alpha"][2]  # every method taking it
