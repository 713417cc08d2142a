"""train: fine-tune a sentence-transformer on the pairs with SentenceTransformerTrainer.

    uv run inv train --overrides "loss=cached_mnrl trainer.per_device_train_batch_size=256"

The recipe follows the library's own examples: model -> data -> loss -> evaluator -> args -> trainer -> train ->
test evaluation -> save the final model (with its model card and the resolved config beside it). The evaluator
during training reads the **eval** split only; the test split is touched once, after training.

With the models in a bucket (``paths=gcs``) the trainer writes its checkpoints to local disk
(:func:`~arxiv_embeddings.train.checkpoints.checkpoint_dir`), and with ``train.checkpoint_sync`` each one is also
copied to ``<models_dir>/<run>/checkpoints/`` in the bucket
(:class:`~arxiv_embeddings.train.checkpoints.CheckpointUploader`), so that a run on a machine that can vanish (a SPOT /
preemptible VM) resumes on the next one from its last checkpoint
(:func:`~arxiv_embeddings.train.checkpoints.download_checkpoint`).

The package's modules: :mod:`~arxiv_embeddings.train.objectives` (losses and the pair format each needs),
:mod:`~arxiv_embeddings.train.evaluators` (retrieval on the eval split during training),
:mod:`~arxiv_embeddings.train.trainer` (precision, frozen layers, batch samplers, LoRA, W&B, training arguments),
:mod:`~arxiv_embeddings.train.checkpoints` (resume, background uploads to the bucket) and
:mod:`~arxiv_embeddings.train.stage` (``validate``, ``run``, ``SPEC``, ``main``). Each name is imported from the
module that defines it; ``python -m arxiv_embeddings.train`` runs the stage.
"""
