"""The scoring engine equals a straightforward full-logits computation, one example at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spul.engine import OTHER, score
from spul.prompting import Encoder, Template, Verbalizer

TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "bleak",
    "the acting, costumes, music, cinematography and sound are all astounding and it's charming",
    "the film is strictly routine.",
]
LABELS = [1, 0, 1, 0]


def reference_logprobs(lm, texts, words, prefix=None):
    """log P(word | prompt) by full-sequence logits on each unpadded example, plus the greedy answer."""
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, words, template)
    embed = lm.model.get_input_embeddings()
    out = np.zeros((len(texts), len(words)))
    greedy = []
    for i, prompt in enumerate(encoder.encode(texts)):
        for k, word in enumerate(verbalizer.token_ids):
            ids = torch.tensor([prompt + list(word)])
            embeds = embed(ids)
            if prefix is not None:
                embeds = torch.cat([prefix.unsqueeze(0), embeds], 1)
            logits = lm.model(inputs_embeds=embeds).logits[0].log_softmax(-1)
            start = embeds.shape[1] - len(word) - 1  # position predicting the word's first token
            out[i, k] = sum(logits[start + j, t].item() for j, t in enumerate(word))
        # greedy decode as many tokens as the longest word
        ids = list(prompt)
        for _ in range(max(len(w) for w in verbalizer.token_ids)):
            embeds = embed(torch.tensor([ids]))
            if prefix is not None:
                embeds = torch.cat([prefix.unsqueeze(0), embeds], 1)
            ids.append(int(lm.model(inputs_embeds=embeds).logits[0, -1].argmax()))
        answer = ids[len(prompt) :]
        hits = [k for k, w in enumerate(verbalizer.token_ids) if tuple(answer[: len(w)]) == w]
        greedy.append(max(hits, key=lambda k: len(verbalizer.token_ids[k])) if hits else OTHER)
    return out, np.array(greedy)


@pytest.mark.parametrize("words", [("negative", "positive"), ("bleak film", "gorgeous, witty")])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_score_matches_full_logits(tiny_lm, words, with_prefix):
    torch.manual_seed(1)
    prefix = torch.randn(5, tiny_lm.model.config.hidden_size) if with_prefix else None
    template = Template()
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, words, template)
    assert verbalizer.single_token == (words[0] == "negative")
    scores = score(
        tiny_lm,
        Encoder(tiny_lm.tokenizer, template),
        verbalizer,
        TEXTS,
        LABELS,
        batch_size=3,  # forces padding and several batches
        prefix_fn=(lambda: prefix) if with_prefix else None,
        show_progress=False,
    )
    expected, greedy = reference_logprobs(tiny_lm, TEXTS, words, prefix)
    np.testing.assert_allclose(scores.logprobs, expected, atol=1e-4)
    np.testing.assert_array_equal(scores.predicted, greedy)
    np.testing.assert_allclose(scores.loss, -expected[np.arange(4), LABELS], atol=1e-4)


def test_prediction_maps_argmax_to_label_or_other(tiny_lm):
    """Push one token's logit to the top with a hook on the LM head; the prediction follows it."""
    template = Template()
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, ("negative", "positive"), template)
    encoder = Encoder(tiny_lm.tokenizer, template)
    head = tiny_lm.model.get_output_embeddings()
    for token, expected in [(verbalizer.token_ids[1][0], 1), (verbalizer.token_ids[0][0], 0), (7, OTHER)]:

        def boost(module, inputs, output, token=token):
            output[..., token] += 1000.0
            return output

        handle = head.register_forward_hook(boost)
        scores = score(tiny_lm, encoder, verbalizer, TEXTS, LABELS, show_progress=False)
        handle.remove()
        assert (scores.predicted == expected).all()


def test_multi_token_label_scored_as_whole_sequence(tiny_lm):
    """Two words sharing a first token get different scores from their later tokens."""
    template = Template()
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, ("bleak film", "bleak music"), template)
    assert verbalizer.token_ids[0][0] == verbalizer.token_ids[1][0]
    scores = score(
        tiny_lm, Encoder(tiny_lm.tokenizer, template), verbalizer, TEXTS, LABELS, show_progress=False
    )
    assert not np.allclose(scores.logprobs[:, 0], scores.logprobs[:, 1])


def test_template_requires_text_placeholder():
    with pytest.raises(Exception, match="exactly once"):
        Template("no placeholder")


def test_encoder_truncates_text_but_keeps_question(tiny_lm):
    encoder = Encoder(tiny_lm.tokenizer, Template(), max_length=40)
    long_text = " ".join(["gorgeous"] * 200)
    (ids,) = encoder.encode([long_text])
    assert len(ids) == 40
    assert tiny_lm.tokenizer.decode(ids).endswith("### Sentiment:")


