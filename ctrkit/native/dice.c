/*
 * Dice (DIN's activation) in training, for ctrkit/pytorch/layers/_fused.py (class _DiceTrain):
 * batch statistics, output and the BatchNorm-style backward over an [N, C] block, in float32
 * arithmetic, with x, y, the incoming gradient and dx either float32 or bfloat16.
 *
 *     z = (x - m) r,  r = (v + eps)^-1/2,  p = sigmoid(z),  y = x (a + (1 - a) p)
 *     dz = (1 - a) g x p (1 - p),  S1 = sum_n dz,  S2 = sum_n dz z
 *     dx = g (a + (1 - a) p) + r dz - w (r / count) (S1 + z S2),   da = sum_n g x (1 - p)
 *
 * with m, v the mean and biased variance over the rows of weight w (1 = used for the statistics,
 * 0 = padding; no weights: every row). Why C: with torch operations each formula is a separate
 * pass over the block, about ten per direction even in cache-sized chunks; here the forward reads
 * x three times (mean, variance, output) and the backward reads x, g and p twice (sums, dx).
 * Sums over rows are accumulated in float over blocks of rows and in double across blocks.
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"

#define ROW_BLOCK 256

static void flush_block(int64_t c, float *restrict block, double *restrict total)
{
    for (int64_t k = 0; k < c; ++k) {
        total[k] += block[k];
        block[k] = 0.0f;
    }
}

/* The kernels for one storage type T of x, y, g and dx. */
#define DEFINE_DICE(SUFFIX, T, LOAD, STORE)                                                          \
    static void add_row_##SUFFIX(int64_t c, const T *restrict x, float w, const float *restrict centre,  \
                                 int squared, float *restrict acc)                                    \
    {                                                                                                 \
        for (int64_t k = 0; k < c; ++k) {                                                             \
            const float d = LOAD(x, k) - centre[k];                                                   \
            acc[k] += w * (squared ? d * d : d);                                                      \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void output_row_##SUFFIX(int64_t c, const T *restrict x, const float *restrict mean,          \
                                    const float *restrict rstd, const float *restrict a,                 \
                                    float *restrict p, T *restrict y)                                 \
    {                                                                                                 \
        for (int64_t k = 0; k < c; ++k) {                                                             \
            const float xv = LOAD(x, k);                                                              \
            const float pv = sigmoid((xv - mean[k]) * rstd[k]);                                       \
            p[k] = pv;                                                                                \
            STORE(y, k, xv * (a[k] + (1.0f - a[k]) * pv));                                            \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* x [N, C]; weight [N] or NULL, count = their sum (at least 1); alpha [C] -> mean, var, rstd [C]; \
       p [N, C] (float); y [N, C] */                                                                  \
    int ctrkit_dice_forward_##SUFFIX(int64_t n, int64_t c, const T *x, const float *weight, float count, \
                                     const float *alpha, float eps, float *mean, float *var,          \
                                     float *rstd, float *p, T *y)                                     \
    {                                                                                                 \
        double *total = calloc((size_t)c, sizeof *total);                                             \
        float *block = calloc((size_t)c, sizeof *block), *zero = calloc((size_t)c, sizeof *zero);     \
        if (!total || !block || !zero) {                                                              \
            free(total); free(block); free(zero);                                                     \
            return 1;                                                                                 \
        }                                                                                             \
        for (int pass = 0; pass < 2; ++pass) { /* 0: mean, 1: variance around it */                   \
            const float *centre = pass ? mean : zero;                                                 \
            float *out = pass ? var : mean;                                                           \
            for (int64_t i = 0; i < n; ++i) {                                                         \
                add_row_##SUFFIX(c, x + i * c, weight ? weight[i] : 1.0f, centre, pass, block);       \
                if ((i + 1) % ROW_BLOCK == 0 || i + 1 == n)                                           \
                    flush_block(c, block, total);                                                     \
            }                                                                                         \
            for (int64_t k = 0; k < c; ++k) {                                                         \
                out[k] = (float)(total[k] / count);                                                   \
                total[k] = 0.0;                                                                       \
            }                                                                                         \
        }                                                                                             \
        for (int64_t k = 0; k < c; ++k)                                                               \
            rstd[k] = 1.0f / sqrtf(var[k] + eps);                                                     \
        for (int64_t i = 0; i < n; ++i)                                                               \
            output_row_##SUFFIX(c, x + i * c, mean, rstd, alpha, p + i * c, y + i * c);               \
        free(total); free(block); free(zero);                                                         \
        return 0;                                                                                     \
    }                                                                                                 \
                                                                                                      \
    static void sums_row_##SUFFIX(int64_t c, const T *restrict x, const T *restrict g,                   \
                                  const float *restrict p, const float *restrict mean,                \
                                  const float *restrict rstd, const float *restrict a,                \
                                  float *restrict da, float *restrict s1, float *restrict s2)         \
    {                                                                                                 \
        for (int64_t k = 0; k < c; ++k) {                                                             \
            const float xv = LOAD(x, k), gx = LOAD(g, k) * xv, pv = p[k];                             \
            const float dz = (1.0f - a[k]) * gx * pv * (1.0f - pv);                                   \
            da[k] += gx * (1.0f - pv);                                                                \
            s1[k] += dz;                                                                              \
            s2[k] += dz * (xv - mean[k]) * rstd[k];                                                   \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void dx_row_##SUFFIX(int64_t c, const T *restrict x, const T *restrict g,                     \
                                const float *restrict p, const float *restrict mean,                  \
                                const float *restrict rstd, const float *restrict a, float scale,     \
                                const float *restrict s1, const float *restrict s2, T *restrict dx)   \
    {                                                                                                 \
        for (int64_t k = 0; k < c; ++k) {                                                             \
            const float xv = LOAD(x, k), gv = LOAD(g, k), pv = p[k];                                  \
            const float z = (xv - mean[k]) * rstd[k];                                                 \
            const float dz = (1.0f - a[k]) * gv * xv * pv * (1.0f - pv);                              \
            STORE(dx, k, gv * (a[k] + (1.0f - a[k]) * pv) + rstd[k] * dz                              \
                             - scale * rstd[k] * (s1[k] + z * s2[k]));                                \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* x, g [N, C]; p [N, C] (float) saved by the forward; weight [N] or NULL; alpha, mean, rstd [C] \
       -> dx [N, C], grad_alpha [C] */                                                                \
    int ctrkit_dice_backward_##SUFFIX(int64_t n, int64_t c, const T *x, const T *g, const float *p,  \
                                      const float *weight, const float *alpha, const float *mean,    \
                                      const float *rstd, float count, T *dx, float *grad_alpha)      \
    {                                                                                                 \
        double *total = calloc((size_t)(3 * c), sizeof *total);                                       \
        float *block = calloc((size_t)(3 * c), sizeof *block), *s = malloc((size_t)(2 * c) * sizeof *s); \
        if (!total || !block || !s) {                                                                 \
            free(total); free(block); free(s);                                                        \
            return 1;                                                                                 \
        }                                                                                             \
        for (int64_t i = 0; i < n; ++i) {                                                             \
            sums_row_##SUFFIX(c, x + i * c, g + i * c, p + i * c, mean, rstd, alpha, block,          \
                              block + c, block + 2 * c);                                              \
            if ((i + 1) % ROW_BLOCK == 0 || i + 1 == n)                                               \
                flush_block(3 * c, block, total);                                                     \
        }                                                                                             \
        for (int64_t k = 0; k < c; ++k) {                                                             \
            grad_alpha[k] = (float)total[k];                                                          \
            s[k] = (float)total[c + k];                                                               \
            s[c + k] = (float)total[2 * c + k];                                                       \
        }                                                                                             \
        for (int64_t i = 0; i < n; ++i)                                                               \
            dx_row_##SUFFIX(c, x + i * c, g + i * c, p + i * c, mean, rstd, alpha,                    \
                            (weight ? weight[i] : 1.0f) / count, s, s + c, dx + i * c);               \
        free(total); free(block); free(s);                                                            \
        return 0;                                                                                     \
    }

DEFINE_DICE(f32, float, load_f32, store_f32)
DEFINE_DICE(bf16, uint16_t, load_bf16, store_bf16)
