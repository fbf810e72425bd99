/*
 * Decoding a thread's substreams two at a time (the decode side of _rangecoder.c).
 *
 * Why: one range decoder is a chain of dependent steps per symbol (a 64-bit division, the lookup of
 * the entry, two multiplies) that keeps a core's other execution units idle. Two substreams are
 * independent, so decoding them in alternation lets the core overlap the two chains: the words, the
 * symbols and the errors are those of decoding the substreams one after the other.
 *
 * Each substream (a "lane") is decoded in grouped order, table run by table run, then its escapes are
 * decoded and its values moved into the caller's array (nothing of a failing lane is moved). The
 * error reported is that of the first band, in order, that fails.
 * Static functions only: included by _rangecoder.c alone.
 */
#ifndef CKBD_RANGECODER_LANES_H
#define CKBD_RANGECODER_LANES_H
#include "_rangecoder_band.h"

/* One table's run as the hot loop needs it. */
typedef struct {
    const uint32_t *cdf, *lut;
    int32_t offset;
    uint32_t escape;
} Run;

static inline Run run_of(const Tables *t, Py_ssize_t k) {
    const Run r = {t->cdf + t->start[k], t->lut + k * ((1 << LUT_BITS) + 1), t->offsets[k], (uint32_t)t->escape[k]};
    return r;
}

/* One substream being decoded: its coder and where it stands in its table runs. */
typedef struct {
    Band band;
    Work work;
    Decoder coder;
    Py_ssize_t table;   /* the table whose run is being decoded (-1 before the first) */
    Py_ssize_t at, end; /* the next grouped position, and the end of the table's run */
    int status;
} Lane;

static void lane_open(const Tables *t, Lane *l, const Band *band, const Py_buffer *words, const uint32_t *idx) {
    l->band = *band;
    l->table = -1;
    l->at = l->end = 0;
    decoder_init(&l->coder, words->buf, (size_t)words->len / 4);
    if (!work_init(&l->work, band, t->num_tables)) {
        l->status = ERR_MEMORY;
    } else {
        l->status = count_band(band, idx, t->num_tables, l->work.run) ? OK : ERR_INDEX;
    }
}

/* Moves the lane on to its next non-empty table run; 0 when its symbols are all decoded. */
static inline int lane_next_run(const Tables *t, Lane *l) {
    while (l->at == l->end) {
        if (l->table + 1 >= t->num_tables) {
            return 0;
        }
        l->table++;
        l->end = l->work.run[l->table + 1];
    }
    return 1;
}

/* Decodes the symbol at grouped position ``j`` under run ``r``: OK or the error. */
static inline int decode_at(Decoder *d, const Run *r, Work *w, Py_ssize_t j) {
    uint64_t scale;
    const int64_t q = quantile(d, &scale);
    if (q < 0) {
        return ERR_INVALID;
    }
    const uint32_t e = find_entry(r->cdf, r->lut, (uint32_t)q);
    advance(d, scale, r->cdf[e], r->cdf[e + 1] - r->cdf[e]);
    w->grouped[j] = r->offset + (int32_t)e;
    return e != r->escape || note_escape(w, (uint32_t)j) ? OK : ERR_MEMORY;
}

/* Decodes the rest of one lane's symbols. */
static void decode_alone(const Tables *t, Lane *l) {
    while (l->status == OK && lane_next_run(t, l)) {
        const Run r = run_of(t, l->table);
        Decoder d = l->coder;
        Py_ssize_t j = l->at;
        for (; j < l->end && l->status == OK; j++) {
            l->status = decode_at(&d, &r, &l->work, j);
        }
        l->coder = d;
        l->at = j;
    }
}

/* Decodes two lanes' symbols in alternation while both have some; the longer one is left for
 * decode_alone. Stops at the first lane's failure, or leaves the first lane alone at the second's. */
static void decode_pair(const Tables *t, Lane *a, Lane *b) {
    while (a->status == OK && b->status == OK && lane_next_run(t, a) && lane_next_run(t, b)) {
        const Run ra = run_of(t, a->table), rb = run_of(t, b->table);
        const Py_ssize_t n = a->end - a->at < b->end - b->at ? a->end - a->at : b->end - b->at;
        const Py_ssize_t ja = a->at, jb = b->at;
        Decoder da = a->coder, db = b->coder;
        int sa = OK, sb = OK;
        Py_ssize_t i = 0; /* symbols both lanes decoded */
        for (; i < n; i++) {
            sa = decode_at(&da, &ra, &a->work, ja + i);
            if (sa != OK) {
                break;
            }
            sb = decode_at(&db, &rb, &b->work, jb + i);
            if (sb != OK) {
                a->at = ja + i + 1; /* the first lane goes on alone after its symbol i */
                break;
            }
        }
        a->coder = da;
        b->coder = db;
        a->status = sa;
        b->status = sb;
        if (sb == OK) {
            a->at = ja + i;
        }
        b->at = jb + i;
    }
}

/* The lane's escapes, its end-of-stream check and the move of its values into ``out``. */
static int lane_finish(const Tables *t, Lane *l, const uint32_t *idx, int32_t *out) {
    int status = l->status;
    if (status == OK) {
        status = decode_escapes(t, &l->work, &l->coder);
    }
    if (status == OK && !maybe_exhausted(&l->coder)) {
        status = ERR_UNREAD;
    }
    if (status == OK) {
        move_band(&l->band, idx, t->num_tables, l->work.run, l->work.grouped, out, 0);
    }
    return status;
}

/* Decodes ``count`` substreams into their bands of ``out``, two at a time; the status of the first
 * band that fails. Runs without the GIL. */
static int decode_lanes(const Tables *t, const Band *bands, const Py_buffer *words, Py_ssize_t count,
                        const uint32_t *idx, int32_t *out) {
    int status = OK;
    for (Py_ssize_t i = 0; i < count && status == OK; i += 2) {
        const int n = count - i >= 2 ? 2 : 1;
        Lane lanes[2];
        for (int k = 0; k < n; k++) {
            lane_open(t, &lanes[k], &bands[i + k], &words[i + k], idx);
        }
        if (n == 2) {
            decode_pair(t, &lanes[0], &lanes[1]);
        }
        for (int k = 0; k < n && status == OK; k++) {
            decode_alone(t, &lanes[k]);
            status = lane_finish(t, &lanes[k], idx, out);
        }
        for (int k = 0; k < n; k++) {
            work_free(&lanes[k].work);
        }
    }
    return status;
}

#endif
