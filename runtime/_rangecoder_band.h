/*
 * Coding one row band of an (outer, rows, width) array with the core of _rangecoder.h, all without
 * the GIL: grouping the band's symbols by table, the lookup of entries, the escapes, the scatter into
 * the output array, and the encoding loop (decoding runs in _rangecoder_lanes.h, two bands at a
 * time). The stream layout is the one runtime/coder.py specifies.
 * Static functions only: included by _rangecoder.c alone.
 */
#ifndef CKBD_RANGECODER_BAND_H
#define CKBD_RANGECODER_BAND_H
#include "_rangecoder.h"

#define MAX_EXP 24
#define HEADER_SIZE (2 * (MAX_EXP + 1))
#define CHUNK 12
#define MAX_MAGNITUDE ((int64_t)1 << 24)

/* Per table: cumulatives in 24-bit units and a lookup table from quantile buckets to entries. */
typedef struct {
    Py_ssize_t num_tables;
    uint32_t *cdf;      /* per table lengths[k] + 1 cumulatives in 24-bit units, the last is ONE */
    Py_ssize_t *start;  /* table k's cumulatives begin at cdf + start[k] */
    int32_t *offsets;   /* value of entry 0 */
    int32_t *escape;    /* entry index of the escape (lengths - 1) */
    uint32_t *lut;      /* per table 2**LUT_BITS + 1 entries: the entry holding each bucket's start */
} Tables;

enum { OK, ERR_MEMORY, ERR_INDEX, ERR_INVALID, ERR_BOUNDS, ERR_UNREAD, ERR_FAR };

#define LUT_BITS 10

/* Entries of a table are found from the 24-bit quantile: a lookup table gives the entries holding
 * the bucket's first and last quantile, a binary search between them (usually one entry) the rest.
 * 2**10 buckets (4 KiB a table) decoded 15-20 % faster than 2**12 on Gaussian tables: the lookup
 * tables of a pass's tables then stay in the cache, and a bucket rarely holds more than one entry. */
