"""Attentional factorization machine."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ctrkit.hparam_checks import check_bool, check_positive
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

    ``embed_init_std`` (default 0.01, the authors'; every other model's is 1e-4): the softmax makes the pooled
    vector an *average* of the P = F(F-1)/2 pair products, not FM's sum, so at N(0, 1e-4) the pair
    term starts near 1e-9 and 99.9 % of the embedding gradients it sends sit below Adam's epsilon.
    The authors' code's N(0, 0.01) lifts them above eps after ~60 steps, yet on 39 fields (P = 741)
    AFM (``fm_start`` off) stays ~0.002 AUC above LR after 2 epochs of ``benchmarks/bench_beyond_lr.py`` either way:
    under Adam the average makes the pair term learn ~P times slower than FM's.

    ``fm_start`` (default on): ``p`` starts at ``P * 1``, so that while the attention is still
    uniform (``a_ij = 1/P``) the pair term equals FM's ``sum_{i<j} <v_i, v_j>`` and AFM starts as FM
    (the authors' code starts AFM from FM-trained embeddings with ``p = 1``); with a Xavier ``p``
    the same steps move AFM's logit ~P times less than FM's and AFM learned only LR in 2 epochs
    (``benchmarks/bench_beyond_lr.py``; RESULTS.md). The embeddings start at the authors' N(0, 0.01).

    Args:
        schema: the input schema (at least 2 fields).
        embed_size: ``k``.
        attention_factor: ``t``, hidden size of the attention network.
        dropout: dropout on the pooled interaction vector.
        embed_init_std: std of the normal initialiser of the embeddings.
        fm_start: start ``p`` at ``P * 1`` (see above).

    Example::

        model = AFM(schema, embed_size=16, attention_factor=16)
        logits = model(batch)  # [B]
    """

    def __init__(self, schema: Schema, embed_size: int = 16, attention_factor: int = 16, dropout: float = 0.0,
                 embed_init_std: float = 0.01, fm_start: bool = True) -> None:
        super().__init__(schema)
        self.linear = Linear(schema)
        self.embedding = FieldEmbedding(schema, embed_size, check_positive("embed_init_std", embed_init_std))
        self.attention = AttentionalPooling(self.embedding.num_fields, self.embedding.dim, attention_factor, dropout)
        if check_bool("fm_start", fm_start):  # p = P * 1: uniform attention times P is FM's sum of the pair products
            with torch.no_grad():
                self.attention.projection.weight.fill_(float(len(self.attention.rows)))  # P

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.attention(e)  # (B, 1)
