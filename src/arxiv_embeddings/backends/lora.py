"""LoRA adapters on a sentence-transformer's backbone (peft, through sentence-transformers' adapter support).

    model:
      lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}

``model.lora`` (null = full fine-tuning) adds low-rank adapters to the named linear layers of the backbone with
``model.add_adapter(LoraConfig(...))``; the backbone's own weights are frozen and only the adapters train. After
training, ``train`` saves

- the **adapter**: a sentence-transformers folder whose backbone is ``adapter_config.json`` +
  ``adapter_model.safetensors`` (a few MB) and the base model's ``config.json``; it loads with
  ``SentenceTransformer(folder)`` (or :func:`arxiv_embeddings.backends.loading.load_model`), which reads the base model from
  ``base_model_name_or_path`` (the Hub name, or the base folder) and applies the adapter; and
- with ``model.lora.merge`` (the default), the **merged** model: the adapters folded into the backbone's weights
  (``W + (alpha / r) * B @ A``, what peft's ``merge_and_unload`` does), a plain sentence-transformer that every
  stage loads without peft (the ONNX export needs it).

A decoder-only backbone (the Qwen2.5 family) is used as an encoder the way :func:`arxiv_embeddings.backends.loading.load_model`
builds any plain Hugging Face model: ``AutoModel`` (the transformer stack, no LM head), masked mean pooling over the
last hidden state, L2 normalization.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from arxiv_embeddings.config import ConfigError, require, to_plain

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: The file that marks a folder (or a checkpoint) as holding an adapter rather than full weights.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_NAME = "default"


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True for a model folder whose backbone is a LoRA adapter (``adapter_config.json``), not full weights."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def validate_lora(lora: Any, key: str = "model.lora") -> None:
    """Check a ``model.lora`` node (null = no LoRA), naming the offending key."""
    if lora is None:
        return
    known = {"r", "alpha", "dropout", "target_modules", "merge"}
    unknown = sorted(set(lora) - known)
    require(not unknown, key, f"unknown key(s) {unknown}; valid keys: {', '.join(sorted(known))}.")
    r, alpha, dropout = lora.get("r"), lora.get("alpha"), lora.get("dropout", 0.0)
    require(isinstance(r, int) and not isinstance(r, bool) and r > 0, f"{key}.r", f"got {r!r}; the rank, an int > 0.")
    require(isinstance(alpha, (int, float)) and alpha > 0, f"{key}.alpha", f"got {alpha!r}; a number > 0.")
    require(isinstance(dropout, (int, float)) and 0 <= dropout < 1, f"{key}.dropout", f"got {dropout!r}; in [0, 1).")
    targets = to_plain(lora.get("target_modules"))
    ok = targets == "all-linear" or (
        isinstance(targets, list) and len(targets) > 0 and all(isinstance(t, str) and t for t in targets)
    )
    require(
        ok,
        f"{key}.target_modules",
        f"got {targets!r}; a list of linear layer names such as [q_proj, v_proj], or all-linear.",
    )
    merge = lora.get("merge", True)
    require(isinstance(merge, bool), f"{key}.merge", f"got {merge!r}; true or false.")


def _linear_names(model: Any) -> list[str]:
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def add_lora(model: SentenceTransformer, lora: Any) -> str:
    """Add a LoRA adapter per ``lora`` (see :func:`validate_lora`) to the model's backbone; only the adapter then
    trains. Returns a short description with the share of trained parameters."""
    try:
        from peft import LoraConfig
    except ImportError as err:  # pragma: no cover - peft is a pipeline dependency
        raise ConfigError("model.lora needs the peft package: 'uv sync' installs it.") from err

    validate_lora(lora)
    backbone = model.transformers_model
    if backbone is None or not model.has_peft_compatible_model():
        raise ConfigError(
            f"model.lora: the model's first module ({type(model[0]).__name__}) is not a Hugging Face transformer; "
            "LoRA needs a sentence-transformers Transformer backbone. Set model.lora=null for full fine-tuning."
        )
    targets = to_plain(lora.target_modules)
    config = LoraConfig(
        r=int(lora.r),
        lora_alpha=lora.alpha,
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=targets,
        bias="none",
    )
    try:
        model.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as err:
        if "not found" not in str(err) and "target" not in str(err).lower():
            raise
        raise ConfigError(
            f"model.lora.target_modules={targets} matches no layer of {type(backbone).__name__} ({err}). Its linear "
            f"layers are named: {', '.join(_linear_names(backbone))}."
        ) from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    layers = sum(1 for m in backbone.modules() if _is_lora_layer(m))
    return (
        f"LoRA r={lora.r} alpha={lora.alpha} on {layers} layers "
        f"({trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters trained)"
    )


def _is_lora_layer(module: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def has_lora(model: SentenceTransformer) -> bool:
    """True when the model's backbone carries LoRA layers (not merged)."""
    backbone = model.transformers_model
    return backbone is not None and any(_is_lora_layer(m) for m in backbone.modules())


