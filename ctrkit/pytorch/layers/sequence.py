"""Behaviour-sequence blocks of DIN and DIEN: Dice, target attention, masked GRU, AUGRU, auxiliary loss.

Sequences arrive as ``[B, L, E]`` item embeddings with a bool mask ``[B, L]`` (False = padding,
the store's id 0; most recent item last). Padding never changes an output: it is weighted zero in
attention and in Dice's statistics, and a recurrent state is carried over a padded step unchanged.
Each block has a loop-by-loop ``reference_forward`` (the paper's formula, position by position)
that the tests compare with the vectorised ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrkit.pytorch.layers import _fused
from ctrkit.pytorch.layers._checks import check_int, check_units
from ctrkit.pytorch.layers.embedding import Bias, FieldEmbedding
from ctrkit.pytorch.layers.mlp import MLP, init_linear, make_activation

#: Dice's epsilon in the standardisation (Zhou et al. 2018, eq. 5)
DICE_EPSILON = 1e-8
#: weight of the old running statistics of Dice (torch's BatchNorm momentum 0.1)
DICE_MOMENTUM = 0.1


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16 (statistics and recurrent states), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _flat_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` as float ``[N, 1]`` over the flattened leading dims of ``x`` (all ones without a mask)."""
    if mask is None:
        return x.new_ones(x.shape[:-1].numel(), 1, dtype=_wide(x.dtype))
    return mask.reshape(-1, 1).to(_wide(x.dtype))


