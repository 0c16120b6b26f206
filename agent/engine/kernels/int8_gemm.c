/* Prefill's int8 x int8 matmul, built with compiled_kernels.c into one library (compiled.py).
 *
 * int8_gemm: y = (x @ W.T) * scale for a block of rows. W is int8 [out, in] with one bf16 scale
 * per output row, x and y are bf16. Each row of x is quantized to int8 block by block, QBLOCK
 * inputs at a time, each block with its own float scale (round(x * 127 / max|x in the block|),
 * dynamic, as llama.cpp's Q8 activations are): an outlier spoils only its own block's steps,
 * not its row's. A block's products are summed exactly in int32, and the blocks' sums in float
 * in order: y = (sum over blocks of sum_b * x_scale_b) * w_scale, rounded to bf16 to nearest
 * even. Two instruction paths compute the same integers in the same order, so they give the
 * same bits:
 *   - AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, four at a time into int32;
 *     the weights are read as w + 128 (unsigned, a flipped top bit) and 128 * sum(x block)
 *     taken off each block's sum after.
 *   - AVX2: activations stored as int16, each weight sign-extended to int16, vpmaddwd.
 * Each function carries its own target attribute and runs only where the CPU has it
 * (int8_gemm_paths), so the file builds and runs on AVX2-only CPUs too.
 *
 * int8_peak: the multiply-add rate of a path's instruction (vpdpbusd or vpmaddwd) in
 * registers, for the benchmark's bound.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

enum { PATH_AVX2 = 1, PATH_VNNI = 2 };
enum { QBLOCK = 256 };       /* inputs per activation scale: four VNNI steps, sixteen AVX2 ones */
enum { TILE_OUT = 4 };       /* output channels per register tile, both paths */
enum { VNNI_ROWS = 6 };      /* rows per tile: 6 x 4 accumulators, 4 weights, 1 input, 1 flip */
enum { AVX2_ROWS = 2 };      /* 2 x 4 accumulators of 16 ymm registers */
enum { BLOCK_OUT = 16 };     /* output channels a thread takes at a time: their weights stay
                                in L1/L2 while every row of x passes over them */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define AVX2_TARGET __attribute__((target("avx2,fma")))


AVX2_TARGET static inline __m256 widen8_bf16(const uint16_t *x) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* A row of x as int8 values q (bytes for the VNNI path, int16 for the AVX2 path: what each
 * path's tiles read), a scale max|x| / 127 for each block of QBLOCK inputs, and for the VNNI
 * path 128 * sum(q) of each block (what its unsigned weights add); rounded to nearest even by
 * vcvtps2dq and, for a tail, by nearbyintf alike. */
AVX2_TARGET static inline __m256 load8(const void *x, int64_t k, int is_float) {
    return is_float ? _mm256_loadu_ps((const float *)x + k) : widen8_bf16((const uint16_t *)x + k);
}

AVX2_TARGET static inline float load1(const void *x, int64_t k, int is_float) {
    return is_float ? ((const float *)x)[k] : bf16_to_float(((const uint16_t *)x)[k]);
}

/* x is bf16, or float32 holding bf16 values (decode_step's), quantized alike. */
AVX2_TARGET static inline __attribute__((always_inline)) void quantize_row(
    const void *x, int64_t in, void *q, float *scales, int32_t *flips, int path, int is_float) {
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in, k = first;
        __m256 top8 = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
        for (; k + 8 <= end; k += 8) {
            top8 = _mm256_max_ps(top8, _mm256_andnot_ps(sign, load8(x, k, is_float)));
        }
        __m128 top4 = _mm_max_ps(_mm256_castps256_ps128(top8), _mm256_extractf128_ps(top8, 1));
        top4 = _mm_max_ps(top4, _mm_movehl_ps(top4, top4));
        float top = fmaxf(_mm_cvtss_f32(top4), _mm_cvtss_f32(_mm_shuffle_ps(top4, top4, 1)));
        for (; k < end; k++) top = fmaxf(top, fabsf(load1(x, k, is_float)));
        float inverse = top > 0.0f ? 127.0f / top : 0.0f;
        __m256 inverse8 = _mm256_set1_ps(inverse);
        __m256i total8 = _mm256_setzero_si256();
        for (k = first; k + 16 <= end; k += 16) {
            __m256i low = _mm256_cvtps_epi32(_mm256_mul_ps(load8(x, k, is_float), inverse8));
            __m256i high = _mm256_cvtps_epi32(_mm256_mul_ps(load8(x, k + 8, is_float), inverse8));
            total8 = _mm256_add_epi32(total8, _mm256_add_epi32(low, high));
            __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(low, high), 0xD8);
            if (path == PATH_VNNI) {
                __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(words),
                                                _mm256_extracti128_si256(words, 1));
                _mm_storeu_si128((__m128i *)((int8_t *)q + k), bytes);
            } else {
                _mm256_storeu_si256((__m256i *)((int16_t *)q + k), words);
            }
        }
        __m128i total4 = _mm_add_epi32(_mm256_castsi256_si128(total8),
                                       _mm256_extracti128_si256(total8, 1));
        total4 = _mm_hadd_epi32(total4, total4);
        int32_t total = _mm_cvtsi128_si32(_mm_hadd_epi32(total4, total4));
        for (; k < end; k++) {
            int value = (int)nearbyintf(load1(x, k, is_float) * inverse);
            total += value;
            if (path == PATH_VNNI) {
                ((int8_t *)q)[k] = (int8_t)value;
            } else {
                ((int16_t *)q)[k] = (int16_t)value;
            }
        }
        scales[b] = top / 127.0f;
        flips[b] = 128 * total;
    }
}

/* A block's int32 sums [rows, TILE_OUT] (less each row's `flips`, when given) times each
 * row's scale for the block, added to the float totals [rows, TILE_OUT]. */
