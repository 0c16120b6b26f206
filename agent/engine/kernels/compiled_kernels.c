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
 *
 * decode_step: a few positions through every decoder layer, in one call: a block of positions
 * of each of a few sequences (one decoded token each of concurrent requests, or a block of
 * drafted tokens to verify), each weight read once for all of them. The same operations as the
 * engine's torch path (agent/engine/model.py), rounded to bf16 where it rounds, without ~65
 * torch operations a layer of per-call overhead.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif


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

/* exp, about 1 ulp (Cephes' expf polynomial), for x in [-87, 88] and clamped to it: below, it
 * gives ~1e-38, which is nothing next to a softmax's largest term of 1; above, ~1.7e38 where
 * expf gives infinity, so a SiLU of x < -88 is ~-5e-37 where it is -0. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
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

/* float_to_bf16 of 8 floats (rounded to nearest even), as floats again. */
static inline __m256 round_bf16(__m256 v) {
    __m256i bits = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    bits = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
    return _mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* 8 floats holding bf16 values stored as bf16. */
static inline void store_bf16(uint16_t *p, __m256 v) {
    __m256i halves = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(halves),
                                      _mm256_extracti128_si256(halves, 1));
    _mm_storeu_si128((__m128i *)p, packed);
}
#endif

/* The dot products of one int8 weight row with `count` (1 to 4) rows of x, `in` apart, into
 * out[0, count): each weight is widened once for all of them (a block of drafted tokens costs
 * little more than one), and each row's sum is added up in the same order whatever `count` is
 * (four accumulators over 32-weight steps, then the tail), so a row's result is bit for bit the
 * same alone or in a block. */
static inline __attribute__((always_inline)) void dot_rows(const int8_t *w, const float *x,
                                                           int64_t in, const int count,
                                                           float *out) {
    int64_t k = 0;
    float totals[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#ifdef __AVX2__
    /* Four accumulators a row: one would wait on the latency of the previous multiply-add. */
    __m256 a[4][4];
    for (int b = 0; b < count; b++) {
        for (int j = 0; j < 4; j++) a[b][j] = _mm256_setzero_ps();
    }
    for (; k + 32 <= in; k += 32) {
        __m256 w0 = widen8(w + k), w1 = widen8(w + k + 8);
        __m256 w2 = widen8(w + k + 16), w3 = widen8(w + k + 24);
        for (int b = 0; b < count; b++) {
            const float *xb = x + b * in + k;
            a[b][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), a[b][0]);
            a[b][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), a[b][1]);
            a[b][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), a[b][2]);
            a[b][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), a[b][3]);
        }
    }
    for (int b = 0; b < count; b++) {
        totals[b] = sum8(_mm256_add_ps(_mm256_add_ps(a[b][0], a[b][1]),
                                       _mm256_add_ps(a[b][2], a[b][3])));
    }
#endif
    for (int b = 0; b < count; b++) {
        float total = totals[b];
        for (int64_t i = k; i < in; i++) total += (float)w[i] * x[b * in + i];
        out[b] = total;
    }
}

static inline void gemv_row(const int8_t *w, const uint16_t *scale, const float *xf,
                            uint16_t *y, int64_t r, int64_t rows, int64_t out, int64_t in) {
    float s = bf16_to_float(scale[r]), sums[4];
    for (int64_t b = 0; b < rows; b += 4) {
        const int64_t count = rows - b < 4 ? rows - b : 4;
        const int8_t *wr = w + r * in;
        const float *xb = xf + b * in;
        /* Each count its own copy, so the compiler unrolls the rows and keeps them in registers. */
        switch (count) {
            case 1: dot_rows(wr, xb, in, 1, sums); break;
            case 2: dot_rows(wr, xb, in, 2, sums); break;
            case 3: dot_rows(wr, xb, in, 3, sums); break;
            default: dot_rows(wr, xb, in, 4, sums); break;
        }
        for (int64_t i = 0; i < count; i++) y[(b + i) * out + r] = float_to_bf16(sums[i] * s);
    }
}

/* Returns 0, or -1 when the float32 copy of x could not be allocated. */
int int8_gemv(const int8_t *w, const uint16_t *scale, const uint16_t *x, uint16_t *y,
              int64_t rows, int64_t out, int64_t in, int threads) {
    float *xf = malloc(sizeof(float) * (size_t)(rows * in));
    if (xf == NULL) return -1;
    for (int64_t i = 0; i < rows * in; i++) xf[i] = bf16_to_float(x[i]);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < out; r++) gemv_row(w, scale, xf, y, r, rows, out, in);
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