class Dice(nn.Module):
    """Dice, the data-adaptive activation of DIN.

    Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018,
    https://arxiv.org/abs/1706.06978, eq. 5::

        f(s) = p(s) * s + (1 - p(s)) * alpha * s,    p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))

    per channel. ``E`` and ``Var`` are the batch mean and (biased) variance over the non-padding
    rows in training, and running averages at inference (updated like ``BatchNorm1d``: momentum
    0.1, the unbiased variance). ``alpha`` is a :class:`Bias` (initialised to zero, no weight decay).

    Args:
        num_features: channels ``C``.

    Shapes: ``x`` ``[..., C]`` and optional bool ``mask`` ``[...]`` (rows to use for the
    statistics) -> ``[..., C]``.

    Example::

        dice = Dice(16)
        dice(torch.randn(8, 5, 16), torch.ones(8, 5, dtype=torch.bool)).shape  # torch.Size([8, 5, 16])
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features)
        self.alpha = Bias(self.num_features)
        self.register_buffer("running_mean", torch.zeros(self.num_features))
        self.register_buffer("running_var", torch.ones(self.num_features))

    def statistics(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance used to standardise ``x`` (float32 ``[C]`` each); updates the running ones in training."""
        if not self.training:
            return self.running_mean, self.running_var
        flat = x.reshape(-1, self.num_features).to(_wide(x.dtype))  # (N, C)
        weight = _flat_mask(x, mask)  # (N, 1)
        count = weight.sum()
        mean = (flat * weight).sum(0) / count.clamp(min=1.0)  # (C,)
        var = ((flat - mean) ** 2 * weight).sum(0) / count.clamp(min=1.0)  # (C,)
        self._update_running(mean, var, count)
        return mean, var

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and not _fused.exporting():
            return self._fused_train(x, mask)
        mean, var = self.statistics(x, mask)
        p = torch.sigmoid((x.to(_wide(x.dtype)) - mean) * torch.rsqrt(var + DICE_EPSILON)).to(x.dtype)  # (..., C)
        alpha = self.alpha.bias.to(x.dtype)
        return x * (alpha + p * (1.0 - alpha))  # (..., C)

    def _fused_train(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Training forward as one autograd node (:func:`_fused.dice_train`), running statistics updated."""
        weight = None if mask is None else _flat_mask(x, mask)  # (N, 1)
        y, mean, var = _fused.dice_train(x.reshape(-1, self.num_features), self.alpha.bias, weight, DICE_EPSILON)
        count = y.new_tensor(y.shape[0], dtype=var.dtype) if weight is None else weight.sum()
        self._update_running(mean, var, count)
        return y.reshape(x.shape)

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """BatchNorm's running update: momentum 0.1, the unbiased variance."""
        with torch.no_grad():
            unbiased = var * count / (count - 1.0).clamp(min=1.0)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), DICE_MOMENTUM)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), DICE_MOMENTUM)

    def reference_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 5 channel by channel, statistics from the rows the mask keeps (no running update)."""
        flat = x.reshape(-1, self.num_features)
        keep = flat[_flat_mask(x, mask)[:, 0] > 0] if self.training else None
        out = torch.empty_like(flat)
        for c in range(self.num_features):
            if self.training:
                mean, var = keep[:, c].mean(), keep[:, c].var(unbiased=False)
            else:
                mean, var = self.running_mean[c], self.running_var[c]
            p = torch.sigmoid((flat[:, c] - mean) / torch.sqrt(var + DICE_EPSILON))
            out[:, c] = p * flat[:, c] + (1 - p) * self.alpha.bias[c] * flat[:, c]
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}"


def _activation(name: str, width: int) -> nn.Module:
    """``Dice(width)`` for ``"dice"``, else the named activation of :func:`make_activation`."""
    return Dice(width) if str(name).strip().lower() == "dice" else make_activation(name)


class TargetAttention(nn.Module):
    """DIN's local activation unit and attention-weighted sum pooling (no softmax).

    Zhou et al., KDD 2018, https://arxiv.org/abs/1706.06978, eq. 3 and Fig. 2::

        w_t   = MLP([e_t, e_a, e_t - e_a, e_t * e_a])        (hidden activation Dice, output Linear(1))
        v_U   = sum_{t non-padding} w_t * e_t

    where ``e_t`` are the behaviours and ``e_a`` the candidate ad. The weights are not normalised
    (the paper keeps the intensity of the user's interest). The first Linear is applied without
    building the ``[B, L, 4E]`` concatenation: ``W [k, q, k - q, k * q] = (W_1 + W_3) k +
    (W_2 - W_3) q + W_4 (k * q)``, the ``q`` term once per row and the two ``k`` terms as one
    batched product ``k (W_1 + W_3 + W_4 diag(q))^T`` per row (no ``[B, L, E]`` product ``k * q``).

    Args:
        dim: ``E``, the width of a behaviour and of the candidate.
        hidden_units: hidden sizes of the activation unit (at least one).
        activation: ``"dice"`` (default) or a name of ``ACTIVATIONS``.

    Shapes: ``query`` ``[B, E]``, ``keys`` ``[B, L, E]``, ``mask`` bool ``[B, L]`` -> ``[B, E]``;
    :meth:`scores` -> ``[B, L]`` (zero at padding).

    Example::

        att = TargetAttention(8, (16, 8))
        att(torch.randn(4, 8), torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool)).shape  # (4, 8)
    """

    def __init__(self, dim: int, hidden_units: Sequence[int] = (80, 40), activation: str = "dice") -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        units = check_units("attention_units", hidden_units, allow_empty=False)
        widths = (4 * self.dim,) + units
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(_activation(activation, u) for u in units)
        self.score = nn.Linear(units[-1], 1)
        for layer in (*self.linears, self.score):
            init_linear(layer)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``w_t`` of every position, zero at padding: ``[B, L]``."""
        e = self.dim
        first = self.linears[0]
        w = first.weight  # (U, 4E)
        w_key = w[:, :e] + w[:, 2 * e:3 * e]  # (U, E)
        w_query = w[:, e:2 * e] - w[:, 2 * e:3 * e]  # (U, E)
        # k W_key^T + (k * q) W_4^T = k (W_key^T + diag(q) W_4^T): one batched product per row
        per_row = torch.addcmul(w_key.t(), query.unsqueeze(2), w[:, 3 * e:].t())  # (B, E, U)
        h = torch.baddbmm(F.linear(query, w_query, first.bias).unsqueeze(1), keys, per_row)  # (B, L, U)
        act = self.activations[0]
        h = act(h, mask) if isinstance(act, Dice) else act(h)
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            h = linear(h)
            h = act(h, mask) if isinstance(act, Dice) else act(h)
        return self.score(h).squeeze(-1) * mask.to(h.dtype)  # (B, L)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.scores(query, keys, mask)  # (B, L)
        return torch.einsum("bl,ble->be", weights.to(keys.dtype), keys)  # (B, E)

    def reference_scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The activation unit on the explicit concatenation, one behaviour at a time: ``[B, L]``."""
        batch, length, _ = keys.shape
        x = torch.cat([keys, query.unsqueeze(1).expand_as(keys),
                       keys - query.unsqueeze(1), keys * query.unsqueeze(1)], dim=-1)  # (B, L, 4E)
        for linear, act in zip(self.linears, self.activations):
            x = linear(x)
            x = act.reference_forward(x, mask) if isinstance(act, Dice) else act(x)
        out = keys.new_zeros(batch, length)
        for b in range(batch):
            for t in range(length):
                if mask[b, t]:
                    out[b, t] = self.score(x[b, t])[0]
        return out

    def reference_forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``sum_t w_t e_t`` with the reference scores, one behaviour at a time."""
        weights = self.reference_scores(query, keys, mask)
        out = torch.zeros_like(query)
        for b in range(keys.shape[0]):
            for t in range(keys.shape[1]):
                out[b] = out[b] + weights[b, t] * keys[b, t]
        return out


