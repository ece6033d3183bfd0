/*
 * Vectorisable float32 exp and sigmoid, and float32/bfloat16 loads and stores, shared by the
 * kernels of ctrkit/native (static inline: each kernel file gets its own copy). No libm calls, so
 * that the compiler vectorises the loops that use them without -ffast-math (which would change
 * the floating-point mode of the whole process).
 */
#ifndef CTRKIT_FASTMATH_H
#define CTRKIT_FASTMATH_H

#include <stdint.h>
#include <string.h>

/* exp on [-87, 88] (inputs are clamped; beyond, sigmoid is 0 or 1 to float precision):
 * Cody-Waite reduction x = k ln2 + r and a degree-7 polynomial for e^r, |rel. error| < 2e-7.
 * Written with plain arithmetic so that the compiler vectorises the loops that call it. */
static inline float exp_clamped(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float k = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &p, sizeof bits);
    bits += (int32_t)k << 23;
    memcpy(&p, &bits, sizeof p);
    return p;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_clamped(-x)); }

/* float32 and bfloat16 storage (bfloat16 is the upper half of a float32) */
static inline float load_f32(const float *p, int64_t i) { return p[i]; }
static inline void store_f32(float *p, int64_t i, float v) { p[i] = v; }

static inline float load_bf16(const uint16_t *p, int64_t i)
{
    uint32_t bits = (uint32_t)p[i] << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* round to nearest even, NaN stays NaN */
static inline void store_bf16(uint16_t *p, int64_t i, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    p[i] = (uint16_t)((bits & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

#endif
