"""Hand-written forward/backward passes of the interaction blocks (CPU-first, any device).

Each function here computes exactly the formula of the block that calls it (see the docstrings in
``interaction.py``); only the order of the arithmetic and what is kept for the backward differ
from what autograd would do with the naive expression:

* fewer passes over ``[B, F, D]``-sized tensors (on CPU these blocks are bound by memory traffic
  and by the number of ops, not by FLOPs);
* no temporary above a few MB where the naive expression materialises hundreds of MB (the CIN
  outer product is ``B x H x m x D``): glibc serves allocations above 32 MB with fresh ``mmap``
  pages, so every such temporary costs page faults on every step;
* under autocast the heavy products run in the autocast dtype (bf16) with fp32 parameter and
  input gradients, like autocast's own ``mm``.

Every function is checked against autograd of the plain formula with ``gradcheck`` in
``tests/pytorch/test_fused.py``.

Double backward (``create_graph=True``, Hessian-vector products): a backward built from values the
forward computed without a graph (``t``, ``c_l`` of the cross network, CIN states, attention
matrices) would silently differentiate as if those were constants. Such backwards are marked
:func:`first_order_only` (stricter than ``once_differentiable``, which can still let a wrong
Hessian through), so a second derivative raises instead of returning a wrong number; the FM backward
recomputes its one saved intermediate when a graph is requested, so it is exact twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ctrkit import native

#: bytes of the largest per-chunk temporary of the chunked CIN (fits in L2/L3 on CPU)
CIN_CHUNK_BYTES_CPU = 2 << 20
CIN_CHUNK_BYTES_GPU = 512 << 20


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would compute a matmul of ``x`` in (``x.dtype`` without autocast)."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device) and x.is_floating_point():
        return torch.get_autocast_dtype(device)
    return x.dtype


def first_order_only(backward: Callable) -> Callable:
    """Mark a hand-written ``backward`` as not differentiable itself: ``create_graph=True`` raises.

    ``torch.autograd.function.once_differentiable`` is not enough: it attaches its error only when
    an incoming gradient requires grad, and ``torch.autograd.grad(..., inputs=x)`` prunes that
    error node anyway, so with another path from ``x`` (``block(x) + x**3``) a Hessian-vector
    product comes out silently wrong. The autograd engine enables grad mode inside a backward only
    for ``create_graph=True``, so that is where this refuses; a plain backward runs unchanged.
    """

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            block = type(ctx).__name__.removesuffix("Backward").lstrip("_")
            raise RuntimeError(
                f"{block}: the fused backward is first-order only, so double backward "
                "(create_graph=True) would give wrong values and is refused; differentiate the "
                "module's reference_forward to take second derivatives"
            )
        return backward(ctx, *grads)

    return wrapper


def exporting() -> bool:
    """Whether the forward is being traced or exported (``torch.jit.trace``, ``torch.onnx.export``,
    ``torch.export``): the blocks then run their ``reference_forward`` (plain tensor operations that
    every exporter understands) instead of the hand-written autograd Functions of this module."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


#: the dtype suffix of the C kernels' function names (``ctrkit/native``)
_C_SUFFIXES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def c_function(library: str, name: str, t: torch.Tensor, dtypes: Sequence[torch.dtype] = tuple(_C_SUFFIXES)):
    """The C kernel ``<name>_<f32|bf16>`` of ``ctrkit/native/<library>.c`` for ``t``'s dtype, or ``None``
    where the caller's torch implementation runs instead: a dtype outside ``dtypes``, a device other
    than the CPU, tracing or export, no C compiler, or ``CTRKIT_NATIVE=0``."""
    if t.dtype not in dtypes or t.device.type != "cpu" or exporting():
        return None
    lib = native.library(library)
    return None if lib is None else getattr(lib, f"{name}_{_C_SUFFIXES[t.dtype]}")


def _grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype for parameter gradients computed in ``dtype``."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


# ---------------------------------------------------------------------------------------------
# Factorization machine (pairwise term)
# ---------------------------------------------------------------------------------------------
class _FMPairwise(torch.autograd.Function):
    """``y = 1/2 (||sum_i v_i||^2 - sum_i ||v_i||^2)``; backward ``dy/dv_i = sum_j v_j - v_i``.

    Two reads of ``x`` forward and one fused write backward, where autograd of the formula makes
    two ``[B, F, D]`` temporaries forward and four passes backward.
    """

    @staticmethod
    def forward(ctx, x):
        # autocast would run vecdot in bf16: the difference of two large, close sums must not
        with torch.autocast(x.device.type, enabled=False):
            total = x.sum(dim=1)  # (B, D)
            squares = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).square()  # (B,): one pass
            out = 0.5 * (torch.linalg.vecdot(total, total) - squares)  # (B,)
        ctx.save_for_backward(x, total)
        return out.unsqueeze(1)  # (B, 1)

    @staticmethod
    def backward(ctx, grad):
        x, total = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the saved sum has no graph; rebuild it from x
            total = x.sum(dim=1)
        g = grad.to(x.dtype)  # (B, 1)
        return torch.addcmul((g * total).unsqueeze(1), x, g.unsqueeze(-1), value=-1.0)  # g (s - v_i)


def fm_pairwise(x: torch.Tensor) -> torch.Tensor:
    """``sum_{i<j} <v_i, v_j>`` of ``x`` ``[B, F, D]`` -> ``[B, 1]``, in O(F D)."""
    return _FMPairwise.apply(x)