/* One kv head's share of attention for `rows` consecutive positions: row b's `group` query
 * heads, at q + b * stride ([group, dim]), over positions [0, length + b) of k and v
 * [capacity, dim], into out + b * stride; s holds rows * group * (length + rows - 1) scores.
 * Each key and value is read once for every row (a verified block of drafted tokens reads the
 * cache once), and each query's arithmetic is what it is alone. */
static void attend_head(const float *q, const uint16_t *k, const uint16_t *v, float *out,
                        float *s, int64_t rows, int64_t group, int64_t length, int64_t stride,
                        int64_t dim, float scale) {
    const int64_t longest = length + rows - 1;
    for (int64_t t = 0; t < longest; t++) {
        for (int64_t b = t < length ? 0 : t - length + 1; b < rows; b++) {
            for (int64_t g = 0; g < group; g++) {
                s[(b * group + g) * longest + t] =
                    dot_bf16(k + t * dim, q + b * stride + g * dim, dim) * scale;
            }
        }
    }
    for (int64_t b = 0; b < rows; b++) {
        for (int64_t g = 0; g < group; g++) softmax(s + (b * group + g) * longest, length + b);
        memset(out + b * stride, 0, sizeof(float) * (size_t)(group * dim));
    }
    for (int64_t t = 0; t < longest; t++) {
        const uint16_t *vt = v + t * dim;
        for (int64_t b = t < length ? 0 : t - length + 1; b < rows; b++) {
            for (int64_t g = 0; g < group; g++) {
                float weight = s[(b * group + g) * longest + t], *og = out + b * stride + g * dim;
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
        attend_head(q + h * group * dim, keys + h * capacity * dim, values + h * capacity * dim,
                    out + h * group * dim, scores + h * group * length, 1, group, length, 0, dim,
                    scale);
    }
    free(scores);
    return 0;
}

/* ---- decode_step ---- */

/* int8_gemm.c's int8 x int8 matmul (built into the same library), for a decode step whose
 * matmuls take it: activations quantized per block of 256 inputs, exact integer sums. */
size_t int8_gemm_scratch(int64_t rows, int64_t in, int path);
void int8_gemm_rows(const int8_t *w, const uint16_t *scale, const float *x, uint16_t *y,
                    int64_t rows, int64_t out, int64_t in, int path, void *scratch);

/* One decoder layer's weights as the engine holds them (all contiguous): int8 matmuls with one
 * bf16 scale per output row, q/k/v and gate/up fused, bf16 norms; qk_norm is q_norm repeated
 * for every query head, then k_norm for every kv head. */
typedef struct {
    const uint16_t *input_norm, *qk_norm, *post_norm;
    const int8_t *qkv, *o, *gate_up, *down;
    const uint16_t *qkv_scale, *o_scale, *gate_up_scale, *down_scale;
} DecodeLayer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, dim, intermediate;
    float eps;
} DecodeShape;

static inline uint16_t bf16_mul(uint16_t a, uint16_t b) {
    return float_to_bf16(bf16_to_float(a) * bf16_to_float(b));
}

static inline uint16_t bf16_add(uint16_t a, uint16_t b) {
    return float_to_bf16(bf16_to_float(a) + bf16_to_float(b));
}

/* Qwen3RMSNorm of each of `rows` vectors of `width`: normed in float32, rounded to bf16, scaled
 * by the bf16 weight (row r's weight at weight + r * weight_stride). Each vector's sum of
 * squares in 8 lanes, then the tail. */
static void rms_norm_rows(const uint16_t *x, const uint16_t *weight, int64_t weight_stride,
                          uint16_t *out, int64_t rows, int64_t width, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * width, *wr = weight + r * weight_stride;
        uint16_t *outr = out + r * width;
        float squares = 0.0f;
        int64_t i = 0;
#ifdef __AVX2__
        __m256 sums = _mm256_setzero_ps();
        for (; i + 8 <= width; i += 8) {
            __m256 value = widen_bf16(xr + i);
            sums = _mm256_fmadd_ps(value, value, sums);
        }
        squares = sum8(sums);
#endif
        for (int64_t t = i; t < width; t++) squares += bf16_to_float(xr[t]) * bf16_to_float(xr[t]);
        float inverse = 1.0f / sqrtf(squares / (float)width + eps);
        i = 0;
#ifdef __AVX2__
        __m256 inverse8 = _mm256_set1_ps(inverse);
        for (; i + 8 <= width; i += 8) {
            __m256 normed = round_bf16(_mm256_mul_ps(widen_bf16(xr + i), inverse8));
            store_bf16(outr + i, round_bf16(_mm256_mul_ps(widen_bf16(wr + i), normed)));
        }
#endif
        for (; i < width; i++) {
            outr[i] = bf16_mul(wr[i], float_to_bf16(bf16_to_float(xr[i]) * inverse));
        }
    }
}

