"""Per-token log-probabilities of whole prompts (template + text + answer), soft prompt on or off."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spul.audit.mia import TokenStats
from spul.engine import PrefixFn, answer_logits, shared_prefix
from spul.models import LoadedModel
from spul.progress import progress_bar
from spul.prompting import Encoder, Verbalizer, length_sorted_batches
from spul.suffix import SuffixPrompt, aligned_logits

ROW_CHUNK = 4  # rows whose full-vocabulary statistics are computed at once (bounds memory)


def _token_statistics(logits: torch.Tensor, targets: torch.Tensor):
    """log p of each target token and the mean / std of log p under the next-token distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * logp.square()).sum(-1) - mu.square()
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked, mu, var.clamp(min=0).sqrt(), logp


@torch.no_grad()
def sequence_stats(
    lm: LoadedModel,
    encoder: Encoder,
    verbalizer: Verbalizer,
    generic: Verbalizer,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    prefix_fn: PrefixFn | None = None,
    batch_size: int = 16,
    description: str = "token log-probs",
    show_progress: bool = True,
    share_prefix: bool = True,
) -> list[TokenStats]:
    """Token statistics of `template(text) + label word` for each text; every token after the first is
    scored (the same tokens with and without the soft prompt, which goes in front as at prediction)."""
    prompts = encoder.encode(texts)
    seqs = [p + list(verbalizer.token_ids[y]) for p, y in zip(prompts, labels, strict=True)]
    generic_first = torch.tensor(sorted({w[0] for w in generic.token_ids}))
    prefix = shared_prefix(lm, prefix_fn, share_prefix=share_prefix)  # computed once, shared by every batch
    label_prefix = encoder.template.label_prefix
    out: list[TokenStats | None] = [None] * len(texts)
    with progress_bar(description, total=len(texts), enabled=show_progress) as advance:
        for index in length_sorted_batches([len(s) for s in seqs], batch_size):
            # prompt = the first token, answer = all the rest: the batch scores every later position
            batch = encoder.batch([seqs[i][:1] for i in index], [seqs[i][1:] for i in index], index)
            batch = batch.to(lm.device)
            with lm.autocast():
                if isinstance(prefix, SuffixPrompt):  # the prompt sits inside the row: align the logits
                    logits = aligned_logits(lm.model, batch, prefix)[:, -batch.targets.shape[1] :]
                else:
                    logits = answer_logits(lm.model, batch, prefix, share_prefix=False)
            for start in range(0, len(index), ROW_CHUNK):
                rows = slice(start, start + ROW_CHUNK)
                targets = batch.targets[rows]
                picked, mu, sigma, logp = _token_statistics(logits[rows], targets)
                for j, i in enumerate(index[rows]):
                    valid = (targets[j] != -100).cpu()
                    n_label = len(verbalizer.token_ids[labels[i]])
                    answer_at = targets.shape[1] - n_label  # position predicting the label's first token
                    generic_lp = torch.logsumexp(logp[j, answer_at, generic_first.to(logp.device)], 0)
                    tokens = picked[j].cpu()[valid].double().numpy()
                    out[i] = TokenStats(
                        logprobs=tokens,
                        mu=mu[j].cpu()[valid].double().numpy(),
                        sigma=sigma[j].cpu()[valid].double().numpy(),
                        label_logprob=float(tokens[-n_label:].sum()),
                        generic_logprob=float(generic_lp),
                        text=encoder.template.render(texts[i]) + label_prefix + verbalizer.words[labels[i]],
                    )
            advance(len(index))
    return [s for s in out if s is not None]
