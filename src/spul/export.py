"""`spul export`: an unlearned classifier as a plain HuggingFace model folder that any engine can serve.

A soft prompt becomes p reserved tokens (`<spul_0>` ...): added to the tokenizer as special tokens, their
input-embedding rows equal the prompt, and a template puts them where spul puts the prompt (before the
text, or before the answer cue for a suffix prompt). Engines that serve HF folders (vLLM, TGI, SGLang,
transformers) then serve the unlearned classifier from plain text, prompt included in their prefix cache.

Their output rows are zero (input and output embeddings are untied), so they add logit 0 to the
vocabulary, and generation_config.json suppresses them. The label-word probabilities (normalised over the
label words, as spul computes them before its answer policy withholds them behind a generic answer) and
the answers are spul's; log-probabilities over the whole vocabulary differ by the reserved tokens' share of
it, log(1 + n / sum(exp(logits))), which is tiny for a real model (measured on SmolLM2: 2e-5) but not zero.
Tokenising the template with its reserved tokens must give exactly the token ids spul feeds the model;
where a tokeniser merges differently across the reserved tokens (e.g. "\\n\\n" becomes one token at a
segment's end), the template's tokens just before them are written as extra reserved tokens ("alias"
tokens, embedding rows copied from the original tokens).
This is checked on probe texts; an export that cannot reproduce spul's input is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spul.errors import SpulError
from spul.io import write_folder_atomic
from spul.suffix import SuffixPrompt, answer_cue_length
from spul.unlearned import Unlearned

EXPORT_FILE = "spul-export.json"
TEMPLATE_FILE = "spul-template.txt"
PROBE_TEXTS = (
    "a gorgeous, witty film.",
    "it's bleak !",
    "two\nlines of text",
    "  spaced out  ",
    "ends with a newline\n",
    "Ünïcödé — and émojis 🙂",
    "x",
)


@dataclass
class Layout:
    """Where the reserved tokens go: the template text with `{text}`, and the embedding row of each."""

    template: str  # the exported template (reserved tokens written in)
    tokens: list[str]  # reserved token strings, in template order
    rows: torch.Tensor  # [len(tokens), hidden] their input-embedding rows
    prompt_tokens: list[str]  # the ones that are the soft prompt (the rest are aliases)


def export(unlearned: Unlearned, out: str | Path) -> dict[str, Any]:
    """Write `unlearned` as a HuggingFace model folder (refused for what a folder cannot express)."""
    reason = _not_exportable(unlearned)
    if reason:
        raise SpulError(f"{unlearned.folder}: cannot export a {reason}")
    model, tokenizer = unlearned.lm.model, unlearned.lm.tokenizer
    layout = _layout(unlearned) if unlearned.prompt is not None else None
    info = {
        "source": str(unlearned.folder.name),
        "kind": unlearned.kind,
        "method": unlearned.manifest.get("method"),
        "base_model": unlearned.manifest.get("base_model"),
        "label_words": list(unlearned.verbalizer.words),
        "generic_words": list(unlearned.manifest.get("generic_words", [])),
        "template": layout.template if layout else unlearned.template.text,
        "reserved_tokens": layout.tokens if layout else [],
        "prompt_tokens": layout.prompt_tokens if layout else [],
    }

    def fill(folder: Path) -> None:
        if layout is None:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        else:
            _save_with_reserved_tokens(model, tokenizer, layout, folder)
        (folder / TEMPLATE_FILE).write_text(info["template"], encoding="utf-8")
        (folder / EXPORT_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        (folder / "README.md").write_text(_readme(info), encoding="utf-8")

    write_folder_atomic(Path(out), fill)
    return info


def _not_exportable(unlearned: Unlearned) -> str | None:
    if unlearned.guard is not None:
        return "guard or gated prompt: the rule before the model is no part of a model folder"
    if not unlearned.plain_encoder:
        return "context artifact (demonstrations before every query): serve it with `spul serve`"
    return None


def _layout(unlearned: Unlearned) -> Layout:
    """The template with the reserved tokens, checked to reproduce spul's input ids on probe texts."""
    prompt, tokenizer, encoder = unlearned.prompt, unlearned.lm.tokenizer, unlearned.encoder
    suffix = isinstance(prompt, SuffixPrompt)
    vectors = (prompt.embeddings if suffix else prompt).detach().float().cpu()
    names = [f"<spul_{i}>" for i in range(vectors.shape[0])]
    embed = unlearned.lm.model.get_input_embeddings().weight.detach().float().cpu()
    text = unlearned.template.text
    if not suffix:
        return _checked(unlearned, Layout("".join(names) + text, names, vectors, names))
    tail = answer_cue_length(encoder)
    cue = text.rsplit("\n", 1)[1] if tail else ""
    before = text[: len(text) - len(cue)]
    constant = encoder.encode([""])[0][: len(encoder.encode([""])[0]) - tail]
    # alias the last m template tokens before the prompt, m as small as makes tokenisation agree
    for m in range(0, len(constant) + 1):
        aliased = constant[len(constant) - m :]
        strings = [tokenizer.decode([i]) for i in aliased]
        if not before.endswith("".join(strings)):
            continue
        head = before[: len(before) - len("".join(strings))]
        aliases = [f"<spul_t{j}>" for j in range(m)]
        rows = torch.cat([embed[aliased], vectors]) if m else vectors
        layout = Layout(head + "".join(aliases + names) + cue, aliases + names, rows, names)
        try:
            return _checked(unlearned, layout, aliased)
        except SpulError:
            continue
    raise SpulError(
        f"{unlearned.folder}: this tokenizer does not reproduce spul's input around the reserved tokens; "
        "the prompt cannot be exported as text (serve it with `spul serve`)"
    )


