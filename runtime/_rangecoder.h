/*
 * The range coder core of _rangecoder.c: constriction's queue RangeEncoder/RangeDecoder with
 * 32-bit words, a 64-bit state and 24-bit probabilities, word for word (see that file for why).
 * Static functions only: included by _rangecoder.c alone.
 */
#ifndef CKBD_RANGECODER_H
#define CKBD_RANGECODER_H
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PRECISION 24
#define ONE ((uint32_t)1 << PRECISION)
#define WORD_BITS 32

/* ---- the range coder (constriction's queue coder: Word u32, State u64, PRECISION 24) ---------- */

typedef struct {
    uint32_t *buf;
    size_t len, cap;
    uint64_t lower, range;
    size_t num_inverted; /* > 0: the "inverted" situation, first_inverted is held back */
    uint32_t first_inverted;
    int oom;
} Encoder;

static void push(Encoder *e, uint32_t word) {
    if (e->len == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 1024;
        uint32_t *buf = PyMem_RawRealloc(e->buf, cap * sizeof(uint32_t));
        if (buf == NULL) {
            e->oom = 1;
            return;
        }
        e->buf = buf;
        e->cap = cap;
    }
    e->buf[e->len++] = word;
}

static void flush_inverted(Encoder *e, uint32_t first, uint32_t rest) {
    push(e, first);
    for (size_t i = 1; i < e->num_inverted; i++) {
        push(e, rest);
    }
    e->num_inverted = 0;
}

static inline void encode(Encoder *e, uint32_t cum, uint32_t prob) {
    const uint64_t scale = e->range >> PRECISION;
    e->range = scale * prob;
    const uint64_t lower = e->lower + scale * cum;
    if (e->num_inverted && lower + e->range > lower) { /* the carry is now known */
        if (lower < e->lower) {
            flush_inverted(e, e->first_inverted + 1, 0);
        } else {
            flush_inverted(e, e->first_inverted, UINT32_MAX);
        }
    }
    e->lower = lower;
    if (e->range < ((uint64_t)1 << WORD_BITS)) {
        e->range <<= WORD_BITS;
        const uint32_t word = (uint32_t)(e->lower >> WORD_BITS);
        e->lower <<= WORD_BITS;
        if (e->num_inverted) {
            e->num_inverted++;
        } else if (e->lower + e->range > e->lower) {
            push(e, word);
        } else {
            e->num_inverted = 1;
            e->first_inverted = word;
        }
    }
}

static void seal(Encoder *e) {
    if (e->range == UINT64_MAX) { /* nothing coded: no words */
        return;
    }
    const uint64_t point = e->lower + (((uint64_t)1 << WORD_BITS) - 1);
    if (e->num_inverted) {
        if (point >= e->lower) {
            flush_inverted(e, e->first_inverted, UINT32_MAX);
        } else {
            flush_inverted(e, e->first_inverted + 1, 0);
        }
    }
    const uint32_t point_word = (uint32_t)(point >> WORD_BITS);
    push(e, point_word);
    if ((uint32_t)((e->lower + e->range) >> WORD_BITS) == point_word) {
        push(e, 0);
    }
}

typedef struct {
    const uint32_t *words;
    size_t len, pos;
    uint64_t lower, range, point;
} Decoder;

static void decoder_init(Decoder *d, const uint32_t *words, size_t len) {
    d->words = words;
    d->len = len;
    d->pos = 0;
    d->lower = 0;
    d->range = UINT64_MAX;
    d->point = 0;
    int read = 0;
    while (d->pos < len && read < 2) {
        d->point = (d->point << WORD_BITS) | words[d->pos++];
        read++;
    }
    if (read == 1) {
        d->point <<= WORD_BITS;
    }
}

/* The quantile of the next symbol, or -1 where the data lie outside the coder's range. */
static inline int64_t quantile(const Decoder *d, uint64_t *scale) {
    *scale = d->range >> PRECISION;
    const uint64_t q = (d->point - d->lower) / *scale;
    return q >= ONE ? -1 : (int64_t)q;
}

static inline void advance(Decoder *d, uint64_t scale, uint32_t cum, uint32_t prob) {
    d->lower += scale * cum;
    d->range = scale * prob;
    if (d->range < ((uint64_t)1 << WORD_BITS)) {
        d->lower <<= WORD_BITS;
        d->range <<= WORD_BITS;
        d->point <<= WORD_BITS;
        if (d->pos < d->len) {
            d->point |= d->words[d->pos++];
        }
    }
}

static int maybe_exhausted(const Decoder *d) {
    const uint64_t max_difference = ((uint64_t)1 << (WORD_BITS + 1)) - 1;
    return d->pos >= d->len && (d->range == UINT64_MAX || d->point - d->lower < max_difference);
}

/* constriction's UniformModel<u32, 24>: size - 1 bins of 2**24 / size, the last takes the rest. */
static inline void uniform_encode(Encoder *e, uint32_t symbol, uint32_t size) {
    const uint32_t bin = ONE / size, cum = symbol * bin;
    encode(e, cum, symbol < size - 1 ? bin : ONE - cum);
}

static inline int uniform_decode(Decoder *d, uint32_t size, uint32_t *symbol) {
    uint64_t scale;
    const int64_t q = quantile(d, &scale);
    if (q < 0) {
        return 0;
    }
    const uint32_t bin = ONE / size, guess = (uint32_t)q / bin;
    if (guess < size - 1) {
        *symbol = guess;
        advance(d, scale, guess * bin, bin);
    } else {
        *symbol = size - 1;
        advance(d, scale, (size - 1) * bin, ONE - (size - 1) * bin);
    }
    return 1;
}

#endif
