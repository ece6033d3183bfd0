/*
 * The element-wise part of the backward of FiBiNET's bilinear pair products by row field, for
 * ctrkit/pytorch/layers/_fused.py (class _PairBilinear), one matrix per pair (field_interaction).
 *
 * The pairs (i, i+1) .. (i, F-1) of row field i have outputs out_j = left_j * x_j with left_j =
 * x_i W_j^T (the caller's GEMM). Given their output gradient g [B, n, D], for every row b:
 *
 *     d_x[b, i+1 .. F-1] += g * left      (the right factors' gradient, accumulated in float32)
 *     d_left[b]           = g * x[b, i+1 .. F-1]
 *
 * Why C: with torch these are three passes over the [B, n, D] block (two products and the
 * accumulation, each converting bf16 to float and back); here one, on one thread. (Splitting the
 * rows over two POSIX threads was measured slower inside a training step at 2 threads: torch's
 * OpenMP workers are still spinning on the cores after the GEMM that precedes every call.)
 * Blocks are rows of `width` = n D contiguous values, `*_stride` values apart.
 */
#include <stdint.h>

#include "fastmath.h"

#define DEFINE_PAIR_PRODUCTS(SUFFIX, T, LOAD, STORE)                                                 \
    static void row_##SUFFIX(int64_t width, const T *restrict g, const T *restrict left,                \
                             const T *restrict x_right, float *restrict d_x_right, T *restrict d_left) \
    {                                                                                                 \
        for (int64_t k = 0; k < width; ++k) {                                                         \
            const float gv = LOAD(g, k);                                                              \
            d_x_right[k] += gv * LOAD(left, k);                                                       \
            STORE(d_left, k, gv * LOAD(x_right, k));                                                  \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    void ctrkit_pair_products_backward_##SUFFIX(int64_t batch, int64_t width, const T *g, int64_t g_stride,  \
                                                const T *left, const T *x_right, int64_t x_stride,    \
                                                float *d_x_right, int64_t d_x_stride, T *d_left)      \
    {                                                                                                 \
        for (int64_t b = 0; b < batch; ++b)                                                           \
            row_##SUFFIX(width, g + b * g_stride, left + b * width, x_right + b * x_stride,           \
                         d_x_right + b * d_x_stride, d_left + b * width);                             \
    }

DEFINE_PAIR_PRODUCTS(f32, float, load_f32, store_f32)
DEFINE_PAIR_PRODUCTS(bf16, uint16_t, load_bf16, store_bf16)
