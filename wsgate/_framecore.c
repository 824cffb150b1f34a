/* wsgate._framecore: the compiled frame path (RFC 6455) of an open leg.
 *
 * Reader: parses the frames of an open connection, unmasks them, validates
 * UTF-8 across the frames of a text message and counts the message's size.
 * It handles data frames, pings and pongs; anything else (a close frame, a
 * protocol error, bad UTF-8, a message over the limit) makes it stop
 * *before* that frame or payload piece and hand the stream, with the
 * message's state, to Autobahn's parser, which then gives the verdict it
 * always gave. A compressed message (RSV1, permessage-deflate negotiated)
 * is framed and unmasked here; its caller inflates it, checks the inflated
 * size (adding what inflating grew to ``total``) and validates its UTF-8,
 * as Autobahn's parser would.
 *
 * frame(): builds one outgoing frame (header, optional mask, payload).
 *
 * Utf8: the incremental UTF-8 check of a compressed text message's inflated
 * pieces (the reader checks only what it reads itself).
 *
 * Deflater, Inflater (_framezlib.c): permessage-deflate streams.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

enum { EV_BEGIN = 0, EV_DATA = 1, EV_PING = 2, EV_PONG = 3, EV_HANDOFF = 4, EV_WHOLE = 5 };

#include "_frameutf8.h"

/* Deflater and Inflater (_framezlib.c). */
int wsgate_zlib_add_types(PyObject *m);

/* -- masking --------------------------------------------------------------- */

/* out[i] = in[i] ^ mask[(offset + i) % 4] */
static void
xor_mask(uint8_t *out, const uint8_t *in, Py_ssize_t n, const uint8_t mask[4], uint64_t offset)
{
    uint8_t m[8];
    for (int k = 0; k < 8; k++)
        m[k] = mask[(offset + k) & 3];
    uint64_t m64;
    memcpy(&m64, m, 8);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, in + i, 8);
        w ^= m64;
        memcpy(out + i, &w, 8);
    }
    for (; i < n; i++)
        out[i] = in[i] ^ m[i & 7];
}

/* -- Reader ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    /* configuration */
    int masked;              /* frames from the peer must (1) / must not (0) be masked */
    long long max_message;   /* 0: no limit */
    int validate;            /* validate text messages */
    int rsv1_ok;             /* permessage-deflate is on: RSV1 starts a compressed message */
    int whole_text;          /* text messages may come whole (EV_WHOLE), not only binary */
    /* the stream */
    PyObject *buf;           /* bytes, or NULL */
    Py_ssize_t pos;
    /* the message */
    int inside;
    int binary;
    int compressed;          /* the message's first frame had RSV1: its payload is deflated */
    long long total;         /* declared payload bytes of the message's frames so far (for a
                              * compressed message, plus what inflating grew: the caller's) */
    long long received;      /* payload bytes of the message read so far */
    utf8_state utf8;
    /* the frame (in_frame: its header is consumed, its payload is not all read) */
    int in_frame;
    int opcode, fin;
    uint64_t length, pointer;
    uint8_t mask[4];
    int has_mask;
    int just_finished;       /* the last event was the last piece of its frame */
} Reader;

static void
reader_reset(Reader *r)
{
    Py_CLEAR(r->buf);
    r->pos = 0;
    r->inside = 0;
    r->binary = 0;
    r->compressed = 0;
    r->total = 0;
    r->received = 0;
    memset(&r->utf8, 0, sizeof r->utf8);
    r->in_frame = 0;
    r->length = r->pointer = 0;
    r->has_mask = 0;
    r->just_finished = 0;
}

static int
Reader_init(Reader *r, PyObject *args, PyObject *kw)
{
    static char *names[] = {"masked", "max_message", "validate_utf8", "rsv1_ok", "whole_text",
                            NULL};
    int masked, validate = 1, rsv1_ok = 0, whole_text = 1;
    long long max_message = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "p|Lppp", names, &masked, &max_message, &validate,
                                     &rsv1_ok, &whole_text))
        return -1;
    reader_reset(r);
    r->masked = masked;
    r->max_message = max_message < 0 ? 0 : max_message;
    r->validate = validate;
    r->rsv1_ok = rsv1_ok;
    r->whole_text = whole_text;
    return 0;
}