AVX2_TARGET static inline void add_block(const int32_t *sums, const int32_t *flips,
                                         const float *scales, int64_t blocks, int rows,
                                         float *totals) {
    for (int r = 0; r < rows; r++) {
        __m128i sum4 = _mm_loadu_si128((const __m128i *)(sums + r * TILE_OUT));
        if (flips != NULL) sum4 = _mm_sub_epi32(sum4, _mm_set1_epi32(flips[r * blocks]));
        __m128 total = _mm_loadu_ps(totals + r * TILE_OUT);
        total = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4), _mm_set1_ps(scales[r * blocks]), total);
        _mm_storeu_ps(totals + r * TILE_OUT, total);
    }
}

/* y for `rows` rows from `row` and channels [from, first + TILE_OUT) of a tile that starts at
 * channel `first`: totals * w_scale, rounded to bf16 to nearest even. */
AVX2_TARGET static inline void store_tile(const float *totals, const uint16_t *scale,
                                          uint16_t *y, int64_t row, int rows, int64_t first,
                                          int64_t from, int64_t out) {
    if (from != first) { /* the shifted last tile: only its new channels */
        for (int r = 0; r < rows; r++) {
            for (int n = (int)(from - first); n < TILE_OUT; n++) {
                y[(row + r) * out + first + n] = float_to_bf16(
                    totals[r * TILE_OUT + n] * bf16_to_float(scale[first + n]));
            }
        }
        return;
    }
    __m128 w_scale = _mm_castsi128_ps(
        _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(scale + first))), 16));
    for (int r = 0; r < rows; r++) {
        __m128 value = _mm_mul_ps(_mm_loadu_ps(totals + r * TILE_OUT), w_scale);
        __m128i bits = _mm_castps_si128(value);
        __m128i odd = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
        bits = _mm_add_epi32(bits, _mm_add_epi32(_mm_set1_epi32(0x7FFF), odd));
        __m128i halves = _mm_packus_epi32(_mm_srli_epi32(bits, 16), _mm_setzero_si128());
        _mm_storel_epi64((__m128i *)(y + (row + r) * out + first), halves);
    }
}

/* acc + a . b by groups of four bytes (a unsigned, b signed): vpdpbusd. In asm because GCC 12
 * copies the accumulator of _mm512_dpbusd_epi32 to another register and back at every call,
 * which made the tiles' accumulators spill to memory. */
VNNI_TARGET static inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* [sum(a), sum(b), sum(c), sum(d)] of four vectors of 16 int32. */
VNNI_TARGET static inline __m128i sum4_512(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    __m512i all = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(all), _mm512_extracti64x4_epi64(all, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
}

/* The tiles below keep each accumulator in a variable of its own (an array of them stayed in
 * memory): row r's four are c<r>0..c<r>3, its steps guarded by `rows > r`, which is a
 * constant where the tile is inlined for one row count. */
#define VNNI_ROW_STEP(r)                                                  \
    if (rows > r) {                                                       \
        __m512i ak = _mm512_loadu_si512(a + r * stride + k);              \
        c##r##0 = dpbusd(c##r##0, w0, ak);                                \
        c##r##1 = dpbusd(c##r##1, w1, ak);                                \
        c##r##2 = dpbusd(c##r##2, w2, ak);                                \
        c##r##3 = dpbusd(c##r##3, w3, ak);                                \
    }
#define VNNI_STEP(mask)                                                                  \
    {                                                                                    \
        __m512i w0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + k), flip);          \
        __m512i w1 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + in + k), flip);     \
        __m512i w2 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + 2 * in + k), flip); \
        __m512i w3 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + 3 * in + k), flip); \
        VNNI_ROW_STEP(0) VNNI_ROW_STEP(1) VNNI_ROW_STEP(2)                               \
        VNNI_ROW_STEP(3) VNNI_ROW_STEP(4) VNNI_ROW_STEP(5)                               \
    }
