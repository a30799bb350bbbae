"""The prompt template, the verbalizer (label words as token ids) and batch encoding."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from spul.errors import SpulError

PAPER_TEMPLATE = (
    "### Text: {text}\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment:"
)


@dataclass(frozen=True)
class Template:
    """Turns a text into the prompt whose completion is the label word (`{text}` is filled in)."""

    text: str = PAPER_TEMPLATE
    # The label word follows the prompt after this separator (the paper: "### Sentiment: positive").
    label_prefix: str = " "

    def __post_init__(self) -> None:
        if self.text.count("{text}") != 1:
            raise SpulError("the template must contain {text} exactly once")

    def render(self, text: str) -> str:
        """The prompt for one text, up to (not including) the label word."""
        return self.text.replace("{text}", text)


@dataclass
class Verbalizer:
    """Label words tokenised once; a word may span several tokens."""

    words: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...] = field(repr=False)

    @classmethod
    def build(
        cls, tokenizer: PreTrainedTokenizerBase, words: Sequence[str], template: Template
    ) -> Verbalizer:
        """Tokenise each word as it appears after the prompt (with the template's label prefix)."""
        ids = []
        for word in words:
            tokens = tokenizer(template.label_prefix + word, add_special_tokens=False).input_ids
            if not tokens:
                raise SpulError(f"label word {word!r} tokenises to nothing")
            ids.append(tuple(tokens))
        if len(set(ids)) != len(ids):
            raise SpulError(f"label words {list(words)} do not tokenise to distinct sequences")
        return cls(tuple(words), tuple(ids))

    @property
    def single_token(self) -> bool:
        """True when every word is one token (then one forward pass scores them all)."""
        return all(len(t) == 1 for t in self.token_ids)

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Batch:
    """Left-padded token ids whose last `answer_len[i]` positions predict `targets[i]`."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, L] right-aligned target ids, -100 where a row's answer is shorter
    index: list[int]  # position of each row in the caller's list

    def to(self, device: torch.device) -> Batch:
        """The same batch on another device."""
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.targets.to(device), self.index
        )

    def select(self, rows: torch.Tensor) -> Batch:
        """The rows where the boolean mask is true (still left-padded and right-aligned)."""
        keep = rows.nonzero().flatten().tolist()
        return Batch(
            self.input_ids[rows], self.attention_mask[rows], self.targets[rows], [self.index[i] for i in keep]
        )


class TruncationWarning(UserWarning):
    """Texts were cut to fit the model's max_length (the message gives the counts)."""


class Encoder:
    """Tokenises texts with the template once, then builds batches with any answer appended."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: Template, max_length: int = 512):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        before, after = template.text.split("{text}")
        # BPE tokenisers fold a space into the next word: tokenise "Text:" + " word", not "Text: " + "word".
        stripped = before.rstrip(" ")
        self._lead = before[len(stripped) :]
        self._before = tokenizer(stripped, add_special_tokens=True).input_ids
        self._after = tokenizer(after, add_special_tokens=False).input_ids

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids per text; long texts are truncated so the question part always survives."""
        budget = self.max_length - len(self._before) - len(self._after)
        if budget < 1:
            raise SpulError(f"max_length {self.max_length} leaves no room for text in the template")
        body = self.tokenizer([self._lead + t for t in texts], add_special_tokens=False).input_ids
        cut = [len(ids) for ids in body if len(ids) > budget]
        if cut:
            warnings.warn(
                f"{len(cut)} of {len(body)} texts are longer than the {budget} tokens max_length "
                f"{self.max_length} leaves for the text (longest: {max(cut)} tokens); they were truncated",
                TruncationWarning,
                stacklevel=2,
            )
        return [self._before + ids[:budget] + self._after for ids in body]

    def batch(
        self, prompts: Sequence[list[int]], answers: Sequence[Sequence[int]], index: list[int]
    ) -> Batch:
        """Left-padded batch of prompt + answer[:-1]; the last len(answer) positions predict the answer."""
        seqs = [list(p) + list(a[:-1]) for p, a in zip(prompts, answers, strict=True)]
        width = max(len(s) for s in seqs)
        answer_width = max(len(a) for a in answers)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        targets = torch.full((len(seqs), answer_width), -100, dtype=torch.long)
        for row, (seq, answer) in enumerate(zip(seqs, answers, strict=True)):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
            targets[row, answer_width - len(answer) :] = torch.tensor(answer)
        return Batch(ids, mask, targets, list(index))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little on padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
