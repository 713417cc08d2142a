"""train: fine-tune a sentence-transformer on the pairs with SentenceTransformerTrainer.

    uv run inv train --overrides "loss=cached_mnrl trainer.per_device_train_batch_size=256"

The recipe follows the library's own examples: model -> data -> loss -> evaluator -> args -> trainer -> train ->
test evaluation -> save the final model (with its model card and the resolved config beside it). The evaluator
during training reads the **eval** split only; the test split is scored once, after training.

With the models in a bucket (``paths=gcs``) the trainer writes its checkpoints to local disk
(:func:`~arxiv_embeddings.layout.checkpoint_dir`), and with ``train.checkpoint_sync`` each one is also
copied to ``<models_dir>/<run>/checkpoints/`` in the bucket
(:class:`~arxiv_embeddings.train.checkpoints.CheckpointUploader`), so that a run on a machine that can vanish (a SPOT /
preemptible VM) resumes on the next one from its last checkpoint
(:func:`~arxiv_embeddings.train.checkpoints.download_checkpoint`).

All of training lives in this package. Its modules, in the order a run uses them:

- :mod:`~arxiv_embeddings.train.stage`: ``validate``, ``run``, ``SPEC``, ``main``. ``run`` reads its inputs at the
  top (the pairs of every task, the papers the evaluators score and the head is fit on) and passes tables and plain
  values down;
- :mod:`~arxiv_embeddings.train.sets`: the training sets of the main task and of a multi-task mix, loaded, with
  their losses, batch samplers and evaluators;
- :mod:`~arxiv_embeddings.train.objectives`: losses and batch samplers with the pair format each needs;
- :mod:`~arxiv_embeddings.train.losses` and :mod:`~arxiv_embeddings.train.samplers`: the supervised contrastive
  loss; the subject / category / label-group batch samplers;
- :mod:`~arxiv_embeddings.train.model`: frozen lower layers, and the model without training's autocast wrapper;
- :mod:`~arxiv_embeddings.train.evaluators`: subject and title -> abstract retrieval on the eval and test papers;
- :mod:`~arxiv_embeddings.train.trainer`: the trainer class and its arguments (precision, W&B);
- :mod:`~arxiv_embeddings.train.checkpoints`: the resume protocol (:class:`~arxiv_embeddings.train.checkpoints.CheckpointRun`)
  and background uploads to the bucket;
- :mod:`~arxiv_embeddings.train.head`: the subject head fit over the trained encoder;
- :mod:`~arxiv_embeddings.train.saving`: the ``final/`` folder and a LoRA run's adapter.

Each name is imported from the module that defines it; ``python -m arxiv_embeddings.train`` runs the stage.
"""