def _checked(unlearned: Unlearned, layout: Layout, aliased: list[int] | None = None) -> Layout:
    """`layout` if the exported tokenizer gives spul's ids (prompt in place) on every probe text."""
    probe = _probe_tokenizer(unlearned.lm.tokenizer, layout.tokens)
    ids = dict(zip(layout.tokens, probe.convert_tokens_to_ids(layout.tokens), strict=True))
    prompt_ids = [ids[t] for t in layout.prompt_tokens]
    alias_ids = [ids[t] for t in layout.tokens if t not in layout.prompt_tokens]
    suffix = isinstance(unlearned.prompt, SuffixPrompt)
    tail = answer_cue_length(unlearned.encoder) if suffix else 0
    for text in PROBE_TEXTS:
        spul_ids = unlearned.encoder.encode([text])[0]
        if suffix:
            cut = len(spul_ids) - tail - len(alias_ids)
            want = spul_ids[:cut] + alias_ids + prompt_ids + spul_ids[len(spul_ids) - tail :]
            if spul_ids[cut : len(spul_ids) - tail] != list(aliased or []):
                raise SpulError("aliases are not the template's tokens")
        else:
            want = prompt_ids + spul_ids
        got = probe(layout.template.replace("{text}", text)).input_ids
        if got != want:
            raise SpulError(f"tokenisation differs on probe text {text!r}")
    return layout


def _probe_tokenizer(tokenizer, tokens: list[str]):
    """A copy of the tokenizer with the reserved tokens added (the original is left untouched)."""
    import copy

    probe = copy.deepcopy(tokenizer)
    probe.add_tokens(tokens, special_tokens=True)
    return probe


def _save_with_reserved_tokens(model, tokenizer, layout: Layout, folder: Path) -> None:
    """Save the model (changed in place: the export consumes it) and tokenizer with the reserved tokens:
    input rows = the layout's rows, output rows zero (input and output embeddings untied)."""
    tokenizer = _probe_tokenizer(tokenizer, layout.tokens)
    ids = tokenizer.convert_tokens_to_ids(layout.tokens)
    old_in = model.get_input_embeddings().weight.detach()
    old_out = model.get_output_embeddings().weight.detach()
    size = max(old_in.shape[0], max(ids) + 1)  # padded vocabularies may already have room
    inp = torch.nn.Embedding(size, old_in.shape[1], dtype=old_in.dtype, device=old_in.device)
    out = torch.nn.Linear(old_out.shape[1], size, bias=False, dtype=old_out.dtype, device=old_out.device)
    with torch.no_grad():
        inp.weight.zero_()
        inp.weight[: old_in.shape[0]] = old_in
        inp.weight[ids] = layout.rows.to(inp.weight)
        out.weight.zero_()
        out.weight[: old_out.shape[0]] = old_out
        out.weight[ids] = 0.0  # logit 0 for every reserved token
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
        config.vocab_size = size
    model.set_input_embeddings(inp)
    model.set_output_embeddings(out)
    model.generation_config.suppress_tokens = ids
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _readme(info: dict[str, Any]) -> str:
    reserved = ", ".join(info["reserved_tokens"]) or "none"
    return f"""# Exported by `spul export` (an unlearned classifier)

Template ({"the soft prompt as reserved tokens" if info["reserved_tokens"] else "no soft prompt"};
`{{text}}` is the query; the answer is the next word, one of {", ".join(info["label_words"])}):

```
{info["template"]}
```

Reserved tokens: {reserved}. They are special tokens whose input embeddings are the learned prompt; their
output rows are zero and generation_config.json suppresses them.

**Apply the template server-side.** The unlearning *is* the reserved tokens: a client that can send raw
prompts can leave them out and gets the fine-tuned model's answers, forgotten labels included. With vLLM,
serve only an endpoint that fills this template (e.g. a thin proxy over `vllm serve DIR` that accepts the
text alone, or a chat template that wraps the user message), never `/v1/completions` with raw prompts to
clients, and never enable `--enable-prompt-embeds` for clients (CVE-2025-62164). Score the label words'
log-probabilities at the position after the template (e.g. `logprobs` of the first generated token), as
`spul predict` does. **Do not return them with a generic answer** (one that is no label word): behind it
the label probabilities still carry the forgotten label; spul's service and `spul predict` withhold them
(uniform), and an engine serving this folder must do the same, or return the label alone.

`spul-export.json` records the source artifact, the base model and the label words.
"""