# ---------------------------------------------------------------------------------------------
# Cross network (DCN v1)
# ---------------------------------------------------------------------------------------------
class _CrossNet(torch.autograd.Function):
    """``x_{l+1} = x_0 (x_l . w_l) + b_l + x_l``, all layers, in closed form.

    By induction every ``x_l`` is ``x_0`` scaled per row plus a constant vector::

        x_l = c_l x_0 + beta_l,   c_0 = 1, beta_0 = 0
        s_l = x_l . w_l = c_l t_l + beta_l . w_l,   t_l = x_0 . w_l
        c_{l+1} = c_l + s_l,      beta_{l+1} = beta_l + b_l

    so the network is ``T = x_0 W^T`` (one GEMM), a recursion on ``[B]`` vectors and one
    ``addcmul`` -- the same numbers as the layer-by-layer recursion (up to rounding) with two
    passes over ``[B, d]`` instead of three per layer, and five in the backward instead of six per
    layer.
    """

    @staticmethod
    def forward(ctx, x0, weight, *biases):
        layers = len(biases)
        with torch.autocast(x0.device.type, enabled=False):  # elementwise-bound: stays in fp32
            t = torch.mm(x0, weight.t())  # (B, L): t_l = x_0 . w_l
            beta = torch.zeros_like(weight[0])
            cs = [torch.ones_like(t[:, 0])]  # c_0 = 1
            betas = [beta]
            for layer in range(layers):
                s = cs[-1] * t[:, layer] + torch.dot(beta, weight[layer])  # (B,)
                cs.append(cs[-1] + s)
                beta = beta + biases[layer]
                betas.append(beta)
            out = torch.addcmul(beta, x0, cs[-1].unsqueeze(1))  # c_L x_0 + beta_L
        ctx.save_for_backward(x0, weight, t, torch.stack(cs, 1), torch.stack(betas))
        return out

    @staticmethod
    @first_order_only  # the saved intermediates carry no graph
    def backward(ctx, grad):
        x0, weight, t, cs, betas = ctx.saved_tensors
        layers = weight.shape[0]
        grad_beta = grad.sum(dim=0)  # dL/dbeta_L (d,)
        grad_c = torch.linalg.vecdot(grad, x0)  # dL/dc_L (B,)
        grad_x0 = grad * cs[:, layers].unsqueeze(1)
        grad_t = torch.empty_like(t)
        grad_bw = []  # dL/d(beta_l . w_l), scalars
        for layer in range(layers - 1, -1, -1):
            grad_s = grad_c  # c_{l+1} = c_l + s_l
            grad_t[:, layer] = grad_s * cs[:, layer]
            grad_bw.append(grad_s.sum())
            grad_c = grad_c + grad_s * t[:, layer]
        grad_bw = torch.stack(grad_bw[::-1])  # (L,)
        grad_x0.addmm_(grad_t, weight)  # through t = x_0 W^T
        grad_w = torch.mm(grad_t.t(), x0) + grad_bw.unsqueeze(1) * betas[:layers]
        # beta_l = b_0 + ... + b_{l-1}: dL/db_k = dL/dbeta_L + sum_{l > k} grad_bw_l w_l
        through_dot = grad_bw.unsqueeze(1) * weight  # (L, d): dL/dbeta_l from beta_l . w_l
        suffix = torch.flip(torch.cumsum(torch.flip(through_dot, [0]), 0), [0])  # sum_{l >= k}
        grad_b = [grad_beta + (suffix[k + 1] if k + 1 < layers else 0) for k in range(layers)]
        return (grad_x0, grad_w, *grad_b)


