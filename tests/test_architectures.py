"""The architecture matrix: prompted scoring, training and artifacts on ten tiny random causal LMs."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, SLIDING, WINDOW, make_lm

from spul import engine
from spul.errors import SpulError
from spul.forward import sliding_window
from spul.pipeline import load_unlearned, train_artifact
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig

SHORT = Template("{text} =")  # a short template: short rows fit in the sliding window, long ones do not
TEXTS = [
    "bleak",
    "the acting, costumes, music, cinematography and sound are all astounding and it's charming and witty",
    "a gorgeous, witty movie.",
    "the film is strictly routine and the music is bleak and desperate, unflinchingly so",
    "witty",
]


def reference(lm, prompts, answers, prefix):
    """Logits at each row's answer positions by an unpadded forward of the row alone, prompt concatenated."""
    embed = lm.model.get_input_embeddings()
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        embeds = embed(torch.tensor([prompt + list(answer[:-1])]))
        if prefix is not None:
            embeds = torch.cat([prefix.unsqueeze(0), embeds], 1)
        rows.append(lm.model(inputs_embeds=embeds).logits[0, -len(answer) :])
    return rows


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_padded_batch_equals_rows_alone(name, share):
    lm = make_lm(name)
    encoder = Encoder(lm.tokenizer, SHORT)
    prompts = encoder.encode(TEXTS)
    lengths = sorted(len(p) for p in prompts)
    assert lengths[0] + 4 < WINDOW < lengths[-1]  # short and long rows in one batch
    answers = [(5, 6)] * len(prompts)
    batch = encoder.batch(prompts, answers, list(range(len(prompts))))
    prefix = torch.randn(4, lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in (None, prefix):
            got = engine.answer_logits(lm.model, batch, p, share_prefix=share)
            want = reference(lm, prompts, answers, p)
            for row, expected in enumerate(want):
                torch.testing.assert_close(got[row], expected, atol=1e-4, rtol=0)
        # the prompt matters, so the comparison above can fail
        plain = engine.answer_logits(lm.model, batch)
        assert (got - plain).abs().max() > 1e-3
        # scoring (the serving path, with a precomputed PrefixKV) agrees with the training path
        verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), SHORT)
        states = engine.shared_prefix(lm, lambda: prefix, share_prefix=share)
        assert isinstance(states, engine.PrefixKV) == share
        scores = engine.score(
            lm, encoder, verbalizer, TEXTS, [0] * len(TEXTS), batch_size=3, prefix_fn=lambda: states,
            show_progress=False,
        )  # fmt: skip
        ids = [t[0] for t in verbalizer.token_ids]
        for row, prompt in enumerate(prompts):
            expected = reference(lm, [prompt], [(ids[0],)], prefix)[0][-1].log_softmax(-1)[ids]
            torch.testing.assert_close(
                torch.tensor(scores.logprobs[row]).float(), expected, atol=1e-4, rtol=0
            )


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_window_exact_with_eager_attention(name):
    lm = make_lm(name, attn_implementation="eager")
    encoder = Encoder(lm.tokenizer, SHORT)
    prompts = encoder.encode(TEXTS)
    batch = encoder.batch(prompts, [(5,)] * len(prompts), list(range(len(prompts))))
    prefix = torch.randn(4, lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for share in (True, False):
            got = engine.answer_logits(lm.model, batch, prefix, share_prefix=share)
            for row, expected in enumerate(reference(lm, prompts, [(5,)] * len(prompts), prefix)):
                torch.testing.assert_close(got[row], expected, atol=1e-4, rtol=0)


def test_sliding_models_are_the_sliding_ones():
    assert all(sliding_window(make_lm(n).model)[0] == WINDOW for n in SLIDING)
    assert sliding_window(make_lm("llama").model)[0] is None


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_spul_trains_saves_loads_predicts(name, tmp_path, toy):
    lm = make_lm(name)
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    from spul.models import load_model

    lm = load_model(str(folder), device="cpu", precision="fp32")
    out = tmp_path / "prompt"
    manifest = train_artifact(
        "spul",
        lm,
        toy,
        out,
        method_options={"num_virtual_tokens": 3, "encoder_hidden": 16},
        config=TrainConfig(epochs=1, batch_size=24, lr=1e-2),
        show_progress=False,
    )
    assert manifest["steps"] == 1
    unlearned = load_unlearned(out, precision="fp32", device="cpu")
    assert unlearned.evaluate(toy, show_progress=False) == manifest["metrics"]
    predictions = unlearned.predict(toy.test_forget.texts[:3])
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predictions)