def _forward_step_torch(xp, hp, bias, gate, h, h_new, gates) -> None:
    """One forward step of :class:`_GatedRecurrence` with torch operations, written into ``h_new``
    ``[B, H]`` and ``gates`` ``[B, 3H]`` = ``(r, u0, n)``; ``xp`` ``[B, 3H]``, ``hp`` ``[B, 3H]`` holds
    ``W_h h`` and gets ``bias`` ``[3H]`` added in place, ``gate`` ``[B]``, ``h`` ``[B, H]``. The same
    function as ``ctrkit_gru_forward_f32`` in ``ctrkit/native/gated_recurrence.c``."""
    hd = h.shape[1]
    hp += bias
    torch.sigmoid(xp[:, :2 * hd] + hp[:, :2 * hd], out=gates[:, :2 * hd])  # (B, 2H): r, u0
    r, u0 = gates[:, :hd], gates[:, hd:2 * hd]
    gates[:, 2 * hd:] = _tanh(torch.addcmul(xp[:, 2 * hd:], r, hp[:, 2 * hd:]))  # n (B, H)
    torch.addcmul(h, u0 * gate.unsqueeze(1), gates[:, 2 * hd:] - h, out=h_new)


def _backward_step_torch(dh_carried, grad_step, gates, hp, gate, h_prev, d_hp, d_xp, gate_terms, dh_keep) -> None:
    """One backward step of :class:`_GatedRecurrence` with torch operations (see its docstring), the
    same function as ``ctrkit_gru_backward_f32``: writes ``d_hp``, ``d_xp`` ``[B, 3H]``, ``gate_terms``
    and ``dh_keep`` ``[B, H]``."""
    hd = h_prev.shape[1]
    dh = dh_carried + grad_step  # (B, H)
    r, u0, n, hn = gates[:, :hd], gates[:, hd:2 * hd], gates[:, 2 * hd:], hp[:, 2 * hd:]
    g = gate.unsqueeze(1)
    u = u0 * g
    du = dh * (n - h_prev)
    torch.mul(du, u0, out=gate_terms)
    d_hp[:, hd:2 * hd] = du * g * u0 * (1 - u0)
    d_an = dh * u * (1 - n * n)
    d_hp[:, :hd] = d_an * hn * r * (1 - r)
    torch.mul(d_an, r, out=d_hp[:, 2 * hd:])
    d_xp[:, :2 * hd] = d_hp[:, :2 * hd]
    d_xp[:, 2 * hd:] = d_an
    torch.mul(dh, 1 - u, out=dh_keep)


def _forward_steps(projected, hidden, bias, gate, states, gates):
    """``step(t)``: the gate arithmetic of forward step ``t`` on these time-major buffers (``h_{t-1}``
    is ``states[t-1]``, zero at ``t = 0``): the C kernel for float32 on CPU, else
    :func:`_forward_step_torch`. The C path computes each step's addresses from the buffers' base
    addresses (per-step tensor views and their dispatch cost as much as the kernel)."""
    batch, hd = states.shape[1:]
    zeros = states.new_zeros(batch, hd)
    kernel = _fused.c_function("gated_recurrence", "ctrkit_gru_forward", projected, dtypes=(torch.float32,))
    if kernel is None:
        return lambda t: _forward_step_torch(projected[t], hidden[t], bias, gate[t], states[t - 1] if t else zeros,
                                             states[t], gates[t])
    item = projected.element_size()
    x0, x_step, x_row = projected.data_ptr(), projected.stride(0) * item, projected.stride(1)
    hp0, hp_step = hidden.data_ptr(), hidden.stride(0) * item
    g0, g_step, g_row = gate.data_ptr(), gate.stride(0) * item, gate.stride(1)
    s0, s_step = states.data_ptr(), states.stride(0) * item
    gt0, gt_step = gates.data_ptr(), gates.stride(0) * item
    b0, z0 = bias.data_ptr(), zeros.data_ptr()

    def step(t: int) -> None:
        kernel(batch, hd, x0 + t * x_step, x_row, hp0 + t * hp_step, b0, g0 + t * g_step, g_row,
               s0 + (t - 1) * s_step if t else z0, s0 + t * s_step, gt0 + t * gt_step)

    step.keep_alive = zeros  # the kernel reads it by address
    return step