#define VNNI_ROW_ZERO(r) c##r##0 = zero, c##r##1 = zero, c##r##2 = zero, c##r##3 = zero;
#define VNNI_ROW_SUM(r) \
    if (rows > r) _mm_storeu_si128((__m128i *)(sums + r * TILE_OUT), sum4_512(c##r##0, c##r##1, c##r##2, c##r##3));

/* totals [rows, TILE_OUT] = a [rows, in] (q, rows `stride` bytes apart, zero-padded to 64) .
 * w [TILE_OUT, in], block by block (add_block); the weights' tail is read under a mask, never
 * past their end (the masked bytes flip to 128, against zeros of a). */
VNNI_TARGET static inline __attribute__((always_inline)) void vnni_tile(
    const int8_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const int32_t *flips,
    const float *scales, int64_t blocks, float *totals) {
    const __m512i zero = _mm512_setzero_si512(), flip = _mm512_set1_epi8((char)0x80);
    __m512i c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23;
    __m512i c30, c31, c32, c33, c40, c41, c42, c43, c50, c51, c52, c53;
    int32_t sums[VNNI_ROWS * TILE_OUT];
    memset(totals, 0, sizeof(float) * VNNI_ROWS * TILE_OUT);
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in, k = first;
        VNNI_ROW_ZERO(0) VNNI_ROW_ZERO(1) VNNI_ROW_ZERO(2)
        VNNI_ROW_ZERO(3) VNNI_ROW_ZERO(4) VNNI_ROW_ZERO(5)
        for (; k + 64 <= end; k += 64) VNNI_STEP(~(__mmask64)0)
        if (k < end) VNNI_STEP(((__mmask64)1 << (end - k)) - 1)
        VNNI_ROW_SUM(0) VNNI_ROW_SUM(1) VNNI_ROW_SUM(2)
        VNNI_ROW_SUM(3) VNNI_ROW_SUM(4) VNNI_ROW_SUM(5)
        add_block(sums, flips + b, scales + b, blocks, rows, totals);
    }
}

/* One case of a switch on a tile function's row count, for rows = R. */
#define TILE_CASE(tile, R) \
    case R: tile(a, stride, w, in, R, flips, scales, blocks, totals); break;

VNNI_TARGET __attribute__((noinline)) static void vnni_rows(
    const int8_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const int32_t *flips,
    const float *scales, int64_t blocks, float *totals) {
    switch (rows) {
        TILE_CASE(vnni_tile, 1) TILE_CASE(vnni_tile, 2) TILE_CASE(vnni_tile, 3)
        TILE_CASE(vnni_tile, 4) TILE_CASE(vnni_tile, 5) TILE_CASE(vnni_tile, 6)
    }
}

/* acc + vpmaddwd(a, b), in asm for the reason dpbusd is: GCC 12 copied each sum to another
 * register and back at every step. */
AVX2_TARGET static inline __m256i madd_add(__m256i acc, __m256i a, __m256i b) {
    __m256i product;
    __asm__("vpmaddwd %[b], %[a], %[p]\n\tvpaddd %[p], %[acc], %[acc]"
            : [acc] "+x"(acc), [p] "=&x"(product)
            : [a] "x"(a), [b] "x"(b));
    return acc;
}

/* [sum(a), sum(b), sum(c), sum(d)] of four vectors of 8 int32. */
AVX2_TARGET static inline __m128i sum4_256(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
    __m256i all = _mm256_hadd_epi32(ab, cd);
    return _mm_add_epi32(_mm256_castsi256_si128(all), _mm256_extracti128_si256(all, 1));
}

#define AVX2_ROW_STEP(r)                                                            \
    if (rows > r) {                                                                 \
        __m256i ak = _mm256_loadu_si256((const __m256i *)(a + r * stride + k));     \
        c##r##0 = madd_add(c##r##0, ak, w0);                                        \
        c##r##1 = madd_add(c##r##1, ak, w1);                                        \
        c##r##2 = madd_add(c##r##2, ak, w2);                                        \
        c##r##3 = madd_add(c##r##3, ak, w3);                                        \
    }
#define AVX2_STEP(w0p, w1p, w2p, w3p)                                               \
    {                                                                               \
        __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w0p))); \
        __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w1p))); \
        __m256i w2 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w2p))); \
        __m256i w3 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w3p))); \
        AVX2_ROW_STEP(0) AVX2_ROW_STEP(1)                                           \
    }
#define AVX2_ROW_ZERO(r) c##r##0 = zero, c##r##1 = zero, c##r##2 = zero, c##r##3 = zero;
#define AVX2_ROW_SUM(r) \
    if (rows > r) _mm_storeu_si128((__m128i *)(sums + r * TILE_OUT), sum4_256(c##r##0, c##r##1, c##r##2, c##r##3));

/* totals [rows, TILE_OUT] = a [rows, in] (int16, `stride` apart, zero-padded to 16) . w, block
 * by block (add_block); the weights' tail is copied out, never read past their end. */
AVX2_TARGET static inline __attribute__((always_inline)) void avx2_tile(
    const int16_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const float *scales,
    int64_t blocks, float *totals) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i c00, c01, c02, c03, c10, c11, c12, c13;
    int32_t sums[AVX2_ROWS * TILE_OUT];
    memset(totals, 0, sizeof(float) * AVX2_ROWS * TILE_OUT);
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in, k = first;
        AVX2_ROW_ZERO(0) AVX2_ROW_ZERO(1)
        for (; k + 16 <= end; k += 16) AVX2_STEP(w + k, w + in + k, w + 2 * in + k, w + 3 * in + k)
        if (k < end) {
            int8_t tail[TILE_OUT][16] = {{0}};
            for (int n = 0; n < TILE_OUT; n++) memcpy(tail[n], w + n * in + k, (size_t)(end - k));
            AVX2_STEP(tail[0], tail[1], tail[2], tail[3])
        }
        AVX2_ROW_SUM(0) AVX2_ROW_SUM(1)
        add_block(sums, NULL, scales + b, blocks, rows, totals);
    }
}

AVX2_TARGET __attribute__((noinline)) static void avx2_rows(
    const int16_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const float *scales,
    int64_t blocks, float *totals) {
    if (rows == AVX2_ROWS) {
        avx2_tile(a, stride, w, in, AVX2_ROWS, scales, blocks, totals);
    } else {
        avx2_tile(a, stride, w, in, 1, scales, blocks, totals);
    }
}

int int8_gemm_paths(void) {
    __builtin_cpu_init();
    int paths = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) paths |= PATH_AVX2;
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni")) {
        paths |= PATH_VNNI;
    }
    return paths;
}

/* The quantized rows of x: values (`stride` apart), and per row and block a scale and a flip;
 * for the few-row tiles, the same per tile of 8 rows and block in 8 lanes (vnni_lanes,
 * avx2_lanes). */
typedef struct {
    void *q;
    float *scales, *lane_scales;
    int32_t *flips, *lane_flips;
    int64_t stride, blocks;
} QuantizedRows;

static inline int64_t quantized_stride(int64_t in, int path) {
    return path == PATH_VNNI ? (in + 63) / 64 * 64 : (in + 15) / 16 * 16;
}

static inline size_t quantized_element(int path) { return path == PATH_VNNI ? 1 : 2; }

/* `rows` rounded up to whole tiles of 8 (the lanes' rows). */
static inline int64_t lane_rows(int64_t rows) { return (rows + 7) / 8 * 8; }

/* Bytes of the quantized copy of `rows` rows of `in` inputs, and where its parts start:
 * values, scales, flips, then the lanes' scales and flips (8 each per tile of 8 rows and
 * block). */
