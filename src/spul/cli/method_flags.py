"""The `spul unlearn` method flags, generated from the method configs (fields with a `flag`) by
`python -m spul.methods.docs > src/spul/cli/method_flags.py`; do not edit: the registry's test
checks it is current."""

# method option -> (its flag, the flag's type, help); a flag left out leaves the method's default.
# fmt: off
METHOD_FLAGS: dict[str, tuple[str, type, str]] = {
    'prompt_type': ('--prompt-type', str, "spul: ptuning (the paper's) or prompt-tuning (default ptuning)"),
    'num_virtual_tokens': ('--p', int, 'spul: number of virtual tokens (default 30)'),
    'encoder_hidden': ('--encoder-hidden', int, 'spul: P-tuning MLP hidden size (default 128)'),
    'init_prompt': ('--init-prompt', str, 'spul: start from this saved prompt (needs --prompt-type prompt-tuning)'),
    'alpha': ('--alpha', float, 'spul, ga_gd, ga_kl: weight of the retain term (default 1); npo: weight of the retain CE (0: train on the forget rows only) (default 0)'),
    'beta': ('--beta', float, 'spul: weight of the KL to the unprompted model (default 0.5)'),
    'gate': ('--gate', bool, 'spul: gated SPUL: also fit the embedding gate on forget vs retain training rows; the prompt is applied only to the queries it flags, the others see the model alone'),
    'regex': ('--filter-regex', str, "filter: flag queries this regex matches (case-insensitive) [default: spul unlearn's --regex / --keywords forget rule, else names derived from the forget rows]"),
    'keywords': ('--filter-keywords', str, 'filter: flag queries containing one of these words or phrases (whole words)'),
    'ratio': ('--filter-ratio', float, 'filter: derived names: how many times more frequent in forget than retain rows (default 10)'),
    'r': ('--lora-r', int, 'finetune, retrain: LoRA rank (default 16); ga, ga_gd, ga_kl, npo, rl: LoRA rank (with --lora) [default: 16]'),
    'lora': ('--lora', bool, 'ga, ga_gd, ga_kl, npo, rl: train a LoRA adapter, not every weight'),
    'embedder': ('--gate-embedder', str, 'gate: sentence embedder of the queries (default all-MiniLM-L6-v2)'),
    'folds': ('--gate-folds', int, 'gate: cross-validation folds choosing the threshold (default 5)'),
    'shots': ('--icul-shots', int, 'icul: demonstrations per query, the first flipped (default 4)'),
    'npo_beta': ('--npo-beta', float, "npo: NPO's inverse temperature (default 0.1)"),
}
