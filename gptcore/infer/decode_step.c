/* A GPT-2 decode step in C: one call runs every layer for B rows of one new token each, with int8 or bfloat16
weights.

Why C: at batch 1 a decode step reads every weight once, and its ~50 matrix products already run near this
machine's memory speed in PyTorch (FBGEMM for int8). What PyTorch adds is the rest: ~15 small ops per layer, each
a dispatch and a fork-join of the thread pool, 4-6 ms a step on GPT-2 124M (2 cores): as long as the products.
Here the rest is a few loops over 768 numbers, and the whole step is one call from Python.

The math is the model's (gptcore/model.py), in float32 between the products: pre-LayerNorm blocks, causal
self-attention over the row's cached keys, a tanh-approximated GELU, and the head. A product's inputs are rounded
to its weight's precision:
  int8 weights: each input row is quantized to 8 bits (its own scale, max |x| / 127) and multiplied in integers
    with 32-bit sums, as CTranslate2 and FBGEMM do: y[j] = sx * scale[j] * sum_i xq[i] * w[j, i] + bias[j].
    x86's VNNI instruction multiplies unsigned by signed bytes, so xq + 128 goes in, and 128 * sum_i w[j, i]
    (rowsum, computed once per weight) comes back out.
  bfloat16 weights: inputs rounded to bfloat16, products summed in float32 (AVX512-BF16's dot product where the
    CPU has it), as PyTorch's bf16 linear does.

Built and loaded by gptcore/infer/native.py, which checks it against float64 before using it. */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512VNNI__) || defined(__AVX512BF16__)
#include <immintrin.h>
#endif

typedef struct {
    const void *w;          /* (n_out, n_in), row-major: int8, or bfloat16 (bf16 != 0) */
    const int32_t *rowsum;  /* int8: (n_out,), sum_i w[j, i] */
    const float *scale;     /* int8: (n_out,), w[j, :] ~ w_int8[j, :] * scale[j] */
    const float *bias;      /* (n_out,) or NULL */
    int64_t n_out, n_in, bf16;
} Linear;

typedef struct {
    const float *ln_1_w, *ln_1_b, *ln_2_w, *ln_2_b;  /* the biases may be NULL */
    Linear c_attn, attn_proj, c_fc, mlp_proj;
} Layer;

typedef struct {
    int64_t n_layer, n_head, n_embd;
    const Layer *layers;
    const float *ln_f_w, *ln_f_b;
    Linear lm_head;
} Model;

/* bf16 is float32's upper half; stores round to nearest even, as PyTorch's conversion does */
static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* ---- products ---- */

/* the inputs of a product, rounded to its weight's precision: x (B, K) -> int8: xq (B, K) as unsigned bytes
   (round(x / s) + 128) and s (B,); bf16: xq (B, K) as bfloat16 */
static void prepare_inputs(const Linear *L, int64_t B, const float *x, void *xq, float *s) {
    const int64_t K = L->n_in;
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * K;
        if (L->bf16) {
            for (int64_t i = 0; i < K; i++) ((uint16_t *)xq)[b * K + i] = to_bf16(xb[i]);
            continue;
        }
        float m = 0.f;
        for (int64_t i = 0; i < K; i++) m = fabsf(xb[i]) > m ? fabsf(xb[i]) : m;  /* fmaxf is a call here */
        s[b] = m > 0.f ? m / 127.f : 1.f;
        float inv = 1.f / s[b];
        for (int64_t i = 0; i < K; i++) ((uint8_t *)xq)[b * K + i] = (uint8_t)((int32_t)rintf(xb[i] * inv) + 128);
    }
}

/* The products of 4 weight rows (from row j) with NB input rows (from row b0): out[r][b], without the bias. NB is
   a constant where this is inlined, so the 4 x NB sums stay in registers: each 64 bytes of weight are loaded once
   for all input rows, and four weight rows stream at once, while the next four are prefetched (the CPU's own
   prefetching fell behind: in a C harness of a GPT-2 124M step's products, prefetching ran them 1.15-1.5x faster
   at batch 1 and 1.4x at batch 8). Whole 64 bytes go through plain loads, a last, partial 64 through masked ones
   (zeros past K add nothing; a prefetch past the weight's end is harmless). */
