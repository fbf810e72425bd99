/*
 * Compiled grouping for the entropy coder (see runtime/grouping.py, which holds the numpy
 * fallback that produces the identical order).
 *
 * Why C: grouping symbols by table index is a stable counting sort. Here it takes one counting
 * pass and one pass that moves the values themselves, reading and writing memory sequentially
 * (one stream per table); numpy has no such primitive, and its 32-bit key sort plus a
 * fancy-index scatter cost about a third of the decoder's time. The loops run without the GIL.
 *
 * Only the buffer protocol is used (no numpy headers), so building needs a C compiler and
 * Python's headers, nothing else. The Python side passes C-contiguous arrays of the right
 * dtypes; byte lengths are checked here so that a misuse cannot write out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Parses (indexes: int32[n], starts: intp[num_tables + 1], ...) and checks the sizes. */
static int table_sizes(const Py_buffer *idx, const Py_buffer *starts, Py_ssize_t *n, Py_ssize_t *tables) {
    const Py_ssize_t word = (Py_ssize_t)sizeof(Py_ssize_t);
    *n = idx->len / (Py_ssize_t)sizeof(int32_t);
    *tables = starts->len / word - 1;
    if (idx->len % (Py_ssize_t)sizeof(int32_t) || starts->len % word || *tables < 1) {
        PyErr_SetString(PyExc_ValueError, "grouping: buffer sizes do not match");
        return 0;
    }
    return 1;
}

/* histogram(indexes: int32[n], starts: intp[num_tables + 1]) -> int
 *
 * ``starts[k]`` becomes where table k's run begins in grouped order, ``starts[num_tables] = n``.
 * Returns -1, or the position of the first index outside [0, num_tables) (starts undefined).
 */
static PyObject *histogram(PyObject *self, PyObject *args) {
    Py_buffer idx, starts;
    if (!PyArg_ParseTuple(args, "y*w*", &idx, &starts)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n, tables, bad = -1;
    if (table_sizes(&idx, &starts, &n, &tables)) {
        const uint32_t *key = idx.buf; /* negative indexes wrap to huge values: one bound check */
        Py_ssize_t *start = starts.buf;
        Py_BEGIN_ALLOW_THREADS
        memset(start, 0, (size_t)starts.len);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (key[i] >= (uint64_t)tables) {
                bad = i;
                break;
            }
            start[key[i] + 1]++;
        }
        for (Py_ssize_t k = 0; k < tables; k++) {
            start[k + 1] += start[k];
        }
        Py_END_ALLOW_THREADS
        result = PyLong_FromSsize_t(bad);
    }
    PyBuffer_Release(&idx);
    PyBuffer_Release(&starts);
    return result;
}

/* Moves int32 values between original order (``flat``) and grouped order (``grouped``): each
 * table's symbols are one sequential stream, so both passes read and write memory in order. */
static PyObject *move(PyObject *args, int to_grouped) {
    Py_buffer idx, starts, src, dst;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &idx, &starts, &src, &dst)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n, tables;
    if (!table_sizes(&idx, &starts, &n, &tables)) {
        goto done;
    }
    const Py_ssize_t *start = starts.buf;
    if (src.len != idx.len || dst.len != idx.len || start[tables] != n) {
        PyErr_SetString(PyExc_ValueError, "grouping: buffer sizes do not match");
        goto done;
    }
    Py_ssize_t *cursor = PyMem_RawMalloc((size_t)tables * sizeof(Py_ssize_t));
    if (cursor == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int ok = 1;
    const uint32_t *key = idx.buf;
    const int32_t *from = src.buf;
    int32_t *to = dst.buf;
    Py_BEGIN_ALLOW_THREADS
    memcpy(cursor, start, (size_t)tables * sizeof(Py_ssize_t));
    /* Runs must tile [0, n) in order, so that every cursor stays inside the buffers. */
    ok = start[0] == 0;
    for (Py_ssize_t k = 0; k < tables && ok; k++) {
        ok = start[k] <= start[k + 1];
    }
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        const uint32_t k = key[i];
        /* A run may not cross into the next: guards against indexes that do not match starts. */
        if (k >= (uint64_t)tables || cursor[k] >= start[k + 1]) {
            ok = 0;
        } else if (to_grouped) {
            to[cursor[k]++] = from[i];
        } else {
            to[i] = from[cursor[k]++];
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(cursor);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "grouping: indexes do not match the run starts");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&idx);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* split(indexes, starts, values, grouped): values in original order -> grouped order. */
static PyObject *split(PyObject *self, PyObject *args) { return move(args, 1); }

/* merge(indexes, starts, grouped, values): grouped order -> values in original order. */
static PyObject *merge(PyObject *self, PyObject *args) { return move(args, 0); }

static PyMethodDef methods[] = {
    {"histogram", histogram, METH_VARARGS, "Run starts of each table in grouped order."},
    {"split", split, METH_VARARGS, "int32 values from original to grouped order."},
    {"merge", merge, METH_VARARGS, "int32 values from grouped to original order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_grouping", "Compiled grouping for ckbd's entropy coder.", -1, methods,
};

PyMODINIT_FUNC PyInit__grouping(void) { return PyModule_Create(&module); }
