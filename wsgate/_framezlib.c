/* wsgate._framecore's permessage-deflate streams (RFC 7692) for the
 * compiled path: Deflater and Inflater, used by wsgate._cdeflate.
 *
 * Through zlib they give the bytes, verdicts and error texts of the zlib
 * objects the Python path (wsgate._leandeflate) uses, with the same zlib,
 * so the peer sees the same stream; what they change is the cost of a
 * message:
 *
 * - A whole message is one call: compressed, sync-flushed, tried against
 *   the "does it pay" rule and trimmed (Deflater.whole); inflated within
 *   its limits, its text checked and the dropped 00 00 ff ff tail fed
 *   (Inflater.whole). The Python path makes about ten calls each way.
 * - The peer's window (what an idle connection keeps once its zlib states
 *   are dropped) costs no copy per message: the deflater keeps its input in
 *   a linear history, the inflater asks zlib for its window
 *   (inflateGetDictionary) only when it is dropped. The Python path
 *   rebuilds a 4 KiB bytes object per message and direction.
 * - At level 1 a whole message of up to QUICK_MAX bytes goes through the
 *   fast encoder (_framequick.c) instead of zlib, matching against the same
 *   history: other bytes than zlib's, the same message for the peer. zlib's
 *   stream is primed with the history again before it is next used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#include "_framequick.h"
#include "_frameutf8.h"

/* zlib.error: the Python path's exception, so the callers catch one type. */
static PyObject *zlib_error;

static const uint8_t SYNC_TAIL[4] = {0x00, 0x00, 0xff, 0xff};

/* The error zlib's Python module raises for the same failure. */
static void
set_zlib_error(const z_stream *zs, int err, const char *what)
{
    const char *zmsg = err == Z_VERSION_ERROR ? "library version mismatch" : zs->msg;
    if (zmsg == NULL) {
        if (err == Z_BUF_ERROR)
            zmsg = "incomplete or truncated stream";
        else if (err == Z_STREAM_ERROR)
            zmsg = "inconsistent stream state";
        else if (err == Z_DATA_ERROR)
            zmsg = "invalid input data";
    }
    if (err == Z_MEM_ERROR)
        PyErr_NoMemory();
    else if (zmsg == NULL)
        PyErr_Format(zlib_error, "Error %d %s", err, what);
    else
        PyErr_Format(zlib_error, "Error %d %s: %.200s", err, what, zmsg);
}

/* -- zlib's memory, known so that it can be prefetched ------------------------ */

/* A connection's zlib state is cold when its next message comes (other
 * connections ran since): asking for all its lines at once costs less than
 * missing on each in turn. zlib allocates through these hooks, which note
 * its blocks (a deflate stream has five, an inflate stream two). */
#define ZBLOCKS 6

typedef struct {
    void *ptr[ZBLOCKS];
    size_t size[ZBLOCKS];
} zblocks;

static voidpf
zb_alloc(voidpf opaque, uInt items, uInt size)
{
    zblocks *b = opaque;
    size_t n = (size_t)items * size;
    void *p = PyMem_RawMalloc(n ? n : 1);
    for (int k = 0; p != NULL && k < ZBLOCKS; k++) {
        if (b->ptr[k] == NULL) {
            b->ptr[k] = p;
            b->size[k] = n;
            break;
        }
    }
    return p;
}

static void
zb_free(voidpf opaque, voidpf p)
{
    zblocks *b = opaque;
    for (int k = 0; k < ZBLOCKS; k++) {
        if (b->ptr[k] == p) {
            b->ptr[k] = NULL;
            b->size[k] = 0;
        }
    }
    PyMem_RawFree(p);
}

static void
zb_prefetch(const zblocks *b)
{
    for (int k = 0; k < ZBLOCKS; k++) {
        const char *p = b->ptr[k];
        for (size_t i = 0; i < b->size[k]; i += 64)
            __builtin_prefetch(p + i, 1);
    }
}

/* -- Deflater ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    z_stream zs;
    int live;     /* zs is initialised */
    int synced;   /* zs's window is the history's (else: reset, primed, before use) */
    int dirty;    /* zs has taken input since it was initialised or reset */
    int busy;     /* a message went through since the idle check cleared it */
    int level, bits, mem_level;
    int keep;     /* context takeover: the history carries over to the next message */
    /* The history: the plaintext of the messages sent compressed, at least
     * its last `size` bytes (the peer's window), linear; hist[0] is the
     * stream's position `base`. */
    uint8_t *hist;
    Py_ssize_t hist_len, hist_cap, size;
    uint64_t base;
    uint16_t *head; /* the fast encoder's hash table (level 1, while busy) */
} Deflater;