static inline __attribute__((always_inline)) void block_int8(int NB, const Linear *L, int64_t j, const uint8_t *xq,
                                                             const float *sx, float out[4][4]) {
    const int64_t K = L->n_in;
    const int8_t *w = (const int8_t *)L->w + j * K;
    int32_t dots[4][4];
#ifdef __AVX512VNNI__
    __m512i acc[4][4];
    #pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_si512();
    for (int64_t i = 0; i < K; i += 64) {
        __mmask64 m = K - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - i)) - 1);
        __m512i x[4];
        if (K - i >= 64) {
            #pragma GCC unroll 4
            for (int b = 0; b < NB; b++) x[b] = _mm512_loadu_si512(xq + b * K + i);
            #pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                _mm_prefetch((const char *)(w + (4 + r) * K + i), _MM_HINT_T0);  /* the next 4 rows' bytes */
                __m512i wv = _mm512_loadu_si512(w + r * K + i);
                #pragma GCC unroll 4
                for (int b = 0; b < NB; b++) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], x[b], wv);
            }
        } else {
            #pragma GCC unroll 4
            for (int b = 0; b < NB; b++) x[b] = _mm512_maskz_loadu_epi8(m, xq + b * K + i);
            #pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                __m512i wv = _mm512_maskz_loadu_epi8(m, w + r * K + i);
                #pragma GCC unroll 4
                for (int b = 0; b < NB; b++) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], x[b], wv);
            }
        }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 4
        for (int b = 0; b < NB; b++) dots[r][b] = _mm512_reduce_add_epi32(acc[r][b]);
#else
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < NB; b++) {
            int32_t sum = 0;
            for (int64_t i = 0; i < K; i++) sum += (int32_t)xq[b * K + i] * (int32_t)w[r * K + i];
            dots[r][b] = sum;
        }
#endif
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < NB; b++)
            out[r][b] = sx[b] * L->scale[j + r] * (float)(dots[r][b] - 128 * L->rowsum[j + r]);
}

/* block_int8's bfloat16 twin: 32 weights per 64 bytes */
static inline __attribute__((always_inline)) void block_bf16(int NB, const Linear *L, int64_t j, const uint16_t *xq,
                                                             float out[4][4]) {
    const int64_t K = L->n_in;
    const uint16_t *w = (const uint16_t *)L->w + j * K;
#ifdef __AVX512BF16__
    __m512 acc[4][4];
    #pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
    for (int64_t i = 0; i < K; i += 32) {
        __mmask32 m = K - i >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (K - i)) - 1);
        __m512bh x[4];
        if (K - i >= 32) {
            #pragma GCC unroll 4
            for (int b = 0; b < NB; b++) x[b] = (__m512bh)_mm512_loadu_si512(xq + b * K + i);
            #pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                _mm_prefetch((const char *)(w + (4 + r) * K + i), _MM_HINT_T0);  /* the next 4 rows' bytes */
                __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + i);
                #pragma GCC unroll 4
                for (int b = 0; b < NB; b++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], x[b], wv);
            }
        } else {
            #pragma GCC unroll 4
            for (int b = 0; b < NB; b++) x[b] = (__m512bh)_mm512_maskz_loadu_epi16(m, xq + b * K + i);
            #pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + r * K + i);
                #pragma GCC unroll 4
                for (int b = 0; b < NB; b++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], x[b], wv);
            }
        }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        #pragma GCC unroll 4
        for (int b = 0; b < NB; b++) out[r][b] = _mm512_reduce_add_ps(acc[r][b]);
#else
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < NB; b++) {
            float sum = 0.f;
            for (int64_t i = 0; i < K; i++) sum += from_bf16(xq[b * K + i]) * from_bf16(w[r * K + i]);
            out[r][b] = sum;
        }