static void
Reader_dealloc(Reader *r)
{
    Py_CLEAR(r->buf);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *
Reader_feed(Reader *r, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "feed() takes bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n == 0)
        Py_RETURN_NONE;
    Py_ssize_t have = r->buf ? PyBytes_GET_SIZE(r->buf) - r->pos : 0;
    if (have == 0) {
        Py_INCREF(data);
        Py_XSETREF(r->buf, data);
    } else {
        PyObject *joined = PyBytes_FromStringAndSize(NULL, have + n);
        if (!joined)
            return NULL;
        memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(r->buf) + r->pos, have);
        memcpy(PyBytes_AS_STRING(joined) + have, PyBytes_AS_STRING(data), n);
        Py_XSETREF(r->buf, joined);
    }
    r->pos = 0;
    Py_RETURN_NONE;
}

/* The next n payload bytes at pos, unmasked (the fed object itself when it is
 * exactly that piece and needs no unmasking). */
static PyObject *
take_payload(Reader *r, Py_ssize_t n)
{
    const uint8_t *src = (const uint8_t *)PyBytes_AS_STRING(r->buf) + r->pos;
    PyObject *out;
    if (!r->has_mask && r->pos == 0 && n == PyBytes_GET_SIZE(r->buf)) {
        out = r->buf;
        Py_INCREF(out);
    } else {
        out = PyBytes_FromStringAndSize(NULL, n);
        if (!out)
            return NULL;
        if (r->has_mask)
            xor_mask((uint8_t *)PyBytes_AS_STRING(out), src, n, r->mask, r->pointer);
        else
            memcpy(PyBytes_AS_STRING(out), src, n);
    }
    return out;
}

static PyObject *
ev1(int kind)
{
    return Py_BuildValue("(i)", kind);
}

/* A message of one frame, all in the buffer (its header just read): the
 * event (5, binary, compressed, payload) with the reader where the final
 * piece's event would have left it; None, and nothing read, when its text
 * is not valid UTF-8 (the piece-by-piece events then hand it to Autobahn). */
static PyObject *
read_whole(Reader *r)
{
    Py_ssize_t n = (Py_ssize_t)r->length;
    PyObject *payload = take_payload(r, n);
    if (!payload)
        return NULL;
    if (!r->binary && r->validate && !r->compressed) {
        utf8_state s = r->utf8;
        const uint8_t *out = (const uint8_t *)PyBytes_AS_STRING(payload);
        if (!utf8_feed(&s, out, n) || s.need != 0) {
            Py_DECREF(payload);
            Py_RETURN_NONE;
        }
        r->utf8 = s;
    }
    r->pos += n;
    r->pointer = r->length;
    r->received = n;
    r->in_frame = 0;
    r->inside = 0;
    r->just_finished = 1;
    return Py_BuildValue("(iOON)", EV_WHOLE, r->binary ? Py_True : Py_False,
                         r->compressed ? Py_True : Py_False, payload);
}

/* The next event: None (more bytes needed), (0, binary, compressed) a message begins,
 * (1, payload, final) a piece of it, (2, payload) a ping, (3, payload) a pong,
 * (4,) hand the stream to Autobahn (see handoff()), (5, binary, compressed,
 * payload) a whole message (one frame, all read: begin and final piece in one). */