static size_t quantized_layout(int64_t rows, int64_t in, int path, size_t *scales_at,
                               size_t *flips_at, size_t *lanes_at) {
    int64_t blocks = (in + QBLOCK - 1) / QBLOCK;
    size_t values = (size_t)(rows * quantized_stride(in, path)) * quantized_element(path);
    *scales_at = (values + 63) / 64 * 64;
    *flips_at = *scales_at + sizeof(float) * (size_t)(rows * blocks);
    *lanes_at = *flips_at + sizeof(int32_t) * (size_t)(rows * blocks);
    return *lanes_at + (sizeof(float) + sizeof(int32_t)) * (size_t)(lane_rows(rows) * blocks);
}

static QuantizedRows quantized_rows(void *memory, int64_t rows, int64_t in, int path) {
    size_t scales_at, flips_at, lanes_at;
    int64_t blocks = (in + QBLOCK - 1) / QBLOCK;
    quantized_layout(rows, in, path, &scales_at, &flips_at, &lanes_at);
    QuantizedRows quantized = {
        .q = memory,
        .scales = (float *)((char *)memory + scales_at),
        .flips = (int32_t *)((char *)memory + flips_at),
        .lane_scales = (float *)((char *)memory + lanes_at),
        .lane_flips = (int32_t *)((char *)memory + lanes_at +
                                  sizeof(float) * (size_t)(lane_rows(rows) * blocks)),
        .stride = quantized_stride(in, path),
        .blocks = blocks,
    };
    return quantized;
}

/* Row r's scale and flip for each block also in lane r % 8 of its tile's 8 for the block (tile
 * r / 8), for vnni_lanes and avx2_lanes; the last of `rows` rows zeroes the lanes after it. */
static void spread_to_lanes(const QuantizedRows *x, int64_t r, int64_t rows) {
    for (int64_t row = r; row < (r == rows - 1 ? lane_rows(rows) : r + 1); row++) {
        for (int64_t b = 0; b < x->blocks; b++) {
            int64_t at = (row / 8 * x->blocks + b) * 8 + row % 8;
            x->lane_scales[at] = row == r ? x->scales[r * x->blocks + b] : 0.0f;
            x->lane_flips[at] = row == r ? x->flips[r * x->blocks + b] : 0;
        }
    }
}

/* Row r of `rows` of x into `quantized`, its padding zeroed (the tiles read whole vectors), its
 * scales and flips in the lanes too. */
static void quantize_into(const QuantizedRows *quantized, const void *x, int64_t r,
                          int64_t rows, int64_t in, int path, int is_float) {
    size_t element = quantized_element(path);
    char *q = (char *)quantized->q + (size_t)(r * quantized->stride) * element;
    const void *row = is_float ? (const void *)((const float *)x + r * in)
                               : (const void *)((const uint16_t *)x + r * in);
    float *scales = quantized->scales + r * quantized->blocks;
    int32_t *flips = quantized->flips + r * quantized->blocks;
    if (is_float) {
        quantize_row(row, in, q, scales, flips, path, 1);
    } else {
        quantize_row(row, in, q, scales, flips, path, 0);
    }
    memset(q + in * element, 0, (size_t)(quantized->stride - in) * element);
    spread_to_lanes(quantized, r, rows);
}

/* One block of output channels [first, end) (at most BLOCK_OUT) for every row: tiles of
 * TILE_OUT channels, the last one shifted back to end at `end` (storing only what is not
 * stored yet); row tiles outermost, so a tile of x is read once for the whole block. */
static void gemm_block(const QuantizedRows *x, const int8_t *w, const uint16_t *scale,
                       uint16_t *y, int64_t rows, int64_t out, int64_t in, int64_t first,
                       int64_t end, int path) {
    float totals[VNNI_ROWS * TILE_OUT];
    int tile_rows = path == PATH_VNNI ? VNNI_ROWS : AVX2_ROWS;
    size_t element = quantized_element(path);
    for (int64_t row = 0; row < rows; row += tile_rows) {
        int count = rows - row < tile_rows ? (int)(rows - row) : tile_rows;
        const char *a = (const char *)x->q + row * x->stride * element;
        const float *scales = x->scales + row * x->blocks;
        for (int64_t from = first; from < end; from += TILE_OUT) {
            int64_t channel = from + TILE_OUT <= end ? from : end - TILE_OUT;
            const int8_t *wt = w + channel * in;
            if (path == PATH_VNNI) {
                vnni_rows((const int8_t *)a, x->stride, wt, in, count,
                          x->flips + row * x->blocks, scales, x->blocks, totals);
            } else {
                avx2_rows((const int16_t *)a, x->stride, wt, in, count, scales, x->blocks, totals);
            }
            store_tile(totals, scale, y, row, count, channel, from, out);
        }
    }
}

/* A weight row's sums with a few rows of x: the weight row read front to back, once, by one
 * stream (tiles of 4 weight rows read side by side, as gemm_block's, stream from memory at
 * half the rate here: 12 against 6 ms for the lm_head at one row). Each block's integer sums
 * are exact whatever the tile, and added in float in the same order as gemm_block's, so a row
 * gets the same bits either way. In tiles of FEW_TILE rows, the weight row read from memory
 * for the first and from L1 for the others: one or two rows with 2 (VNNI) or 4 (AVX2)
 * accumulators each, so that a row does not wait on one chain of multiply-adds (vnni_few,
 * avx2_few); 3 to 8 with their sums reduced together (vnni_lanes, avx2_lanes). */
