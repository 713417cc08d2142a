"""Settings shared by the tests that train the tiny model."""

from __future__ import annotations

#: A three-step training run of the tiny model (2 layers, so at most 1 frozen), scored on 40 papers.
FAST = [
    "trainer.max_steps=3",
    "trainer.per_device_train_batch_size=8",
    "trainer.eval_steps=3",
    "trainer.save_steps=3",
    "trainer.logging_steps=1",
    "train.eval_papers=40",
    "train.test_papers=40",
    "train.max_seq_length=32",
    "train.freeze_layers=1",
    # the subject head (on by default) has tests of its own (test_head.py)
    "train.head.enabled=false",
]
