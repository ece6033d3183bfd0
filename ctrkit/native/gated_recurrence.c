/*
 * The element-wise part of one step of the gated recurrence of ctrkit's GRU and AUGRU
 * (ctrkit/pytorch/layers/sequence.py, class _GatedRecurrence), float32, for a whole batch.
 *
 * Why C: a step's gate arithmetic on [B, H] is ~12 tensor operations forward and ~20 backward
 * when written with torch; each is a separate pass with its own dispatch cost (~10-40 us on a
 * [1024, 48] block), which made the two recurrences of DIEN ~40 % of its training step. Here a
 * step is one pass over the rows. The GEMMs of the step stay in torch (MKL / oneDNN).
 *
 * Layout: every [B, k] block is row-major with its rows `k` floats apart, except where a row
 * stride is passed. H is the state width; the gate blocks are ordered (r, u, n) as in the
 * weights [W_r; W_u; W_n].
 *
 * Forward, per row b and unit j (x = input projection, p = W_h h + b_h, g = gate of the step;
 * the caller's GEMM leaves W_h h in the p block and the kernel adds b_h in place, because torch's
 * addmm spends more on broadcasting the bias than on the [B, H] x [H, 3H] product):
 *     r = sigmoid(x_r + p_r), u0 = sigmoid(x_u + p_u), n = tanh(x_n + r p_n),
 *     h' = h + g u0 (n - h)
 * Backward, with dh the gradient reaching h' (the carried one plus the step's own):
 *     du = dh (n - h)                 gate term  = du u0   (summed over j by the caller)
 *     d(x_u + p_u) = du g u0 (1 - u0)
 *     d(x_n + r p_n) = dh g u0 (1 - n^2) =: dn
 *     d(x_r + p_r) = dn p_n r (1 - r)     d p_n = dn r
 *     carried part of dh_prev = dh (1 - g u0)   (the caller adds [dp_r, dp_u, dp_n] W_h)
 */
#include <stdint.h>

#include "fastmath.h"

/* tanh(x) = 2 sigmoid(2x) - 1 */
static inline float tanh_from_sigmoid(float x) { return 2.0f * sigmoid(2.0f * x) - 1.0f; }

/* One row of ctrkit_gru_forward_f32. (A function of its own so that the compiler can vectorise the
 * unit loop: with `restrict` parameters it knows that the blocks do not overlap.) */
static void forward_row(int64_t hd, const float *restrict x, float *restrict p, const float *restrict bias,
                        float g, const float *restrict h, float *restrict out, float *restrict gt)
{
    for (int64_t j = 0; j < 3 * hd; ++j)
        p[j] += bias[j];
    for (int64_t j = 0; j < hd; ++j) {
        const float r = sigmoid(x[j] + p[j]);
        const float u0 = sigmoid(x[hd + j] + p[hd + j]);
        const float n = tanh_from_sigmoid(x[2 * hd + j] + r * p[2 * hd + j]);
        out[j] = h[j] + g * u0 * (n - h[j]);
        gt[j] = r;
        gt[hd + j] = u0;
        gt[2 * hd + j] = n;
    }
}

/*
 * xp [B, 3H] rows `xp_stride` apart; hp [B, 3H] = W_h h (b_h [3H] is added in place); gate [B]
 * `gate_stride` apart; h [B, H] (the previous state) -> h_new [B, H], gates [B, 3H] = (r, u0, n).
 */
void ctrkit_gru_forward_f32(int64_t batch, int64_t hd, const float *xp, int64_t xp_stride, float *hp,
                        const float *bias, const float *gate, int64_t gate_stride, const float *h, float *h_new,
                        float *gates)
{
    for (int64_t b = 0; b < batch; ++b)
        forward_row(hd, xp + b * xp_stride, hp + b * 3 * hd, bias, gate[b * gate_stride], h + b * hd,
                    h_new + b * hd, gates + b * 3 * hd);
}

/* One row of ctrkit_gru_backward_f32. */
static void backward_row(int64_t hd, const float *restrict dh_carried, const float *restrict grad_step,
                         const float *restrict gt, const float *restrict p, float g,
                         const float *restrict h_prev, float *restrict dp, float *restrict dx,
                         float *restrict terms, float *restrict keep)
{
    for (int64_t j = 0; j < hd; ++j) {
        const float dh = dh_carried[j] + grad_step[j];
        const float r = gt[j], u0 = gt[hd + j], n = gt[2 * hd + j], pn = p[2 * hd + j];
        const float u = g * u0;
        const float du = dh * (n - h_prev[j]);
        const float d_au = du * g * u0 * (1.0f - u0);
        const float d_an = dh * u * (1.0f - n * n);
        const float d_ar = d_an * pn * r * (1.0f - r);
        dp[j] = d_ar;
        dp[hd + j] = d_au;
        dp[2 * hd + j] = d_an * r;
        dx[j] = d_ar;
        dx[hd + j] = d_au;
        dx[2 * hd + j] = d_an;
        keep[j] = dh * (1.0f - u);
        terms[j] = du * u0;
    }
}

/*
 * dh_carried [B, H] and grad_step [B, H] (the gradient reaching h' from later steps and from the
 * step's own output); gates, hp, gate and h_prev as saved by the forward (h_prev a block of zeros
 * at the first step) -> d_hp [B, 3H] (gradient of W_h h + b_h), d_xp [B, 3H] (of the input
 * projection), gate_terms [B, H] (du u0) and dh_keep [B, H] (the part of dh_prev that does not
 * pass through W_h).
 */
void ctrkit_gru_backward_f32(int64_t batch, int64_t hd, const float *dh_carried, const float *grad_step,
                         const float *gates, const float *hp, const float *gate, int64_t gate_stride,
                         const float *h_prev, float *d_hp, float *d_xp, float *gate_terms, float *dh_keep)
{
    for (int64_t b = 0; b < batch; ++b)
        backward_row(hd, dh_carried + b * hd, grad_step + b * hd, gates + b * 3 * hd, hp + b * 3 * hd,
                     gate[b * gate_stride], h_prev + b * hd, d_hp + b * 3 * hd, d_xp + b * 3 * hd,
                     gate_terms + b * hd, dh_keep + b * hd);
}
