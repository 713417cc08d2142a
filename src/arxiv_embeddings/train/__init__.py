"""train: fine-tune a sentence-transformer on the pairs with SentenceTransformerTrainer.

    uv run inv train --overrides "loss=cached_mnrl trainer.per_device_train_batch_size=256"

The recipe follows the library's own examples: model -> data -> loss -> evaluator -> args -> trainer -> train ->
test evaluation -> save the final model (with its model card and the resolved config beside it). The evaluator
during training reads the **eval** split only; the test split is touched once, after training.

With the models in a bucket (``paths=gcs``) the trainer writes its checkpoints to local disk
(:func:`checkpoint_dir`), and with ``train.checkpoint_sync`` each one is also copied to
``<models_dir>/<run>/checkpoints/`` in the bucket (:class:`CheckpointUploader`), so that a run on a machine that can
vanish (a SPOT / preemptible VM) resumes on the next one from its last checkpoint (:func:`download_checkpoint`).

The package's modules: :mod:`~arxiv_embeddings.train.objectives` (losses and the pair format each needs),
:mod:`~arxiv_embeddings.train.evaluators` (retrieval on the eval split during training),
:mod:`~arxiv_embeddings.train.trainer` (precision, frozen layers, batch samplers, LoRA, W&B, training arguments),
:mod:`~arxiv_embeddings.train.checkpoints` (resume, background uploads to the bucket) and
:mod:`~arxiv_embeddings.train.stage` (``validate``, ``run``, ``SPEC``, ``main``). The names above are importable
from here.
"""

from __future__ import annotations

from arxiv_embeddings.train.checkpoints import CheckpointUploader as CheckpointUploader
from arxiv_embeddings.train.checkpoints import checkpoint_dir as checkpoint_dir
from arxiv_embeddings.train.checkpoints import download_checkpoint as download_checkpoint
from arxiv_embeddings.train.checkpoints import model_dir as model_dir
from arxiv_embeddings.train.checkpoints import remote_checkpoint_dir as remote_checkpoint_dir
from arxiv_embeddings.train.checkpoints import upload_checkpoint as upload_checkpoint
from arxiv_embeddings.train.evaluators import retrieval_evaluator as retrieval_evaluator
from arxiv_embeddings.train.evaluators import task_evaluator as task_evaluator
from arxiv_embeddings.train.evaluators import title_abstract_evaluator as title_abstract_evaluator
from arxiv_embeddings.train.objectives import IN_BATCH as IN_BATCH
from arxiv_embeddings.train.objectives import LOSSES as LOSSES
from arxiv_embeddings.train.objectives import LossSpec as LossSpec
from arxiv_embeddings.train.objectives import build_loss as build_loss
from arxiv_embeddings.train.objectives import check_loss_matches_pairs as check_loss_matches_pairs
from arxiv_embeddings.train.objectives import loss_spec as loss_spec
from arxiv_embeddings.train.stage import SPEC as SPEC
from arxiv_embeddings.train.stage import head_enabled as head_enabled
from arxiv_embeddings.train.stage import main as main
from arxiv_embeddings.train.stage import run as run
from arxiv_embeddings.train.stage import validate as validate
from arxiv_embeddings.train.stage import validate_model as validate_model
from arxiv_embeddings.train.trainer import BATCH_SAMPLERS as BATCH_SAMPLERS
from arxiv_embeddings.train.trainer import category_batches as category_batches
from arxiv_embeddings.train.trainer import check_label_batches as check_label_batches
from arxiv_embeddings.train.trainer import freeze_lower_layers as freeze_lower_layers
from arxiv_embeddings.train.trainer import resolve_precision as resolve_precision
from arxiv_embeddings.train.trainer import save_lora as save_lora
from arxiv_embeddings.train.trainer import train_sampler as train_sampler