enum { FEW_TILE = 8 };
/* Up to how many rows int8_gemm takes weight rows one by one (a verification of 8 drafts is 9
 * rows). A layer's four matmuls from memory here, against gemm_block's: on the VNNI path at
 * 9 / 12 / 16 rows 1.13 / 1.26 / 1.63 ms against 1.53 / 1.66 / 1.92, at 24 rows 2.58 against
 * 2.42; on the AVX2 path at 8 / 9 / 12 rows 1.29 / 1.71 / 2.25 against 2.27 / 2.05 / 2.44, at
 * 16 rows 3.27 against 3.00. */
enum { VNNI_FEW_ROWS = 16, AVX2_FEW_ROWS = 12 };

#define VNNI_FEW_STEP(r)                                                              \
    if (rows > r) {                                                                   \
        const int8_t *ar = a + r * stride + k;                                        \
        s##r##0 = dpbusd(s##r##0, w0, _mm512_loadu_si512(ar));                         \
        if (two) s##r##1 = dpbusd(s##r##1, w1, _mm512_loadu_si512(ar + 64));           \
    }
/* The weights [k, k + 128) of a row, up to `end` (the rest read as zeros, never past it),
 * as unsigned bytes w + 128 in w0 and w1; whether w1 holds any. */
VNNI_TARGET static inline int flipped_weights(const int8_t *w, int64_t k, int64_t end,
                                              __m512i *w0, __m512i *w1) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __mmask64 m0 = end - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (end - k)) - 1);
    int two = end - k > 64;
    __mmask64 m1 = !two ? 0
                 : end - k >= 128 ? ~(__mmask64)0
                                  : (((__mmask64)1 << (end - k - 64)) - 1);
    *w0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m0, w + k), flip);
    *w1 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m1, w + k + 64), flip);
    return two;
}

/* One or two rows of x with one weight row (three and more: vnni_lanes). */
VNNI_TARGET static inline __attribute__((always_inline)) void vnni_few(
    const int8_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const int32_t *flips,
    const float *scales, int64_t blocks, float *totals) {
    const __m512i zero = _mm512_setzero_si512();
    for (int r = 0; r < rows; r++) totals[r] = 0.0f;
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in;
        __m512i s00 = zero, s01 = zero, s10 = zero, s11 = zero;
        for (int64_t k = first; k < end; k += 128) {
            __m512i w0, w1;
            int two = flipped_weights(w, k, end, &w0, &w1);
            VNNI_FEW_STEP(0) VNNI_FEW_STEP(1)
        }
        int32_t sums[4];
        _mm_storeu_si128((__m128i *)sums, sum4_512(_mm512_add_epi32(s00, s01),
                                                   _mm512_add_epi32(s10, s11), zero, zero));
        for (int r = 0; r < rows; r++) {
            int64_t at = r * blocks + b;
            totals[r] = fmaf((float)(sums[r] - flips[at]), scales[at], totals[r]);
        }
    }
}

VNNI_TARGET __attribute__((noinline)) static void vnni_few_rows(
    const int8_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const int32_t *flips,
    const float *scales, int64_t blocks, float *totals) {
    if (rows == 1) {
        vnni_few(a, stride, w, in, 1, flips, scales, blocks, totals);
    } else {
        vnni_few(a, stride, w, in, 2, flips, scales, blocks, totals);
    }
}

/* One weight row with 3 to 8 rows of x, each row's block sums reduced together: lane r of
 * one vector holds row r's, and the rows' totals take a block in one vector step. The same
 * integers, and the same float operations in the same order, as vnni_few's: the same bits.
 * vnni_few paid a scalar step for every row, weight row and block: at 8 rows 171 against 131
 * G multiply-adds/s from cache here. (Two weight rows side by side, 16 sums reduced at once,
 * were faster still from cache and slower from memory: two streams a thread read the weights
 * at 16 against 24 GB/s.) */
enum { LANE_MIN_ROWS = 3 };  /* fewer rows: vnni_few (8 lanes for one or two sums gain nothing) */
/* Bytes ahead of the weights being read that vnni_lanes asks the CPU to fetch: at 8 rows the
 * hardware's prefetch alone left it waiting on memory (1.36 against 0.90 ms for a layer's
 * matmuls here; 1-2 rows, read at the memory's rate, gained nothing from it). Prefetching past
 * the weights' end is harmless: a prefetch never faults. */
enum { LANE_AHEAD = 4096 };

/* [sum(v0), ..., sum(v7)] of 8 vectors of 16 int32 (sum4_512 twice, sharing its steps). */
VNNI_TARGET static inline __m256i sum8_512(__m512i v0, __m512i v1, __m512i v2, __m512i v3,
                                           __m512i v4, __m512i v5, __m512i v6, __m512i v7) {
#define PAIR32(a, b) _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
#define PAIR64(a, b) _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
    /* Each 128-bit lane of low (high) holds a quarter of sums 0..3 (4..7). */
    __m512i low = PAIR64(PAIR32(v0, v1), PAIR32(v2, v3));
    __m512i high = PAIR64(PAIR32(v4, v5), PAIR32(v6, v7));
#undef PAIR32
#undef PAIR64
    __m512i halves = _mm512_add_epi32(_mm512_shuffle_i32x4(low, high, 0x88),
                                      _mm512_shuffle_i32x4(low, high, 0xDD));
    __m512i both = _mm512_add_epi32(halves, _mm512_shuffle_i32x4(halves, halves, 0xB1));
    return _mm512_castsi512_si256(_mm512_shuffle_i32x4(both, both, 0x08));
}

/* Row r's totals in lane r: vnni_few's, with lane_flips and lane_scales holding each block's 8
 * lanes of the rows' flips and scales. */