def _backward_steps(dh, grad_states, gates, hidden, gate, states, d_hidden, d_projected, gate_terms, dh_keep):
    """``step(t)``: the gate arithmetic of backward step ``t`` (see :class:`_GatedRecurrence`), reading the
    carried gradient from ``dh`` ``[B, H]`` and writing ``d_hidden[t]``, ``d_projected[t]``,
    ``gate_terms[t]`` and ``dh_keep``; C kernel or :func:`_backward_step_torch` as in :func:`_forward_steps`."""
    batch, hd = states.shape[1:]
    zeros = states.new_zeros(batch, hd)
    kernel = _fused.c_function("gated_recurrence", "ctrkit_gru_backward", states, dtypes=(torch.float32,))
    if kernel is None:
        return lambda t: _backward_step_torch(dh, grad_states[t], gates[t], hidden[t], gate[t],
                                              states[t - 1] if t else zeros, d_hidden[t], d_projected[t],
                                              gate_terms[t], dh_keep)
    item = states.element_size()
    bases = [t.data_ptr() for t in (grad_states, gates, hidden, gate, states, d_hidden, d_projected, gate_terms)]
    steps = [t.stride(0) * item for t in (grad_states, gates, hidden, gate, states, d_hidden, d_projected, gate_terms)]
    (gs0, gt0, hp0, g0, s0, dhp0, dxp0, term0), (gs_s, gt_s, hp_s, g_s, s_s, dhp_s, dxp_s, term_s) = bases, steps
    dh0, keep0, z0, g_row = dh.data_ptr(), dh_keep.data_ptr(), zeros.data_ptr(), gate.stride(1)

    def step(t: int) -> None:
        kernel(batch, hd, dh0, gs0 + t * gs_s, gt0 + t * gt_s, hp0 + t * hp_s, g0 + t * g_s, g_row,
               s0 + (t - 1) * s_s if t else z0, dhp0 + t * dhp_s, dxp0 + t * dxp_s, term0 + t * term_s, keep0)

    step.keep_alive = zeros
    return step


