/*
 * Compiled range coder for ckbd's indexed tables (see runtime/coder.py for the stream layout and
 * runtime/rangecoder.py for the wrapper).
 *
 * Why C: constriction defines the stream format (its queue RangeEncoder/RangeDecoder with 32-bit
 * words, a 64-bit state and 24-bit probabilities), but its Python bindings hold the GIL, so the
 * substreams of a pass cannot be coded on several cores. This file writes and reads the same words
 * bit for bit and releases the GIL for the whole call: grouping by table, the coding loop, the
 * escapes and the scatter into the caller's array. A property test compares it with constriction.
 *
 * A call codes one row band of a C-contiguous (outer, rows, width) array: rows [r0, r1) of every
 * outer slice, in C order, which is how a pass is cut into substreams.
 *
 * Only the buffer protocol is used (no numpy headers), as in _grouping.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_rangecoder_lanes.h"

static PyObject *CorruptData; /* a stream that cannot be decoded, or values that cannot be coded */

/* ---- tables ---------------------------------------------------------------------------------- */

static void tables_free(Tables *t) {
    if (t != NULL) {
        PyMem_RawFree(t->cdf);
        PyMem_RawFree(t->start);
        PyMem_RawFree(t->offsets);
        PyMem_RawFree(t->escape);
        PyMem_RawFree(t->lut);
        PyMem_RawFree(t);
    }
}

static void tables_capsule_free(PyObject *capsule) {
    tables_free(PyCapsule_GetPointer(capsule, "ckbd.rangecoder.tables"));
}

/* tables(freqs: uint32[T, W], lengths: int32[T], offsets: int32[T], probability_bits) -> capsule.
 * The Python side has validated the tables (entropy_tables._validate): every valid frequency >= 1,
 * each row sums to 2**probability_bits, 2 <= lengths <= W. */
static PyObject *make_tables(PyObject *self, PyObject *args) {
    Py_buffer freqs, lengths, offsets;
    int bits;
    if (!PyArg_ParseTuple(args, "y*y*y*i", &freqs, &lengths, &offsets, &bits)) {
        return NULL;
    }
    PyObject *result = NULL;
    Tables *t = NULL;
    const Py_ssize_t T = lengths.len / 4;
    const Py_ssize_t W = T ? freqs.len / 4 / T : 0;
    if (T < 1 || offsets.len != lengths.len || freqs.len != T * W * 4 || bits < 1 || bits > PRECISION) {
        PyErr_SetString(PyExc_ValueError, "rangecoder: table buffers do not match");
        goto done;
    }
    const uint32_t *f = freqs.buf;
    const int32_t *len = lengths.buf;
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < T; k++) {
        if (len[k] < 2 || len[k] > W) {
            PyErr_SetString(PyExc_ValueError, "rangecoder: invalid table length");
            goto done;
        }
        total += len[k] + 1;
    }
    t = PyMem_RawCalloc(1, sizeof(Tables));
    if (t == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    t->num_tables = T;
    t->cdf = PyMem_RawMalloc((size_t)total * sizeof(uint32_t));
    t->start = PyMem_RawMalloc((size_t)T * sizeof(Py_ssize_t));
    t->offsets = PyMem_RawMalloc((size_t)T * sizeof(int32_t));
    t->escape = PyMem_RawMalloc((size_t)T * sizeof(int32_t));
    t->lut = PyMem_RawMalloc((size_t)T * ((1 << LUT_BITS) + 1) * sizeof(uint32_t));
    if (!t->cdf || !t->start || !t->offsets || !t->escape || !t->lut) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(t->offsets, offsets.buf, (size_t)T * sizeof(int32_t));
    const int shift = PRECISION - bits;
    Py_ssize_t at = 0;
    for (Py_ssize_t k = 0; k < T; k++) {
        uint32_t *cdf = t->cdf + at, sum = 0;
        t->start[k] = at;
        t->escape[k] = len[k] - 1;
        for (int32_t e = 0; e < len[k]; e++) {
            cdf[e] = sum << shift;
            sum += f[k * W + e];
        }
        if (sum != (uint32_t)1 << bits) {
            PyErr_SetString(PyExc_ValueError, "rangecoder: a table does not sum to 2**probability_bits");
            goto done;
        }
        cdf[len[k]] = ONE;
        uint32_t *lut = t->lut + k * ((1 << LUT_BITS) + 1);
        uint32_t e = 0;
        for (uint32_t b = 0; b <= (1u << LUT_BITS); b++) {
            const uint32_t q = b == (1u << LUT_BITS) ? ONE - 1 : b << (PRECISION - LUT_BITS);
            while (cdf[e + 1] <= q) {
                e++;
            }
            lut[b] = e;
        }
        at += len[k] + 1;
    }
    result = PyCapsule_New(t, "ckbd.rangecoder.tables", tables_capsule_free);
    if (result != NULL) {
        t = NULL;
    }
done:
    tables_free(t);
    PyBuffer_Release(&freqs);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&offsets);
    return result;
}

static const char *const MESSAGES[] = {
    NULL,
    NULL,
    "table index out of range",
    "corrupt entropy-coded data: the words lie outside the coder's range",
    "corrupt entropy-coded data: escaped value out of bounds",
    "corrupt entropy-coded data: unread words after the last symbol",
    "an escaped value lies too far outside its table's support",
};

/* ---- Python entry points --------------------------------------------------------------------- */

