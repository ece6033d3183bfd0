/*
 * The first hidden layer of DIEN's auxiliary network on its positive and negative pairs, for
 * ctrkit/pytorch/layers/_fused.py (class _PairedSigmoid):
 *
 *     out[0, b, t] = sigmoid(h[b, t] + e[b, t + 1])             (the next behaviour)
 *     out[1, b, t] = sigmoid(h[b, t] + e[(b + 1) mod B, t + 1])  (the next row's: the negative)
 *
 * with h [B, T, U] (the state part of the layer, bias included) and e [B, T + 1, U] (the item
 * part). Backward, with d = g s (1 - s) of each half:
 *
 *     dh[b, t] = d[0, b, t] + d[1, b, t],   de[b, t + 1] = d[0, b, t] + d[1, (b - 1) mod B, t],   de[b, 0] = 0
 *
 * Why C: with torch this is two adds, a stack, the sigmoid and, backward, its gradient, the sum
 * and the roll back: eight passes over [2, B, T, U] blocks (~10M elements for DIEN's 1024 x 49 x
 * 100), each converting bf16 to float and back. Here it is one pass each way. Storage float32 or
 * bfloat16, arithmetic float32.
 */
#include <stdint.h>

#include "fastmath.h"

#define DEFINE_PAIRED_SIGMOID(SUFFIX, T, LOAD, STORE)                                                \
    static void forward_row_##SUFFIX(int64_t u, const T *restrict h, const T *restrict e_pos,           \
                                     const T *restrict e_neg, T *restrict pos, T *restrict neg)        \
    {                                                                                                 \
        for (int64_t k = 0; k < u; ++k) {                                                             \
            const float hv = LOAD(h, k);                                                              \
            STORE(pos, k, sigmoid(hv + LOAD(e_pos, k)));                                              \
            STORE(neg, k, sigmoid(hv + LOAD(e_neg, k)));                                              \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    void ctrkit_paired_sigmoid_forward_##SUFFIX(int64_t batch, int64_t steps, int64_t u, const T *h,   \
                                                 const T *e, T *out)                                  \
    {                                                                                                 \
        const int64_t half = batch * steps * u;                                                       \
        for (int64_t b = 0; b < batch; ++b) {                                                         \
            const int64_t other = (b + 1) % batch;                                                    \
            for (int64_t t = 0; t < steps; ++t) {                                                     \
                const int64_t row = (b * steps + t) * u;                                              \
                forward_row_##SUFFIX(u, h + row, e + (b * (steps + 1) + t + 1) * u,                   \
                                     e + (other * (steps + 1) + t + 1) * u, out + row, out + half + row); \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void backward_row_##SUFFIX(int64_t u, const T *restrict g_pos, const T *restrict s_pos,      \
                                      const T *restrict g_neg, const T *restrict s_neg,               \
                                      const T *restrict g_prev_neg, const T *restrict s_prev_neg,     \
                                      T *restrict dh, T *restrict de)                                 \
    {                                                                                                 \
        for (int64_t k = 0; k < u; ++k) {                                                             \
            const float sp = LOAD(s_pos, k), sn = LOAD(s_neg, k), sq = LOAD(s_prev_neg, k);           \
            const float dp = LOAD(g_pos, k) * sp * (1.0f - sp);                                       \
            const float dn = LOAD(g_neg, k) * sn * (1.0f - sn);                                       \
            const float dq = LOAD(g_prev_neg, k) * sq * (1.0f - sq);                                  \
            STORE(dh, k, dp + dn);                                                                    \
            STORE(de, k, dp + dq);                                                                    \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* g, s [2, B, T, U] (the output's gradient and the output) -> dh [B, T, U], de [B, T + 1, U] */  \
    void ctrkit_paired_sigmoid_backward_##SUFFIX(int64_t batch, int64_t steps, int64_t u, const T *g,  \
                                                  const T *s, T *dh, T *de)                           \
    {                                                                                                 \
        const int64_t half = batch * steps * u;                                                       \
        for (int64_t b = 0; b < batch; ++b) {                                                         \
            const int64_t prev = (b + batch - 1) % batch;                                             \
            for (int64_t k = 0; k < u; ++k)                                                           \
                STORE(de + b * (steps + 1) * u, k, 0.0f);                                             \
            for (int64_t t = 0; t < steps; ++t) {                                                     \
                const int64_t row = (b * steps + t) * u, prev_row = (prev * steps + t) * u;           \
                backward_row_##SUFFIX(u, g + row, s + row, g + half + row, s + half + row,            \
                                      g + half + prev_row, s + half + prev_row, dh + row,             \
                                      de + (b * (steps + 1) + t + 1) * u);                            \
            }                                                                                         \
        }                                                                                             \
    }

DEFINE_PAIRED_SIGMOID(f32, float, load_f32, store_f32)
DEFINE_PAIRED_SIGMOID(bf16, uint16_t, load_bf16, store_bf16)