class _GatedRecurrence(torch.autograd.Function):
    """The :class:`GRU` recurrence over all steps, time-major, with a hand-written backward pass.

    Forward, per step: ``hp = W_h h + b_h``; ``r = sigmoid(xr + hr)``, ``u0 = sigmoid(xu + hu)``,
    ``n = tanh(xn + r * hn)``, ``h' = h + g u0 (n - h)``. Backward, per step from the last, with
    ``dh`` the gradient reaching ``h'``::

        du = dh (n - h)        dg = sum_H du * u0        d(xu + hu) = du g u0 (1 - u0)
        dn = dh g u0 (1 - n^2) = d(xn + r hn)            dhn = dn r     d(xr + hr) = dn hn r (1 - r)
        dh_prev = dh (1 - g u0) + [d(xr+hr), d(xu+hu), dhn] W_h

    and, after the loop, ``dW_h = sum_t dhp_t^T h_{t-1}`` as one GEMM over all steps and ``db_h``
    as one sum. Each step is one GEMM and one pass of gate arithmetic each way: the C kernels of
    ``ctrkit/native/gated_recurrence.c`` for float32 on CPU (a step's ~30 tiny torch operations
    cost more in dispatch than in arithmetic), else the same arithmetic in torch operations
    (:func:`_forward_step_torch`, :func:`_backward_step_torch`). Time-major buffers keep every
    per-step block contiguous; the C steps get their addresses from the buffers' base addresses.
    Gradchecked in ``tests/pytorch/test_sequence_models.py``; the C and torch steps are compared
    there too.

    Shapes: ``projected`` ``[L, B, 3H]`` (``[W_ir; W_iu; W_in] x + b_i``), ``gate`` ``[L, B]``,
    ``weight`` ``[3H, H]``, ``bias`` ``[3H]`` -> states ``[L, B, H]``.
    """

    @staticmethod
    def forward(ctx, projected, gate, weight, bias):
        length, batch, three_h = projected.shape
        hd = three_h // 3
        projected, gate, bias = projected.contiguous(), gate.contiguous(), bias.contiguous()
        states = projected.new_empty(length, batch, hd)
        hidden = projected.new_empty(length, batch, three_h)  # W_h h_{t-1} + b_h
        gates = projected.new_empty(length, batch, three_h)  # r, u0, n
        gate_step = _forward_steps(projected, hidden, bias, gate, states, gates)
        hidden_t, states_t, weight_t = hidden.unbind(0), states.unbind(0), weight.t()
        h = projected.new_zeros(batch, hd)
        for t in range(length):
            torch.mm(h, weight_t, out=hidden_t[t])  # (B, 3H); the step adds the bias
            gate_step(t)
            h = states_t[t]
        ctx.save_for_backward(gate, weight, states, hidden, gates)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        gate, weight, states, hidden, gates = ctx.saved_tensors
        length, batch, hd = states.shape
        grad_states = grad_states.contiguous()
        d_hidden = grad_states.new_empty(length, batch, 3 * hd)
        d_projected = grad_states.new_empty(length, batch, 3 * hd)
        gate_terms = grad_states.new_empty(length, batch, hd)  # du * u0
        dh, dh_keep = grad_states.new_zeros(batch, hd), grad_states.new_empty(batch, hd)
        gate_step = _backward_steps(dh, grad_states, gates, hidden, gate, states, d_hidden, d_projected,
                                    gate_terms, dh_keep)
        d_hidden_t = d_hidden.unbind(0)
        for t in reversed(range(length)):
            gate_step(t)
            torch.addmm(dh_keep, d_hidden_t[t], weight, out=dh)  # (B, H): the gradient reaching h_{t-1}
        # h_0 = 0: the first step adds nothing to dW_h
        d_weight = d_hidden[1:].reshape(-1, 3 * hd).t() @ states[:-1].reshape(-1, hd)  # (3H, H)
        d_bias = d_hidden.sum((0, 1))
        d_gate = gate_terms.sum(-1) if ctx.needs_input_grad[1] else None  # (L, B)
        return d_projected, d_gate, d_weight, d_bias


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x) = 2 sigmoid(2x) - 1``: torch's CPU ``tanh`` is ~5x slower than its ``sigmoid``
    (per GRU step, ``[B, H]``); the same values up to rounding (absolute error ~1 ulp of 1)."""
    if x.device.type != "cpu" or _fused.exporting():
        return torch.tanh(x)
    return torch.sigmoid(2.0 * x).mul_(2.0).sub_(1.0)


def gated_step(xp: torch.Tensor, g: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """One step of the :class:`GRU` recurrence as plain operations (no in-place writes): ``xp``
    ``[B, 3H]`` (the input projection), ``g`` ``[B, 1]``, ``h`` ``[B, H]`` -> ``h'`` ``[B, H]``."""
    hd = h.shape[1]
    hp = torch.addmm(bias, h, weight.t())  # (B, 3H)
    r = torch.sigmoid(xp[:, :hd] + hp[:, :hd])
    u0 = torch.sigmoid(xp[:, hd:2 * hd] + hp[:, hd:2 * hd])
    n = _tanh(torch.addcmul(xp[:, 2 * hd:], r, hp[:, 2 * hd:]))
    return torch.addcmul(h, u0 * g, n - h)  # (B, H)


