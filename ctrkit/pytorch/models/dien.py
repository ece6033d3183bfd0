"""DIEN: Deep Interest Evolution Network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctrkit.hparam_checks import behaviour_fields, check_bool, check_int, check_units, check_weight
from ctrkit.pytorch.layers import MLP, FieldEmbedding
from ctrkit.pytorch.layers.sequence import AUGRU, GRU, AuxiliaryLoss, InterestAttention, behaviours
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema
from ctrkit.training.objective import AUX_LOSS, LOGITS


class DIEN(CTRModel):
    """DIEN: a GRU interest extractor with an auxiliary loss, then AUGRU interest evolution.

    Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019,
    https://arxiv.org/abs/1809.03672::

        h_t  = GRU(e_t, h_{t-1})                              interest extractor (padding skipped)
        L_aux = -mean log sigmoid(f(h_t, e_{t+1})) + log(1 - sigmoid(f(h_t, e^-_{t+1})))    (eq. 3)
        a_t  = softmax_t(MLP([h_t, q, h_t - q, h_t * q])), q = W_q e_a + b_q     attention (eq. 5)
        h'_t = AUGRU(h_t, h'_{t-1}; a_t)                       interest evolution (eq. 6-7)
        y    = MLP([e_1; ...; e_K; h'_L; s; e_a * s]),  s = sum_{t non-padding} e_t

    The output MLP's input is that of the authors' code (``[user, item, item_his_eb_sum, item *
    item_his_eb_sum, final_state2]``, in which the paper's ``e_1 .. e_K`` hold the user and the
    item): besides the final interest ``h'_L`` it sees the sum of the behaviours ``s`` and its
    product with the candidate. ``behaviour_sum=False`` gives the paper's figure, ``[e_1; ...;
    e_K; h'_L]``. The sum term lets the model use "the candidate is among the behaviours" from
    the first steps, while the recurrent interest is still forming.

    Behaviours ``e_t``, the candidate ``e_a`` and the fields ``e_1 .. e_K`` as in DIN
    (:func:`~ctrkit.pytorch.layers.sequence.behaviours`); ``h'_L`` is the final evolved interest
    (the state carried over trailing padding; zero without any behaviour). The negatives of the
    auxiliary loss are the behaviours of the next row of the batch at the same step
    (:class:`~ctrkit.pytorch.layers.sequence.AuxiliaryLoss`). In training mode with
    ``aux_loss_weight > 0`` the model returns ``{"logits", "aux_loss": aux_loss_weight * L_aux}``
    (the step contract of :mod:`ctrkit.training.objective`); otherwise the logits.

    Args:
        schema: the input schema (at least one sequence field).
        embed_size: ``D``.
        hidden_units: hidden sizes of the output MLP (the paper: 200, 80).
        gru_units: ``H`` of both GRUs (0: the behaviour width ``n_seq * D``, as in the paper).
        aux_hidden_units: hidden sizes of the auxiliary network (sigmoid; the authors': 100, 50).
        aux_loss_weight: ``alpha``, the weight of ``L_aux`` (the paper: 1).
        attention_units, attention_activation: the attention's activation unit
            (:class:`~ctrkit.pytorch.layers.sequence.InterestAttention`; the authors' code: 80, 40, sigmoid).
        behaviour_sum: feed ``s`` and ``e_a * s`` to the output MLP too (the authors' code; see above).
        dropout, batch_norm, activation: of the output MLP.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DIEN(schema, embed_size=16)
        out = model(batch)  # {"logits": [B], "aux_loss": []} in training, [B] in eval
    """

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        hidden_units: Sequence[int] = (200, 80),
        gru_units: int = 0,
        aux_hidden_units: Sequence[int] = (100, 50),
        aux_loss_weight: float = 1.0,
        attention_units: Sequence[int] = (80, 40),
        attention_activation: str = "sigmoid",
        behaviour_sum: bool = True,
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        sequences = behaviour_fields(schema, "DIEN")
        hidden_units = check_units("hidden_units", hidden_units)
        self.aux_loss_weight = check_weight("aux_loss_weight", aux_loss_weight)
        self.embedding = FieldEmbedding(schema, embed_size)
        behaviour_dim = len(sequences) * self.embedding.dim
        hidden = check_int("gru_units", gru_units, minimum=0) or behaviour_dim
        self.extractor = GRU(behaviour_dim, hidden)
        self.auxiliary = AuxiliaryLoss(hidden, behaviour_dim, aux_hidden_units)
        self.attention = InterestAttention(behaviour_dim, hidden, attention_units, attention_activation)
        self.evolution = AUGRU(hidden, hidden)
        self.behaviour_sum = check_bool("behaviour_sum", behaviour_sum)
        fixed = self.embedding.n_sparse + self.embedding.n_dense
        summed = 2 * behaviour_dim if self.behaviour_sum else 0
        self.dnn = MLP(fixed * self.embedding.dim + hidden + summed, hidden_units, activation, dropout, batch_norm,
                       output_dim=1)

    def outputs(self, batch: Mapping[str, torch.Tensor], with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, 1]`` and the unweighted auxiliary loss (None unless ``with_aux``)."""
        fields, query, keys, mask = behaviours(self.embedding, batch)
        states = self.extractor(keys, mask)  # (B, L, H)
        aux = self.auxiliary(states, keys, mask) if with_aux else None
        attention = self.attention(query, states, mask)  # (B, L)
        interest = self.evolution(states, attention, mask)[:, -1]  # (B, H)
        parts = [fields.flatten(1), interest.to(fields.dtype)]
        if self.behaviour_sum:
            summed = (keys * mask.unsqueeze(-1).to(keys.dtype)).sum(dim=1)  # (B, n_seq*D)
            parts += [summed, query * summed]
        logits = self.dnn(torch.cat(parts, dim=1))  # (B, 1)
        return logits, aux

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.outputs(batch, with_aux=False)[0]

    def forward(self, batch: Mapping[str, torch.Tensor]):
        if not (self.training and self.aux_loss_weight > 0):
            return super().forward(batch)
        logits, aux = self.outputs(batch, with_aux=True)
        return {LOGITS: _flat(logits), AUX_LOSS: self.aux_loss_weight * aux}


def _flat(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` -> float32 ``[B]``, as :meth:`CTRModel.forward` returns them."""
    logits = logits.reshape(-1)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