#endif
}

/* one output, for the last 1-3 rows of a weight whose row count is not a multiple of 4 */
static float dot_one(const Linear *L, int64_t j, const void *xq, const float *sx, int64_t b) {
    const int64_t K = L->n_in;
    if (L->bf16) {
        const uint16_t *w = (const uint16_t *)L->w + j * K, *x = (const uint16_t *)xq + b * K;
        float sum = 0.f;
        for (int64_t i = 0; i < K; i++) sum += from_bf16(x[i]) * from_bf16(w[i]);
        return sum;
    }
    const int8_t *w = (const int8_t *)L->w + j * K;
    const uint8_t *x = (const uint8_t *)xq + b * K;
    int32_t sum = 0;
    for (int64_t i = 0; i < K; i++) sum += (int32_t)x[i] * (int32_t)w[i];
    return sx[b] * L->scale[j] * (float)(sum - 128 * L->rowsum[j]);
}

#define BLOCK(NB) (L->bf16 ? block_bf16(NB, L, j, (const uint16_t *)xq + b0 * K, out) \
                           : block_int8(NB, L, j, (const uint8_t *)xq + b0 * K, sx + b0, out))

/* y (B, n_out) = x (B, n_in) @ W.T + bias, through xq and sx (prepare_inputs of x); threads split the output
   columns, four at a time (GPT-2's counts are multiples of 4; any last 1-3 go through dot_one), in chunks taken
   as they finish: where another process shares a core, an even split would wait for the slowed thread (measured
   on the project's busy Xeon: 1.15x faster at batch 1 than schedule(static)) */
static void products(const Linear *L, int64_t B, const void *xq, const float *sx, float *y) {
    const int64_t K = L->n_in, N = L->n_out;
    #pragma omp parallel for schedule(dynamic, 8)
    for (int64_t j = 0; j < N; j += 4) {
        for (int64_t b0 = 0; b0 < B; b0 += 4) {
            float out[4][4];
            int64_t nb = B - b0 >= 4 ? 4 : B - b0;
            if (N - j < 4) {
                for (int64_t r = 0; r < N - j; r++)
                    for (int64_t b = 0; b < nb; b++) out[r][b] = dot_one(L, j + r, xq, sx, b0 + b);
            } else {
                switch (nb) {  /* one unrolled body per row count */
                    case 1: BLOCK(1); break;
                    case 2: BLOCK(2); break;
                    case 3: BLOCK(3); break;
                    default: BLOCK(4); break;
                }
            }
            for (int64_t r = 0; r < 4 && j + r < N; r++)
                for (int64_t b = 0; b < nb; b++) y[(b0 + b) * N + j + r] = out[r][b] + (L->bias ? L->bias[j + r] : 0.f);
        }
    }
}

static void linear(const Linear *L, int64_t B, const float *x, float *y, void *xq, float *sx) {
    prepare_inputs(L, B, x, xq, sx);
    products(L, B, xq, sx, y);
}

/* ---- the rest of a block ---- */

static void layer_norm(int64_t B, int64_t C, const float *x, const float *w, const float *bias, float *y) {
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * C;
        float mean = 0.f, var = 0.f;
        for (int64_t i = 0; i < C; i++) mean += xb[i];
        mean /= C;
        for (int64_t i = 0; i < C; i++) var += (xb[i] - mean) * (xb[i] - mean);
        float inv = 1.f / sqrtf(var / C + 1e-5f);  /* nn.LayerNorm's default eps */
        for (int64_t i = 0; i < C; i++) y[b * C + i] = (xb[i] - mean) * inv * w[i] + (bias ? bias[i] : 0.f);
    }
}

/* e^x, in a form the compiler vectorizes (glibc's expf and tanhf are scalar calls here): e^x = 2^n * 2^f with
   n = round(x log2(e)) and f in [-1/2, 1/2], 2^f = e^(f ln 2) by its Taylor series to degree 7 (relative error
   below 1e-7 in float64; float32 rounding dominates). x is clamped to [-87, 88], where float32 has normal
   results. */
