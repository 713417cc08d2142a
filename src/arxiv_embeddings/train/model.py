"""The model being trained: the lower layers frozen (``train.freeze_layers``), and the model without the
mixed-precision wrapper that training adds, as it is saved and served."""

from __future__ import annotations

from typing import Any

from loguru import logger

from arxiv_embeddings.config import ConfigError


def freeze_lower_layers(model: Any, n_layers: int) -> str:
    """Freeze the token embeddings and the lowest ``n_layers`` transformer layers (0 = train everything).

    On a CPU the backward pass dominates a training step; it stops at the lowest trainable layer, so freezing the
    lower half roughly halves it, and the optimizer no longer updates the 11.7M-parameter embedding matrix of
    MiniLM. The upper layers carry most of what subject fine-tuning changes. Returns a short description.
    """
    if n_layers <= 0:
        return "all layers trainable"
    backbone = getattr(model[0], "auto_model", None)
    embeddings = getattr(backbone, "embeddings", None)
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if embeddings is None or layers is None:
        logger.warning(
            f"train.freeze_layers={n_layers} ignored: {type(backbone).__name__} has no BERT-style "
            "embeddings/encoder.layer to freeze."
        )
        return "all layers trainable"
    if n_layers >= len(layers):
        raise ConfigError(
            f"train.freeze_layers={n_layers} would freeze all {len(layers)} layers; use at most {len(layers) - 1}."
        )
    for module in [embeddings, *layers[:n_layers]]:
        for param in module.parameters():
            param.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"embeddings + {n_layers}/{len(layers)} layers frozen ({trainable / 1e6:.1f}M of {total / 1e6:.1f}M parameters trained)"


def without_autocast(model: Any) -> Any:
    """``model`` with the mixed-precision (autocast) forward wrapper that accelerate adds during training removed."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False)