/* x * cos + rotate_half(x) * sin for each head of x [heads, dim], in place, in bf16 steps:
 * rotate_half(x) is (-x2, x1) of x's halves (x1, x2). */
static void rotate_heads(uint16_t *x, const uint16_t *cos, const uint16_t *sin, int64_t heads,
                         int64_t dim) {
    int64_t half = dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        uint16_t *xh = x + h * dim;
        int64_t i = 0;
#ifdef __AVX2__
        for (; i + 8 <= half; i += 8) {
            __m256 x1 = widen_bf16(xh + i), x2 = widen_bf16(xh + half + i);
            __m256 first = _mm256_sub_ps(round_bf16(_mm256_mul_ps(x1, widen_bf16(cos + i))),
                                  round_bf16(_mm256_mul_ps(x2, widen_bf16(sin + i))));
            __m256 second = _mm256_add_ps(
                round_bf16(_mm256_mul_ps(x2, widen_bf16(cos + half + i))),
                round_bf16(_mm256_mul_ps(x1, widen_bf16(sin + half + i))));
            store_bf16(xh + i, round_bf16(first));
            store_bf16(xh + half + i, round_bf16(second));
        }
#endif
        for (; i < half; i++) {
            uint16_t x1 = xh[i], x2 = xh[half + i];
            xh[i] = bf16_add(bf16_mul(x1, cos[i]), bf16_mul(x2 ^ 0x8000, sin[i]));
            xh[half + i] = bf16_add(bf16_mul(x2, cos[half + i]), bf16_mul(x1, sin[half + i]));
        }
    }
}

static void widen(const uint16_t *x, float *out, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, widen_bf16(x + i));
#endif
    for (; i < n; i++) out[i] = bf16_to_float(x[i]);
}

/* x[i] = bf16(x[i] + y[i]): a residual added in bf16. */
static void add_into(uint16_t *x, const uint16_t *y, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) {
        store_bf16(x + i, round_bf16(_mm256_add_ps(widen_bf16(x + i), widen_bf16(y + i))));
    }
#endif
    for (; i < n; i++) x[i] = bf16_add(x[i], y[i]);
}

/* out[i] = float(bf16(x[i])): attention's output rounded to bf16, as the matmul's input. */
static void round_floats(const float *x, float *out, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, round_bf16(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++) out[i] = bf16_to_float(float_to_bf16(x[i]));
}

/* out[i] = bf16(bf16(silu(gate[i])) * up[i]) as float, for the down projection. */
static void silu_times(const uint16_t *gate, const uint16_t *up, float *out, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = widen_bf16(gate + i);
        __m256 silu = round_bf16(_mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign)))));
        _mm256_storeu_ps(out + i, round_bf16(_mm256_mul_ps(silu, widen_bf16(up + i))));
    }
#endif
    for (; i < n; i++) {
        float g = bf16_to_float(gate[i]);
        out[i] = bf16_to_float(bf16_mul(float_to_bf16(g / (1.0f + expf(-g))), up[i]));
    }
}

/* y [rows, out] = x [rows, in] @ w.T, split among the threads of the enclosing parallel region:
 * each weight row is read from memory once for all the rows of x. */
static void gemv_shared(const int8_t *w, const uint16_t *scale, const float *x, uint16_t *y,
                        int64_t rows, int64_t out, int64_t in) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < out; r++) gemv_row(w, scale, x, y, r, rows, out, in);
}

/* One sequence of a decode step: its bf16 caches [layers, kv_heads, capacity, dim], the first
 * position it decodes and how many consecutive ones (`rows`; row r attends over
 * [0, position + r]), and their rotations cos and sin [rows, dim]. */