static inline float exp_approx(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);  /* fminf and fmaxf would be calls, which don't vectorize */
    float t = x * 1.4426950408889634f, n = rintf(t), f = (t - n) * 0.6931471805599453f;
    float p = 1.f + f * (1.f + f * (1.f / 2 + f * (1.f / 6 + f * (1.f / 24 + f * (1.f / 120 + f * (1.f / 720 +
              f * (1.f / 5040)))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, 4);
    return p * two_n;
}

/* element i of a float32 or (BF16) bfloat16 cache, as float32 */
static inline __attribute__((always_inline)) float cached(const void *cache, int64_t i, int BF16) {
    return BF16 ? from_bf16(((const uint16_t *)cache)[i]) : ((const float *)cache)[i];
}

/* the attention of heads h0..h1-1 of one row: q (its query, from head h0) over positions 0..n-1 of k and v (from
   element base), through the scores s (s[h * max_len + t]) -> out (from head h0). BF16 is a constant where this is
   inlined, so the loops read the cache as it is stored, without a branch or a copy per element. A position's keys
   of these heads are read together: one contiguous piece of the cache (reading a head's keys alone strides across
   the cache, which defeats the CPU's prefetching). */
static inline __attribute__((always_inline)) void attend(int BF16, const float *q, const void *k, const void *v,
                                                        int64_t base, int64_t n, int64_t C, int64_t hs, int64_t h0,
                                                        int64_t h1, int64_t max_len, float *s, float *out) {
    const float scale = 1.f / sqrtf((float)hs);
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = h0; h < h1; h++) {
            const float *qh = q + (h - h0) * hs;
            const int64_t at = base + t * C + (h - h0) * hs;
            float dot = 0.f;
            for (int64_t i = 0; i < hs; i++) dot += qh[i] * cached(k, at + i, BF16);
            s[h * max_len + t] = dot * scale;
        }
    for (int64_t h = h0; h < h1; h++) {  /* softmax over positions, in place */
        float *sh = s + h * max_len, m = -INFINITY, total = 0.f;
        for (int64_t t = 0; t < n; t++) m = sh[t] > m ? sh[t] : m;
        for (int64_t t = 0; t < n; t++) total += (sh[t] = exp_approx(sh[t] - m));
        for (int64_t t = 0; t < n; t++) sh[t] /= total;
    }
    for (int64_t i = 0; i < (h1 - h0) * hs; i++) out[i] = 0.f;
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = h0; h < h1; h++) {
            const float p = s[h * max_len + t];
            const int64_t at = base + t * C + (h - h0) * hs;
            float *oh = out + (h - h0) * hs;
            for (int64_t i = 0; i < hs; i++) oh[i] += p * cached(v, at + i, BF16);
        }
}

/* qkv (B, 3C) -> y (B, C): row b's key and value go to its cache row rows[b] at position pos[b], and its query
   attends to that row's positions 0..pos[b]. k, v: this layer's (batch_size, max_len, C) cache. */
static void attention(int64_t B, int64_t C, int64_t n_head, const float *qkv, void *k, void *v, int bf16,
                      int64_t max_len, const int64_t *rows, const int64_t *pos, float *scores, float *y) {
    const int64_t hs = C / n_head;
    for (int64_t b = 0; b < B; b++) {
        int64_t at = (rows[b] * max_len + pos[b]) * C;
        const float *new_k = qkv + b * 3 * C + C, *new_v = new_k + C;
        for (int64_t i = 0; i < C; i++) {
            if (bf16) {
                ((uint16_t *)k)[at + i] = to_bf16(new_k[i]);
                ((uint16_t *)v)[at + i] = to_bf16(new_v[i]);
            } else {
                ((float *)k)[at + i] = new_k[i];
                ((float *)v)[at + i] = new_v[i];
            }
        }
    }
    /* threads split the rows and, within a row, its heads into as many groups as there are threads */
    const int64_t groups = omp_get_max_threads() < n_head ? omp_get_max_threads() : n_head;
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t g = 0; g < groups; g++) {
            const int64_t h0 = g * n_head / groups, h1 = (g + 1) * n_head / groups;
            const int64_t base = rows[b] * max_len * C + h0 * hs;
            const float *q = qkv + b * 3 * C + h0 * hs;
            float *s = scores + b * n_head * max_len, *out = y + b * C + h0 * hs;
            if (bf16)
                attend(1, q, k, v, base, pos[b] + 1, C, hs, h0, h1, max_len, s, out);
            else
                attend(0, q, k, v, base, pos[b] + 1, C, hs, h0, h1, max_len, s, out);
        }
    }
}