static PyObject *
Reader_next(Reader *r, PyObject *Py_UNUSED(ignored))
{
    r->just_finished = 0;
    if (r->buf == NULL)
        Py_RETURN_NONE;
    const uint8_t *base = (const uint8_t *)PyBytes_AS_STRING(r->buf);
    /* A loop, not recursion: a read may hold thousands of empty frames. */
    for (;;) {
        Py_ssize_t avail = PyBytes_GET_SIZE(r->buf) - r->pos;
        if (avail == 0 && !(r->in_frame && r->pointer == r->length)) {
            /* all read: an idle leg keeps no buffer */
            Py_CLEAR(r->buf);
            r->pos = 0;
            Py_RETURN_NONE;
        }

        if (r->in_frame) {
            uint64_t remaining = r->length - r->pointer;
            Py_ssize_t n = (uint64_t)avail < remaining ? avail : (Py_ssize_t)remaining;
            if (n == 0 && remaining > 0)
                Py_RETURN_NONE;
            int last = (uint64_t)n == remaining;
            int final = last && r->fin;
            if (!r->binary && r->validate && !r->compressed) {
                /* Validate on a copy of the state: a bad piece (or a message that
                 * ends inside a code point) goes to Autobahn unread. */
                utf8_state s = r->utf8;
                if (r->has_mask) {
                    uint8_t tmp[4096];
                    Py_ssize_t done = 0;
                    int ok = 1;
                    while (done < n && ok) {
                        Py_ssize_t k = n - done < (Py_ssize_t)sizeof tmp ? n - done : (Py_ssize_t)sizeof tmp;
                        xor_mask(tmp, base + r->pos + done, k, r->mask, r->pointer + done);
                        ok = utf8_feed(&s, tmp, k);
                        done += k;
                    }
                    if (!ok)
                        return ev1(EV_HANDOFF);
                } else if (!utf8_feed(&s, base + r->pos, n)) {
                    return ev1(EV_HANDOFF);
                }
                if (final && s.need != 0)
                    return ev1(EV_HANDOFF);
                r->utf8 = s;
            }
            PyObject *payload = NULL;
            if (n > 0 || final) {
                payload = take_payload(r, n);
                if (!payload)
                    return NULL;
            }
            r->pos += n;
            r->pointer += n;
            r->received += n;
            if (last) {
                r->in_frame = 0;
                if (r->fin)
                    r->inside = 0;
            }
            if (payload == NULL)
                continue;  /* an empty non-final piece: nothing to say */
            r->just_finished = last;
            return Py_BuildValue("(iNO)", EV_DATA, payload, final ? Py_True : Py_False);
        }

        /* a frame header */
        if (avail < 2)
            Py_RETURN_NONE;
        const uint8_t *h = base + r->pos;
        int fin = (h[0] & 0x80) != 0;
        int rsv = (h[0] >> 4) & 7;
        int opcode = h[0] & 0x0F;
        int masked = (h[1] & 0x80) != 0;
        int len1 = h[1] & 0x7F;
        Py_ssize_t hlen = 2 + (len1 == 126 ? 2 : len1 == 127 ? 8 : 0) + (masked ? 4 : 0);
        /* What Autobahn rejects from the first two bytes, it rejects on every read
         * until the whole header is there (and a second rejection drops the
         * connection): hand it these bytes as early as it would see them. */
        int bad = masked != r->masked || (rsv != 0 && !(rsv == 4 && r->rsv1_ok));
        if (opcode >= 8)
            bad = bad || !fin || len1 > 125 || opcode > 10 || (opcode == 8 && len1 == 1) || rsv != 0;
        else
            bad = bad || opcode > 2 || (opcode == 0) != (r->inside != 0) || (opcode == 0 && rsv != 0);
        if (bad)
            return ev1(EV_HANDOFF);
        if (avail < hlen)
            Py_RETURN_NONE;
        if (opcode == 8)
            return ev1(EV_HANDOFF);  /* a close: Autobahn's */
        uint64_t length = len1;
        const uint8_t *p = h + 2;
        if (len1 == 126) {
            length = ((uint64_t)p[0] << 8) | p[1];
            if (length < 126)
                return ev1(EV_HANDOFF);
            p += 2;
        } else if (len1 == 127) {
            length = 0;
            for (int k = 0; k < 8; k++)
                length = (length << 8) | p[k];
            if (length < 65536 || length > 0x7FFFFFFFFFFFFFFFULL)
                return ev1(EV_HANDOFF);
            p += 8;
        }
        if (opcode >= 8) {
            if ((uint64_t)(avail - hlen) < length)
                Py_RETURN_NONE;  /* a control frame is delivered whole */
            PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
            if (!payload)
                return NULL;
            if (masked)
                xor_mask((uint8_t *)PyBytes_AS_STRING(payload), p + 4, (Py_ssize_t)length, p, 0);
            else
                memcpy(PyBytes_AS_STRING(payload), p, (size_t)length);
            r->pos += hlen + (Py_ssize_t)length;
            return Py_BuildValue("(iN)", opcode == 9 ? EV_PING : EV_PONG, payload);
        }
        long long total = (opcode == 0 ? r->total : 0);
        if (r->max_message > 0 && (length > (uint64_t)r->max_message ||
                                   total + (long long)length > r->max_message))
            return ev1(EV_HANDOFF);
        r->pos += hlen;
        r->in_frame = 1;
        r->opcode = opcode;
        r->fin = fin;
        r->length = length;
        r->pointer = 0;
        r->has_mask = masked;
        if (masked)
            memcpy(r->mask, p, 4);
        r->total = total + (long long)length;
        if (opcode != 0) {
            r->inside = 1;
            r->binary = opcode == 2;
            r->compressed = rsv == 4;  /* the only RSV a data frame gets here with */
            r->received = 0;
            memset(&r->utf8, 0, sizeof r->utf8);
            if (fin && (uint64_t)(avail - hlen) >= length && (r->binary || r->whole_text)) {
                PyObject *whole = read_whole(r);
                if (whole != Py_None)
                    return whole; /* the message, or NULL (an error) */
                Py_DECREF(whole);
            }
            return Py_BuildValue("(iOO)", EV_BEGIN, r->binary ? Py_True : Py_False,
                                 r->compressed ? Py_True : Py_False);
        }
    }  /* a continuation frame: its payload next */
}

