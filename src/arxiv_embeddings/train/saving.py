"""Saving a trained model: the ``final/`` folder (the model, or with an unmerged LoRA run its adapter, with the
resolved config, ``train_summary.json`` and ``tasks.json`` beside it, and with ``train.search_model=base`` the
untouched base model in ``base/``), written atomically, and the LoRA adapter of a
merged LoRA run in ``adapter/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from arxiv_embeddings.io import atomic_dir, write_json
from arxiv_embeddings.layout import ADAPTER_DIR, BASE_DIR, FINAL_DIR, TASKS_FILE, TRAIN_SUMMARY_FILE

#: The config file saved beside a trained model (and its adapter): the run's resolved config.
CONFIG_FILE = "train_config.yaml"


def served_tasks(has_head: bool, base: bool = False) -> dict[str, Any]:
    """The tasks.json of a trained model: which output serves each task (the API's ``task``). Every module of the
    folder serves all three; a subject head is fit on subjects alone, so with one, search is served by the encoder
    under it (with the mix the encoder itself learnt search, bench/README.md#tasks). With ``base``
    (``train.search_model=base`` or a search model's folder), search is served by the untouched base model, or that
    search model, the folder keeps in ``base/``."""
    search_output = "base" if base else "encoder" if has_head else "model"
    return {"default": "subject", "tasks": {"subject": "model", "search": search_output, "graded": "model"}}


def save_final(
    model: Any,
    final: Path,
    *,
    config_yaml: str,
    summary: dict[str, Any],
    tasks: dict[str, Any],
    adapter_base: str | None = None,
    search_model: Any = None,
) -> None:
    """Write ``final`` atomically: the model (or, with ``adapter_base``, only its LoRA adapter over that base), the
    resolved config, the train summary and the tasks map; with ``search_model`` (``train.search_model``: the untouched
    base model, or a model trained for search) that model in ``final/base/``."""
    with atomic_dir(final) as tmp:
        if adapter_base is None:
            model.save(str(tmp))
        else:
            from arxiv_embeddings.backends.lora import save_adapter

            save_adapter(model, tmp, adapter_base)
        if search_model is not None:
            search_model.save(str(tmp / BASE_DIR))
        (tmp / CONFIG_FILE).write_text(config_yaml)
        write_json(tmp / TRAIN_SUMMARY_FILE, summary)
        write_json(tmp / TASKS_FILE, tasks)


def save_lora(
    model: Any, out: Path, lora: dict[str, Any], base: str, probe: list[str], config_yaml: str
) -> dict[str, Any]:
    """The LoRA part of saving a trained model (``lora``: the ``model.lora`` settings). With ``merge`` (the default):
    save the adapter to ``out/adapter``, then merge the adapters into the backbone in place (the caller saves the
    merged model to ``final/``) and check that the merged model embeds the ``probe`` texts as the adapter model did.
    Returns what the summary records."""
    from arxiv_embeddings.backends.lora import merge_lora, save_adapter

    merge = bool(lora.get("merge", True))
    info: dict[str, Any] = {
        "r": int(lora["r"]),
        "alpha": float(lora["alpha"]),
        "dropout": float(lora.get("dropout", 0.0)),
        "target_modules": lora["target_modules"],
        "merged": merge,
        "adapter": str(out / (ADAPTER_DIR if merge else FINAL_DIR)),
    }
    if not merge:
        return info
    with atomic_dir(out / ADAPTER_DIR) as tmp:
        save_adapter(model, tmp, base)
        (tmp / CONFIG_FILE).write_text(config_yaml)
    before = model.encode(probe, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    info["merged_layers"] = merge_lora(model)
    after = model.encode(probe, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    info["merge_max_abs_diff"] = float(np.abs(before - after).max())
    if info["merge_max_abs_diff"] > 1e-3:
        logger.warning(
            f"The merged model's embeddings differ from the adapter model's by up to {info['merge_max_abs_diff']:.2e}; "
            f"the adapter in {out / ADAPTER_DIR} is the reference."
        )
    return info