def traceable_recurrence(projected: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
    """:class:`_GatedRecurrence`'s forward as plain operations (no autograd Function, no in-place
    writes), for tracing and export: ``[L, B, 3H]``, ``[L, B]`` -> states ``[L, B, H]``."""
    h = projected.new_zeros(projected.shape[1], weight.shape[1])
    states = []
    for t in range(projected.shape[0]):
        h = gated_step(projected[t], gate[t].unsqueeze(1), h, weight, bias)
        states.append(h)
    return torch.stack(states, dim=0)  # (L, B, H)


class GRU(nn.Module):
    """A GRU over masked (ragged) sequences: padded steps are not computed, the state is carried over them.

    Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
    Translation", EMNLP 2014, https://arxiv.org/abs/1406.1078; the interest extractor of DIEN
    (Zhou et al., AAAI 2019, https://arxiv.org/abs/1809.03672, eq. 1), with the paper's update-gate
    convention::

        r_t  = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        u_t  = sigmoid(W_iu x_t + b_iu + W_hu h_{t-1} + b_hu)
        n_t  = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t  = h_{t-1} + g_t u_t * (n_t - h_{t-1})          = (1 - g_t u_t) h_{t-1} + g_t u_t n_t

    with ``g_t = mask_t`` (1 on items, 0 on padding: ``h_t = h_{t-1}``), ``h_0 = 0``. The input
    projections of all steps are one GEMM (``input_linear``: ``[W_ir; W_iu; W_in]``); each step
    does one GEMM with ``hidden_linear``'s weight (``[W_hr; W_hu; W_hn]``) and the gates, with a
    hand-written backward (:class:`_GatedRecurrence`). The recurrence runs in float32 under bf16
    autocast. :class:`AUGRU` is the same recurrence with ``g_t = a_t``.

    Args:
        input_dim: width of the items.
        hidden_dim: ``H``.

    Shapes: ``x`` ``[B, L, input_dim]``, ``mask`` bool ``[B, L]`` -> states ``[B, L, H]`` (at a
    padded step, the carried state).

    Example::

        gru = GRU(8, 6)
        gru(torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool)).shape  # torch.Size([4, 5, 6])
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.hidden_dim = check_int("gru_units", hidden_dim)
        self.input_linear = nn.Linear(self.input_dim, 3 * self.hidden_dim)
        self.hidden_linear = nn.Linear(self.hidden_dim, 3 * self.hidden_dim)
        init_linear(self.input_linear)
        init_linear(self.hidden_linear)

    def recur(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """States ``[B, L, H]`` of the recurrence with update-gate scale ``gate`` ``[B, L]`` (0 = skip the step).

        The input projection is one (autocast) GEMM; the recurrence itself runs in the state dtype
        (float32, or float64 in a float64 model) through :class:`_GatedRecurrence`, outside autocast.
        """
        state_dtype = _wide(self.hidden_linear.weight.dtype)
        # time-major from here on: every step reads and writes contiguous [B, *] blocks
        projected = self.input_linear(x.transpose(0, 1)).to(state_dtype)  # (L, B, 3H)
        gate = gate.to(state_dtype).t()  # (L, B)
        recurrence = traceable_recurrence if _fused.exporting() else _GatedRecurrence.apply
        with torch.autocast(device_type=x.device.type, enabled=False):
            states = recurrence(projected, gate, self.hidden_linear.weight.to(state_dtype),
                                self.hidden_linear.bias.to(state_dtype))  # (L, B, H)
        return states.transpose(0, 1)  # (B, L, H)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.recur(x, mask)

    def reference_step(self, x: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """One step of one sequence, gate by gate from the weight blocks: ``x`` ``[in]``, ``h`` ``[H]`` -> ``[H]``."""
        hd = self.hidden_dim
        wi, bi = self.input_linear.weight, self.input_linear.bias
        wh, bh = self.hidden_linear.weight, self.hidden_linear.bias
        block = [slice(0, hd), slice(hd, 2 * hd), slice(2 * hd, 3 * hd)]
        r = torch.sigmoid(wi[block[0]] @ x + bi[block[0]] + wh[block[0]] @ h + bh[block[0]])
        u = torch.sigmoid(wi[block[1]] @ x + bi[block[1]] + wh[block[1]] @ h + bh[block[1]])
        n = torch.tanh(wi[block[2]] @ x + bi[block[2]] + r * (wh[block[2]] @ h + bh[block[2]]))
        return (1 - g * u) * h + g * u * n

    def reference_recur(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The recurrence sequence by sequence, step by step; a zero gate copies the state."""
        out = x.new_zeros(x.shape[0], x.shape[1], self.hidden_dim)
        for b in range(x.shape[0]):
            h = x.new_zeros(self.hidden_dim)
            for t in range(x.shape[1]):
                if gate[b, t] != 0:
                    h = self.reference_step(x[b, t], h, gate[b, t].to(x.dtype))
                out[b, t] = h
        return out

    def reference_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.reference_recur(x, mask)


class AUGRU(GRU):
    """GRU with attentional update gate, DIEN's interest evolving layer.

    Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019,
    https://arxiv.org/abs/1809.03672, eq. 6-7: the update gate is scaled by the attention score of
    the step, ``u'_t = a_t * u_t``, ``h'_t = (1 - u'_t) h'_{t-1} + u'_t n_t`` (the :class:`GRU`
    recurrence with ``g_t = a_t * mask_t``). Padding (``a_t = 0``) carries the state over.

    Shapes: ``x`` ``[B, L, input_dim]``, ``attention`` ``[B, L]``, ``mask`` bool ``[B, L]`` ->
    states ``[B, L, H]``; the last one is the final interest.
    """

    def forward(self, x: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.recur(x, attention * mask.to(attention.dtype))

    def reference_forward(self, x: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.reference_recur(x, attention * mask.to(attention.dtype))


class InterestAttention(nn.Module):
    """DIEN's attention of the candidate over the interest states (eq. 5), a masked softmax.

    The scores of the authors' code (``din_fcn_attention``): the candidate is projected to the
    state width, ``q = W_q e_a + b_q``, and DIN's activation unit scores each state against it::

        s_t = MLP([h_t, q, h_t - q, h_t * q])        a_t = exp(s_t) / sum_{j non-padding} exp(s_j)

    (the paper writes ``s_t = h_t W e_a``; the unit's additive terms keep gradients flowing while
    the embeddings are still near their ``1e-4`` initial scale). ``a_t = 0`` at padding; a row
    without any item gets all-zero scores.

    Args:
        query_dim: ``E``.
        hidden_dim: ``H``.
        hidden_units: hidden sizes of the activation unit.
        activation: its activation (the authors': sigmoid).

    Shapes: ``query`` ``[B, E]``, ``states`` ``[B, L, H]``, ``mask`` bool ``[B, L]`` -> ``[B, L]``.
    """

    def __init__(self, query_dim: int, hidden_dim: int, hidden_units: Sequence[int] = (80, 40),
                 activation: str = "sigmoid") -> None:
        super().__init__()
        self.projection = nn.Linear(check_int("query_dim", query_dim), check_int("hidden_dim", hidden_dim))
        init_linear(self.projection)
        self.unit = TargetAttention(hidden_dim, hidden_units, activation)

    def forward(self, query: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.projection(query).to(states.dtype)  # (B, H)
        scores = self.unit.scores(q, states, mask).to(_wide(states.dtype))  # (B, L)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)  # empty row: 0
        return weights * mask.to(weights.dtype)  # (B, L)

    def reference_forward(self, query: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The unit's reference scores, then the softmax over each row's items one by one."""
        scores = self.unit.reference_scores(self.projection(query), states, mask)  # (B, L)
        out = torch.zeros(mask.shape, dtype=states.dtype)
        for b in range(mask.shape[0]):
            terms = {t: torch.exp(scores[b, t]) for t in range(mask.shape[1]) if mask[b, t]}
            total = sum(terms.values())
            for t, term in terms.items():
                out[b, t] = term / total
        return out


class AuxiliaryLoss(nn.Module):
    """DIEN's auxiliary loss: each interest state predicts the next behaviour against a negative one.

    Zhou et al., AAAI 2019, https://arxiv.org/abs/1809.03672, eq. 3, with the auxiliary network of
    the authors' code (an MLP on ``[h_t, e]``, sigmoid hidden layers, one logit)::

        L_aux = - (1/N) sum_{(b, t) in P} [ log sigmoid(f(h_t, e_{t+1})) + n_{b,t} log(1 - sigmoid(f(h_t, e^-_{t+1}))) ]

    ``P`` are the pairs where position ``t + 1`` is an item and the state ``h_t`` has seen an item
    (some position ``<= t`` is one), ``N = |P|``. **Negatives** (the sampling scheme): the
    behaviour at the same position of the next row of the batch, ``e^-_{b, t+1} = e_{(b+1) mod B,
    t+1}`` -- another user's behaviour in a shuffled batch, drawn without a random number, so both
    frameworks compute the same loss; ``n_{b,t} = 1`` when that position is an item of row
    ``b + 1`` (its positive term still counts otherwise).

    Args:
        state_dim: ``H``.
        item_dim: ``E``.
        hidden_units: hidden sizes of the auxiliary network.

    Shapes: ``states`` ``[B, L, H]``, ``items`` ``[B, L, E]``, ``mask`` bool ``[B, L]`` -> scalar.
    """

    def __init__(self, state_dim: int, item_dim: int, hidden_units: Sequence[int] = (100, 50)) -> None:
        super().__init__()
        units = check_units("aux_hidden_units", hidden_units)
        self.net = MLP(check_int("state_dim", state_dim) + check_int("item_dim", item_dim), units, "sigmoid",
                       output_dim=1)

    @staticmethod
    def pairs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``[B, L-1]`` weights of the positive and the negative terms (see the class docstring)."""
        seen = mask.to(torch.int32).cumsum(dim=1) > 0  # (B, L): an item at or before t
        positive = mask[:, 1:] & seen[:, :-1]  # (B, L-1)
        negative = positive & mask.roll(-1, dims=0)[:, 1:]
        return positive.to(torch.float32), negative.to(torch.float32)

    def forward(self, states: torch.Tensor, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positive, negative = self.pairs(mask)  # (B, L-1)
        first, rest = self.net.layers[0], self.net.layers[1:]
        h_dim = states.shape[-1]
        # the first Linear on [h, e] is W_h h + W_e e + b: each state and each item projected once,
        # shared by the positive and the negative pair
        h_part = F.linear(states[:, :-1].to(items.dtype), first.weight[:, :h_dim], first.bias)  # (B, L-1, U)
        e_part = F.linear(items, first.weight[:, h_dim:])  # (B, L, U)
        if len(rest) and isinstance(rest[0], nn.Sigmoid):  # the hidden layer's sigmoid on both pairs in one pass
            both, rest = _fused.paired_sigmoid(h_part, e_part.to(h_part.dtype)), rest[1:]  # (2, B, L-1, U)
        else:
            both = torch.stack([h_part + e_part[:, 1:], h_part + e_part.roll(-1, dims=0)[:, 1:]])  # (2, B, L-1, U)
        pos, neg = rest(both).squeeze(-1).to(_wide(h_part.dtype)).unbind(0)  # (B, L-1) each
        positive, negative = positive.to(pos.dtype), negative.to(pos.dtype)
        total = (F.softplus(-pos) * positive).sum() + (F.softplus(neg) * negative).sum()
        return total / positive.sum().clamp(min=1.0)

    def reference_forward(self, states: torch.Tensor, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The sum over the pairs, one ``(row, step)`` at a time."""
        batch, length = mask.shape
        total, count = states.new_zeros(()), 0
        for b in range(batch):
            for t in range(length - 1):
                if not (mask[b, t + 1] and mask[b, : t + 1].any()):
                    continue
                count += 1
                pos = self.net(torch.cat([states[b, t], items[b, t + 1]])[None])
                total = total - torch.log(torch.sigmoid(pos))[0, 0]
                other = (b + 1) % batch
                if mask[other, t + 1]:
                    neg = self.net(torch.cat([states[b, t], items[other, t + 1]])[None])
                    total = total - torch.log(1 - torch.sigmoid(neg))[0, 0]
        return total / max(count, 1)


def behaviours(embedding: FieldEmbedding, batch: Mapping[str, torch.Tensor]):
    """The fields, the candidate ``e_a``, the behaviours ``e_t`` and their mask, from one gather.

    A behaviour is the items at one position of every sequence field, concatenated (e.g. category
    and brand), the candidate the rows of the sparse fields they share, in the same order; a
    position is a behaviour when any of its items is not padding.

    Returns ``fields [B, K, D]``, ``query [B, n_seq*D]``, ``keys [B, L, n_seq*D]``, ``mask`` bool ``[B, L]``.
    """
    fields, sequences, masks = embedding.unpooled(batch)
    query = embedding.candidates(fields).flatten(1)  # (B, n_seq*D)
    keys = torch.cat(sequences, dim=-1) if len(sequences) > 1 else sequences[0]  # (B, L, n_seq*D)
    mask = torch.stack(masks).any(dim=0) if len(masks) > 1 else masks[0]  # (B, L)
    return fields, query, keys, mask


def distinct_rows_l2(embedding: FieldEmbedding, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``sum ||w_j||^2`` over the distinct embedding rows ``j`` this batch reads (each once).

    DIN's mini-batch aware regulariser (Zhou et al. 2018, eq. 4-5) without the ``1/n_j``
    frequency weights, which the store does not record: ``sum_j alpha_mj ||w_j||^2``. Reads
    ``table.weight`` directly (a penalty, not an input: the trainer's per-lookup regulariser does
    not see it twice).
    """
    fixed, _, _ = embedding._fixed_ids(batch)
    parts = [] if fixed is None else [fixed.reshape(-1)]
    for key, offset in zip(embedding.sequence_keys, embedding.sequence_offsets):
        seq = batch[key].long()
        parts.append((seq + offset)[seq > 0])
    rows = torch.unique(torch.cat(parts))  # (U,)
    return embedding.table.weight[rows].float().pow(2).sum()
