"""Base-model fingerprints: the same weights at any precision or device match, other weights do not."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_lm

from spul.artifacts import _legacy_fingerprint, check_base_model, model_fingerprint, same_base
from spul.errors import SpulError


def fingerprints(model: torch.nn.Module) -> dict[str, str]:
    """The model's fingerprint stored at fp32, bf16 and fp16."""
    return {
        dtype: model_fingerprint(copy.deepcopy(model).to(getattr(torch, dtype)))
        for dtype in ("float32", "bfloat16", "float16")
    }


def test_same_weights_match_at_every_precision_both_ways():
    model = make_tiny_lm().model
    prints = fingerprints(model)
    for a in prints.values():
        for b in prints.values():
            assert same_base(a, b)
    # a bf16 checkpoint upcast to fp32 on load is the same base as well
    upcast = copy.deepcopy(model).to(torch.bfloat16).to(torch.float32)
    assert same_base(prints["float32"], model_fingerprint(upcast))
    assert same_base(model_fingerprint(upcast), prints["bfloat16"])


def test_other_weights_are_refused_at_every_precision():
    model = make_tiny_lm().model
    other = make_tiny_lm(seed=1).model
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.model.layers[0].self_attn.q_proj.weight.mul_(1.02)
    for changed in (other, scaled):
        for a in fingerprints(model).values():
            for b in fingerprints(changed).values():
                assert not same_base(a, b) and not same_base(b, a)


def test_merged_lora_is_another_base_but_the_merge_device_is_not():
    model = make_tiny_lm().model
    torch.manual_seed(0)
    delta = {}
    for name in ("q_proj", "v_proj"):
        weight = getattr(model.model.layers[1].self_attn, name).weight
        b, a = torch.randn(weight.shape[0], 4), torch.randn(4, weight.shape[1])
        delta[name] = 0.01 * weight.std() * (b @ a) / 2  # a small rank-4 update, as a short fine-tune
    merged, merged_elsewhere = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for name, d in delta.items():
            getattr(merged.model.layers[1].self_attn, name).weight.add_(d)
            w = getattr(merged_elsewhere.model.layers[1].self_attn, name).weight
            w.copy_((w.double() + d.double()).float())  # the same merge, other rounding (another device)
    assert same_base(model_fingerprint(merged), model_fingerprint(merged_elsewhere))
    assert same_base(model_fingerprint(merged), model_fingerprint(merged_elsewhere.to(torch.bfloat16)))
    for a in fingerprints(model).values():
        assert not same_base(a, model_fingerprint(merged))


def test_old_manifests_compare_the_old_way():
    model = make_tiny_lm().model
    old = _legacy_fingerprint(model)
    assert len(old) == 32
    assert same_base(old, model_fingerprint(model))
    assert not same_base(old, model_fingerprint(make_tiny_lm(seed=1).model))
    manifest = {"base_model": {"spec": "tiny", "adapter": None, "fingerprint": old}}
    check_base_model(manifest, model_fingerprint(model), "prompt")
    with pytest.raises(SpulError, match="different weights"):
        check_base_model(manifest, model_fingerprint(make_tiny_lm(seed=1).model), "prompt")


def test_prompt_trained_at_fp32_loads_over_a_bf16_copy(tmp_path, tiny_model_dir, toy):
    from spul.models import load_model
    from spul.pipeline import load_unlearned, train_artifact
    from spul.training import TrainConfig

    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    out = tmp_path / "prompt"
    train_artifact(
        "spul", lm, toy, out, method_options={"num_virtual_tokens": 2},
        config=TrainConfig(epochs=1, batch_size=24), show_progress=False,
    )  # fmt: skip
    half = tmp_path / "bf16-model"
    lm.model.to(torch.bfloat16).save_pretrained(half)
    lm.tokenizer.save_pretrained(half)
    unlearned = load_unlearned(out, model=str(half), device="cpu", precision="fp32")
    assert len(unlearned.predict(toy.test_forget.texts[:2])) == 2


def test_fingerprint_of_a_tensor_past_float32_exact_integers():
    """A float32 linspace rounds 2**24 + 1 up past the last index; the sampled positions stay in range."""
    from spul.artifacts import model_fingerprint

    module = torch.nn.Module()
    module.register_buffer("big", torch.arange(2**24 + 2, dtype=torch.float32))
    parts = model_fingerprint(module).split(":")
    assert parts[0] == "w2" and len(parts) == 5