def cross_net(x0: torch.Tensor, weight: torch.Tensor, biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """DCN cross network of ``x0`` ``[B, d]`` with ``weight`` ``[L, d]`` and ``L`` biases ``[d]``."""
    dtype = torch.promote_types(x0.dtype, weight.dtype)
    return _CrossNet.apply(x0.to(dtype), weight.to(dtype), *[b.to(dtype) for b in biases])


# ---------------------------------------------------------------------------------------------
# Compressed Interaction Network
# ---------------------------------------------------------------------------------------------
class _CIN(torch.autograd.Function):
    """All CIN layers, batch processed in chunks of rows, nothing of size ``B x H x m x D`` built.

    Layer ``k`` maps ``h`` (``H`` maps) and ``x0`` (``m`` fields) to ``z`` (``Hk`` maps)::

        z[o, c] = sum_{i, j} W[o, i, j] h[i, c] x0[j, c]          (c = (row, d) column)
                = sum_i h[i, c] P[o, i, c],   P = W.view(Hk*H, m) @ x0      (one GEMM)

    Layer 1 (``h = x0``) is a quadratic form, so ``W`` may be replaced by its symmetric part
    ``S = (W + W^T) / 2`` (same ``z``) and ``d z / d x0 = 2 S x0``: one GEMM fewer in the backward.
    Backward of a layer, with ``G = dL/dz`` (``Hk x n``)::

        dW    = (G (x) h) @ x0^T          dx0 += W^T @ (G (x) h)      dh = sum_o G[o] P[o]

    Activations other than identity are applied to ``z`` and differentiated by autograd on the
    recomputed ``z`` inside the backward. Tensors are kept field-major (``[fields, B*D]``) so each
    chunk is a column block and every product is a plain 2-D GEMM.
    """

    @staticmethod
    def forward(ctx, x0, chunk_rows, next_sizes, activation, *weights):
        batch, m, dim = x0.shape
        cdt = compute_dtype(x0)
        identity = isinstance(activation, nn.Identity)
        with torch.autocast(x0.device.type, enabled=False), torch.no_grad():
            x0t = x0.detach().to(cdt).permute(1, 0, 2).reshape(m, batch * dim)  # (m, B*D)
            mats = _cin_mats(weights, m, cdt)  # (Hk*H, m); layer 1 symmetrised
            units = [w.shape[0] for w in weights]
            out_rows = [u - k if k < u else u for u, k in zip(units, next_sizes)]
            out = x0t.new_empty(batch, sum(out_rows))  # (B, output_dim)
            # inputs of layers 2..T, kept for the backward (small: keep_k x B*D)
            states = [x0t] + [x0t.new_empty(k, batch * dim) for k in next_sizes[:-1]]
            for start in range(0, batch, chunk_rows):
                stop = min(batch, start + chunk_rows)
                cols = slice(start * dim, stop * dim)
                xc0 = x0t[:, cols]  # (m, n)
                h, offset = xc0, 0
                for k, mat in enumerate(mats):
                    z = _cin_layer(mat, xc0, h, units[k])  # (Hk, n)
                    if not identity:
                        z = activation(z)
                    keep = next_sizes[k]
                    h, o = (z[:keep], z[keep:]) if keep < units[k] else (z, z)
                    if k + 1 < len(mats):
                        states[k + 1][:, cols] = h
                    pooled = o.view(o.shape[0], stop - start, dim).sum(-1)  # (H_out, rows)
                    out[start:stop, offset:offset + o.shape[0]] = pooled.t()
                    offset += o.shape[0]
        ctx.save_for_backward(*states, *mats)
        ctx.meta = (chunk_rows, tuple(next_sizes), units, out_rows, x0.dtype, [(w.shape, w.dtype) for w in weights])
        ctx.activation = None if identity else activation
        ctx.x_shape = (batch, m, dim)
        return out

    @staticmethod
    @first_order_only  # the saved intermediates carry no graph
    def backward(ctx, grad_out):
        chunk_rows, next_sizes, units, out_rows, x_dtype, w_meta = ctx.meta
        batch, m, dim = ctx.x_shape
        layers = len(units)
        saved = ctx.saved_tensors
        states, mats = saved[:layers], saved[layers:]
        x0t = states[0]
        cdt = x0t.dtype
        activation = ctx.activation
        offsets = [sum(out_rows[:k]) for k in range(layers)]
        with torch.autocast(x0t.device.type, enabled=False), torch.no_grad():
            g_out = grad_out.to(cdt)
            dx0t = torch.zeros_like(x0t)
            dmats = [torch.zeros(mat.shape, dtype=_grad_dtype(cdt), device=mat.device) for mat in mats]
            for start in range(0, batch, chunk_rows):
                stop = min(batch, start + chunk_rows)
                rows, n = stop - start, (stop - start) * dim
                cols = slice(start * dim, stop * dim)
                xc0, dxc0 = x0t[:, cols], dx0t[:, cols]
                g_h = None  # dL/dh of the layer above
                for k in range(layers - 1, -1, -1):
                    hk, keep, mat = units[k], next_sizes[k], mats[k]
                    h = states[k][:, cols]  # (H, n)
                    g_pool = g_out[start:stop, offsets[k]:offsets[k] + out_rows[k]].t()  # (H_out, rows)
                    grad = x0t.new_empty(hk, n)
                    pool_part = grad[keep:] if keep < hk else grad
                    pool_part.view(-1, rows, dim).copy_(g_pool.unsqueeze(-1).expand(-1, -1, dim))
                    if keep < hk:
                        if g_h is None:
                            grad[:keep].zero_()
                        else:
                            grad[:keep].copy_(g_h)
                    elif g_h is not None:
                        grad.add_(g_h)
                    p = torch.mm(mat, xc0).view(hk, h.shape[0], n)  # recomputed P
                    if activation is not None:
                        with torch.enable_grad():
                            z = (p * h.unsqueeze(0)).sum(1).requires_grad_()
                            (grad,) = torch.autograd.grad(activation(z), z, grad)
                    y = (grad.unsqueeze(1) * h.unsqueeze(0)).view(hk * h.shape[0], n)  # G (x) h
                    dmats[k].add_(torch.mm(y, xc0.t()))
                    gh = (p * grad.unsqueeze(1)).sum(0)  # (H, n)
                    if k == 0:  # h = x0 and the matrix is symmetric: dx0 = 2 S x0 G
                        dxc0.add_(gh, alpha=2.0)
                    else:
                        dxc0.addmm_(mat.t(), y)
                        g_h = gh
            grad_x0 = dx0t.view(m, batch, dim).permute(1, 0, 2).to(x_dtype)
            grad_ws = []
            for k, ((shape, dtype), dmat) in enumerate(zip(w_meta, dmats)):
                if k == 0:  # gradient of W from that of its symmetric part: dW = (dS + dS^T) / 2
                    sq = dmat.view(units[0], m, m)
                    dmat = (sq + sq.transpose(1, 2)).mul_(0.5)
                grad_ws.append(dmat.reshape(shape).to(dtype))
        return (grad_x0, None, None, None, *grad_ws)


def _cin_mats(weights: Sequence[torch.Tensor], m: int, dtype: torch.dtype) -> list[torch.Tensor]:
    mats = []
    for k, w in enumerate(weights):
        hk = w.shape[0]
        h = w.shape[1] // m
        mat = w.detach().reshape(hk, h, m)
        if k == 0:
            mat = (mat + mat.transpose(1, 2)) * 0.5  # symmetric part: same quadratic form
        mats.append(mat.to(dtype).reshape(hk * h, m).contiguous())
    return mats


def _cin_layer(mat: torch.Tensor, x0: torch.Tensor, h: torch.Tensor, units: int) -> torch.Tensor:
    """``z[o, c] = sum_i h[i, c] (mat @ x0)[o*H + i, c]`` for one column chunk."""
    p = torch.mm(mat, x0).view(units, h.shape[0], x0.shape[1])  # (Hk, H, n)
    return (p * h.unsqueeze(0)).sum(1)  # (Hk, n)


def cin(x0: torch.Tensor, weights: Sequence[torch.Tensor], next_sizes: Sequence[int], activation: nn.Module) -> torch.Tensor:
    """CIN of ``x0`` ``[B, m, D]`` with filters ``weights[k]`` ``[H_k, H_{k-1} * m, 1]`` -> ``[B, out]``."""
    batch, m, dim = x0.shape
    itemsize = torch.empty((), dtype=compute_dtype(x0)).element_size()
    widest = max(w.shape[0] * (w.shape[1] // m) for w in weights)  # rows of the largest P
    budget = CIN_CHUNK_BYTES_CPU if x0.device.type == "cpu" else CIN_CHUNK_BYTES_GPU
    chunk_rows = max(1, min(batch, budget // max(1, widest * dim * itemsize)))
    return _CIN.apply(x0, chunk_rows, tuple(next_sizes), activation, *weights)


# ---------------------------------------------------------------------------------------------
# Self-attention over fields (AutoInt interacting layer)
# ---------------------------------------------------------------------------------------------
#: target bytes of one chunk's attention matrices ``[rows * H, F, F]`` (fp32)
ATTENTION_CHUNK_BYTES = 3 << 19


class _SelfAttention(torch.autograd.Function):
    """``out = ReLU(softmax(scale * Q K^T) V + R)`` per head with ``[Q|K|V|R] = x W^T``.

    ``W`` is the four projection matrices stacked (``[(3|4) * H * d, in]``; no ``R`` without the
    residual). Rows of the batch are processed in chunks that stay in cache: one projection GEMM,
    then the heads of a row as ONE product each, against block-diagonal operands::

        S = [Q_1 .. Q_H] @ blockdiag(K_1^T .. K_H^T)      [F, H*F]  (= [Q_1 K_1^T .. Q_H K_H^T])
        O = [A_1 .. A_H] @ blockdiag(V_1 .. V_H)          [F, H*d]  (= [A_1 V_1 .. A_H V_H])

    Half the FLOPs of these products are zeros, but with ``d = 8`` and ``F = 39`` one ``39 x 16
    x 78`` GEMM per row runs ~2x faster than two ``39 x 8 x 39`` ones, and ``Q``, ``O`` and ``dQ``
    stay in the projection's ``[F, H*d]`` layout (no head-major copies). The attention matrices are
    kept for the backward in chunk-sized pieces; the chunk's projection is recomputed. Under bf16
    autocast everything is stored in bf16 (the softmax and its backward compute in fp32 inside the
    kernel, so no conversion passes; the attention matrix feeds a bf16 product anyway); ``W``'s
    gradient is accumulated in fp32.
    """

    @staticmethod
    def forward(ctx, x, weight, heads, head_dim, scale, residual, chunk_rows):
        batch, fields, width_in = x.shape
        width = heads * head_dim
        parts = weight.shape[0] // width  # 3 or 4
        cdt = compute_dtype(x)
        attn_chunks = []
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            w = weight.detach().to(cdt)
            out = torch.empty(batch, fields, width, dtype=cdt, device=x.device)
            k_bd, v_bd = _block_buffers(chunk_rows, fields, heads, head_dim, cdt, x.device)
            for start in range(0, batch, chunk_rows):
                stop = min(batch, start + chunk_rows)
                n = stop - start
                y = _project(x[start:stop], w, parts, cdt)  # (n, F, P, H*d)
                _fill_blocks(k_bd[:n], v_bd[:n], y, heads, head_dim)
                scores = torch.bmm(y[:, :, 0], k_bd[:n])  # (n, F, H*F)
                if scale != 1.0:
                    scores.mul_(scale)
                attn = torch.softmax(scores.view(n, fields, heads, fields), -1)  # kept (n, F, H, F)
                attn_chunks.append(attn)
                o = out[start:stop]
                if residual:  # the GEMM accumulates onto the residual (a strided add_ is ~9x a copy)
                    o.copy_(y[:, :, 3])
                    o.baddbmm_(attn.view(n, fields, heads * fields), v_bd[:n])  # (n, F, H*d)
                else:
                    torch.bmm(attn.view(n, fields, heads * fields), v_bd[:n], out=o)  # (n, F, H*d)
                o.relu_()
        ctx.save_for_backward(x, weight, out, *attn_chunks)
        ctx.meta = (heads, head_dim, scale, residual, chunk_rows, cdt)
        return out

    @staticmethod
    @first_order_only  # the saved intermediates carry no graph
    def backward(ctx, grad_out):
        x, weight, out, *attn_chunks = ctx.saved_tensors
        heads, head_dim, scale, residual, chunk_rows, cdt = ctx.meta
        batch, fields, width_in = x.shape
        width = heads * head_dim
        parts = weight.shape[0] // width
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            w = weight.detach().to(cdt)
            grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            grad_w = torch.zeros(weight.shape, dtype=_grad_dtype(cdt), device=weight.device)
            k_bd, v_bd = _block_buffers(chunk_rows, fields, heads, head_dim, cdt, x.device)
            for index, start in enumerate(range(0, batch, chunk_rows)):
                stop = min(batch, start + chunk_rows)
                n = stop - start
                y = _project(x[start:stop], w, parts, cdt)  # recomputed (n, F, P, H*d)
                _fill_blocks(k_bd[:n], v_bd[:n], y, heads, head_dim)
                g = torch.ops.aten.threshold_backward(grad_out[start:stop].to(cdt), out[start:stop], 0)  # ReLU
                attn = attn_chunks[index]  # (n, F, H, F)
                attn_c = attn.view(n, fields, heads * fields)
                d_attn = torch.bmm(g, v_bd[:n].transpose(1, 2))  # (n, F, H*F)
                d_scores = torch._softmax_backward_data(d_attn.view(attn.shape), attn, -1, cdt)
                if scale != 1.0:
                    d_scores.mul_(scale)
                d_scores = d_scores.view(n, fields, heads * fields)
                dy = torch.empty(n, fields, parts, width, dtype=cdt, device=x.device)
                dy[:, :, 0].copy_(torch.bmm(d_scores, k_bd[:n].transpose(1, 2)))  # dQ (n, F, H*d)
                d_kbd = torch.bmm(y[:, :, 0].transpose(1, 2), d_scores)  # (n, H*d, H*F)
                d_vbd = torch.bmm(attn_c.transpose(1, 2), g)  # (n, H*F, H*d)
                _take_blocks(dy, d_kbd, d_vbd, heads, head_dim, fields)
                if residual:
                    dy[:, :, 3].copy_(g)
                flat = dy.view(n * fields, parts * width)
                grad_w.add_(torch.mm(flat.t(), x[start:stop].reshape(n * fields, width_in).to(cdt)))
                if grad_x.dtype == cdt:
                    torch.mm(flat, w, out=grad_x[start:stop].view(n * fields, width_in))
                else:
                    grad_x[start:stop].view(n * fields, width_in).copy_(torch.mm(flat, w))
        return grad_x, grad_w.to(weight.dtype), None, None, None, None, None


def _project(x, w, parts, dtype):
    """``x`` ``[n, F, in]`` @ ``w^T`` -> ``[n, F, P, H*d]`` (contiguous)."""
    n, fields, width_in = x.shape
    return torch.mm(x.reshape(n * fields, width_in).to(dtype), w.t()).view(n, fields, parts, -1)


def _block_buffers(rows, fields, heads, head_dim, dtype, device):
    """Zeroed ``[rows, H*d, H*F]`` and ``[rows, H*F, H*d]``: only diagonal blocks are ever written."""
    k_bd = torch.zeros(rows, heads * head_dim, heads * fields, dtype=dtype, device=device)
    v_bd = torch.zeros(rows, heads * fields, heads * head_dim, dtype=dtype, device=device)
    return k_bd, v_bd


def _fill_blocks(k_bd, v_bd, y, heads, head_dim):
    """``k_bd = blockdiag(K_h^T)``, ``v_bd = blockdiag(V_h)`` from ``y`` ``[n, F, P, H*d]``."""
    n, fields = y.shape[:2]
    k = y[:, :, 1].view(n, fields, heads, head_dim)  # (n, F, H, d)
    v = y[:, :, 2].view(n, fields, heads, head_dim)  # (n, F, H, d)
    # the diagonal blocks of all heads as one strided view each: one copy per operand
    k_diag = torch.diagonal(k_bd.view(n, heads, head_dim, heads, fields), dim1=1, dim2=3)  # (n, d, F, H)
    v_diag = torch.diagonal(v_bd.view(n, heads, fields, heads, head_dim), dim1=1, dim2=3)  # (n, F, d, H)
    k_diag.copy_(k.permute(0, 3, 1, 2))
    v_diag.copy_(v.permute(0, 1, 3, 2))


def _take_blocks(dy, d_kbd, d_vbd, heads, head_dim, fields):
    """Diagonal blocks of ``d_kbd`` (``dK_h^T``) and ``d_vbd`` (``dV_h``) into ``dy[:, :, 1|2]``."""
    n = dy.shape[0]
    dk = dy[:, :, 1].view(n, fields, heads, head_dim)  # (n, F, H, d)
    dv = dy[:, :, 2].view(n, fields, heads, head_dim)  # (n, F, H, d)
    dk.copy_(torch.diagonal(d_kbd.view(n, heads, head_dim, heads, fields), dim1=1, dim2=3).permute(0, 2, 3, 1))
    dv.copy_(torch.diagonal(d_vbd.view(n, heads, fields, heads, head_dim), dim1=1, dim2=3).permute(0, 1, 3, 2))


def self_attention(x: torch.Tensor, weight: torch.Tensor, heads: int, head_dim: int, scale: float,
                   residual: bool) -> torch.Tensor:
    """``ReLU(MultiHead(x) + x W_Res^T)`` with ``weight = [W_Q; W_K; W_V(; W_Res)]``: ``[B, F, H*d]``."""
    batch, fields, _ = x.shape
    chunk_rows = max(1, min(batch, ATTENTION_CHUNK_BYTES // (heads * fields * fields * 4)))
    if x.device.type != "cpu":
        chunk_rows = batch
    return _SelfAttention.apply(x, weight, heads, head_dim, float(scale), bool(residual), chunk_rows)


# ---------------------------------------------------------------------------------------------
# Dice (DIN's activation) in training: batch statistics and output in one autograd node
# ---------------------------------------------------------------------------------------------
class _DiceTrain(torch.autograd.Function):
    """``y = x (alpha + (1 - alpha) sigmoid(z))``, ``z = (x - m) r``, ``r = (v + eps)^-1/2`` with the
    (masked) batch mean ``m`` and biased variance ``v`` of each channel.

    With ``w_n`` the row weights (1 for the rows of the statistics, 0 for padding), ``n = sum w``,
    ``p = sigmoid(z)``, ``dz = (1 - alpha) x g p (1 - p)``, ``S1 = sum_k dz_k`` and ``S2 = sum_k
    dz_k z_k`` (over all rows: a padding row's ``z`` depends on the statistics too), the backward is
    BatchNorm's::

        dx      = g (alpha + (1 - alpha) p) + r dz - w (r / n) (S1 + z S2)
        dalpha  = sum_n g x (1 - p)

    Dice is bound by memory traffic: autograd of the formula streams a dozen ``[N, C]``
    intermediates through DRAM about 40 times per step (half of a DIN step on CPU). Here the rows
    are processed in chunks that stay in cache, and only ``x`` and ``p`` are saved: forward reads
    ``x`` three times (mean, variance, output) and writes ``p`` and ``y``; backward reads ``x``,
    ``g`` and ``p`` twice and ``dz`` once, and writes ``dz`` and ``dx``. ``z`` is recomputed per
    chunk (two cheap passes in cache), the sigmoid is not (it is compute-bound on CPU). Arithmetic in
    the wide dtype (fp32 under bf16 autocast: the statistics and ``1 - p`` must not round to
    bf16). Also returns ``m`` and ``v`` (no gradient) for the running statistics.

    On CPU, for float32 and bfloat16 ``x``, the same passes run as one C loop each
    (``ctrkit/native/dice.c``: the forward reads ``x`` three times, the backward ``x``, ``g`` and
    ``p`` twice, with no temporaries); elsewhere, or without a C compiler, as torch operations over
    the chunks (:func:`_dice_forward_chunks`, :func:`_dice_backward_chunks`). The tests compare the two.
    """

    @staticmethod
    def forward(ctx, x, alpha, weight, eps, chunk_rows):
        wide = torch.promote_types(x.dtype, torch.float32)
        chunks = [(start, min(x.shape[0], start + chunk_rows)) for start in range(0, x.shape[0], chunk_rows)]
        with torch.autocast(x.device.type, enabled=False):
            a = alpha.to(wide)  # (C,)
            w = None if weight is None else weight.to(wide)  # (N, 1)
            count = x.new_tensor(float(x.shape[0]), dtype=wide) if w is None else w.sum().clamp(min=1.0)
            kernel = c_function("dice", "ctrkit_dice_forward", x) if x.dim() == 2 else None
            if kernel is not None:
                x, w = x.contiguous(), None if w is None else w.contiguous()
                y, p = torch.empty_like(x), torch.empty(x.shape, dtype=wide)  # (N, C) each
                mean, var, rstd = (a.new_empty(a.shape) for _ in range(3))  # (C,) each
                status = kernel(x.shape[0], x.shape[1], x.data_ptr(), _address(w), max(count.item(), 1.0),
                                a.data_ptr(), eps, mean.data_ptr(), var.data_ptr(), rstd.data_ptr(), p.data_ptr(),
                                y.data_ptr())
                native.check(status, "dice forward: no memory for its scratch buffers")
            else:
                mean, var, rstd, p, y = _dice_forward_chunks(x, a, w, count, eps, chunks)
        ctx.save_for_backward(x, p, a, mean, rstd, count, w)
        ctx.meta = chunks, alpha.dtype
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @first_order_only  # the statistics are saved without a graph
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, p_all, a, mean, rstd, count, w = ctx.saved_tensors
        chunks, alpha_dtype = ctx.meta
        kernel = c_function("dice", "ctrkit_dice_backward", x) if x.dim() == 2 else None
        if kernel is not None:
            grad = grad.to(x.dtype).contiguous()
            dx, grad_alpha = torch.empty_like(x), torch.empty_like(a)  # (N, C), (C,)
            status = kernel(x.shape[0], x.shape[1], x.data_ptr(), grad.data_ptr(), p_all.data_ptr(), _address(w),
                            a.data_ptr(), mean.data_ptr(), rstd.data_ptr(), count.item(), dx.data_ptr(),
                            grad_alpha.data_ptr())
            native.check(status, "dice backward: no memory for its scratch buffers")
            return dx, grad_alpha.to(alpha_dtype), None, None, None
        dx, grad_alpha = _dice_backward_chunks(grad, x, p_all, a, mean, rstd, count, w, chunks)
        return dx, grad_alpha.to(alpha_dtype), None, None, None


def _dice_forward_chunks(x, a, w, count, eps, chunks):
    """:class:`_DiceTrain`'s forward with torch operations over row chunks: ``mean``, ``var``,
    ``rstd`` ``[C]``, ``p`` (wide) and ``y`` ``[N, C]``."""
    wide = a.dtype
    mean = sum(_weighted_sum(x[i:j].to(wide), w, i, j) for i, j in chunks) / count  # (C,)
    var = sum(_weighted_sum((x[i:j].to(wide) - mean).square_(), w, i, j) for i, j in chunks) / count
    rstd = torch.rsqrt(var + eps)  # (C,)
    y = torch.empty_like(x)  # (N, C)
    p = torch.empty(x.shape, dtype=wide, device=x.device)  # (N, C)
    for i, j in chunks:
        xc = x[i:j].to(wide)  # (n, C)
        torch.sigmoid(_dice_z(xc, mean, rstd), out=p[i:j])
        torch.mul(_dice_gate(p[i:j], a), xc, out=y[i:j])
    return mean, var, rstd, p, y


def _dice_backward_chunks(grad, x, p_all, a, mean, rstd, count, w, chunks):
    """:class:`_DiceTrain`'s backward with torch operations over row chunks: ``dx``, ``grad_alpha``."""
    wide = a.dtype
    with torch.autocast(x.device.type, enabled=False):
        dz = torch.empty(x.shape, dtype=wide, device=x.device)  # (N, C)
        grad_alpha, s1, s2 = torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(a)
        for i, j in chunks:
            xc, gc = x[i:j].to(wide), grad[i:j].to(wide)  # (n, C)
            z, p = _dice_z(xc, mean, rstd), p_all[i:j]  # (n, C) each
            gx = gc * xc  # (n, C); not in place: gc may be a view of grad
            gxp = gx * p  # (n, C)
            grad_alpha += gx.sum(0) - gxp.sum(0)  # sum g x (1 - p)
            dzc = torch.addcmul(gxp, gxp, p, value=-1.0, out=dz[i:j]).mul_(1.0 - a)  # (1 - a) g x p (1 - p)
            s1 += dzc.sum(0)
            s2 += (dzc * z).sum(0)
        dx = torch.empty_like(x)  # (N, C)
        for i, j in chunks:
            xc, gc = x[i:j].to(wide), grad[i:j].to(wide)  # (n, C)
            z, gate = _dice_z(xc, mean, rstd), _dice_gate(p_all[i:j], a)  # (n, C) each
            correction = torch.addcmul(s1, z, s2)  # (n, C): S1 + z S2
            if w is not None:
                correction.mul_(w[i:j])
            torch.addcmul(gate.mul_(gc).addcmul_(dz[i:j], rstd), correction, rstd / count, value=-1.0, out=dx[i:j])
    return dx, grad_alpha


# ---------------------------------------------------------------------------------------------
# DIEN's auxiliary network: its first hidden layer on the positive and negative pairs
# ---------------------------------------------------------------------------------------------
class _PairedSigmoid(torch.autograd.Function):
    """``out[0] = sigmoid(h + e[:, 1:])``, ``out[1] = sigmoid(h + e.roll(-1, 0)[:, 1:])``: the sigmoid
    hidden layer of DIEN's auxiliary network on the pairs (state ``t``, behaviour ``t + 1``) and
    (state ``t``, the next row's behaviour ``t + 1``), from the two halves of the layer's input
    product (``h`` the state's, bias included; ``e`` the behaviour's).

    Backward, with ``d = g s (1 - s)`` of each half: ``dh = d[0] + d[1]``, ``de[:, 1:] = d[0] +
    d[1].roll(1, 0)``, ``de[:, 0] = 0``. On CPU for float32 and bfloat16 this is one C pass each way
    (``ctrkit/native/paired_sigmoid.c``) instead of eight torch passes over ``[2, B, T, U]``; the
    torch formula runs elsewhere. Shapes: ``h`` ``[B, T, U]``, ``e`` ``[B, T + 1, U]`` (same dtype)
    -> ``[2, B, T, U]``.
    """

    @staticmethod
    def forward(ctx, h, e):
        kernel = c_function("paired_sigmoid", "ctrkit_paired_sigmoid_forward", h) if e.dtype == h.dtype else None
        if kernel is None:
            out = torch.sigmoid(torch.stack([h + e[:, 1:], h + e.roll(-1, dims=0)[:, 1:]]))  # (2, B, T, U)
        else:
            h, e = h.contiguous(), e.contiguous()
            out = h.new_empty((2, *h.shape))
            kernel(*h.shape, h.data_ptr(), e.data_ptr(), out.data_ptr())
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @first_order_only  # the output is saved without a graph
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        batch, steps, units = out.shape[1:]
        kernel = c_function("paired_sigmoid", "ctrkit_paired_sigmoid_backward", out)
        if kernel is not None:
            grad = grad.to(out.dtype).contiguous()
            d_h, d_e = out.new_empty(batch, steps, units), out.new_empty(batch, steps + 1, units)
            kernel(batch, steps, units, grad.data_ptr(), out.data_ptr(), d_h.data_ptr(), d_e.data_ptr())
            return d_h, d_e
        d = grad * out * (1 - out)  # (2, B, T, U)
        d_e = out.new_zeros(batch, steps + 1, units)
        d_e[:, 1:] = d[0] + d[1].roll(1, dims=0)
        return d[0] + d[1], d_e


def paired_sigmoid(h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """See :class:`_PairedSigmoid`: ``[B, T, U]``, ``[B, T + 1, U]`` -> ``[2, B, T, U]``."""
    return _PairedSigmoid.apply(h, e)


def _address(t: torch.Tensor | None) -> int | None:
    """A tensor's data pointer for ctypes, ``None`` (NULL) for no tensor."""
    return None if t is None else t.data_ptr()


def _weighted_sum(rows: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """``sum_n w_n rows_n`` over a chunk (``[C]``); all weights 1 without ``weight``."""
    return rows.sum(0) if weight is None else torch.mm(weight[start:stop].t(), rows)[0]


def _dice_z(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """``z = (x - m) r`` of a chunk (a new tensor)."""
    return (x - mean).mul_(rstd)


def _dice_gate(p: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha + (1 - alpha) p`` of a chunk (a new tensor)."""
    return torch.addcmul(alpha, p, 1.0 - alpha)


#: bytes of one ``[rows, C]`` wide temporary of a Dice chunk (several stay in L2/L3 together on CPU)
DICE_CHUNK_BYTES_CPU = 1 << 20
DICE_CHUNK_BYTES_GPU = 1 << 40


def dice_train(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None, eps: float):
    """Dice of ``x`` ``[N, C]`` with batch statistics over the rows of ``weight`` (float ``[N, 1]``,
    None: all rows): returns ``y [N, C]`` (x's dtype), the batch ``mean`` and biased ``var`` ``[C]``."""
    budget = DICE_CHUNK_BYTES_CPU if x.device.type == "cpu" else DICE_CHUNK_BYTES_GPU
    chunk_rows = max(1, min(x.shape[0], budget // (4 * max(1, x.shape[1]))))
    return _DiceTrain.apply(x, alpha, weight, eps, chunk_rows)


# ---------------------------------------------------------------------------------------------
# Bilinear interaction (FiBiNET): pair products by row field, no [B, P, D] gathers
# ---------------------------------------------------------------------------------------------
class _PairBilinear(torch.autograd.Function):
    """``out_p = (W_{g(p)} x_i) * x_j`` for every pair ``p = (i, j)``, ``i < j``, row-major.

    The pairs of row field ``i`` are ``(i, i+1) .. (i, F-1)``: their right factors are the slice
    ``x[:, i+1:]`` and, for ``field_interaction``, their left factors one GEMM of ``x_i`` with the
    ``n_i = F-1-i`` matrices side by side (``field_each``/``field_all``: one ``D x D`` matrix,
    broadcast). So the layer is ``F - 1`` small GEMMs and products written straight into the
    ``[B, P, D]`` output, with no ``x[:, rows]`` / ``x[:, cols]`` gathers and no transposes for a
    batched matmul: autograd of the gathered form makes ~20 passes over ``[B, P, D]`` (194 MB at
    B = 4096 and 39 fields of 16), this forward one write and its backward one read of the gradient
    (with one matrix per pair, on CPU, the backward's products and accumulation are one C pass per row
    field: ``ctrkit/native/pair_products.c``).
    Under autocast the GEMMs and products run in the autocast dtype (the output too); the input and
    weight gradients are accumulated in float32.
    """

    @staticmethod
    def forward(ctx, per_pair, *layers):
        """``layers``: ``x_1, weight_1, x_2, weight_2, ...`` (same shapes); their ``[B, P, D]``
        outputs side by side in one ``[B, k P, D]`` tensor (FiBiNET feeds both layers' outputs to
        its DNN: written in place, they need no concatenation, nor their gradients a split)."""
        xs, weights = layers[0::2], layers[1::2]
        dtype = compute_dtype(xs[0])
        batch, fields, d = xs[0].shape
        pairs = fields * (fields - 1) // 2
        with torch.autocast(xs[0].device.type, enabled=False):
            out = xs[0].new_empty(batch, len(xs) * pairs, d, dtype=dtype)  # (B, k*P, D)
            for k, (x, weight) in enumerate(zip(xs, weights)):
                _pair_bilinear_into(x.to(dtype), weight.to(dtype), per_pair, out[:, k * pairs:(k + 1) * pairs])
        ctx.save_for_backward(*layers)
        ctx.per_pair = per_pair
        return out

    @staticmethod
    @first_order_only  # the left factors are recomputed without a graph
    def backward(ctx, grad):
        layers = ctx.saved_tensors
        pairs = grad.shape[1] // (len(layers) // 2)
        grads = []
        for k in range(len(layers) // 2):
            grads += _pair_bilinear_backward(grad[:, k * pairs:(k + 1) * pairs], layers[2 * k], layers[2 * k + 1],
                                             ctx.per_pair)
        return (None, *grads)


def _pair_bilinear_into(xc: torch.Tensor, wc: torch.Tensor, per_pair: bool, out: torch.Tensor) -> None:
    """The products of :class:`_PairBilinear` for one layer, written into ``out`` ``[B, P, D]``."""
    batch, fields, d = xc.shape
    for i, start, stop in _row_groups(fields):
        left = torch.mm(xc[:, i], _row_matrix(wc, i, start, stop, per_pair)).view(batch, -1, d)  # (B, n|1, D)
        torch.mul(left, xc[:, i + 1:], out=out[:, start:stop])


def _pair_bilinear_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, per_pair: bool):
    """``(d_x, d_weight)`` of one layer of :class:`_PairBilinear` from its output gradient ``[B, P, D]``."""
    dtype = grad.dtype
    acc = _grad_dtype(dtype)
    with torch.autocast(x.device.type, enabled=False):
        xc, wc = x.to(dtype), weight.to(dtype)
        batch, fields, d = xc.shape
        d_x = torch.zeros(x.shape, dtype=acc, device=x.device)  # (B, F, D)
        d_w = torch.zeros(weight.shape, dtype=acc, device=x.device)  # (G, D_out, D_in)
        kernel = c_function("pair_products", "ctrkit_pair_products_backward", grad) if per_pair else None
        if kernel is not None:
            xc = xc.contiguous()
            if grad.stride(2) != 1 or grad.stride(1) != d:  # the kernel needs each row's pairs contiguous
                grad = grad.contiguous()
        for i, start, stop in _row_groups(fields):
            g = grad[:, start:stop]  # (B, n, D)
            xi = xc[:, i]  # (B, D)
            mat = _row_matrix(wc, i, start, stop, per_pair)  # (D_in, n*D_out | D_out)
            left = torch.mm(xi, mat)  # (B, n*D_out | D_out)
            if kernel is not None:  # the two products and the accumulation in one C pass
                d_left = torch.empty_like(left)  # (B, n*D)
                kernel(batch, left.shape[1], g.data_ptr(), g.stride(0), left.data_ptr(), xc[:, i + 1:].data_ptr(),
                       xc.stride(0), d_x[:, i + 1:].data_ptr(), d_x.stride(0), d_left.data_ptr())
            else:
                d_x[:, i + 1:] += g * left.view(batch, -1, d)  # d right = g * left
                d_left = g * xc[:, i + 1:]  # (B, n, D)
                # one matrix per pair: the left factors are [B, n*D]; one shared matrix: they broadcast
                d_left = d_left.reshape(batch, -1) if per_pair else d_left.sum(1)  # (B, n*D_out | D_out)
            d_mat = torch.mm(xi.t(), d_left).to(acc)  # (D_in, n*D_out | D_out)
            if per_pair:
                d_w[start:stop] = d_mat.view(d, stop - start, d).permute(1, 2, 0)
            else:
                d_w[_row_group(wc, i)] += d_mat.t()
            d_x[:, i] += torch.mm(d_left, mat.t())
    return d_x.to(x.dtype), d_w.to(weight.dtype)


def _row_groups(fields: int):
    """``(i, start, stop)``: row field ``i`` and its pairs' range in the row-major pair order."""
    start = 0
    for i in range(fields - 1):
        stop = start + fields - 1 - i
        yield i, start, stop
        start = stop


def _row_group(weight: torch.Tensor, i: int) -> int:
    """The one matrix of row field ``i`` without per-pair matrices: field_each's ``i``, field_all's 0."""
    return 0 if weight.shape[0] == 1 else i


def _row_matrix(weight: torch.Tensor, i: int, start: int, stop: int, per_pair: bool) -> torch.Tensor:
    """``M`` with ``x_i @ M`` the left factors of row ``i``'s pairs: the matrices of pairs
    ``start..stop`` side by side, ``[D_in, n * D_out]`` (per pair), or the row's one ``W^T``."""
    if not per_pair:
        return weight[_row_group(weight, i)].t()  # (D_in, D_out)
    n, d_out, d_in = stop - start, weight.shape[1], weight.shape[2]
    return weight[start:stop].permute(2, 0, 1).reshape(d_in, n * d_out)


def pair_bilinear(x: torch.Tensor, weight: torch.Tensor, per_pair: bool) -> torch.Tensor:
    """FiBiNET's bilinear products of ``x`` ``[B, F, D]`` -> ``[B, P, D]`` with ``weight``
    ``[G, D_out, D_in]``: ``G = P`` (``per_pair``: field_interaction), ``F - 1`` (field_each) or 1."""
    return _PairBilinear.apply(per_pair, x, weight)


def pair_bilinear_side_by_side(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], per_pair: bool) -> torch.Tensor:
    """The :func:`pair_bilinear` outputs of several ``(x, weight)`` layers side by side: ``[B, k P, D]``."""
    return _PairBilinear.apply(per_pair, *(t for layer in layers for t in layer))


# ---------------------------------------------------------------------------------------------
# Operation-aware interaction (ONN): copy and pair products by row field, no block gather
# ---------------------------------------------------------------------------------------------
class _OperationAware(torch.autograd.Function):
    """``[e_{1,1}; ...; e_{F,F}; f_12; ...]`` with ``f_ij = e_{i,j} ⊙ e_{j,i}`` (hadamard) or its
    sum over ``D`` (inner), from ``x`` ``[B, F, F, D]`` (``e_{i,j} = x[:, i, j]``).

    For row field ``i`` the left factors ``e_{i,i+1..F-1}`` are one contiguous slice of ``x`` and the
    right factors ``e_{i+1..F-1,i}`` one strided slice, so the layer is ``F - 1`` products written
    straight into the output. Autograd of the gathered form builds two ``[B, P, D]`` blocks (390 MB
    at B = 4096, 39 fields of 16) and scatters their gradients back; here every block of the input
    gradient is written exactly once.
    """

    @staticmethod
    def forward(ctx, x, inner):
        batch, fields, _, d = x.shape
        width = 1 if inner else d
        out = x.new_empty(batch, fields * d + fields * (fields - 1) // 2 * width)  # (B, F*D + P*w)
        out[:, :fields * d] = torch.diagonal(x, dim1=1, dim2=2).transpose(1, 2).reshape(batch, fields * d)
        for i, start, stop in _row_groups(fields):
            left, right = x[:, i, i + 1:], x[:, i + 1:, i]  # (B, n, D) each
            target = out[:, fields * d + start * width:fields * d + stop * width]
            if inner:
                torch.linalg.vecdot(left, right, out=target)
            else:
                torch.mul(left, right, out=target.view(batch, stop - start, d))
        ctx.save_for_backward(x)
        ctx.inner = inner
        return out

    @staticmethod
    @first_order_only  # the backward reads x without a graph
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        batch, fields, _, d = x.shape
        width = 1 if ctx.inner else d
        grad = grad.to(x.dtype)
        d_x = torch.empty_like(x)  # (B, F, F, D): every block written once below
        torch.diagonal(d_x, dim1=1, dim2=2).copy_(grad[:, :fields * d].reshape(batch, fields, d).transpose(1, 2))
        for i, start, stop in _row_groups(fields):
            g = grad[:, fields * d + start * width:fields * d + stop * width].reshape(batch, stop - start, width)
            torch.mul(g, x[:, i + 1:, i], out=d_x[:, i, i + 1:])  # d left = g * right
            torch.mul(g, x[:, i, i + 1:], out=d_x[:, i + 1:, i])  # d right = g * left
        return d_x, None


def operation_aware(x: torch.Tensor, inner: bool) -> torch.Tensor:
    """ONN's copy embeddings and pair products of ``x`` ``[B, F, F, D]`` -> ``[B, F*D + P*(1|D)]``."""
    return _OperationAware.apply(x, inner)