static inline uint32_t find_entry(const uint32_t *cdf, const uint32_t *lut, uint32_t q) {
    const uint32_t b = q >> (PRECISION - LUT_BITS);
    uint32_t lo = lut[b], hi = lut[b + 1];
    while (lo < hi) {
        const uint32_t mid = (lo + hi + 1) >> 1;
        if (cdf[mid] <= q) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

/* ---- grouping a band by table ---------------------------------------------------------------- */

typedef struct {
    Py_ssize_t outer, rows, width, r0, r1;
} Band;

/* Counts the band's symbols per table: ``run[k]`` becomes where table k's run starts in grouped
 * order, ``run[tables]`` the band's size. Returns 0 where an index is outside [0, tables). */
static int count_band(const Band *b, const uint32_t *idx, Py_ssize_t tables, Py_ssize_t *run) {
    const Py_ssize_t seg = (b->r1 - b->r0) * b->width;
    memset(run, 0, (size_t)(tables + 1) * sizeof(Py_ssize_t));
    for (Py_ssize_t c = 0; c < b->outer; c++) {
        const uint32_t *key = idx + (c * b->rows + b->r0) * b->width;
        for (Py_ssize_t i = 0; i < seg; i++) {
            if (key[i] >= (uint64_t)tables) {
                return 0;
            }
            run[key[i] + 1]++;
        }
    }
    for (Py_ssize_t k = 0; k < tables; k++) {
        run[k + 1] += run[k];
    }
    return 1;
}

/* Moves the band's values between the array (C order) and ``grouped`` (table by table, a stable
 * counting sort): both passes read and write memory in order, one stream per table. */
static void move_band(const Band *b, const uint32_t *idx, Py_ssize_t tables, Py_ssize_t *run, int32_t *grouped,
                      int32_t *array, int to_grouped) {
    const Py_ssize_t seg = (b->r1 - b->r0) * b->width;
    Py_ssize_t *cursor = run + tables + 1; /* the caller allocates 2 * tables + 1 */
    memcpy(cursor, run, (size_t)tables * sizeof(Py_ssize_t));
    for (Py_ssize_t c = 0; c < b->outer; c++) {
        const Py_ssize_t base = (c * b->rows + b->r0) * b->width;
        for (Py_ssize_t i = base; i < base + seg; i++) {
            if (to_grouped) {
                grouped[cursor[idx[i]]++] = array[i];
            } else {
                array[i] = grouped[cursor[idx[i]]++];
            }
        }
    }
}

/* The table whose run holds grouped position ``j`` (the last run starting at or before it). */
static uint32_t table_of(const Py_ssize_t *run, Py_ssize_t tables, Py_ssize_t j) {
    Py_ssize_t lo = 0, hi = tables - 1;
    while (lo < hi) {
        const Py_ssize_t mid = (lo + hi + 1) / 2;
        if (run[mid] <= j) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return (uint32_t)lo;
}

/* Per-call memory, allocated without the GIL. */
typedef struct {
    int32_t *grouped;  /* the band's values in grouped order */
    Py_ssize_t *run;   /* 2 * num_tables + 1: run starts, then cursors */
    uint32_t *escaped; /* grouped positions of the escapes, in order */
    int64_t *gamma;    /* per escape: d + 1, the Elias-gamma coded overflow */
    size_t num_escaped, cap_escaped;
} Work;

static int work_init(Work *w, const Band *b, Py_ssize_t tables) {
    const Py_ssize_t n = b->outer * (b->r1 - b->r0) * b->width;
    memset(w, 0, sizeof(Work));
    w->grouped = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(int32_t));
    w->run = PyMem_RawMalloc((size_t)(2 * tables + 1) * sizeof(Py_ssize_t));
    return w->grouped != NULL && w->run != NULL;
}

static void work_free(Work *w) {
    PyMem_RawFree(w->grouped);
    PyMem_RawFree(w->run);
    PyMem_RawFree(w->escaped);
    PyMem_RawFree(w->gamma);
}

static int note_escape(Work *w, uint32_t position) {
    if (w->num_escaped == w->cap_escaped) {
        size_t cap = w->cap_escaped ? 2 * w->cap_escaped : 256;
        uint32_t *escaped = PyMem_RawRealloc(w->escaped, cap * sizeof(uint32_t));
        if (escaped == NULL) {
            return 0;
        }
        w->escaped = escaped;
        w->cap_escaped = cap;
    }
    w->escaped[w->num_escaped++] = position;
    return 1;
}

static int decode_escapes(const Tables *t, Work *w, Decoder *d) {
    const size_t m = w->num_escaped;
    w->gamma = PyMem_RawMalloc((m ? m : 1) * sizeof(int64_t));
    uint8_t *header = PyMem_RawMalloc(m ? m : 1);
    int status = w->gamma && header ? OK : ERR_MEMORY;
    uint32_t symbol = 0;
    for (size_t i = 0; i < m && status == OK; i++) {
        status = uniform_decode(d, HEADER_SIZE, &symbol) ? OK : ERR_INVALID;
        header[i] = (uint8_t)symbol;
        w->gamma[i] = (int64_t)1 << (symbol % (MAX_EXP + 1));
    }
    for (int shift = 0; shift <= CHUNK && status == OK; shift += CHUNK) {
        for (size_t i = 0; i < m && status == OK; i++) {
            const int n = header[i] % (MAX_EXP + 1), width = n - shift < CHUNK ? n - shift : CHUNK;
            if (width > 0) {
                status = uniform_decode(d, (uint32_t)1 << width, &symbol) ? OK : ERR_INVALID;
                w->gamma[i] |= (int64_t)symbol << shift;
            }
        }
    }
    for (size_t i = 0; i < m && status == OK; i++) {
        const uint32_t k = table_of(w->run, t->num_tables, w->escaped[i]);
        const int64_t low = t->offsets[k], high = low + t->escape[k] - 1;
        const int64_t value = header[i] >= MAX_EXP + 1 ? low - w->gamma[i] : high + w->gamma[i];
        if (value > MAX_MAGNITUDE || value < -MAX_MAGNITUDE) {
            status = ERR_BOUNDS;
        }
        w->grouped[w->escaped[i]] = (int32_t)value;
    }
    PyMem_RawFree(header);
    return status;
}

static int encode_loop(const Tables *t, const Band *b, Work *w, Encoder *e, const uint32_t *idx, int32_t *values) {
    if (!count_band(b, idx, t->num_tables, w->run)) {
        return ERR_INDEX;
    }
    move_band(b, idx, t->num_tables, w->run, w->grouped, values, 1);
    for (Py_ssize_t k = 0; k < t->num_tables; k++) {
        const uint32_t *cdf = t->cdf + t->start[k];
        const int64_t offset = t->offsets[k], escape = t->escape[k];
        for (Py_ssize_t j = w->run[k]; j < w->run[k + 1]; j++) {
            int64_t entry = (int64_t)w->grouped[j] - offset;
            if (entry < 0 || entry >= escape) {
                if (!note_escape(w, (uint32_t)j)) {
                    return ERR_MEMORY;
                }
                entry = escape;
            }
            encode(e, cdf[entry], cdf[entry + 1] - cdf[entry]);
        }
    }
    const size_t m = w->num_escaped;
    uint8_t *header = PyMem_RawMalloc(m ? m : 1);
    w->gamma = PyMem_RawMalloc((m ? m : 1) * sizeof(int64_t));
    int status = w->gamma && header ? OK : ERR_MEMORY;
    for (size_t i = 0; i < m && status == OK; i++) { /* all checked before any escape is coded */
        const uint32_t k = table_of(w->run, t->num_tables, w->escaped[i]);
        const int64_t value = w->grouped[w->escaped[i]], low = t->offsets[k], high = low + t->escape[k] - 1;
        const int sign = value < low;
        const int64_t gamma = sign ? low - value : value - high;
        if (gamma >= (int64_t)1 << (MAX_EXP + 1)) {
            status = ERR_FAR;
        }
        int n = 0;
        while (n < MAX_EXP && (gamma >> (n + 1)) != 0) {
            n++;
        }
        header[i] = (uint8_t)(sign * (MAX_EXP + 1) + n);
        w->gamma[i] = gamma;
    }
    for (size_t i = 0; i < m && status == OK; i++) {
        uniform_encode(e, header[i], HEADER_SIZE);
    }
    for (int shift = 0; shift <= CHUNK && status == OK; shift += CHUNK) {
        for (size_t i = 0; i < m; i++) {
            const int n = header[i] % (MAX_EXP + 1), width = n - shift < CHUNK ? n - shift : CHUNK;
            if (width > 0) {
                const uint32_t mantissa = (uint32_t)(w->gamma[i] - ((int64_t)1 << n));
                uniform_encode(e, (mantissa >> shift) & ((1u << width) - 1), (uint32_t)1 << width);
            }
        }
    }
    PyMem_RawFree(header);
    if (status == OK) {
        seal(e);
    }
    return e->oom ? ERR_MEMORY : status;
}

#endif
