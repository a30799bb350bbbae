"""Soft prompts over the frozen model: the shared machinery of SPUL-like methods, and the `prompt`
artifact kind (a peft prompt folder applied in front of every query of the base model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import (
    PeftModel,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)

from spul.engine import PrefixFn, answer_logits, answer_logits_pair, prefix_kv
from spul.errors import SpulError
from spul.forward import last_logits_only
from spul.methods.base import Method
from spul.methods.config import MethodConfig, option
from spul.methods.kinds import ArtifactKind, Attached, register_kind
from spul.models import LoadedModel
from spul.progress import progress_bar
from spul.prompting import Batch, Encoder, Template, Verbalizer, length_sorted_batches
from spul.reporting import warn
from spul.suffix import (
    SuffixPrompt,
    answer_cue_length,
    cache_of_rows,
    row_states,
    suffix_over,
    text_states,
    uses_text_cache,
)

PROMPT_TYPES = ("ptuning", "prompt-tuning")
PROMPT_POSITIONS = ("prefix", "suffix", "auto")
# a suffix prompt's row: per-layer text (keys, values) [kv_heads, T, head_dim], unprompted answer logits
RowStates = tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


def prompt_config(
    prompt_type: str, num_virtual_tokens: int, encoder_hidden: int, token_dim: int, init: str = "random"
):
    """The peft config of a soft prompt: P-tuning (MLP re-parametrised, as the paper) or prompt tuning."""
    if prompt_type == "ptuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=num_virtual_tokens,
            encoder_hidden_size=encoder_hidden,
            token_dim=token_dim,
        )
    if prompt_type == "prompt-tuning":
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=num_virtual_tokens,
            token_dim=token_dim,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB if init == "vocab" else PromptTuningInit.RANDOM,
        )
    raise SpulError(f"unknown prompt type {prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")


@dataclass
class SoftPromptConfig(MethodConfig):
    """The soft prompt's shape and how it starts."""

    kind = "prompt"

    prompt_type: str = option("ptuning", "ptuning (the paper's) or prompt-tuning", flag="--prompt-type")
    num_virtual_tokens: int = option(30, "number of virtual tokens", flag="--p")
    encoder_hidden: int = option(128, "P-tuning MLP hidden size", flag="--encoder-hidden")
    init_prompt: str | None = option(
        None, "start from this saved prompt (needs --prompt-type prompt-tuning)", flag="--init-prompt"
    )
    prompt_position: str = option(
        "prefix",
        "prefix (the paper's: before the text), suffix (after the text, before the answer cue: the text "
        "is read once without gradients; one-token answer words only) or auto (suffix where it can)",
    )
    prompt_init: str = option(
        "random",
        "prompt-tuning start: random (peft's N(0, 1)) or vocab (embeddings of random vocabulary tokens)",
    )
    text_cache_mb: int = option(
        2048,
        "suffix prompts: keep training rows' text states in memory up to this size, the check's and forget "
        "rows first; the others are read at each step (0: off)",
    )

    def check(self) -> None:
        """A known prompt type and position, a prompt of at least one token and a positive MLP width."""
        self.require("num_virtual_tokens", self.num_virtual_tokens >= 1, ">= 1")
        self.require("encoder_hidden", self.encoder_hidden >= 1, ">= 1")
        if self.prompt_type not in PROMPT_TYPES:
            raise SpulError(
                f"unknown prompt type {self.prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}"
            )
        if self.prompt_init not in ("random", "vocab"):
            raise SpulError(f"unknown prompt_init {self.prompt_init!r}; choose random or vocab")
        if self.text_cache_mb < 0:
            raise SpulError(f"text_cache_mb must be >= 0 (got {self.text_cache_mb})")
        if self.prompt_position not in PROMPT_POSITIONS:
            raise SpulError(
                f"unknown prompt position {self.prompt_position!r}; "
                f"choose one of {', '.join(PROMPT_POSITIONS)}"
            )

    def hyperparameters(self) -> dict[str, Any]:
        """The options; init_prompt and a suffix position only when used (older manifests stay as before)."""
        out = super().hyperparameters()
        if out["init_prompt"] is None:
            del out["init_prompt"]
        if out["prompt_position"] == "prefix":
            del out["prompt_position"]
            del out["text_cache_mb"]
        if out["prompt_init"] == "random":
            del out["prompt_init"]
        return out