typedef struct {
    uint16_t *keys, *values;
    const uint16_t *cos, *sin;
    int64_t capacity, position, rows;
} DecodeSequence;

/* Scratch memory of a decode step of `total` rows. */
typedef struct {
    float *xf, *attended, *scores;
    uint16_t *normed, *qkv, *gate_up, *projected;
    int64_t *first_row, *score_at, *sequence_of; /* per sequence, per sequence, per row */
    void *quantized;                             /* the int8 x int8 matmuls' activations */
} DecodeScratch;

static void free_scratch(DecodeScratch *s) {
    free(s->xf);
    free(s->attended);
    free(s->scores);
    free(s->normed);
    free(s->qkv);
    free(s->gate_up);
    free(s->projected);
    free(s->first_row);
    free(s->score_at);
    free(s->sequence_of);
    free(s->quantized);
}

/* 0, or -1 (nothing left allocated) when some of it could not be allocated. */
static int alloc_scratch(DecodeScratch *s, const DecodeShape *shape,
                         const DecodeSequence *sequences, int64_t count, int64_t total,
                         int path) {
    const int64_t width = shape->hidden, inter = shape->intermediate, dim = shape->dim;
    const int64_t q_width = shape->heads * dim, qkv_width = q_width + 2 * shape->kv_heads * dim;
    int64_t widest = width > q_width ? width : q_width, scores = 0;
    widest = widest > inter ? widest : inter;
    memset(s, 0, sizeof *s);
    s->first_row = malloc(sizeof(int64_t) * (size_t)count);
    s->score_at = malloc(sizeof(int64_t) * (size_t)count);
    s->sequence_of = malloc(sizeof(int64_t) * (size_t)total);
    if (s->first_row != NULL && s->score_at != NULL && s->sequence_of != NULL) {
        for (int64_t q = 0, row = 0; q < count; q++) {
            s->first_row[q] = row;
            s->score_at[q] = scores;
            scores += sequences[q].rows * shape->heads * (sequences[q].position + sequences[q].rows);
            for (int64_t r = 0; r < sequences[q].rows; r++) s->sequence_of[row++] = q;
        }
    }
    s->xf = malloc(sizeof(float) * (size_t)(total * widest));
    s->attended = malloc(sizeof(float) * (size_t)(total * q_width));
    s->scores = malloc(sizeof(float) * (size_t)scores);
    s->normed = malloc(sizeof(uint16_t) * (size_t)(total * width));
    s->qkv = malloc(sizeof(uint16_t) * (size_t)(total * qkv_width));
    s->gate_up = malloc(sizeof(uint16_t) * (size_t)(total * 2 * inter));
    s->projected = malloc(sizeof(uint16_t) * (size_t)(total * width));
    s->quantized = malloc(path ? int8_gemm_scratch(total, widest, path) : 1);
    if (s->first_row && s->score_at && s->sequence_of && s->xf && s->attended && s->scores &&
        s->normed && s->qkv && s->gate_up && s->projected && s->quantized) {
        return 0;
    }
    free_scratch(s);
    return -1;
}

/* One matmul of the step on its arithmetic: float32 (path 0) or int8 x int8 on `path`. */
static void step_matmul(const int8_t *w, const uint16_t *scale, const float *x, uint16_t *y,
                        int64_t rows, int64_t out, int64_t in, int path, void *quantized) {
    if (path) {
        int8_gemm_rows(w, scale, x, y, rows, out, in, path, quantized);
    } else {
        gemv_shared(w, scale, x, y, rows, out, in);
    }
}

/* hidden [rows of all sequences, shape->hidden] (bf16, in and out; each sequence's rows in
 * order, the sequences one after another) through every layer. Each row's keys and values are
 * written into its sequence's cache at its position, and it attends over its sequence's
 * positions up to its own. Each row's arithmetic is exactly what it is when that row runs
 * alone (one decoded token of one sequence): a block of drafted tokens verified at once gives
 * the logits decoding them one by one gives, and a sequence decoded beside others gives what
 * it gives alone. The matmuls are float32 (`path` 0) or int8 x int8 on `path` (int8_gemm.c's
 * PATH_AVX2 or PATH_VNNI, which the CPU must have), whose rows are each quantized alone: either
 * way a row's result does not depend on the others. Returns 0, or -1 when the scratch memory
 * could not be allocated. */