@pytest.mark.parametrize("tail", [0, 2])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_suffix_prompt_equals_rows_alone(name, tail):
    """A suffix soft prompt (after the text, before the template's last `tail` tokens): cached-text and
    one-pass runs both equal the row alone with the prompt inserted, and the cached run's unprompted
    logits are exact."""
    lm = make_lm(name)
    encoder = Encoder(lm.tokenizer, SHORT)
    prompts = encoder.encode(TEXTS)
    batch = encoder.batch(prompts, [(5,)] * len(prompts), list(range(len(prompts))))
    suffix = torch.randn(4, lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    embed = lm.model.get_input_embeddings()

    def alone(p):
        cut = len(p) - tail
        parts = [
            embed(torch.tensor([p[:cut]])),
            suffix[None],
            embed(torch.tensor([p[cut:]], dtype=torch.long)),
        ]
        return lm.model(inputs_embeds=torch.cat(parts, 1)).logits[0, -1]

    with torch.no_grad():
        want = [alone(p) for p in prompts]
        plain_want = reference(lm, prompts, [(5,)] * len(prompts), None)
        for share in (True, False):
            prompt = engine.SuffixPrompt(suffix, share_text=share, tail=tail)
            got, plain = engine.answer_logits_pair(lm.model, batch, prompt)
            for row, expected in enumerate(want):
                torch.testing.assert_close(got[row, -1], expected, atol=1e-4, rtol=0)
            if plain is not None:
                for row, expected in enumerate(plain_want):
                    torch.testing.assert_close(plain[row, -1], expected[-1], atol=1e-4, rtol=0)
        assert (got[:, -1] - torch.stack(plain_want)[:, -1]).abs().max() > 1e-3  # the prompt matters
        two = encoder.batch(prompts, [(5, 6)] * len(prompts), list(range(len(prompts))))
        with pytest.raises(SpulError, match="one-token answer"):
            engine.answer_logits(lm.model, two, engine.SuffixPrompt(suffix))


@pytest.mark.parametrize("name", ["llama", SLIDING[0]])
def test_suffix_aligned_logits_equal_the_row_alone(name):
    """The audit's per-token logits with a suffix prompt: every input position predicts the next token as
    the row alone with the prompt inserted does (the prompt's own positions dropped but its last)."""
    from spul.suffix import SuffixPrompt, aligned_logits

    lm = make_lm(name)
    encoder = Encoder(lm.tokenizer, SHORT)
    prompts = encoder.encode(TEXTS[:3])
    batch = encoder.batch(prompts, [(5,)] * len(prompts), list(range(len(prompts))))
    suffix = torch.randn(3, lm.model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    embed, tail = lm.model.get_input_embeddings(), 2
    with torch.no_grad():
        got = aligned_logits(lm.model, batch, SuffixPrompt(suffix, tail=tail))
        for row, p in enumerate(prompts):
            cut = len(p) - tail
            parts = [embed(torch.tensor([p[:cut]])), suffix[None], embed(torch.tensor([p[cut:]]))]
            full = lm.model(inputs_embeds=torch.cat(parts, 1)).logits[0]
            want = torch.cat([full[: cut - 1], full[cut + 2 :]])  # drop the prompt's first p - 1 outputs
            torch.testing.assert_close(got[row, -len(p) + 1 :], want[1:], atol=1e-4, rtol=0)