class SoftPromptMethod(Method):
    """Shared machinery of methods that train a soft prompt over the frozen model."""

    config_class = SoftPromptConfig

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        lm, c = self.lm, self.config
        token_dim = lm.model.get_input_embeddings().embedding_dim
        config = prompt_config(
            c.prompt_type, c.num_virtual_tokens, c.encoder_hidden, token_dim, c.prompt_init
        )
        # peft wraps the model without copying it; we use the prompt encoder and feed embeddings ourselves
        # (peft's own forward ignores position ids, which matters with padding).
        start = None
        if c.init_prompt:
            start = saved_prompt(lm, c.init_prompt, c.prompt_type, c.num_virtual_tokens)
        self.tail = 0  # suffix prompts: template tokens after the prompt (its answer cue)
        if c.prompt_position == "auto":  # recorded as the position it resolved to
            words = [self.verbalizer, getattr(self, "generic", None)]
            one_token = all(w is None or w.single_token for w in words)
            c.prompt_position = "suffix" if one_token else "prefix"
        if c.prompt_position == "suffix":
            check_suffix_words(self.verbalizer, getattr(self, "generic", None))
            self.tail = answer_cue_length(self.encoder)
        self.peft = get_peft_model(lm.model, config)
        self.peft.prompt_encoder.to(lm.device)
        lm.cast_frozen()  # only the prompt is trained: the frozen weights are cast once, not every call
        # suffix prompts: item index -> (per-layer text keys/values, unprompted answer logits)
        self.text_cache: dict[int, RowStates] = {}
        if start is not None:
            with torch.no_grad():
                self.peft.prompt_encoder["default"].embedding.weight.copy_(start)

    def trainable(self) -> torch.nn.Module:
        """The prompt encoder (P-tuning MLP or plain embeddings)."""
        return self.peft.prompt_encoder

    def prompt(self) -> torch.Tensor:
        """The p virtual-token embeddings, [p, hidden]."""
        return self.peft.get_prompt(batch_size=1)[0]

    def placed_prompt(self) -> torch.Tensor | SuffixPrompt:
        """The current soft prompt as the engine takes it: embeddings before the text, or a suffix."""
        if self.config.prompt_position == "suffix":
            return SuffixPrompt(self.prompt(), tail=self.tail)
        return self.prompt()

    def prefix_fn(self) -> PrefixFn:
        """The current soft prompt."""
        return self.placed_prompt

    def save(self, folder: Path) -> None:
        """Save as a peft adapter folder (loadable with PeftModel.from_pretrained)."""
        self.peft.save_pretrained(str(folder))

    def logits(self, batch: Batch, prompted: bool = True) -> torch.Tensor:
        """Answer-position logits with or without the soft prompt; without it, read from the text cache
        when that holds every row of the batch (the cache keeps each row's unprompted answer)."""
        if not prompted and self.text_cache and all(i in self.text_cache for i in batch.index):
            return torch.stack([self.text_cache[i][1] for i in batch.index])
        with self.lm.autocast():
            return answer_logits(self.lm.model, batch, self.placed_prompt() if prompted else None)

    def logits_pair(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompted answer logits, and the unprompted ones where the pass gave them free (a suffix)."""
        with self.lm.autocast():
            if not self.text_cache:
                return answer_logits_pair(self.lm.model, batch, self.placed_prompt())
            missing = [i not in self.text_cache for i in batch.index]
            fresh = {}
            if any(missing):  # rows over the cache budget: their text states now, without gradients, not kept
                fresh = self._states(batch.select(torch.tensor(missing, device=batch.input_ids.device)))
            rows = [self.text_cache.get(i) or fresh[i] for i in batch.index]
            model, cut = self.lm.model, batch.input_ids.shape[1] - self.tail
            cache = cache_of_rows(model, [r[0] for r in rows], cut)
            mask, tail_ids = batch.attention_mask[:, :cut], batch.input_ids[:, cut:]
            out = suffix_over(model, mask, cache, self.placed_prompt(), tail_ids, **last_logits_only(model))
            return out.logits[:, -1:].float(), torch.stack([r[1] for r in rows])

    def _states(self, batch: Batch) -> dict[int, RowStates]:
        """Each row's per-layer text keys/values (without the answer cue) and unprompted answer logits."""
        model = self.lm.model
        with torch.no_grad(), self.lm.autocast():
            out = text_states(model, batch, **last_logits_only(model))
        layers = row_states(out)
        if layers is None:
            return {}
        width, states = batch.input_ids.shape[1], {}
        for row, i in enumerate(batch.index):
            start, end = width - int(batch.attention_mask[row].sum()), width - self.tail
            kv = [(k[row, :, start:end].clone(), v[row, :, start:end].clone()) for k, v in layers]
            states[i] = (kv, out.logits[row, -1:].float().clone())
        return states

    def prepare(self, items, first: Sequence[int] = ()) -> None:
        """Suffix prompts: the text states and unprompted answer of as many rows as `text_cache_mb` holds
        (`first`, then forget rows, then the rest), computed once (the frozen model never changes them) in
        fixed length-sorted batches, so a resumed run sees the same values. Other rows' states are
        computed at each step they are in."""
        c, model = self.config, self.lm.model
        if c.prompt_position != "suffix" or c.text_cache_mb == 0 or not uses_text_cache(model):
            return
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_token, per_row = 2 * config.num_hidden_layers * heads * head_dim * 4, config.vocab_size * 4
        sizes = [len(it.prompt) * per_token + per_row for it in items]
        forget = [i for i, it in enumerate(items) if it.is_forget]
        chosen = rows_that_fit(sizes, [*first, *forget, *range(len(items))], c.text_cache_mb * 2**20)
        if len(chosen) < len(items):
            warn(
                f"suffix prompt: the text states of {len(chosen)} of {len(items)} rows fit in "
                f"text_cache_mb {c.text_cache_mb}; the others are read again at each step"
            )
        with progress_bar("text states", total=len(chosen)) as advance:
            for batch_rows in length_sorted_batches([len(items[i].prompt) for i in chosen], 32):
                index = [chosen[j] for j in batch_rows]
                prompts, answers = [items[i].prompt for i in index], [items[i].answer for i in index]
                batch = self.encoder.batch(prompts, answers, index)
                states = self._states(batch.to(self.lm.device))
                if not states:
                    self.text_cache.clear()
                    return
                self.text_cache.update(states)
                advance(len(index))


def rows_that_fit(sizes: Sequence[int], order: Sequence[int], budget: int) -> list[int]:
    """The rows of `order` (repeats ignored), first come first kept, until their sizes pass `budget`;
    sorted."""
    chosen, total = [], 0
    for i in dict.fromkeys(order):
        total += sizes[i]
        if total > budget:
            break
        chosen.append(i)
    return sorted(chosen)


def check_suffix_words(verbalizer: Verbalizer, generic: Verbalizer | None) -> None:
    """A suffix prompt sits right before the answer's first token: every answer word must be one token."""
    for words in (verbalizer, generic):
        if words is not None and not words.single_token:
            long = [w for w, t in zip(words.words, words.token_ids, strict=True) if len(t) > 1]
            raise SpulError(
                f"prompt_position suffix needs one-token answer words; {', '.join(map(repr, long))} "
                "take several tokens with this tokenizer: use prompt_position prefix or other words"
            )


def load_prompt_encoder(lm, folder: Path) -> PeftModel:
    """Attach a saved soft prompt (peft folder) to a loaded model."""
    peft = PeftModel.from_pretrained(lm.model, str(folder))
    peft.prompt_encoder.to(lm.device)
    peft.eval()
    return peft


def saved_prompt(lm, folder: str | Path, prompt_type: str, num_virtual_tokens: int) -> torch.Tensor:
    """The embeddings of a saved prompt, to continue training from (plain prompt tuning only).

    peft saves a P-tuning prompt as its output embeddings, without the MLP that made them, so training
    can continue from a saved prompt only as plain prompt tuning of those embeddings.
    """
    from safetensors.torch import load_file

    from spul.artifacts import check_base_model, model_fingerprint, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("kind") != PromptKind.name:
        raise SpulError(f"--init-prompt {folder}: holds a {manifest.get('kind')}, not a soft prompt")
    check_base_model(manifest, model_fingerprint(lm.model), folder)
    if prompt_type != "prompt-tuning":
        raise SpulError(
            "--init-prompt continues a saved prompt as plain prompt tuning (peft saves a P-tuning prompt "
            "without its MLP): add --prompt-type prompt-tuning"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise SpulError(f"--init-prompt {folder}: no adapter_model.safetensors")
    embeddings = load_file(str(weights)).get("prompt_embeddings")
    if embeddings is None or embeddings.dim() != 2:
        raise SpulError(f"--init-prompt {weights}: no prompt_embeddings tensor")
    if embeddings.shape[0] != num_virtual_tokens:
        raise SpulError(
            f"--init-prompt {folder} has {embeddings.shape[0]} virtual tokens: pass --p {embeddings.shape[0]}"
        )
    return embeddings.float()


@register_kind
class PromptKind(ArtifactKind):
    """A soft prompt put in front of every query of the base model, which stays as it is."""

    name = "prompt"
    shares_base_model = True

    def attach(self, lm: LoadedModel, folder: Path, template: Template, verbalizer: Verbalizer) -> Attached:
        """The prompt's embeddings and key/value states, computed once for every query."""
        from spul.artifacts import read_manifest

        peft = load_prompt_encoder(lm, folder)
        options = read_manifest(folder).get("hyperparameters", {}).get("method", {})
        position = options.get("prompt_position", "prefix")
        if position not in PROMPT_POSITIONS:
            raise SpulError(f"{folder}: unknown prompt_position {position!r} in spul.json")
        with torch.no_grad(), lm.autocast():
            # The prompt is fixed at inference: its embeddings and its key/value states in every layer
            # are computed once here and reused by every query (None where the model cannot share them).
            prompt = peft.get_prompt(batch_size=1)[0].detach()
            if position == "suffix":
                check_suffix_words(verbalizer, None)
                tail = answer_cue_length(Encoder(lm.tokenizer, template))
                return Attached(prompt=SuffixPrompt(prompt, tail=tail), guard=saved_guard(folder))
            states = prefix_kv(lm.model, prompt)
        return Attached(prompt=prompt, prompt_states=states, guard=saved_guard(folder))


def saved_guard(folder: Path):
    """Gated SPUL: the gate saved beside the prompt (guard.json), else None."""
    from spul.methods.guard import GUARD_FILE, load_guard

    return load_guard(folder) if (Path(folder) / GUARD_FILE).is_file() else None