def test_shared_prefix_states_equal_concatenated_prompt(tiny_lm):
    """Prompt key/value states computed once per batch give the logits and gradients of concatenation."""
    import spul.engine as engine

    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    batch = encoder.batch(encoder.encode(TEXTS), [(5, 6)] * len(TEXTS), list(range(len(TEXTS))))
    results = []
    for share in (True, False):
        prefix = torch.randn(6, tiny_lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        prefix.requires_grad_(True)
        logits = engine.answer_logits(tiny_lm.model, batch, prefix, share_prefix=share)
        logits.logsumexp(-1).sum().backward()
        results.append((logits.detach(), prefix.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


def test_prompt_states_built_once_serve_every_call(tiny_lm):
    """Inference reuses one precomputed prompt cache: each call equals concatenating the prompt anew."""
    import spul.engine as engine

    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, ("negative", "positive"), template)
    prefix = torch.randn(5, tiny_lm.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = engine.prefix_kv(tiny_lm.model, prefix)
    assert states is not None
    kept = [k.clone() for k in states.keys]
    calls = [
        score(
            tiny_lm, encoder, verbalizer, TEXTS[i:], LABELS[i:], show_progress=False, prefix_fn=lambda: states
        )
        for i in (0, 1, 0)
    ]
    assert all(torch.equal(a, b) for a, b in zip(kept, states.keys, strict=True))  # never written to
    plain = score(
        tiny_lm,
        encoder,
        verbalizer,
        TEXTS,
        LABELS,
        show_progress=False,
        prefix_fn=lambda: prefix,
        share_prefix=False,
    )
    np.testing.assert_allclose(calls[0].logprobs, plain.logprobs, atol=1e-5)
    np.testing.assert_allclose(calls[1].logprobs, plain.logprobs[1:], atol=1e-5)
    np.testing.assert_array_equal(calls[0].logprobs, calls[2].logprobs)
    np.testing.assert_array_equal(calls[0].predicted, plain.predicted)


def test_frozen_linears_cast_once_give_autocast_results(monkeypatch):
    """Scoring casts the frozen Linear weights to bf16 once; the scores equal autocast casting them at
    every call."""
    from dataclasses import replace

    from conftest import make_tiny_lm

    from spul.models import LoadedModel

    lm = replace(make_tiny_lm(), autocast_dtype=torch.bfloat16)
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    with monkeypatch.context() as patch:
        patch.setattr(LoadedModel, "cast_frozen", lambda self: None)
        before = score(lm, encoder, verbalizer, TEXTS, LABELS, show_progress=False)
    assert lm.model.get_output_embeddings().weight.dtype == torch.float32
    embedding = lm.model.get_input_embeddings().weight
    after = score(lm, encoder, verbalizer, TEXTS, LABELS, show_progress=False)
    assert lm.frozen_cast
    assert lm.model.get_input_embeddings().weight.dtype == torch.float32  # the tied embedding stays
    assert lm.model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert embedding is lm.model.get_input_embeddings().weight
    np.testing.assert_array_equal(before.logprobs, after.logprobs)


def test_suffix_scores_with_and_without_equal_two_separate_calls(tiny_lm):
    """One pass for a suffix prompt gives the prompted scores and the unprompted ones, as two calls do."""
    from spul.engine import SuffixPrompt, score_with_and_without

    template = Template()
    encoder = Encoder(tiny_lm.tokenizer, template)
    ids = tiny_lm.tokenizer(" a b", add_special_tokens=False).input_ids
    words = tuple(tiny_lm.tokenizer.decode([t]).strip() for t in ids[:2])
    verbalizer = Verbalizer.build(tiny_lm.tokenizer, words, template)
    assert verbalizer.single_token
    suffix = torch.randn(3, tiny_lm.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    prompt = SuffixPrompt(suffix)
    both = score_with_and_without(
        tiny_lm, encoder, verbalizer, TEXTS, LABELS, lambda: prompt, batch_size=3, show_progress=False
    )
    apart = (
        score(tiny_lm, encoder, verbalizer, TEXTS, LABELS, prefix_fn=lambda: prompt, show_progress=False),
        score(tiny_lm, encoder, verbalizer, TEXTS, LABELS, show_progress=False),
    )
    for got, want in zip(both, apart, strict=True):
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
        np.testing.assert_array_equal(got.predicted, want.predicted)
        np.testing.assert_allclose(got.loss, want.loss, atol=1e-5)
    assert np.abs(both[0].logprobs - both[1].logprobs).max() > 1e-4  # the prompt matters