/* Give up the stream: (rest, inside_message, binary, total, utf8_pending or
 * None, frame or None, received) with frame = (opcode, fin, length, mask or
 * None, pointer); the reader starts afresh, outside any message. With
 * reopen true, a frame whose last piece was the last event is given as not
 * yet ended (all read, its end not processed): the caller failed on that
 * piece, and Autobahn's parser, failing there, would not have ended it. */
static PyObject *
Reader_handoff(Reader *r, PyObject *args)
{
    int reopen = 0;
    if (!PyArg_ParseTuple(args, "|p", &reopen))
        return NULL;
    if (reopen && r->just_finished) {
        r->in_frame = 1;
        r->inside = 1;
    }
    PyObject *rest;
    if (r->buf)
        rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(r->buf) + r->pos,
                                         PyBytes_GET_SIZE(r->buf) - r->pos);
    else
        rest = PyBytes_FromStringAndSize(NULL, 0);
    if (!rest)
        return NULL;
    PyObject *pending;
    if (r->inside && !r->binary && r->validate && !r->compressed)
        pending = PyBytes_FromStringAndSize((const char *)r->utf8.pend, r->utf8.npend);
    else {
        pending = Py_None;
        Py_INCREF(pending);
    }
    PyObject *frame;
    if (r->in_frame) {
        PyObject *mask = r->has_mask ? PyBytes_FromStringAndSize((const char *)r->mask, 4)
                                     : (Py_INCREF(Py_None), Py_None);
        frame = Py_BuildValue("(iOKNK)", r->opcode, r->fin ? Py_True : Py_False,
                              (unsigned long long)r->length, mask,
                              (unsigned long long)r->pointer);
    } else {
        frame = Py_None;
        Py_INCREF(frame);
    }
    PyObject *result = Py_BuildValue("(NOOLNNL)", rest, r->inside ? Py_True : Py_False,
                                     r->binary ? Py_True : Py_False, r->total, pending, frame,
                                     r->received);
    int masked = r->masked, validate = r->validate, rsv1_ok = r->rsv1_ok;
    int whole_text = r->whole_text;
    long long max_message = r->max_message;
    reader_reset(r);
    r->rsv1_ok = rsv1_ok;
    r->whole_text = whole_text;
    r->masked = masked;
    r->validate = validate;
    r->max_message = max_message;
    return result;
}

static PyMethodDef Reader_methods[] = {
    {"feed", (PyCFunction)Reader_feed, METH_O, "Append bytes read from the peer."},
    {"next", (PyCFunction)Reader_next, METH_NOARGS, "The next event, or None."},
    {"handoff", (PyCFunction)Reader_handoff, METH_VARARGS,
     "Give the unread stream and the message's state to Autobahn's parser."},
    {NULL}
};

static PyMemberDef Reader_members[] = {
    {"total", T_LONGLONG, offsetof(Reader, total), 0,
     "The message's size so far as Autobahn counts it (a compressed message's caller adds "
     "what inflating grew)."},
    {NULL}
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate._framecore.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(masked, max_message=0, validate_utf8=True, rsv1_ok=False, whole_text=True): "
              "frames of an open leg.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_members = Reader_members,
};

/* -- Utf8 ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    utf8_state s;
    long long received; /* bytes found valid so far */
} Utf8;