VNNI_TARGET static inline __attribute__((always_inline)) __m256 vnni_lanes(
    const int8_t *a, int64_t stride, const int8_t *w, int64_t in, int rows,
    const int32_t *lane_flips, const float *lane_scales) {
    const __m512i zero = _mm512_setzero_si512();
    __m256 totals = _mm256_setzero_ps();
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in;
        __m512i s00 = zero, s01 = zero, s10 = zero, s11 = zero, s20 = zero, s21 = zero;
        __m512i s30 = zero, s31 = zero, s40 = zero, s41 = zero, s50 = zero, s51 = zero;
        __m512i s60 = zero, s61 = zero, s70 = zero, s71 = zero;
        for (int64_t k = first; k < end; k += 128) {
            __m512i w0, w1;
            int two = flipped_weights(w, k, end, &w0, &w1);
            _mm_prefetch((const char *)(w + k + LANE_AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char *)(w + k + LANE_AHEAD + 64), _MM_HINT_T0);
            VNNI_FEW_STEP(0) VNNI_FEW_STEP(1) VNNI_FEW_STEP(2) VNNI_FEW_STEP(3)
            VNNI_FEW_STEP(4) VNNI_FEW_STEP(5) VNNI_FEW_STEP(6) VNNI_FEW_STEP(7)
        }
        __m256i sums = sum8_512(_mm512_add_epi32(s00, s01), _mm512_add_epi32(s10, s11),
                                _mm512_add_epi32(s20, s21), _mm512_add_epi32(s30, s31),
                                _mm512_add_epi32(s40, s41), _mm512_add_epi32(s50, s51),
                                _mm512_add_epi32(s60, s61), _mm512_add_epi32(s70, s71));
        sums = _mm256_sub_epi32(sums, _mm256_loadu_si256((const __m256i *)(lane_flips + 8 * b)));
        totals = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(lane_scales + 8 * b),
                                 totals);
    }
    return totals;
}

VNNI_TARGET __attribute__((noinline)) static void vnni_lane_rows(
    const int8_t *a, int64_t stride, const int8_t *w, int64_t in, int rows,
    const int32_t *lane_flips, const float *lane_scales, float *totals) {
    __m256 lanes;
    switch (rows) {
        case 3: lanes = vnni_lanes(a, stride, w, in, 3, lane_flips, lane_scales); break;
        case 4: lanes = vnni_lanes(a, stride, w, in, 4, lane_flips, lane_scales); break;
        case 5: lanes = vnni_lanes(a, stride, w, in, 5, lane_flips, lane_scales); break;
        case 6: lanes = vnni_lanes(a, stride, w, in, 6, lane_flips, lane_scales); break;
        case 7: lanes = vnni_lanes(a, stride, w, in, 7, lane_flips, lane_scales); break;
        default: lanes = vnni_lanes(a, stride, w, in, 8, lane_flips, lane_scales); break;
    }
    _mm256_storeu_ps(totals, lanes);
}

/* [sum(v0), ..., sum(v7)] of 8 vectors of 8 int32. */
AVX2_TARGET static inline __m256i sum8_256(__m256i v0, __m256i v1, __m256i v2, __m256i v3,
                                           __m256i v4, __m256i v5, __m256i v6, __m256i v7) {
    /* Each 128-bit half of low (high) holds half of sums 0..3 (4..7). */
    __m256i low = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    __m256i high = _mm256_hadd_epi32(_mm256_hadd_epi32(v4, v5), _mm256_hadd_epi32(v6, v7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(low, high, 0x20),
                            _mm256_permute2x128_si256(low, high, 0x31));
}

#define AVX2_LANE_STEP(r)                                                                     \
    if (rows > r) s##r = madd_add(s##r, _mm256_loadu_si256((const __m256i *)(a + r * stride + k)), wk);
#define AVX2_LANE_STEPS                                                                       \
    AVX2_LANE_STEP(0) AVX2_LANE_STEP(1) AVX2_LANE_STEP(2) AVX2_LANE_STEP(3)                   \
    AVX2_LANE_STEP(4) AVX2_LANE_STEP(5) AVX2_LANE_STEP(6) AVX2_LANE_STEP(7)

/* vnni_lanes for the AVX2 path: 3 to 8 rows of int16 activations with one weight row, row r's
 * totals in lane r; its integers and float steps are avx2_few's, so are its bits. */
AVX2_TARGET static inline __attribute__((always_inline)) __m256 avx2_lanes(
    const int16_t *a, int64_t stride, const int8_t *w, int64_t in, int rows,
    const float *lane_scales) {
    const __m256i zero = _mm256_setzero_si256();
    __m256 totals = _mm256_setzero_ps();
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in, k = first;
        __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero, s4 = zero, s5 = zero, s6 = zero;
        __m256i s7 = zero;
        for (; k + 16 <= end; k += 16) {
            __m256i wk = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + k)));
            _mm_prefetch((const char *)(w + k + LANE_AHEAD), _MM_HINT_T0);
            AVX2_LANE_STEPS
        }
        if (k < end) {
            int8_t tail[16] = {0};
            memcpy(tail, w + k, (size_t)(end - k));
            __m256i wk = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)tail));
            AVX2_LANE_STEPS
        }
        __m256i sums = sum8_256(s0, s1, s2, s3, s4, s5, s6, s7);
        totals = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(lane_scales + 8 * b),
                                 totals);
    }
    return totals;
}

AVX2_TARGET __attribute__((noinline)) static void avx2_lane_rows(
    const int16_t *a, int64_t stride, const int8_t *w, int64_t in, int rows,
    const float *lane_scales, float *totals) {
    __m256 lanes;
    switch (rows) {
        case 3: lanes = avx2_lanes(a, stride, w, in, 3, lane_scales); break;
        case 4: lanes = avx2_lanes(a, stride, w, in, 4, lane_scales); break;
        case 5: lanes = avx2_lanes(a, stride, w, in, 5, lane_scales); break;
        case 6: lanes = avx2_lanes(a, stride, w, in, 6, lane_scales); break;
        case 7: lanes = avx2_lanes(a, stride, w, in, 7, lane_scales); break;
        default: lanes = avx2_lanes(a, stride, w, in, 8, lane_scales); break;
    }
    _mm256_storeu_ps(totals, lanes);
}