int decode_step(const DecodeLayer *layers, const DecodeShape *shape, uint16_t *hidden,
                const DecodeSequence *sequences, int64_t count, int path, int threads) {
    const int64_t dim = shape->dim, heads = shape->heads, kv_heads = shape->kv_heads;
    const int64_t width = shape->hidden, inter = shape->intermediate;
    const int64_t q_width = heads * dim, qkv_width = (heads + 2 * kv_heads) * dim;
    const int64_t group = heads / kv_heads;
    const float scale = (float)(1.0 / sqrt((double)dim));
    int64_t rows = 0;
    for (int64_t q = 0; q < count; q++) rows += sequences[q].rows;
    DecodeScratch s;
    if (alloc_scratch(&s, shape, sequences, count, rows, path) != 0) return -1;
    float *xf = s.xf;
#pragma omp parallel num_threads(threads)
    for (int64_t l = 0; l < shape->layers; l++) {
        const DecodeLayer *layer = layers + l;
        /* Between the matmuls, each row's work by one thread (the rows spread over them). */
#pragma omp for schedule(static)
        for (int64_t b = 0; b < rows; b++) {
            const int64_t at = b * width;
            rms_norm_rows(hidden + at, layer->input_norm, 0, s.normed + at, 1, width, shape->eps);
            widen(s.normed + at, xf + at, width);
        }
        step_matmul(layer->qkv, layer->qkv_scale, xf, s.qkv, rows, qkv_width, width, path,
                    s.quantized);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < rows; b++) {
            /* q and k heads side by side: normed per head, then rotated. */
            const DecodeSequence *sequence = sequences + s.sequence_of[b];
            const int64_t r = b - s.first_row[s.sequence_of[b]];
            const int64_t layer_cache = kv_heads * sequence->capacity * dim;
            uint16_t *qkv_b = s.qkv + b * qkv_width;
            rms_norm_rows(qkv_b, layer->qk_norm, dim, qkv_b, heads + kv_heads, dim, shape->eps);
            rotate_heads(qkv_b, sequence->cos + r * dim, sequence->sin + r * dim,
                         heads + kv_heads, dim);
            for (int64_t h = 0; h < kv_heads; h++) {
                const uint16_t *k = qkv_b + q_width + h * dim, *v = k + kv_heads * dim;
                int64_t at = l * layer_cache + (h * sequence->capacity + sequence->position + r) * dim;
                memcpy(sequence->keys + at, k, sizeof(uint16_t) * dim);
                memcpy(sequence->values + at, v, sizeof(uint16_t) * dim);
            }
            widen(qkv_b, xf + b * q_width, q_width);
        }
        /* Each sequence's kv heads over its own positions. */
#pragma omp for collapse(2) schedule(dynamic)
        for (int64_t q = 0; q < count; q++) {
            for (int64_t h = 0; h < kv_heads; h++) {
                const DecodeSequence *sequence = sequences + q;
                const int64_t n = sequence->rows, length = sequence->position + 1;
                const int64_t at = (l * kv_heads + h) * sequence->capacity * dim;
                const int64_t q_at = s.first_row[q] * q_width + h * group * dim;
                attend_head(xf + q_at, sequence->keys + at, sequence->values + at,
                            s.attended + q_at,
                            s.scores + s.score_at[q] + h * n * group * (length + n - 1), n,
                            group, length, q_width, dim, scale);
            }
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < rows; b++) {
            round_floats(s.attended + b * q_width, xf + b * q_width, q_width);
        }
        step_matmul(layer->o, layer->o_scale, xf, s.projected, rows, width, q_width, path,
                    s.quantized);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < rows; b++) {
            const int64_t at = b * width;
            add_into(hidden + at, s.projected + at, width);
            rms_norm_rows(hidden + at, layer->post_norm, 0, s.normed + at, 1, width, shape->eps);
            widen(s.normed + at, xf + at, width);
        }
        step_matmul(layer->gate_up, layer->gate_up_scale, xf, s.gate_up, rows, 2 * inter, width,
                    path, s.quantized);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < rows; b++) {
            const uint16_t *gu = s.gate_up + b * 2 * inter;
            silu_times(gu, gu + inter, xf + b * inter, inter);
        }
        step_matmul(layer->down, layer->down_scale, xf, s.projected, rows, width, inter, path,
                    s.quantized);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < rows; b++) add_into(hidden + b * width, s.projected + b * width, width);
    }
    free_scratch(&s);
    return 0;
}