static PyObject *
Utf8_feed(Utf8 *u, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    utf8_state s = u->s; /* a failure leaves the state as it was */
    int ok = utf8_feed(&s, view.buf, view.len);
    if (ok) {
        u->s = s;
        u->received += view.len;
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyObject *
Utf8_reset(Utf8 *u, PyObject *Py_UNUSED(ignored))
{
    memset(&u->s, 0, sizeof u->s);
    u->received = 0;
    Py_RETURN_NONE;
}

static PyObject *
Utf8_get_complete(Utf8 *u, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(u->s.need == 0);
}

static PyObject *
Utf8_get_pending(Utf8 *u, void *Py_UNUSED(closure))
{
    return PyBytes_FromStringAndSize((const char *)u->s.pend, u->s.need ? u->s.npend : 0);
}

static PyMethodDef Utf8_methods[] = {
    {"feed", (PyCFunction)Utf8_feed, METH_O,
     "Check the next bytes: False if they make the text invalid (the state is then "
     "as before them)."},
    {"reset", (PyCFunction)Utf8_reset, METH_NOARGS, "A new message begins."},
    {NULL}
};

static PyMemberDef Utf8_members[] = {
    {"received", T_LONGLONG, offsetof(Utf8, received), READONLY,
     "The bytes found valid so far."},
    {NULL}
};

static PyGetSetDef Utf8_getset[] = {
    {"complete", (getter)Utf8_get_complete, NULL, "Whether the text ends on a code point.", NULL},
    {"pending", (getter)Utf8_get_pending, NULL, "The bytes of the code point still open.", NULL},
    {NULL}
};

static PyTypeObject Utf8Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate._framecore.Utf8",
    .tp_basicsize = sizeof(Utf8),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Utf8(): UTF-8 checked piece by piece.",
    .tp_new = PyType_GenericNew,
    .tp_methods = Utf8_methods,
    .tp_members = Utf8_members,
    .tp_getset = Utf8_getset,
};

/* -- writing ------------------------------------------------------------------ */

static uint64_t rng_state;

static uint32_t
next_mask(void)
{
    /* xorshift64*, seeded from getrandom(): masks the peer cannot guess from
     * the payload, as RFC 6455 asks, without a system call per frame. */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static PyObject *
frame(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    /* frame(opcode, payload, fin, rsv, masked) -> bytes */
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "frame(opcode, payload, fin, rsv, masked)");
        return NULL;
    }
    long opcode = PyLong_AsLong(args[0]);
    if (opcode == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int fin = PyObject_IsTrue(args[2]);
    long rsv = PyLong_AsLong(args[3]);
    int masked = PyObject_IsTrue(args[4]);
    if (fin < 0 || masked < 0 || (rsv == -1 && PyErr_Occurred())) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t n = view.len;
    uint8_t head[14];
    Py_ssize_t hlen = 2;
    head[0] = (uint8_t)((fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0F));
    if (n <= 125) {
        head[1] = (uint8_t)n;
    } else if (n <= 0xFFFF) {
        head[1] = 126;
        head[2] = (uint8_t)(n >> 8);
        head[3] = (uint8_t)n;
        hlen = 4;
    } else {
        head[1] = 127;
        for (int k = 0; k < 8; k++)
            head[2 + k] = (uint8_t)((uint64_t)n >> (56 - 8 * k));
        hlen = 10;
    }
    uint8_t mask[4];
    if (masked) {
        head[1] |= 0x80;
        uint32_t m = next_mask();
        memcpy(mask, &m, 4);
        memcpy(head + hlen, mask, 4);
        hlen += 4;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, hlen + n);
    if (!out) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(o, head, hlen);
    if (masked)
        xor_mask(o + hlen, view.buf, n, mask, 0);
    else
        memcpy(o + hlen, view.buf, n);
    PyBuffer_Release(&view);
    return out;
}

static PyObject *
utf8_valid(PyObject *Py_UNUSED(module), PyObject *arg)
{
    /* utf8_valid(data) -> (valid so far, ends on a code point): for tests */
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    utf8_state s;
    memset(&s, 0, sizeof s);
    int ok = utf8_feed(&s, view.buf, view.len);
    PyBuffer_Release(&view);
    return Py_BuildValue("(OO)", ok ? Py_True : Py_False, ok && s.need == 0 ? Py_True : Py_False);
}

static PyMethodDef module_methods[] = {
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "frame(opcode, payload, fin, rsv, masked) -> one frame's bytes"},
    {"utf8_valid", (PyCFunction)utf8_valid, METH_O,
     "utf8_valid(data) -> (valid so far, complete)"},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgate._framecore",
    "The compiled frame path: reading and writing WebSocket frames.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__framecore(void)
{
    if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || rng_state == 0)
        rng_state = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)&rng_state;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    /* PyModule_AddType readies each type and adds it under its short name. */
    if (PyModule_AddType(m, &ReaderType) < 0 || PyModule_AddType(m, &Utf8Type) < 0
        || wsgate_zlib_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
