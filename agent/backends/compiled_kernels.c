/* Decode's kernels for the CPU engine, built once per machine by
 * agent/backends/compiled_kernels.py with -march=native; where AVX2 is missing, plain loops.
 *
 * int8_gemv: y = (x @ W.T) * scale for a few rows of x. W is int8 [out, in] with one bf16 scale
 * per output row; x and y are bf16. Each weight is widened to float32 and multiplied exactly,
 * sums are float32 (the arithmetic of aten._weight_int8pack_mm), and the output is rounded to
 * bf16 to nearest even, as torch does.
 *
 * attend_one: one query position's attention over a bf16 KV cache, computed in float32 (keys
 * and values are bf16 to begin with, so this is the float32 cache's arithmetic on half the
 * bytes).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static inline uint16_t float_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

#ifdef __AVX2__
static inline __m256 widen8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

static inline __m256 widen_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* exp for x <= 0, about 1 ulp (Cephes' expf polynomial); below -87 it gives ~1e-38, which is
 * nothing next to a softmax's largest term of 1. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

static float dot(const int8_t *w, const float *x, int64_t in) {
    int64_t k = 0;
    float total = 0.0f;
#ifdef __AVX2__
    /* Four accumulators: one would wait on the latency of the previous multiply-add. */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 32 <= in; k += 32) {
        a0 = _mm256_fmadd_ps(widen8(w + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(widen8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(widen8(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(widen8(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    total = sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; k < in; k++) total += (float)w[k] * x[k];
    return total;
}

/* Returns 0, or -1 when the float32 copy of x could not be allocated. */
int int8_gemv(const int8_t *w, const uint16_t *scale, const uint16_t *x, uint16_t *y,
              int64_t rows, int64_t out, int64_t in, int threads) {
    float *xf = malloc(sizeof(float) * (size_t)(rows * in));
    if (xf == NULL) return -1;
    for (int64_t i = 0; i < rows * in; i++) xf[i] = bf16_to_float(x[i]);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < out; r++) {
        float s = bf16_to_float(scale[r]);
        for (int64_t b = 0; b < rows; b++) {
            y[b * out + r] = float_to_bf16(dot(w + r * in, xf + b * in, in) * s);
        }
    }
    free(xf);
    return 0;
}

static float dot_bf16(const uint16_t *k, const float *q, int64_t dim) {
    int64_t i = 0;
    float total = 0.0f;
#ifdef __AVX2__
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (; i + 16 <= dim; i += 16) {
        a0 = _mm256_fmadd_ps(widen_bf16(k + i), _mm256_loadu_ps(q + i), a0);
        a1 = _mm256_fmadd_ps(widen_bf16(k + i + 8), _mm256_loadu_ps(q + i + 8), a1);
    }
    total = sum8(_mm256_add_ps(a0, a1));
#endif
    for (; i < dim; i++) total += bf16_to_float(k[i]) * q[i];
    return total;
}

/* scores[0, length) = softmax(scores), in place. */
static void softmax(float *scores, int64_t length) {
    float top = scores[0], total = 0.0f;
    for (int64_t t = 1; t < length; t++) top = scores[t] > top ? scores[t] : top;
    int64_t t = 0;
#ifdef __AVX2__
    __m256 sums = _mm256_setzero_ps(), tops = _mm256_set1_ps(top);
    for (; t + 8 <= length; t += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), tops));
        _mm256_storeu_ps(scores + t, e);
        sums = _mm256_add_ps(sums, e);
    }
    total = sum8(sums);
#endif
    for (; t < length; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
    }
    float inverse = 1.0f / total;
    for (t = 0; t < length; t++) scores[t] *= inverse;
}

/* out[h * group + g] = softmax(q[h * group + g] . K[h]^T * scale) V[h], over positions
 * [0, length) of one layer's keys and values [kv_heads, capacity, dim] (bf16); q and out are
 * float32 [kv_heads * group, dim]. Each kv head's keys and values are read once for its group
 * of query heads. Returns 0, or -1 when the scores could not be allocated. */
int attend_one(const float *q, const uint16_t *keys, const uint16_t *values, float *out,
               int64_t kv_heads, int64_t group, int64_t capacity, int64_t length, int64_t dim,
               float scale, int threads) {
    float *scores = malloc(sizeof(float) * (size_t)(kv_heads * group * length));
    if (scores == NULL) return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t h = 0; h < kv_heads; h++) {
        const uint16_t *k = keys + h * capacity * dim, *v = values + h * capacity * dim;
        const float *qh = q + h * group * dim;
        float *s = scores + h * group * length, *oh = out + h * group * dim;
        for (int64_t t = 0; t < length; t++) {
            for (int64_t g = 0; g < group; g++) {
                s[g * length + t] = dot_bf16(k + t * dim, qh + g * dim, dim) * scale;
            }
        }
        for (int64_t g = 0; g < group; g++) softmax(s + g * length, length);
        memset(oh, 0, sizeof(float) * (size_t)(group * dim));
        for (int64_t t = 0; t < length; t++) {
            const uint16_t *vt = v + t * dim;
            for (int64_t g = 0; g < group; g++) {
                float weight = s[g * length + t], *og = oh + g * dim;
                int64_t i = 0;
#ifdef __AVX2__
                __m256 w8 = _mm256_set1_ps(weight);
                for (; i + 8 <= dim; i += 8) {
                    __m256 sum = _mm256_fmadd_ps(widen_bf16(vt + i), w8, _mm256_loadu_ps(og + i));
                    _mm256_storeu_ps(og + i, sum);
                }
#endif
                for (; i < dim; i++) og[i] += weight * bf16_to_float(vt[i]);
            }
        }
    }
    free(scores);
    return 0;
}