/* End the zlib stream, if there is one. */
static void
zlib_end(Deflater *d)
{
    if (d->live) {
        deflateEnd(&d->zs);
        d->live = 0;
    }
}

/* Whether an encoder's state is held (what idling would drop). */
static int
deflater_holds(const Deflater *d)
{
    return d->live || d->head != NULL;
}

static int
Deflater_init(Deflater *d, PyObject *args, PyObject *kw)
{
    static char *names[] = {"level", "bits", "mem_level", "keep", NULL};
    int level, bits, mem_level, keep;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiip", names, &level, &bits, &mem_level, &keep))
        return -1;
    if (bits < 8 || bits > 15 || mem_level < 1 || mem_level > 9 || level < 0 || level > 9) {
        PyErr_SetString(PyExc_ValueError, "level 0-9, bits 8-15, mem_level 1-9");
        return -1;
    }
    zlib_end(d);
    d->level = level;
    d->bits = bits;
    d->mem_level = mem_level;
    d->keep = keep;
    d->dirty = d->busy = d->synced = 0;
    PyMem_Free(d->hist);
    PyMem_Free(d->head);
    d->hist = NULL;
    d->head = NULL;
    d->hist_len = d->hist_cap = 0;
    d->base = 0;
    d->size = (Py_ssize_t)1 << bits;
    return 0;
}