static void gelu(int64_t n, float *x) {  /* nn.GELU(approximate="tanh") */
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float u = x[i];
        float tanh = 1.f - 2.f / (exp_approx(2.f * 0.7978845608028654f * (u + 0.044715f * u * u * u)) + 1.f);
        x[i] = 0.5f * u * (1.f + tanh);
    }
}

/* ---- the step ---- */

/* x (B, C): the new tokens' embeddings (wte + wpe), overwritten; logits (B, lm_head.n_out).
   k_cache, v_cache: (n_layer, batch_size, max_len, C), float32 or (cache_bf16) bfloat16.
   Returns 0, or 1 when out of memory. */
int decode_step(const Model *m, int64_t B, float *x, void *k_cache, void *v_cache, int cache_bf16,
                int64_t batch_size, int64_t max_len, const int64_t *rows, const int64_t *pos, float *logits) {
    const int64_t C = m->n_embd, H = 4 * C, esize = cache_bf16 ? 2 : 4;
    float *h = malloc(sizeof(float) * B * (C + 3 * C + H + m->n_head * max_len + 1));
    void *xq = malloc(2 * B * H);  /* a product's inputs in its weight's type: bf16 needs 2 bytes each */
    if (!h || !xq) { free(h); free(xq); return 1; }
    float *qkv = h + B * C, *fc = qkv + B * 3 * C, *scores = fc + B * H, *sx = scores + B * m->n_head * max_len;
    for (int64_t l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        int64_t offset = l * batch_size * max_len * C * esize;
        /* x = x + attn(ln_1(x)) */
        layer_norm(B, C, x, L->ln_1_w, L->ln_1_b, h);
        linear(&L->c_attn, B, h, qkv, xq, sx);
        attention(B, C, m->n_head, qkv, (char *)k_cache + offset, (char *)v_cache + offset, cache_bf16, max_len,
                  rows, pos, scores, h);
        linear(&L->attn_proj, B, h, fc, xq, sx);
        for (int64_t i = 0; i < B * C; i++) x[i] += fc[i];
        /* x = x + mlp(ln_2(x)) */
        layer_norm(B, C, x, L->ln_2_w, L->ln_2_b, h);
        linear(&L->c_fc, B, h, fc, xq, sx);
        gelu(B * H, fc);
        linear(&L->mlp_proj, B, fc, h, xq, sx);
        for (int64_t i = 0; i < B * C; i++) x[i] += h[i];
    }
    layer_norm(B, C, x, m->ln_f_w, m->ln_f_b, h);
    linear(&m->lm_head, B, h, logits, xq, sx);
    free(h);
    free(xq);
    return 0;
}

/* One product on its own, for PyTorch's few-row products outside a decode step: y (B, n_out) = x (B, n_in) @ W.T
   + bias. Returns 0, or 1 when out of memory. */
int linear_rows(const Linear *L, int64_t B, const float *x, float *y) {
    void *xq = malloc(2 * B * L->n_in);
    float *sx = malloc(sizeof(float) * B);
    if (!xq || !sx) { free(xq); free(sx); return 1; }
    linear(L, B, x, y, xq, sx);
    free(xq);
    free(sx);
    return 0;
}
