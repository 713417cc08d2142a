"""Training objectives that sentence-transformers does not ship, in its loss interface.

:class:`SupervisedContrastiveLoss` is the multi-positive InfoNCE of supervised contrastive learning (Khosla et al.,
2020, "Supervised Contrastive Learning", the L_out form): over a batch of ``(text, label)`` rows, every other row
with the anchor's label is a positive and every row with another label a negative. With one pair per subject in a
batch (what MultipleNegativesRankingLoss sees with the subject sampler) an anchor has one positive; with ``k``
papers of each subject (``train.papers_per_subject``) it has ``k - 1``, so each encoded text takes part in many more
positive pairs for the same compute.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SupervisedContrastiveLoss(nn.Module):
    """Multi-positive InfoNCE over a batch of labelled texts.

    For anchor ``i`` with positives ``P(i)`` (the other rows of its label) the loss is
    ``-1/|P(i)| * sum_{p in P(i)} log(exp(s_ip / t) / sum_{j != i} exp(s_ij / t))`` with ``s`` the cosine
    similarity and ``t`` the temperature, averaged over the anchors that have a positive. Rows whose label is alone
    in the batch are negatives of the others but no anchors.

    Args:
        model: the SentenceTransformer being trained.
        temperature: softmax temperature (0.05 = MultipleNegativesRankingLoss's default scale of 20).
    """

    def __init__(self, model: Any, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0.")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(
                f"SupervisedContrastiveLoss takes one text column and a label column ((text, label) rows, "
                f"pairs=labelled); got {len(features)} text columns."
            )
        embeddings = F.normalize(self.model(features[0])["sentence_embedding"], dim=-1)
        return self.from_embeddings(embeddings, labels)

    def from_embeddings(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss of L2-normalized ``embeddings`` (one row per text) with integer ``labels``."""
        n = embeddings.shape[0]
        sim = (embeddings @ embeddings.T).float() / self.temperature
        self_mask = torch.eye(n, dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill(self_mask, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        labels = labels.to(sim.device).view(-1)
        positive = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = positive.sum(dim=1)
        anchors = n_pos > 0
        if not bool(anchors.any()):  # no label twice in the batch: nothing to pull together
            return sim.masked_fill(self_mask, 0.0).sum() * 0.0
        summed = log_prob.masked_fill(~positive, 0.0).sum(dim=1)
        return -(summed[anchors] / n_pos[anchors]).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @property
    def citation(self) -> str:
        return (
            "@inproceedings{khosla2020supervised,\n  title={Supervised Contrastive Learning},\n"
            "  author={Khosla, Prannay and others},\n  booktitle={NeurIPS},\n  year={2020}\n}"
        )