static void
Deflater_dealloc(Deflater *d)
{
    zlib_end(d);
    PyMem_Free(d->hist);
    PyMem_Free(d->head);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

/* The peer's window: the history's last `size` bytes (fewer at first). */
static Py_ssize_t
window_len(const Deflater *d)
{
    return d->hist_len < d->size ? d->hist_len : d->size;
}

/* Room to append n bytes (n <= QUICK_MAX, or n < size): older history than
 * the window slides out. */
static int
hist_room(Deflater *d, Py_ssize_t n)
{
    if (d->hist_len + n <= d->hist_cap && d->hist != NULL)
        return 0;
    Py_ssize_t keep = window_len(d);
    if (keep && d->hist_len > keep)
        memmove(d->hist, d->hist + d->hist_len - keep, keep);
    d->base += (uint64_t)(d->hist_len - keep);
    d->hist_len = keep;
    Py_ssize_t want = 2 * d->size + QUICK_MAX;
    if (want < keep + n)
        want = keep + n;
    if (want > d->hist_cap) {
        uint8_t *grown = PyMem_Realloc(d->hist, want);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        d->hist = grown;
        d->hist_cap = want;
    }
    return 0;
}

/* p joins the history (a message that went through zlib). */
static int
hist_add(Deflater *d, const uint8_t *p, Py_ssize_t n)
{
    if (!d->keep || n <= 0)
        return 0;
    Py_ssize_t from;
    if (n >= d->size) {
        d->base += (uint64_t)(d->hist_len + n - d->size);
        d->hist_len = 0;
        if (hist_room(d, d->size) < 0)
            return -1;
        memcpy(d->hist, p + n - d->size, d->size);
        d->hist_len = d->size;
        from = 0;
    } else {
        if (hist_room(d, n) < 0)
            return -1;
        memcpy(d->hist + d->hist_len, p, n);
        from = d->hist_len - 3;
        d->hist_len += n;
    }
    if (d->head != NULL)  /* the fast encoder may match these bytes too */
        wsgate_quick_insert(d->hist, from, d->hist_len - 3, d->base, d->head);
    return 0;
}

/* Ready for a message through zlib: a stream primed with the window when
 * there is none or when the fast encoder wrote since (the Python path's
 * compressobj(..., zdict=window)); without takeover, a fresh one each. */
static int
deflater_start(Deflater *d)
{
    d->busy = 1;
    if (d->live && d->synced && (d->keep || !d->dirty))
        return 0;
    int err;
    if (!d->live) {
        memset(&d->zs, 0, sizeof d->zs);
        err = deflateInit2(&d->zs, d->level, Z_DEFLATED, -d->bits, d->mem_level,
                           Z_DEFAULT_STRATEGY);
        if (err != Z_OK) {
            set_zlib_error(&d->zs, err, "while creating compression object");
            return -1;
        }
        d->live = 1;
    } else {
        deflateReset(&d->zs);
    }
    d->dirty = 0;
    d->synced = 1;
    Py_ssize_t w = window_len(d);
    if (d->keep && w) {
        err = deflateSetDictionary(&d->zs, d->hist + d->hist_len - w, (uInt)w);
        if (err != Z_OK) {
            set_zlib_error(&d->zs, err, "while setting zdict");
            return -1;
        }
    }
    return 0;
}

/* The output spaces a zlib-module call gives deflate, in turn (CPython's
 * _BlocksOutputBuffer). Where avail_out runs out matters: a sync flush that
 * ends exactly there is repeated by the next call (zlib.h: "avoid repeated
 * flush markers"), so the same spaces give the module's very bytes. */
static const Py_ssize_t BLOCKS[] = {
    32 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 16 << 20,
    32 << 20, 32 << 20, 32 << 20, 32 << 20, 64 << 20, 64 << 20, 128 << 20, 128 << 20,
    256 << 20,
};
#define NBLOCKS ((int)(sizeof BLOCKS / sizeof BLOCKS[0]))

/* The first block of every call (the GIL is held throughout: one caller). */
static uint8_t first_block[32 << 10];

/* Make *out (cap bytes, used filled) hold at least want bytes. */
static int
reserve(PyObject **out, Py_ssize_t *cap, Py_ssize_t want)
{
    if (want <= *cap)
        return 0;
    Py_ssize_t next = *cap * 2 > want ? *cap * 2 : want;
    if (_PyBytes_Resize(out, next) < 0)
        return -1;
    *cap = next;
    return 0;
}

/* One zlib-module compress(data) (mode Z_NO_FLUSH) or flush(mode) call,
 * its output appended to *out. */
static int
deflate_call(Deflater *d, const uint8_t *p, Py_ssize_t n, int mode, PyObject **out,
             Py_ssize_t *used, Py_ssize_t *cap)
{
    z_stream *zs = &d->zs;
    d->dirty = 1;
    int k = 0;  /* the block being filled: 0 is first_block, later ones are in *out */
    zs->next_out = first_block;
    zs->avail_out = (uInt)BLOCKS[0];
    zs->next_in = (Bytef *)p;
    Py_ssize_t ibuflen = n;
    do {
        uInt chunk = ibuflen > UINT_MAX ? UINT_MAX : (uInt)ibuflen;
        zs->avail_in = chunk;
        ibuflen -= chunk;
        do {
            if (zs->avail_out == 0) {
                /* the block is full: keep it, go on in the next one, in *out */
                Py_ssize_t full = BLOCKS[k < NBLOCKS ? k : NBLOCKS - 1];
                Py_ssize_t next = BLOCKS[k + 1 < NBLOCKS ? k + 1 : NBLOCKS - 1];
                if (reserve(out, cap, *used + full + next) < 0)
                    return -1;
                if (k == 0)
                    memcpy(PyBytes_AS_STRING(*out) + *used, first_block, full);
                *used += full;
                k++;
                zs->next_out = (Bytef *)PyBytes_AS_STRING(*out) + *used;
                zs->avail_out = (uInt)next;
            }
            int err = deflate(zs, mode);
            if (err == Z_STREAM_ERROR) {
                set_zlib_error(zs, err, mode == Z_NO_FLUSH ? "while compressing data"
                                                           : "while flushing");
                return -1;
            }
        } while (zs->avail_out == 0);
    } while (ibuflen != 0);
    if (k == 0) {
        Py_ssize_t filled = BLOCKS[0] - zs->avail_out;
        if (reserve(out, cap, *used + filled) < 0)
            return -1;
        memcpy(PyBytes_AS_STRING(*out) + *used, first_block, filled);
        *used += filled;
    } else {
        *used += BLOCKS[k < NBLOCKS ? k : NBLOCKS - 1] - zs->avail_out;
    }
    return 0;
}

static PyObject *
deflate_bytes(Deflater *d, const uint8_t *p, Py_ssize_t n, int mode)
{
    Py_ssize_t cap = n / 2 + 64, used = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        return NULL;
    if (deflate_call(d, p, n, mode, &out, &used, &cap) < 0 || _PyBytes_Resize(&out, used) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

/* Free the zlib state (and the fast encoder's table), keep the window: the
 * next message rebuilds them. Whether anything was held. */
static int
deflater_drop(Deflater *d)
{
    int held = deflater_holds(d);
    zlib_end(d);
    PyMem_Free(d->head);
    d->head = NULL;
    return held;
}

/* Idle: only the window stays, in a buffer of its size. Whether an
 * encoder's state was held. */
static int
deflater_idle(Deflater *d)
{
    int held = deflater_drop(d);
    Py_ssize_t keep = window_len(d);
    if (d->hist == NULL || d->hist_cap == keep)
        return held;
    if (d->hist_len > keep)
        memmove(d->hist, d->hist + d->hist_len - keep, keep);
    d->base += (uint64_t)(d->hist_len - keep);
    d->hist_len = keep;
    if (keep == 0) {
        PyMem_Free(d->hist);
        d->hist = NULL;
        d->hist_cap = 0;
        return held;
    }
    uint8_t *small = PyMem_Realloc(d->hist, keep);
    if (small != NULL) {
        d->hist = small;
        d->hist_cap = keep;
    }
    return held;
}

static int
pays(Py_ssize_t sample, Py_ssize_t compressed)
{
    return (compressed - 4) * 10 <= sample * 9;
}

/* A whole message of at most QUICK_MAX bytes through the fast encoder:
 * its payload (sync-flushed, no tail), or None when that does not pay. */
static PyObject *
deflater_quick(Deflater *d, const uint8_t *p, Py_ssize_t n)
{
    d->busy = 1;
    if (!d->keep)
        d->hist_len = 0;  /* nothing to match against */
    if (hist_room(d, n) < 0)
        return NULL;
    if (d->head == NULL) {
        d->head = PyMem_Calloc(QUICK_HASH, sizeof *d->head);
        if (d->head == NULL)
            return PyErr_NoMemory();
        Py_ssize_t w = window_len(d);
        wsgate_quick_insert(d->hist, d->hist_len - w, d->hist_len - 3, d->base, d->head);
    }
    memcpy(d->hist + d->hist_len, p, n);
    PyObject *out = PyBytes_FromStringAndSize(NULL, QUICK_BOUND(n));
    if (out == NULL)
        return NULL;
    Py_ssize_t used = wsgate_quick_deflate(d->hist, d->hist_len, n, d->base, d->size, d->head,
                                           (uint8_t *)PyBytes_AS_STRING(out));
    if (!pays(n, used + 4)) {  /* the message leaves the history as it came */
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (d->keep) {
        d->hist_len += n;
        d->synced = 0;  /* zlib's window (if any) lacks it */
    } else {
        deflater_drop(d);  /* a new one per message, as the Python path */
    }
    if (_PyBytes_Resize(&out, used) < 0)
        return NULL;
    return out;
}

/* A trial through zlib: p compressed and sync-flushed; None when it does
 * not pay (the stream, which took in what the peer gets raw, is dropped, as
 * the Python path drops it), else the output and p in the history. */
static PyObject *
deflater_trial(Deflater *d, const uint8_t *p, Py_ssize_t n, int trim)
{
    if (deflater_start(d) < 0)
        return NULL;
    Py_ssize_t cap = n + 64, used = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        return NULL;
    if (deflate_call(d, p, n, Z_NO_FLUSH, &out, &used, &cap) < 0
        || deflate_call(d, NULL, 0, Z_SYNC_FLUSH, &out, &used, &cap) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    if (!pays(n, used)) {
        Py_DECREF(out);
        zlib_end(d);
        Py_RETURN_NONE;
    }
    if (hist_add(d, p, n) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    if (trim) {
        if (!d->keep)
            deflater_drop(d);  /* a new one per message, as the Python path */
        if (used >= 4 && memcmp(PyBytes_AS_STRING(out) + used - 4, SYNC_TAIL, 4) == 0)
            used -= 4;
        if (used == 0)  /* an empty stored block the peer can end with 00 00 ff ff */
            PyBytes_AS_STRING(out)[used++] = 0;
    }
    if (_PyBytes_Resize(&out, used) < 0)
        return NULL;
    return out;
}

static PyObject *
Deflater_whole(Deflater *d, PyObject *arg)
{
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = d->level == 1 && v.len <= QUICK_MAX ? deflater_quick(d, v.buf, v.len)
                                                        : deflater_trial(d, v.buf, v.len, 1);
    PyBuffer_Release(&v);
    return out;
}

static PyObject *
Deflater_trial(Deflater *d, PyObject *arg)
{
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = deflater_trial(d, v.buf, v.len, 0);
    PyBuffer_Release(&v);
    return out;
}

static PyObject *
Deflater_start(Deflater *d, PyObject *Py_UNUSED(ignored))
{
    if (deflater_start(d) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Deflater_compress(Deflater *d, PyObject *arg)
{
    if (!d->live) {
        PyErr_SetString(PyExc_RuntimeError, "compress() before start()");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    d->busy = 1;
    PyObject *out = deflate_bytes(d, v.buf, v.len, Z_NO_FLUSH);
    if (out != NULL && hist_add(d, v.buf, v.len) < 0)
        Py_CLEAR(out);
    PyBuffer_Release(&v);
    return out;
}

static PyObject *
Deflater_flush(Deflater *d, PyObject *const *args, Py_ssize_t nargs)
{
    int mode = Z_SYNC_FLUSH;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "flush(mode=Z_SYNC_FLUSH)");
        return NULL;
    }
    if (nargs == 1) {
        mode = PyLong_AsLong(args[0]);
        if (mode == -1 && PyErr_Occurred())
            return NULL;
    }
    if (!d->live) {
        PyErr_SetString(PyExc_RuntimeError, "flush() before start()");
        return NULL;
    }
    return deflate_bytes(d, NULL, 0, mode);
}

static PyObject *
Deflater_drop(Deflater *d, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(deflater_idle(d));
}

static PyObject *
Deflater_get_window(Deflater *d, void *Py_UNUSED(closure))
{
    Py_ssize_t w = d->keep ? window_len(d) : 0;
    return PyBytes_FromStringAndSize(w ? (const char *)d->hist + d->hist_len - w : NULL, w);
}

static PyObject *
Deflater_get_live(Deflater *d, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(deflater_holds(d));
}

static PyMethodDef Deflater_methods[] = {
    {"whole", (PyCFunction)Deflater_whole, METH_O,
     "whole(data) -> a whole message's payload (compressed, sync-flushed, without the "
     "00 00 ff ff tail), or None when compressing does not pay"},
    {"trial", (PyCFunction)Deflater_trial, METH_O,
     "trial(sample) -> the sample compressed and sync-flushed (tail kept), or None"},
    {"start", (PyCFunction)Deflater_start, METH_NOARGS, "A message begins."},
    {"compress", (PyCFunction)Deflater_compress, METH_O, "compress(data) -> bytes"},
    {"flush", (PyCFunction)(void (*)(void))Deflater_flush, METH_FASTCALL,
     "flush(mode=Z_SYNC_FLUSH) -> bytes"},
    {"drop", (PyCFunction)Deflater_drop, METH_NOARGS,
     "Free the encoders' states (True if there were any); the window stays."},
    {NULL}
};

static PyMemberDef Deflater_members[] = {
    {"busy", T_INT, offsetof(Deflater, busy), 0, "Set by every message; the idle check clears it."},
    {NULL}
};

static PyGetSetDef Deflater_getset[] = {
    {"window", (getter)Deflater_get_window, NULL, "The peer's window (for tests).", NULL},
    {"live", (getter)Deflater_get_live, NULL, "Whether an encoder's state is held.", NULL},
    {NULL}
};

static PyTypeObject DeflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate._framecore.Deflater",
    .tp_basicsize = sizeof(Deflater),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Deflater(level, bits, mem_level, keep): one direction's permessage-deflate "
              "compressor.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Deflater_init,
    .tp_dealloc = (destructor)Deflater_dealloc,
    .tp_methods = Deflater_methods,
    .tp_members = Deflater_members,
    .tp_getset = Deflater_getset,
};

/* -- Inflater ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    z_stream zs;
    int live, dirty, busy, keep, bits;
    int eof;              /* the peer ended the stream (BFINAL): later input is unused */
    zblocks blocks;       /* zlib's memory */
    uint8_t *win;         /* the window while no zlib state is held */
    uInt win_len;
    PyObject *tail;       /* unconsumed_tail */
} Inflater;

static int
Inflater_init(Inflater *f, PyObject *args, PyObject *kw)
{
    static char *names[] = {"bits", "keep", NULL};
    int bits, keep;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ip", names, &bits, &keep))
        return -1;
    if (bits < 8 || bits > 15) {
        PyErr_SetString(PyExc_ValueError, "bits 8-15");
        return -1;
    }
    if (f->live) {
        inflateEnd(&f->zs);
        f->live = 0;
    }
    f->bits = bits;
    f->keep = keep;
    f->dirty = f->busy = f->eof = 0;
    PyMem_Free(f->win);
    f->win = NULL;
    f->win_len = 0;
    Py_XSETREF(f->tail, PyBytes_FromStringAndSize(NULL, 0));
    return f->tail ? 0 : -1;
}

static void
Inflater_dealloc(Inflater *f)
{
    if (f->live)
        inflateEnd(&f->zs);
    PyMem_Free(f->win);
    Py_XDECREF(f->tail);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* Ready for a message (the Python path's decompressobj(..., zdict=window)
 * when there is none, and per message without takeover). */
static int
inflater_start(Inflater *f)
{
    f->busy = 1;
    if (f->live && (f->keep || !f->dirty))
        return 0;
    int err;
    if (!f->live) {
        memset(&f->zs, 0, sizeof f->zs);
        f->zs.zalloc = zb_alloc;
        f->zs.zfree = zb_free;
        f->zs.opaque = &f->blocks;
        err = inflateInit2(&f->zs, -f->bits);
        if (err != Z_OK) {
            set_zlib_error(&f->zs, err, "while creating decompression object");
            return -1;
        }
        f->live = 1;
        if (f->keep && f->win_len) {
            err = inflateSetDictionary(&f->zs, f->win, f->win_len);
            if (err != Z_OK) {
                set_zlib_error(&f->zs, err, "while setting zdict");
                return -1;
            }
        }
    } else {
        inflateReset(&f->zs);
    }
    f->dirty = f->eof = 0;
    if (PyBytes_GET_SIZE(f->tail)) {
        Py_SETREF(f->tail, PyBytes_FromStringAndSize(NULL, 0));
        if (f->tail == NULL)
            return -1;
    }
    return 0;
}

/* Free the zlib state, keep the window (zlib's own, asked for now): the
 * next start() rebuilds it. 1: dropped, 0: none held, -1: no memory. */
static int
inflater_drop(Inflater *f)
{
    if (!f->live)
        return 0;
    if (f->keep) {
        if (f->win == NULL) {
            f->win = PyMem_Malloc((size_t)1 << f->bits);
            if (f->win == NULL) {
                PyErr_NoMemory();
                return -1;
            }
        }
        uInt len = 0;
        if (inflateGetDictionary(&f->zs, f->win, &len) != Z_OK)
            len = 0;
        f->win_len = len;
    }
    inflateEnd(&f->zs);
    f->live = 0;
    return 1;
}

/* The zlib module's Decompress.decompress(data, max_length), Z_SYNC_FLUSH:
 * max_length < 0 is no limit. The same output, unconsumed_tail and errors. */
static PyObject *
inflate_bytes(Inflater *f, const uint8_t *p, Py_ssize_t n, Py_ssize_t max_length)
{
    z_stream *zs = &f->zs;
    f->dirty = 1;
    Py_ssize_t cap = n * 4 + 256, used = 0;
    if (max_length >= 0 && cap > max_length)
        cap = max_length;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        return NULL;
    const uint8_t *end = p + n;
    int err = Z_OK;
    if (f->eof) {
        /* zlib returns Z_STREAM_END at once, nothing read */
        err = Z_STREAM_END;
        zs->next_in = (Bytef *)p;
        zs->avail_in = 0;
        n = 0;
        goto save;
    }
    for (;;) {
        uInt chunk = n > UINT_MAX ? UINT_MAX : (uInt)n;
        zs->next_in = (Bytef *)p;
        zs->avail_in = chunk;
        p += chunk;
        n -= chunk;
        do {
            if (used == cap) {
                if (max_length >= 0 && used >= max_length)
                    goto save;  /* the limit: the rest is the unconsumed tail */
                Py_ssize_t want = cap * 2 + 64;
                if (max_length >= 0 && want > max_length)
                    want = max_length;
                if (_PyBytes_Resize(&out, want) < 0)
                    return NULL;
                cap = want;
            }
            Py_ssize_t room = cap - used;
            uInt give = room > UINT_MAX ? UINT_MAX : (uInt)room;
            zs->next_out = (Bytef *)PyBytes_AS_STRING(out) + used;
            zs->avail_out = give;
            err = inflate(zs, Z_SYNC_FLUSH);
            used += give - zs->avail_out;
            if (err != Z_OK && err != Z_BUF_ERROR && err != Z_STREAM_END)
                goto save;
        } while (zs->avail_out == 0);
        if (err == Z_STREAM_END || n == 0)
            break;
    }
save:
    if (err == Z_STREAM_END) {
        /* the rest is the module's unused_data, which nobody here reads */
        f->eof = 1;
        zs->avail_in = 0;
        n = 0;
    }
    /* The module's unconsumed_tail: set from where zlib stopped reading when
     * input is left, or when the last call left a tail (even if this one's
     * rest went to unused_data). */
    if (zs->avail_in > 0 || n > 0 || PyBytes_GET_SIZE(f->tail)) {
        {
            Py_ssize_t left = (Py_ssize_t)(end - (const uint8_t *)zs->next_in);
            Py_SETREF(f->tail, PyBytes_FromStringAndSize((const char *)zs->next_in, left));
            if (f->tail == NULL) {
                Py_DECREF(out);
                return NULL;
            }
        }
    }
    if (err != Z_OK && err != Z_BUF_ERROR && err != Z_STREAM_END) {
        set_zlib_error(zs, err, "while decompressing data");
        Py_DECREF(out);
        return NULL;
    }
    if (_PyBytes_Resize(&out, used) < 0)
        return NULL;
    return out;
}

static PyObject *
Inflater_start(Inflater *f, PyObject *Py_UNUSED(ignored))
{
    if (inflater_start(f) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Inflater_decompress(Inflater *f, PyObject *const *args, Py_ssize_t nargs)
{
    /* decompress(data, max_length=0): 0 is no limit, as the zlib module's */
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "decompress(data, max_length=0)");
        return NULL;
    }
    Py_ssize_t max_length = 0;
    if (nargs == 2) {
        max_length = PyLong_AsSsize_t(args[1]);
        if (max_length == -1 && PyErr_Occurred())
            return NULL;
        if (max_length < 0) {
            PyErr_SetString(PyExc_ValueError, "max_length must be non-negative");
            return NULL;
        }
    }
    if (!f->live) {
        PyErr_SetString(PyExc_RuntimeError, "decompress() before start()");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0)
        return NULL;
    f->busy = 1;
    PyObject *out = inflate_bytes(f, v.buf, v.len, max_length ? max_length : -1);
    PyBuffer_Release(&v);
    return out;
}

enum { WHOLE_LATER = 0, WHOLE_CORRUPT = 1, WHOLE_EXCEEDED = 2, WHOLE_TAIL_CORRUPT = 3 };

/* (data, code, zlib's error text or None), for whole() when a check fails. */
static PyObject *
whole_failed(PyObject *data, int code)
{
    PyObject *text = Py_None, *type = NULL, *value = NULL, *tb = NULL;
    if (code == WHOLE_CORRUPT || code == WHOLE_TAIL_CORRUPT) {
        if (!PyErr_ExceptionMatches(zlib_error))
            return NULL;
        PyErr_Fetch(&type, &value, &tb);
        text = value ? PyObject_Str(value) : PyUnicode_FromString("");
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (text == NULL)
            return NULL;
    } else {
        Py_INCREF(text);
    }
    PyObject *r = Py_BuildValue("(OiN)", data ? data : Py_None, code, text);
    return r;
}

static PyObject *
Inflater_whole(Inflater *f, PyObject *const *args, Py_ssize_t nargs)
{
    /* whole(payload, limit, message_limit, text): a whole compressed message.
     * limit: the decompression limit (None: none; <= 0 allows one byte, as
     * the Python path's max(limit, 1)); message_limit: the leg's payload
     * limit (0: none); text: check UTF-8. Its inflated payload when every
     * check passes, with the tail fed; else (data, code, zlib's text). */
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "whole(payload, limit, message_limit, text)");
        return NULL;
    }
    Py_ssize_t limit = -1;
    int limited = args[1] != Py_None;
    if (limited) {
        limit = PyLong_AsSsize_t(args[1]);
        if (limit == -1 && PyErr_Occurred())
            return NULL;
    }
    long long message_limit = PyLong_AsLongLong(args[2]);
    if (message_limit == -1 && PyErr_Occurred())
        return NULL;
    int text = PyObject_IsTrue(args[3]);
    if (text < 0)
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0)
        return NULL;
    if (inflater_start(f) < 0) {
        PyBuffer_Release(&v);
        return NULL;
    }
    zb_prefetch(&f->blocks);
    PyObject *data = inflate_bytes(f, v.buf, v.len, limited ? (limit > 0 ? limit : 1) : -1);
    PyBuffer_Release(&v);
    if (data == NULL)
        return whole_failed(NULL, WHOLE_CORRUPT);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *r;
    if (limited && (PyBytes_GET_SIZE(f->tail) || n > limit)) {
        r = whole_failed(data, WHOLE_EXCEEDED);
        Py_DECREF(data);
        return r;
    }
    if (message_limit > 0 && (long long)n > message_limit) {
        r = whole_failed(data, WHOLE_LATER);
        Py_DECREF(data);
        return r;
    }
    if (text) {
        utf8_state s;
        memset(&s, 0, sizeof s);
        if (!utf8_feed(&s, (const uint8_t *)PyBytes_AS_STRING(data), n) || s.need) {
            r = whole_failed(data, WHOLE_LATER);
            Py_DECREF(data);
            return r;
        }
    }
    PyObject *rest = inflate_bytes(f, SYNC_TAIL, 4, -1);
    if (rest == NULL) {
        r = whole_failed(data, WHOLE_TAIL_CORRUPT);
        Py_DECREF(data);
        return r;
    }
    Py_DECREF(rest);
    if (!f->keep)
        inflater_drop(f);  /* a new one per message, as the Python path */
    return data;
}

static PyObject *
Inflater_drop(Inflater *f, PyObject *Py_UNUSED(ignored))
{
    int dropped = inflater_drop(f);
    return dropped < 0 ? NULL : PyBool_FromLong(dropped);
}

static PyObject *
Inflater_get_window(Inflater *f, void *Py_UNUSED(closure))
{
    if (!f->keep)  /* a new stream per message: nothing carries over */
        return PyBytes_FromStringAndSize(NULL, 0);
    if (!f->live)
        return PyBytes_FromStringAndSize((const char *)f->win, f->win ? f->win_len : 0);
    uint8_t *buf = PyMem_Malloc((size_t)1 << f->bits);
    if (buf == NULL)
        return PyErr_NoMemory();
    uInt len = 0;
    if (inflateGetDictionary(&f->zs, buf, &len) != Z_OK)
        len = 0;
    PyObject *out = PyBytes_FromStringAndSize((const char *)buf, len);
    PyMem_Free(buf);
    return out;
}

static PyObject *
Inflater_get_tail(Inflater *f, void *Py_UNUSED(closure))
{
    Py_INCREF(f->tail);
    return f->tail;
}

static PyMethodDef Inflater_methods[] = {
    {"start", (PyCFunction)Inflater_start, METH_NOARGS, "A message begins."},
    {"decompress", (PyCFunction)(void (*)(void))Inflater_decompress, METH_FASTCALL,
     "decompress(data, max_length=0) -> bytes, as zlib's Decompress.decompress"},
    {"whole", (PyCFunction)(void (*)(void))Inflater_whole, METH_FASTCALL,
     "whole(payload, limit, message_limit, text) -> bytes, or (data, code, error text)"},
    {"drop", (PyCFunction)Inflater_drop, METH_NOARGS,
     "Free the zlib state (True if there was one); its window stays."},
    {NULL}
};

static PyMemberDef Inflater_members[] = {
    {"live", T_INT, offsetof(Inflater, live), READONLY, "Whether a zlib state is held."},
    {"busy", T_INT, offsetof(Inflater, busy), 0, "Set by every message; the idle check clears it."},
    {NULL}
};

static PyGetSetDef Inflater_getset[] = {
    {"window", (getter)Inflater_get_window, NULL, "The peer's window (for tests).", NULL},
    {"unconsumed_tail", (getter)Inflater_get_tail, NULL,
     "Input left over when max_length was reached.", NULL},
    {NULL}
};

static PyTypeObject InflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate._framecore.Inflater",
    .tp_basicsize = sizeof(Inflater),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Inflater(bits, keep): one direction's permessage-deflate decompressor.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Inflater_init,
    .tp_dealloc = (destructor)Inflater_dealloc,
    .tp_methods = Inflater_methods,
    .tp_members = Inflater_members,
    .tp_getset = Inflater_getset,
};

int
wsgate_zlib_add_types(PyObject *m)
{
    PyObject *zlib = PyImport_ImportModule("zlib");
    if (zlib == NULL)
        return -1;
    zlib_error = PyObject_GetAttrString(zlib, "error");
    Py_DECREF(zlib);
    if (zlib_error == NULL)
        return -1;
    if (PyModule_AddType(m, &DeflaterType) < 0 || PyModule_AddType(m, &InflaterType) < 0)
        return -1;
    return 0;
}