/* The AVX2 path's, for one or two rows: int16 activations, each weight sign-extended, 4 sums
 * a row over 4 steps. */
AVX2_TARGET static inline __attribute__((always_inline)) void avx2_few(
    const int16_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const float *scales,
    int64_t blocks, float *totals) {
    for (int r = 0; r < rows; r++) totals[r] = 0.0f;
    for (int64_t first = 0, b = 0; first < in; first += QBLOCK, b++) {
        int64_t end = first + QBLOCK < in ? first + QBLOCK : in;
        __m256i sums[2][4];
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < 4; j++) sums[r][j] = _mm256_setzero_si256();
        }
        int64_t k = first;
        for (; k + 64 <= end; k += 64) {
            for (int j = 0; j < 4; j++) {
                __m256i wj = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + k + 16 * j)));
                for (int r = 0; r < rows; r++) {
                    __m256i ar = _mm256_loadu_si256((const __m256i *)(a + r * stride + k + 16 * j));
                    sums[r][j] = madd_add(sums[r][j], ar, wj);
                }
            }
        }
        for (int j = 0; k < end; k += 16, j++) {
            int8_t tail[16] = {0};
            memcpy(tail, w + k, (size_t)(end - k < 16 ? end - k : 16));
            __m256i wj = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)tail));
            for (int r = 0; r < rows; r++) {
                __m256i ar = _mm256_loadu_si256((const __m256i *)(a + r * stride + k));
                sums[r][j] = madd_add(sums[r][j], ar, wj);
            }
        }
        for (int r = 0; r < rows; r++) {
            __m256i all = _mm256_add_epi32(_mm256_add_epi32(sums[r][0], sums[r][1]),
                                           _mm256_add_epi32(sums[r][2], sums[r][3]));
            __m128i half = _mm_add_epi32(_mm256_castsi256_si128(all),
                                         _mm256_extracti128_si256(all, 1));
            half = _mm_hadd_epi32(half, half);
            int32_t sum = _mm_cvtsi128_si32(_mm_hadd_epi32(half, half));
            totals[r] = fmaf((float)sum, scales[r * blocks + b], totals[r]);
        }
    }
}

AVX2_TARGET __attribute__((noinline)) static void avx2_few_rows(
    const int16_t *a, int64_t stride, const int8_t *w, int64_t in, int rows, const float *scales,
    int64_t blocks, float *totals) {
    if (rows == 1) {
        avx2_few(a, stride, w, in, 1, scales, blocks, totals);
    } else {
        avx2_few(a, stride, w, in, 2, scales, blocks, totals);
    }
}

/* Output channel `channel` of every row, weight row by weight row (few rows), in tiles of
 * FEW_TILE rows: 3 or more of them reduced together (vnni_lanes, avx2_lanes), fewer one by one
 * (vnni_few, avx2_few); the weight row is read from memory once, then from L1. */
static void few_rows_channel(const QuantizedRows *x, const int8_t *w, const uint16_t *scale,
                             uint16_t *y, int64_t rows, int64_t out, int64_t in, int64_t channel,
                             int path) {
    float totals[FEW_TILE];
    size_t element = quantized_element(path);
    float w_scale = bf16_to_float(scale[channel]);
    const int8_t *wc = w + channel * in;
    for (int64_t row = 0; row < rows; row += FEW_TILE) {
        int count = rows - row < FEW_TILE ? (int)(rows - row) : FEW_TILE;
        const char *a = (const char *)x->q + row * x->stride * element;
        const float *scales = x->scales + row * x->blocks;
        int64_t lanes = row / FEW_TILE * x->blocks * 8; /* the tile's (spread_to_lanes) */
        if (path == PATH_VNNI && count >= LANE_MIN_ROWS) {
            vnni_lane_rows((const int8_t *)a, x->stride, wc, in, count, x->lane_flips + lanes,
                           x->lane_scales + lanes, totals);
        } else if (path == PATH_VNNI) {
            vnni_few_rows((const int8_t *)a, x->stride, wc, in, count, x->flips + row * x->blocks,
                          scales, x->blocks, totals);
        } else if (count >= LANE_MIN_ROWS) {
            avx2_lane_rows((const int16_t *)a, x->stride, wc, in, count, x->lane_scales + lanes,
                           totals);
        } else {
            avx2_few_rows((const int16_t *)a, x->stride, wc, in, count, scales, x->blocks,
                          totals);
        }
        for (int r = 0; r < count; r++) {
            y[(row + r) * out + channel] = float_to_bf16(totals[r] * w_scale);
        }
    }
}

/* The matmul inside an enclosing parallel region, its work split among its threads: rows of x
 * quantized into `quantized`, then every output channel. */
static void gemm_shared(const QuantizedRows *quantized, const void *x, int is_float,
                        const int8_t *w, const uint16_t *scale, uint16_t *y, int64_t rows,
                        int64_t out, int64_t in, int path) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) quantize_into(quantized, x, r, rows, in, path, is_float);
    if (rows <= (path == PATH_VNNI ? VNNI_FEW_ROWS : AVX2_FEW_ROWS)) {
#pragma omp for schedule(static)
        for (int64_t channel = 0; channel < out; channel++) {
            few_rows_channel(quantized, w, scale, y, rows, out, in, channel, path);
        }
    } else {
#pragma omp for schedule(static)
        for (int64_t first = 0; first < out; first += BLOCK_OUT) {
            int64_t end = first + BLOCK_OUT < out ? first + BLOCK_OUT : out;
            gemm_block(quantized, w, scale, y, rows, out, in, first, end, path);
        }
    }
}

