"""Attentional factorization machine."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ctrkit.hparam_checks import check_positive
from ctrkit.pytorch.layers import AttentionalPooling, FieldEmbedding, Linear
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


class AFM(CTRModel):
    """Attentional Factorization Machine.

    Xiao, Ye, He, Zhang, Wu and Chua, "Attentional Factorization Machines: Learning the Weight of
    Feature Interactions via Attention Networks", IJCAI 2017, https://arxiv.org/abs/1708.04617::

        y     = w_0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i o v_j) x_i x_j
        a_ij  = softmax_{(i,j)}( h^T ReLU(W (v_i o v_j) x_i x_j + b) )

    ``dropout`` is the paper's dropout on the pair-wise interaction layer, applied here to the
    attention-pooled vector before ``p``. ``attention_factor`` (the paper's ``t``) defaults to 16;
    the paper reports AFM to be insensitive to it.

    ``embed_init_std`` (default 0.01, the authors' code's N(0, 0.01) embeddings) is AFM's own: the
    softmax makes the pooled vector an *average* of the P = F(F-1)/2 pair products, not FM's sum, so
    with the project-wide N(0, 1e-4) tables the pair term starts near 1e-9, 99.9 % of the embedding
    gradients it sends sit below Adam's epsilon (1e-8) and the attention net gets ~1e-17. At 0.01
    they pass eps after ~60 steps; still, on 39 fields (P = 741) the average makes AFM's pair term
    learn slowly under Adam, and in 2 epochs of ``benchmarks/bench_beyond_lr.py`` AFM is only
    ~0.002 AUC above LR (FuxiCTR/BARS: ``embed_init_std=1e-4``).

    Args:
        schema: the input schema (at least 2 fields).
        embed_size: ``k``.
        attention_factor: ``t``, hidden size of the attention network.
        dropout: dropout on the pooled interaction vector.
        embed_init_std: std of the normal initialiser of the embeddings.

    Example::

        model = AFM(schema, embed_size=16, attention_factor=16)
        logits = model(batch)  # [B]
    """

    def __init__(self, schema: Schema, embed_size: int = 16, attention_factor: int = 16, dropout: float = 0.0,
                 embed_init_std: float = 0.01) -> None:
        super().__init__(schema)
        self.linear = Linear(schema)
        self.embedding = FieldEmbedding(schema, embed_size, check_positive("embed_init_std", embed_init_std))
        self.attention = AttentionalPooling(self.embedding.num_fields, self.embedding.dim, attention_factor, dropout)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.attention(e)  # (B, 1)