def base_reference(name: str) -> str:
    """What an adapter records as its base model: a Hub name as given when it loads from the Hugging Face cache or
    the Hub, else the absolute path of the folder it resolves to (a local base, or a package's copy)."""
    from arxiv_embeddings.backends.loading import from_hf_cache, resolve_model

    source = resolve_model(name)
    if source == name and not Path(name).exists():
        return name  # a Hub name, downloaded when loaded
    if from_hf_cache(name) is not None:
        return name
    return str(Path(source).resolve())


def complete_adapter_folder(model: SentenceTransformer, folder: str | os.PathLike[str]) -> None:
    """Make a folder the model was saved to with an adapter loadable as a sentence-transformer: write the base
    model's ``config.json`` beside ``adapter_config.json`` (the tokenizer loader reads the model type from it).
    Does nothing for a model without LoRA layers. Used for the saved adapter and every training checkpoint."""
    backbone = model.transformers_model
    if backbone is None or not has_lora(model) or not is_adapter_dir(folder):
        return
    backbone.config.save_pretrained(str(folder))


def save_adapter(model: SentenceTransformer, folder: str | os.PathLike[str], base: str) -> Path:
    """Save a model with a LoRA adapter as a sentence-transformers folder holding only the adapter's weights, with
    ``base_model_name_or_path`` = :func:`base_reference` of ``base``."""
    config = getattr(model.transformers_model, "peft_config", {}).get(ADAPTER_NAME)
    if config is None:
        raise ValueError("save_adapter: the model has no LoRA adapter; save it with model.save().")
    config.base_model_name_or_path = base_reference(base)
    model.save(str(folder))
    complete_adapter_folder(model, folder)
    if not is_adapter_dir(folder):  # pragma: no cover - depends on the transformers / peft versions
        raise RuntimeError(f"Saving the adapter to {folder} wrote full weights, not {ADAPTER_CONFIG}.")
    return Path(folder)


def merge_lora(model: SentenceTransformer) -> int:
    """Fold the LoRA adapters into the backbone's weights in place and remove them (peft's ``merge_and_unload``:
    each LoRA layer merges ``(alpha / r) * B @ A`` into its base layer, which then takes its place). The model is
    then a plain sentence-transformer. Returns the number of layers merged."""
    backbone = model.transformers_model
    if backbone is None:
        return 0
    merged = 0
    for name, module in list(backbone.named_modules()):
        if not _is_lora_layer(module):
            continue
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, module.get_base_layer())
        merged += 1
    if hasattr(backbone, "peft_config"):
        del backbone.peft_config
    backbone._hf_peft_config_loaded = False
    for param in model.parameters():
        param.requires_grad_(True)
    logger.debug(f"Merged {merged} LoRA layers into the backbone.")
    return merged
