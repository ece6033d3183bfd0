"""Feature-interaction blocks: FM, FFM, cross networks (v1, v2, mixture of low-rank experts), CIN,
self-attention, attentional pooling, SENET, bilinear interaction, operation-aware products."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrkit.errors import ConfigError
from ctrkit.pytorch.layers import _fused
from ctrkit.hparam_checks import check_choice
from ctrkit.pytorch.layers._checks import check_bool, check_int, check_prob, check_units
from ctrkit.pytorch.layers.embedding import Bias
from ctrkit.pytorch.layers.mlp import init_linear, make_activation


def _pair_indices(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every pair ``i < j`` of ``num_fields`` fields, row-major: 2 x ``[P]``."""
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
    return rows.long(), cols.long()


class FactorizationMachine(nn.Module):
    """Pairwise term of a factorization machine in O(kn).

    Rendle, "Factorization Machines", ICDM 2010, https://doi.org/10.1109/ICDM.2010.127 (lemma 3.1)::

        sum_{i<j} <v_i, v_j> = 1/2 * sum_f [ (sum_i v_{i,f})^2 - sum_i v_{i,f}^2 ]

    Shapes: ``[B, F, D]`` -> ``[B, 1]``.

    Example::

        fm = FactorizationMachine()
        fm(torch.randn(4, 10, 8)).shape  # torch.Size([4, 1])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused.exporting():
            return self.reference_forward(x)
        return _fused.fm_pairwise(x)  # (B, 1); same formula, hand-written backward

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        square_of_sum = x.sum(dim=1).pow(2)  # (B, D)
        sum_of_square = x.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)  # (B, 1)


class FieldAwareFactorizationMachine(nn.Module):
    """Pairwise term of a field-aware FM.

    Juan et al., "Field-aware Factorization Machines for CTR Prediction", RecSys 2016,
    https://doi.org/10.1145/2959100.2959134::

        sum_{i<j} <v_{i, f_j}, v_{j, f_i}>

    The input is field ``i``'s row of the field-aware table, ``F`` blocks of ``k`` values where
    block ``j`` is ``v_{i, f_j}`` (the vector field ``i`` uses against field ``j``).

    Args:
        num_fields: ``F``.
        k: latent size per field pair.

    Shapes: ``[B, F, F*k]`` -> ``[B, 1]``.

    Example::

        ffm = FieldAwareFactorizationMachine(num_fields=5, k=4)
        ffm(torch.randn(2, 5, 20)).shape  # torch.Size([2, 1])
    """

    def __init__(self, num_fields: int, k: int) -> None:
        super().__init__()
        self.num_fields = check_int("num_fields", num_fields)
        self.k = check_int("k", k)
        rows, cols = _pair_indices(self.num_fields)
        self.register_buffer("rows", rows, persistent=False)  # (P,)
        self.register_buffer("cols", cols, persistent=False)  # (P,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = x.view(x.shape[0], self.num_fields, self.num_fields, self.k)  # (B, F, F, k)
        left = e[:, self.rows, self.cols]  # (B, P, k): v_{i, f_j}
        right = e[:, self.cols, self.rows]  # (B, P, k): v_{j, f_i}
        return (left * right).sum(dim=(1, 2)).unsqueeze(1)  # (B, 1)


class CrossNet(nn.Module):
    """Cross network of DCN (v1).

    Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017,
    https://arxiv.org/abs/1708.05123 (eq. 3)::

        x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l,     w_l, b_l in R^d

    ``w_l`` are Xavier-normal (as ``d x 1`` matrices), ``b_l`` are :class:`Bias` modules.

    Args:
        input_dim: ``d``.
        num_layers: number of cross layers (>= 1).

    Shapes: ``[B, d]`` -> ``[B, d]``.

    Example::

        cross = CrossNet(32, num_layers=3)
        cross(torch.randn(4, 32)).shape  # torch.Size([4, 32])
    """

    def __init__(self, input_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.num_layers = check_int("cross_layers", num_layers)
        self.weight = nn.Parameter(torch.empty(self.num_layers, self.input_dim))
        self.biases = nn.ModuleList(Bias(self.input_dim) for _ in range(self.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier normal of a (d x 1) matrix: std = sqrt(2 / (fan_in + fan_out)).
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / (self.input_dim + 1)))
        for bias in self.biases:
            bias.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The recursion in closed form (x_l = c_l x_0 + beta_l, see _fused._CrossNet): one GEMM
        # and one addcmul over [B, d] instead of three passes per layer; same values.
        if _fused.exporting():
            return self.reference_forward(x)
        return _fused.cross_net(x, self.weight, [b.bias for b in self.biases])  # (B, d)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x  # (B, d)
        xl = x  # (B, d)
        for layer in range(self.num_layers):
            xw = torch.matmul(xl, self.weight[layer])  # (B,)
            xl = self.biases[layer](x0 * xw.unsqueeze(1)) + xl  # (B, d)
        return xl


class CompressedInteractionNetwork(nn.Module):
    """Compressed Interaction Network (CIN) of xDeepFM.

    Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender
    Systems", KDD 2018, https://arxiv.org/abs/1803.05170 (eq. 6, 7)::

        X^k_{h,*} = act( sum_{i<=H_{k-1}} sum_{j<=m} W^{k,h}_{ij} (X^{k-1}_{i,*} o X^0_{j,*}) )
        p^k_h     = sum_d X^k_{h,d}                       (sum pooling)
        output    = [p^1, ..., p^T]

    The filters ``W^k`` are the weights of kernel-size-1 ``Conv1d`` modules without bias
    (Xavier-normal). The computation (``_fused.cin``) never builds the ``[B, H_{k-1}*m, D]`` outer
    product: ``X^k_h = sum_i X^{k-1}_i o (W^{k,h}_{i,*} X^0)``, one GEMM per layer on chunks of
    rows, with a hand-written backward. With ``split_half`` every layer but the
    last sends half of its feature maps to the next layer and the other half to the output
    (as in the authors' code); the paper's formula uses ``act = identity``, the default here.

    Args:
        num_fields: ``m``.
        layer_units: ``H_1..H_T``; with ``split_half`` all but the last must be even.
        split_half: see above.
        activation: activation applied to each feature map (``identity`` default).

    Shapes: ``[B, m, D]`` -> ``[B, output_dim]``.

    Example::

        cin = CompressedInteractionNetwork(10, (16, 16, 16))
        cin(torch.randn(4, 10, 8)).shape  # torch.Size([4, 32])  (8 + 8 + 16)
    """

    def __init__(
        self,
        num_fields: int,
        layer_units: Sequence[int] = (16, 16, 16),
        split_half: bool = True,
        activation: str = "identity",
    ) -> None:
        super().__init__()
        self.num_fields = check_int("num_fields", num_fields)
        self.layer_units = check_units("cin_layer_units", layer_units, allow_empty=False)
        self.split_half = check_bool("split_half", split_half)
        if self.split_half and any(u % 2 for u in self.layer_units[:-1]):
            raise ConfigError(
                f"cin_layer_units must be even (except the last) when split_half is on, got {self.layer_units}"
            )
        self.activation = make_activation(activation)
        convs = []
        self.next_sizes: list[int] = []
        output_dim = 0
        prev = self.num_fields
        for index, units in enumerate(self.layer_units):
            convs.append(nn.Conv1d(prev * self.num_fields, units, kernel_size=1, bias=False))
            last = index == len(self.layer_units) - 1
            keep = units // 2 if (self.split_half and not last) else units
            self.next_sizes.append(keep)
            output_dim += units - keep if (self.split_half and not last) else units
            prev = keep
        self.convs = nn.ModuleList(convs)
        self.output_dim = output_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs:
            init_linear(conv)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.shape[1] != self.num_fields:
            raise ValueError(f"CIN built for {self.num_fields} fields got input {tuple(x0.shape)}")
        if _fused.exporting():
            return self.reference_forward(x0)
        weights = [conv.weight for conv in self.convs]
        return _fused.cin(x0, weights, self.next_sizes, self.activation)  # (B, output_dim)

    def reference_forward(self, x0: torch.Tensor) -> torch.Tensor:
        """The outer-product + ``Conv1d`` form of eq. 6 (slow; kept as the readable reference)."""
        batch, m, dim = x0.shape
        h = x0  # (B, H_0 = m, D)
        pooled = []
        for index, conv in enumerate(self.convs):
            z = (h.unsqueeze(2) * x0.unsqueeze(1)).reshape(batch, h.shape[1] * m, dim)  # (B, H*m, D)
            z = self.activation(conv(z))  # (B, H_k, D)
            keep = self.next_sizes[index]
            if keep < z.shape[1]:
                h, out = z[:, :keep], z[:, keep:]  # (B, H_k/2, D) each
            else:
                h, out = z, z
            pooled.append(out.sum(dim=2))  # (B, H_out)
        return torch.cat(pooled, dim=1)  # (B, output_dim)


class MultiHeadSelfAttention(nn.Module):
    """AutoInt interacting layer: multi-head self-attention over fields, residual, ReLU.

    Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
    Networks", CIKM 2019, https://arxiv.org/abs/1810.11921 (eq. 5-8)::

        alpha^h_{m,k} = softmax_k( <W^h_Q e_m, W^h_K e_k> )
        e~^h_m        = sum_k alpha^h_{m,k} W^h_V e_k
        e^Res_m       = ReLU( [e~^1_m ; ... ; e~^H_m] + W_Res e_m )

    All heads are computed at once: the four projections as one GEMM (their weights
    concatenated), then batched attention, in cache-sized chunks of rows with a hand-written
    backward (``_fused.self_attention``; ``reference_forward`` is the plain version). The paper
    uses unscaled dot products; ``scaled=True`` divides by ``sqrt(d')`` instead. Projections are
    bias-free Xavier-normal ``nn.Linear``.

    Args:
        input_dim: ``d`` (width of each field vector).
        attention_dim: ``d'`` per head.
        num_heads: ``H``.
        use_residual: add ``W_Res e_m``.
        scaled: scale the logits by ``1/sqrt(d')``.

    Shapes: ``[B, F, d]`` -> ``[B, F, H * d']``.

    Example::

        att = MultiHeadSelfAttention(16, attention_dim=32, num_heads=2)
        att(torch.randn(4, 10, 16)).shape  # torch.Size([4, 10, 64])
    """

    def __init__(
        self,
        input_dim: int,
        attention_dim: int = 32,
        num_heads: int = 2,
        use_residual: bool = True,
        scaled: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.attention_dim = check_int("attention_dim", attention_dim)
        self.num_heads = check_int("num_heads", num_heads)
        self.use_residual = check_bool("use_residual", use_residual)
        self.scaled = check_bool("scaled", scaled)
        self.output_dim = self.attention_dim * self.num_heads
        self.query = nn.Linear(self.input_dim, self.output_dim, bias=False)
        self.key = nn.Linear(self.input_dim, self.output_dim, bias=False)
        self.value = nn.Linear(self.input_dim, self.output_dim, bias=False)
        self.residual = nn.Linear(self.input_dim, self.output_dim, bias=False) if self.use_residual else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.query, self.key, self.value, self.residual):
            if layer is not None:
                init_linear(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused.exporting():
            return self.reference_forward(x)
        projections = [self.query.weight, self.key.weight, self.value.weight]
        if self.residual is not None:
            projections.append(self.residual.weight)
        scale = 1.0 / math.sqrt(self.attention_dim) if self.scaled else 1.0
        weight = torch.cat(projections, dim=0)  # ((3|4) * H*d', d): the projections as one GEMM
        return _fused.self_attention(x, weight, self.num_heads, self.attention_dim, scale, self.residual is not None)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer with separate projections and ``scaled_dot_product_attention``."""
        batch, fields, _ = x.shape
        heads = (batch, fields, self.num_heads, self.attention_dim)
        q = self.query(x).view(heads).transpose(1, 2)  # (B, H, F, d')
        k = self.key(x).view(heads).transpose(1, 2)  # (B, H, F, d')
        v = self.value(x).view(heads).transpose(1, 2)  # (B, H, F, d')
        scale = None if self.scaled else 1.0
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, F, d')
        out = out.transpose(1, 2).reshape(batch, fields, self.output_dim)  # (B, F, H*d')
        if self.residual is not None:
            out = out + self.residual(x)  # (B, F, H*d')
        return F.relu(out)


class AttentionalPooling(nn.Module):
    """Attention-based pooling of pairwise interactions (AFM), projected to a logit.

    Xiao et al., "Attentional Factorization Machines", IJCAI 2017,
    https://arxiv.org/abs/1708.04617 (eq. 4-5)::

        a'_ij = h^T ReLU(W (v_i o v_j) + b),     a_ij = softmax_{(i,j)}(a'_ij)
        y     = p^T dropout( sum_{i<j} a_ij (v_i o v_j) )

    ``W, b`` is an ``nn.Linear(D, t)``; ``h`` and ``p`` are bias-free ``nn.Linear``. The paper's
    dropout on the pair-wise interaction layer is applied to the pooled vector.

    Args:
        num_fields: ``F`` (>= 2).
        embed_dim: ``D``.
        attention_factor: ``t``, hidden size of the attention net.
        dropout: dropout rate on the pooled interaction vector.

    Shapes: ``[B, F, D]`` -> ``[B, 1]``.

    Example::

        pool = AttentionalPooling(10, 8, attention_factor=16)
        pool(torch.randn(4, 10, 8)).shape  # torch.Size([4, 1])
    """

    def __init__(self, num_fields: int, embed_dim: int, attention_factor: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_fields = check_int("num_fields", num_fields, minimum=2)
        self.embed_dim = check_int("embed_size", embed_dim)
        self.attention_factor = check_int("attention_factor", attention_factor)
        rows, cols = _pair_indices(self.num_fields)
        self.register_buffer("rows", rows, persistent=False)  # (P,)
        self.register_buffer("cols", cols, persistent=False)  # (P,)
        self.attention = nn.Linear(self.embed_dim, self.attention_factor)
        self.score = nn.Linear(self.attention_factor, 1, bias=False)  # h
        self.projection = nn.Linear(self.embed_dim, 1, bias=False)  # p
        self.dropout = nn.Dropout(check_prob("dropout", dropout))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.attention, self.score, self.projection):
            init_linear(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x[:, self.rows] * x[:, self.cols]  # (B, P, D)
        logits = self.score(F.relu(self.attention(pairs)))  # (B, P, 1)
        # bf16/fp16 (autocast) logits are normalised in fp32; fp32 and fp64 in their own precision
        weights = torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))  # (B, P, 1)
        pooled = (weights * pairs).sum(dim=1)  # (B, D)
        return self.projection(self.dropout(pooled))  # (B, 1)


def _xavier_normal_blocks(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Every block of a stacked weight Xavier-normal as the ``fan_out x fan_in`` matrix it is.

    Several blocks below keep G small matrices in one tensor (one GEMM instead of G); Xavier on
    the whole tensor would use its total fan-out and start each matrix too small.
    """
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))


class CrossNetV2(nn.Module):
    """Full-rank cross network of DCN-V2.

    Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
    Learning to Rank Systems", WWW 2021, https://arxiv.org/abs/2008.13535 (eq. 1)::

        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,     W_l in R^{d x d}, b_l in R^d

    ``layers[l]`` is the ``nn.Linear(d, d)`` holding ``W_l, b_l`` (Xavier-normal, zero bias). Each
    layer is one GEMM plus one fused multiply-add (``addcmul``); under autocast the GEMM runs in
    bf16 and the residual sum in float32.

    Args:
        input_dim: ``d``.
        num_layers: number of cross layers (>= 1).

    Shapes: ``[B, d]`` -> ``[B, d]``.

    Example::

        cross = CrossNetV2(32, num_layers=3)
        cross(torch.randn(4, 32)).shape  # torch.Size([4, 32])
    """

    def __init__(self, input_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.num_layers = check_int("cross_layers", num_layers)
        self.layers = nn.ModuleList(nn.Linear(self.input_dim, self.input_dim) for _ in range(self.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            init_linear(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xl = x  # (B, d)
        for layer in self.layers:
            xl = torch.addcmul(xl, x, layer(xl))  # (B, d)
        return xl

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x  # (B, d)
        xl = x
        for layer in self.layers:
            wx = (xl.unsqueeze(1) * layer.weight.unsqueeze(0)).sum(dim=2) + layer.bias  # (B, d): W_l x_l + b_l
            xl = x0 * wx + xl
        return xl


class CrossNetMix(nn.Module):
    """Cross network of DCN-Mix: a softmax-gated mixture of low-rank cross experts per layer.

    Wang et al., "DCN V2", WWW 2021, https://arxiv.org/abs/2008.13535 (eq. 3, 4)::

        E_i(x_l) = x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b_l)          (expert i, rank r)
        x_{l+1}  = sum_i G_i(x_l) E_i(x_l) + x_l,   G(x_l) = softmax_i(w_i^T x_l)

    with ``U_i, V_i in R^{d x r}``, ``C_i in R^{r x r}`` and ``g`` the low-rank nonlinearity
    (``activation``, ``tanh`` default as in FuxiCTR/DeepCTR; ``identity`` gives the linear
    mixture). The bias ``b_l`` is shared by the experts, so since the gates sum to one
    ``sum_i G_i E_i = x_0 ⊙ (sum_i U_i (G_i h_i) + b_l)``: all experts are one GEMM down
    (``down[l]``: the ``V_i^T`` stacked, ``nn.Linear(d, K*r)``), one batched ``r x r`` product
    (``mid[l]``: the ``C_i`` as a kernel-size-1 ``nn.Conv1d`` with ``groups=K``, used only as the
    holder of the K blocks), one GEMM up (``up[l]``: ``[U_1 ... U_K]`` and ``b_l``,
    ``nn.Linear(K*r, d)``); no loop over experts. ``gates[l]`` is ``nn.Linear(d, K)`` without bias.
    Each expert's matrices are Xavier-normal as their own ``d x r``/``r x r``/``1 x d`` matrices.

    Args:
        input_dim: ``d``.
        num_layers: number of cross layers (>= 1).
        low_rank: ``r``.
        num_experts: ``K``.
        activation: ``g``.

    Shapes: ``[B, d]`` -> ``[B, d]``.

    Example::

        cross = CrossNetMix(32, num_layers=2, low_rank=8, num_experts=4)
        cross(torch.randn(4, 32)).shape  # torch.Size([4, 32])
    """

    def __init__(
        self, input_dim: int, num_layers: int = 3, low_rank: int = 32, num_experts: int = 4, activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.input_dim = d = check_int("input_dim", input_dim)
        self.num_layers = check_int("cross_layers", num_layers)
        self.low_rank = r = check_int("low_rank", low_rank)
        self.num_experts = k = check_int("num_experts", num_experts)
        self.activation = make_activation(activation)
        layers = range(self.num_layers)
        self.gates = nn.ModuleList(nn.Linear(d, k, bias=False) for _ in layers)
        self.down = nn.ModuleList(nn.Linear(d, k * r, bias=False) for _ in layers)
        self.mid = nn.ModuleList(nn.Conv1d(k * r, k * r, kernel_size=1, groups=k, bias=False) for _ in layers)
        self.up = nn.ModuleList(nn.Linear(k * r, d) for _ in layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d, r = self.input_dim, self.low_rank
        for gate, down, mid, up in zip(self.gates, self.down, self.mid, self.up):
            _xavier_normal_blocks(gate.weight, d, 1)
            _xavier_normal_blocks(down.weight, d, r)
            _xavier_normal_blocks(mid.weight, r, r)
            _xavier_normal_blocks(up.weight, r, d)
            nn.init.zeros_(up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, k, r = x.shape[0], self.num_experts, self.low_rank
        xl = x  # (B, d)
        for gate, down, mid, up in zip(self.gates, self.down, self.mid, self.up):
            logits = gate(xl)  # (B, K)
            weights = torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
            h = self.activation(down(xl)).view(batch, k, r)  # (B, K, r): g(V_i^T x_l)
            c = mid.weight.view(k, r, r)  # (K, r_out, r_in)
            h = self.activation(torch.einsum("bki,koi->bko", h, c))  # (B, K, r): g(C_i h_i)
            mixed = (h * weights.unsqueeze(2).to(h.dtype)).reshape(batch, k * r)  # (B, K*r): G_i h_i
            xl = torch.addcmul(xl, x, up(mixed))  # (B, d)
        return xl

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 3-4 expert by expert, each with its own bias term and gate."""
        r = self.low_rank
        x0 = x  # (B, d)
        xl = x
        for gate, down, mid, up in zip(self.gates, self.down, self.mid, self.up):
            weights = torch.softmax(xl @ gate.weight.T, dim=1)  # (B, K)
            mixture = torch.zeros_like(xl)
            for i in range(self.num_experts):
                block = slice(i * r, (i + 1) * r)
                v, c, u = down.weight[block], mid.weight[block, :, 0], up.weight[:, block]  # (r,d) (r,r) (d,r)
                h = self.activation(self.activation(xl @ v.T) @ c.T)  # (B, r)
                expert = x0 * (h @ u.T + up.bias)  # (B, d)
                mixture = mixture + weights[:, i:i + 1] * expert
            xl = mixture + xl
        return xl


class SqueezeExcitation(nn.Module):
    """SENET layer of FiBiNET: field importance from squeeze and excitation, then reweighting.

    Huang, Zhang and Zhang, "FiBiNET: Combining Feature Importance and Bilinear feature
    Interaction for Click-Through Rate Prediction", RecSys 2019, https://arxiv.org/abs/1905.09433
    (eq. 2-5)::

        z_i = (1/D) sum_t e_{i,t}                          (squeeze: mean pooling)
        a   = ReLU(W_2 ReLU(W_1 z)),   W_1 in R^{R x F}, W_2 in R^{F x R}, R = max(1, F // r)
        v_i = a_i e_i                                      (re-weight)

    ``reduce`` (``W_1``) and ``expand`` (``W_2``) are bias-free Xavier-normal ``nn.Linear``, as in
    the paper and FuxiCTR.

    Args:
        num_fields: ``F``.
        reduction_ratio: ``r`` (>= 1).

    Shapes: ``[B, F, D]`` -> ``[B, F, D]``.

    Example::

        senet = SqueezeExcitation(10, reduction_ratio=3)
        senet(torch.randn(4, 10, 8)).shape  # torch.Size([4, 10, 8])
    """

    def __init__(self, num_fields: int, reduction_ratio: int = 3) -> None:
        super().__init__()
        self.num_fields = check_int("num_fields", num_fields)
        self.reduction_ratio = check_int("reduction_ratio", reduction_ratio)
        self.reduced = max(1, self.num_fields // self.reduction_ratio)
        self.reduce = nn.Linear(self.num_fields, self.reduced, bias=False)
        self.expand = nn.Linear(self.reduced, self.num_fields, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear(self.reduce)
        init_linear(self.expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=2)  # (B, F)
        a = F.relu(self.expand(F.relu(self.reduce(z))))  # (B, F)
        return x * a.unsqueeze(2)  # (B, F, D)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        fields = range(self.num_fields)
        z = torch.stack([x[:, i].sum(dim=1) / x.shape[2] for i in fields], dim=1)  # (B, F)
        hidden = torch.stack([F.relu(z @ self.reduce.weight[j]) for j in range(self.reduced)], dim=1)  # (B, R)
        a = [F.relu(hidden @ self.expand.weight[i]) for i in fields]  # F x (B,)
        return torch.stack([x[:, i] * a[i].unsqueeze(1) for i in fields], dim=1)  # (B, F, D)


#: which fields share a bilinear matrix: one for all pairs, one per left field, one per pair
BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")


def bilinear_groups(num_fields: int, bilinear_type: str) -> int:
    """Number of ``D x D`` matrices of a bilinear interaction over ``num_fields`` fields."""
    return {"field_all": 1, "field_each": num_fields - 1, "field_interaction": num_fields * (num_fields - 1) // 2}[
        bilinear_type
    ]


class BilinearInteraction(nn.Module):
    """Bilinear-interaction layer of FiBiNET.

    Huang et al., RecSys 2019, https://arxiv.org/abs/1905.09433 (eq. 6-8), for every pair ``i < j``::

        p_ij = (W_g v_i) ⊙ v_j,     g = 0 (field_all) | i (field_each) | (i, j) (field_interaction)

    (the paper writes ``v_i · W ⊙ v_j`` with a row vector; ``W_g`` here is the transpose, as in
    ``nn.Linear``). ``field_each`` has ``F - 1`` matrices: the last field is never the left one.
    The G matrices are the blocks of a bias-free kernel-size-1 ``nn.Conv1d(G*D, G*D, groups=G)``
    (``matrices``; its weight is ``[G*D, D, 1]``, block ``g`` = ``W_g``), each Xavier-normal as a
    ``D x D`` matrix. The forward computes the pairs by row field (:func:`_fused.pair_bilinear`:
    ``F - 1`` small GEMMs, no gathers); under autocast both products and the output are bf16.
    Exporters trace the gathered form below.

    Args:
        num_fields: ``F`` (>= 2).
        embed_dim: ``D``.
        bilinear_type: ``field_all``, ``field_each`` or ``field_interaction``.

    Shapes: ``[B, F, D]`` -> ``[B, P, D]`` with ``P = F (F - 1) / 2``, pairs in row-major order.

    Example::

        bilinear = BilinearInteraction(5, 8, "field_each")
        bilinear(torch.randn(4, 5, 8)).shape  # torch.Size([4, 10, 8])
    """

    def __init__(self, num_fields: int, embed_dim: int, bilinear_type: str = "field_interaction") -> None:
        super().__init__()
        self.num_fields = check_int("num_fields", num_fields, minimum=2)
        self.embed_dim = check_int("embed_size", embed_dim)
        self.bilinear_type = check_choice("bilinear_type", bilinear_type, BILINEAR_TYPES)
        self.groups = bilinear_groups(self.num_fields, self.bilinear_type)
        width = self.groups * self.embed_dim
        self.matrices = nn.Conv1d(width, width, kernel_size=1, groups=self.groups, bias=False)
        rows, cols = _pair_indices(self.num_fields)
        self.register_buffer("rows", rows, persistent=False)  # (P,)
        self.register_buffer("cols", cols, persistent=False)  # (P,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _xavier_normal_blocks(self.matrices.weight, self.embed_dim, self.embed_dim)

    def blocks(self) -> torch.Tensor:
        """The bilinear matrices ``[G, D_out, D_in]`` (a view of ``matrices.weight``)."""
        return self.matrices.weight.view(self.groups, self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.blocks()  # (G, D_out, D_in)
        if not _fused.exporting():
            return _fused.pair_bilinear(x, w, self.bilinear_type == "field_interaction")  # (B, P, D)
        if self.bilinear_type == "field_all":
            left = F.linear(x, w[0])[:, self.rows]  # (B, P, D)
        elif self.bilinear_type == "field_each":
            left = torch.einsum("bgi,goi->bgo", x[:, :-1], w)[:, self.rows]  # (B, P, D)
        else:
            left = torch.einsum("bpi,poi->bpo", x[:, self.rows], w)  # (B, P, D)
        return left * x[:, self.cols]  # (B, P, D)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.embed_dim
        pairs = []
        for p, (i, j) in enumerate(zip(self.rows.tolist(), self.cols.tolist())):
            g = {"field_all": 0, "field_each": i, "field_interaction": p}[self.bilinear_type]
            w = self.matrices.weight[g * d:(g + 1) * d, :, 0]  # (D_out, D_in)
            pairs.append((x[:, i] @ w.T) * x[:, j])  # (B, D)
        return torch.stack(pairs, dim=1)  # (B, P, D)


def bilinear_side_by_side(layers: Sequence[BilinearInteraction], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The outputs of several :class:`BilinearInteraction` layers of one type, side by side along the
    pairs: ``[B, k P, D]``, the same as ``torch.cat([layer(x) ...], dim=1)``. Outside export it is
    one autograd node that writes every layer's products in place (FiBiNET's DNN input: no
    concatenation of two ``[B, P, D]`` blocks forward, no split of their gradient backward)."""
    types = {layer.bilinear_type for layer in layers}
    if _fused.exporting() or len(types) != 1:
        return torch.cat([layer(x) for layer, x in zip(layers, inputs)], dim=1)
    per_pair = types.pop() == "field_interaction"
    return _fused.pair_bilinear_side_by_side([(x, layer.blocks()) for layer, x in zip(layers, inputs)], per_pair)


#: how ONN combines the two operation-aware embeddings of a pair
ONN_PRODUCTS = ("inner", "hadamard")


class OperationAwareInteraction(nn.Module):
    """Copy and product operations of ONN over operation-aware embeddings.

    Yang, Xu, Shen and Zhao, "Operation-aware Neural Networks for User Response Prediction",
    Neural Networks 2020, https://arxiv.org/abs/1904.12579 (section 3)::

        f_copy = [e_{1,1}; ...; e_{F,F}]                         (copy operation)
        f_ij   = <e_{i,j}, e_{j,i}>   (inner)   or   e_{i,j} ⊙ e_{j,i}   (hadamard, NFFM),   i < j
        output = [f_copy; f_12; f_13; ...; f_{F-1,F}]

    The input is each field's row of the operation-aware table: ``F`` blocks of ``D`` values,
    block ``j`` of field ``i`` being ``e_{i,j}``, the embedding field ``i`` uses in its product
    with field ``j``; the diagonal block ``e_{i,i}`` (no product uses it) is the copy embedding.
    So each field has exactly ``F`` embeddings (one per operation) and the whole output is one
    gather of ``F + 2P`` blocks.

    Args:
        num_fields: ``F``.
        embed_dim: ``D``.
        product: ``inner`` (the ONN paper) or ``hadamard`` (NFFM).

    Shapes: ``[B, F, F*D]`` -> ``[B, F*D + P]`` (inner) or ``[B, F*D + P*D]`` (hadamard).

    Example::

        onn = OperationAwareInteraction(5, 2)
        onn(torch.randn(4, 5, 10)).shape  # torch.Size([4, 20])  (5*2 + 10)
    """

    def __init__(self, num_fields: int, embed_dim: int, product: str = "inner") -> None:
        super().__init__()
        self.num_fields = f = check_int("num_fields", num_fields)
        self.embed_dim = check_int("embed_size", embed_dim)
        self.product = check_choice("product", product, ONN_PRODUCTS)
        rows, cols = _pair_indices(f)
        self.num_pairs = rows.numel()
        diagonal = torch.arange(f) * (f + 1)
        blocks = torch.cat([diagonal, rows * f + cols, cols * f + rows])  # (F + 2P,) of the [F*F] blocks
        self.register_buffer("blocks", blocks, persistent=False)
        pair_width = 1 if self.product == "inner" else self.embed_dim
        self.output_dim = f * self.embed_dim + self.num_pairs * pair_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, p, d = self.num_fields, self.num_pairs, self.embed_dim
        if not _fused.exporting():
            return _fused.operation_aware(x.reshape(x.shape[0], f, f, d), self.product == "inner")  # (B, output_dim)
        e = x.reshape(x.shape[0], f * f, d)[:, self.blocks]  # (B, F + 2P, D)
        copy, left, right = e[:, :f], e[:, f:f + p], e[:, f + p:]  # (B, F, D), (B, P, D), (B, P, D)
        products = left * right  # (B, P, D)
        products = products.sum(dim=2) if self.product == "inner" else products.flatten(1)  # (B, P[*D])
        return torch.cat([copy.flatten(1), products], dim=1)  # (B, output_dim)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.embed_dim

        def block(i: int, j: int) -> torch.Tensor:
            return x[:, i, j * d:(j + 1) * d]  # (B, D): e_{i,j}

        parts = [block(i, i) for i in range(self.num_fields)]
        for i in range(self.num_fields):
            for j in range(i + 1, self.num_fields):
                product = block(i, j) * block(j, i)  # (B, D)
                parts.append(product.sum(dim=1, keepdim=True) if self.product == "inner" else product)
        return torch.cat(parts, dim=1)  # (B, output_dim)