/* Checks the band against the index buffer; an invalid band is a caller bug (ValueError). */
static int check_band(const Band *b, Py_ssize_t index_bytes) {
    const Py_ssize_t n = index_bytes / 4;
    int ok = index_bytes % 4 == 0 && n < ((Py_ssize_t)1 << 32) && b->outer >= 0 && b->rows >= 0 && b->width >= 0
             && 0 <= b->r0 && b->r0 <= b->r1 && b->r1 <= b->rows;
    if (ok && (b->outer == 0 || b->rows == 0 || b->width == 0)) {
        ok = n == 0;
    } else if (ok) {
        ok = n % b->outer == 0 && (n / b->outer) % b->rows == 0 && n / b->outer / b->rows == b->width;
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "rangecoder: band does not match the arrays");
    }
    return ok;
}

static PyObject *raise_status(int status) {
    if (status == ERR_MEMORY) {
        return PyErr_NoMemory();
    }
    PyErr_SetString(status == ERR_INDEX ? PyExc_ValueError : CorruptData, MESSAGES[status]);
    return NULL;
}

static Tables *get_tables(PyObject *capsule) {
    return PyCapsule_GetPointer(capsule, "ckbd.rangecoder.tables");
}

/* decode(tables, parts: tuple of uint32 buffers, indexes: int32[outer*rows*width], out: int32[same],
 *        outer, rows, width, bands: tuple of (r0, r1)): decodes each part into its rows of ``out``,
 * two at a time (_rangecoder_lanes.h), and raises the error of the first band that fails. */
static PyObject *decode_bands(PyObject *self, PyObject *args) {
    PyObject *capsule, *parts, *cuts, *result = NULL;
    Py_buffer idx, out;
    Band shape;
    if (!PyArg_ParseTuple(args, "OO!y*w*nnnO!", &capsule, &PyTuple_Type, &parts, &idx, &out, &shape.outer,
                          &shape.rows, &shape.width, &PyTuple_Type, &cuts)) {
        return NULL;
    }
    const Tables *t = get_tables(capsule);
    const Py_ssize_t count = PyTuple_GET_SIZE(parts);
    Py_ssize_t held = 0;
    Band *bands = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Band));
    Py_buffer *words = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_buffer));
    if (t == NULL || bands == NULL || words == NULL) {
        result = t == NULL ? NULL : PyErr_NoMemory();
        goto done;
    }
    if (PyTuple_GET_SIZE(cuts) != count || out.len != idx.len) {
        PyErr_SetString(PyExc_ValueError, "rangecoder: buffer sizes do not match");
        goto done;
    }
    for (; held < count; held++) {
        bands[held] = shape;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(cuts, held), "nn", &bands[held].r0, &bands[held].r1)
            || !check_band(&bands[held], idx.len)
            || PyObject_GetBuffer(PyTuple_GET_ITEM(parts, held), &words[held], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        if (words[held].len % 4) {
            PyBuffer_Release(&words[held]);
            PyErr_SetString(PyExc_ValueError, "rangecoder: buffer sizes do not match");
            goto done;
        }
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = decode_lanes(t, bands, words, count, idx.buf, out.buf);
    Py_END_ALLOW_THREADS
    result = status == OK ? Py_NewRef(Py_None) : raise_status(status);
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        PyBuffer_Release(&words[i]);
    }
    PyMem_Free(bands);
    PyMem_Free(words);
    PyBuffer_Release(&idx);
    PyBuffer_Release(&out);
    return result;
}

/* encode(tables, values: int32[outer*rows*width], indexes: int32[same], outer, rows, width, r0, r1)
 * -> bytes: the words of rows [r0, r1), native byte order. */
static PyObject *encode_band(PyObject *self, PyObject *args) {
    PyObject *capsule, *result = NULL;
    Py_buffer values, idx;
    Band b;
    if (!PyArg_ParseTuple(args, "Oy*y*nnnnn", &capsule, &values, &idx, &b.outer, &b.rows, &b.width, &b.r0,
                          &b.r1)) {
        return NULL;
    }
    const Tables *t = get_tables(capsule);
    if (t != NULL && check_band(&b, idx.len)) {
        if (values.len != idx.len) {
            PyErr_SetString(PyExc_ValueError, "rangecoder: buffer sizes do not match");
        } else {
            Work w;
            Encoder e = {.lower = 0, .range = UINT64_MAX};
            int status = ERR_MEMORY;
            Py_BEGIN_ALLOW_THREADS
            if (work_init(&w, &b, t->num_tables)) {
                status = encode_loop(t, &b, &w, &e, idx.buf, values.buf);
            }
            work_free(&w);
            Py_END_ALLOW_THREADS
            result = status == OK ? PyBytes_FromStringAndSize((const char *)e.buf, (Py_ssize_t)(e.len * 4))
                                  : raise_status(status);
            PyMem_RawFree(e.buf);
        }
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&idx);
    return result;
}

static PyMethodDef methods[] = {
    {"tables", make_tables, METH_VARARGS, "Coding tables from integer frequencies (a capsule)."},
    {"decode", decode_bands, METH_VARARGS, "Decode row bands of an (outer, rows, width) array."},
    {"encode", encode_band, METH_VARARGS, "Encode one row band of an (outer, rows, width) array."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rangecoder", "constriction-compatible range coder that releases the GIL.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__rangecoder(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    CorruptData = PyErr_NewException("ckbd.runtime._rangecoder.CorruptData", PyExc_ValueError, NULL);
    if (CorruptData == NULL || PyModule_AddObjectRef(m, "CorruptData", CorruptData) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