/* y [rows, out] (bf16) = x [rows, in] (bf16) @ w.T * scale, on `path` (PATH_AVX2 or PATH_VNNI),
 * which the CPU must have. out must be at least TILE_OUT. Returns 0; -1 when the quantized copy
 * of x could not be allocated; -2 for a path or an `out` this function does not take. */
int int8_gemm(const int8_t *w, const uint16_t *scale, const uint16_t *x, uint16_t *y,
              int64_t rows, int64_t out, int64_t in, int path, int threads) {
    if (!(int8_gemm_paths() & path) || out < TILE_OUT) return -2;
    size_t scales_at, flips_at, lanes_at;
    size_t bytes = quantized_layout(rows, in, path, &scales_at, &flips_at, &lanes_at);
    void *memory = malloc(bytes);
    if (memory == NULL) return -1;
    QuantizedRows quantized = quantized_rows(memory, rows, in, path);
#pragma omp parallel num_threads(threads)
    gemm_shared(&quantized, x, 0, w, scale, y, rows, out, in, path);
    free(memory);
    return 0;
}

/* For decode_step (compiled_kernels.c): the bytes of scratch int8_gemm_rows needs for `rows`
 * rows of at most `in` inputs, and the matmul itself on float32 x holding bf16 values, inside
 * decode_step's parallel region; `out` at least TILE_OUT. */
size_t int8_gemm_scratch(int64_t rows, int64_t in, int path) {
    size_t scales_at, flips_at, lanes_at;
    return quantized_layout(rows, in, path, &scales_at, &flips_at, &lanes_at);
}

void int8_gemm_rows(const int8_t *w, const uint16_t *scale, const float *x, uint16_t *y,
                    int64_t rows, int64_t out, int64_t in, int path, void *scratch) {
    QuantizedRows quantized = quantized_rows(scratch, rows, in, path);
    gemm_shared(&quantized, x, 1, w, scale, y, rows, out, in, path);
}

/* The peak loops: independent chains, each in a variable of its own (arrays of them stayed in
 * memory), more of them than latency x throughput. */
#define SIX(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define TWELVE(M) SIX(M) M(6) M(7) M(8) M(9) M(10) M(11)
enum { VNNI_PEAK_CHAINS = 12, AVX2_PEAK_CHAINS = 6 };

VNNI_TARGET __attribute__((noinline)) static int64_t vnni_peak(int64_t iterations, int seed) {
    __m512i a = _mm512_set1_epi8((char)(seed | 1)), b = _mm512_set1_epi8(3);
#define VNNI_CHAIN(c) __m512i acc##c = _mm512_set1_epi32(c);
#define VNNI_PEAK_STEP(c) acc##c = dpbusd(acc##c, a, b);
#define VNNI_PEAK_SUM(c) total = _mm512_add_epi32(total, acc##c);
    TWELVE(VNNI_CHAIN)
    for (int64_t i = 0; i < iterations; i++) {
        TWELVE(VNNI_PEAK_STEP)
    }
    __m512i total = _mm512_setzero_si512();
    TWELVE(VNNI_PEAK_SUM)
    return _mm512_reduce_add_epi32(total);
}

/* acc + vpmaddwd(a, b), in asm so that the multiply stays in the loop (its inputs do not
 * change) and the sum stays in its register. */
#define AVX2_PEAK_STEP(c)                                                        \
    __asm__("vpmaddwd %[b], %[a], %[t]\n\tvpaddd %[t], %[acc], %[acc]"           \
            : [acc] "+x"(acc##c), [t] "=&x"(t##c)                                 \
            : [a] "x"(a), [b] "x"(b));
AVX2_TARGET __attribute__((noinline)) static int64_t avx2_peak(int64_t iterations, int seed) {
    __m256i a = _mm256_set1_epi16((short)(seed | 1)), b = _mm256_set1_epi16(3);
#define AVX2_CHAIN(c) __m256i acc##c = _mm256_set1_epi32(c), t##c;
#define AVX2_PEAK_SUM(c) total = _mm256_add_epi32(total, acc##c);
    SIX(AVX2_CHAIN)
    for (int64_t i = 0; i < iterations; i++) {
        SIX(AVX2_PEAK_STEP)
    }
    __m256i total = _mm256_setzero_si256();
    SIX(AVX2_PEAK_SUM)
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    s = _mm_hadd_epi32(s, s);
    return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

static volatile int64_t peak_sink; /* the sums, kept so that the loops are not dropped */

/* Runs `iterations` rounds of a peak loop's multiply-add instructions of `path` on each of
 * `threads` threads and returns the multiply-adds done per thread per round (the caller times
 * it), or -1 for a path this CPU lacks. */
int64_t int8_peak(int path, int64_t iterations, int threads) {
    if (!(int8_gemm_paths() & path)) return -1;
    int64_t checksum = 0;
#pragma omp parallel num_threads(threads) reduction(+ : checksum)
    checksum += path == PATH_VNNI ? vnni_peak(iterations, threads) : avx2_peak(iterations, threads);
    peak_sink = checksum;
    return path == PATH_VNNI ? VNNI_PEAK_CHAINS * 64 : AVX2_PEAK_CHAINS * 16;
}
#else /* not x86: no path runs */
int int8_gemm_paths(void) { return 0; }

int int8_gemm(const int8_t *w, const uint16_t *scale, const uint16_t *x, uint16_t *y,
              int64_t rows, int64_t out, int64_t in, int path, int threads) {
    return -2;
}

int64_t int8_peak(int path, int64_t iterations, int threads) { return -1; }

size_t int8_gemm_scratch(int64_t rows, int64_t in, int path) { return 0; }

void int8_gemm_rows(const int8_t *w, const uint16_t *scale, const float *x, uint16_t *y,
                    int64_t rows, int64_t out, int64_t in, int path, void *scratch) {}
#endif
