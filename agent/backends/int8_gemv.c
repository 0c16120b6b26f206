/* Decode's matmul for the CPU engine: y = (x @ W.T) * scale for a few rows of x.
 *
 * W is int8 [out, in] with one bf16 scale per output row; x and y are bf16. Each weight is
 * widened to float32 and multiplied exactly, sums are float32 (the arithmetic of
 * aten._weight_int8pack_mm), and the output is rounded to bf16 to nearest even, as torch does.
 * Built once per machine by agent/backends/compiled_gemv.py with -march=native; where AVX2 is
 * missing the plain loop below is left to the compiler to vectorize.
 */
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
