/* A fast deflate encoder (RFC 1951) for small whole messages: greedy
 * matching with one hash probe and fixed Huffman codes, the way zlib-ng's
 * level 1 ("deflate_quick") works. zlib 1.2's level 1 spends about 9 us on
 * a KiB of JSON here, mostly per symbol and on building a dynamic Huffman
 * tree for every flushed message; this takes about a third of that, for
 * output about a fifth larger. Any valid deflate stream is one every peer
 * inflates, and the history it matches against is exactly the peer's
 * window (the Deflater keeps it), so context takeover holds.
 *
 * Hash entries are positions mod 2**16 and may be stale or wrong: every
 * candidate is checked against the bytes themselves, inside the window, so
 * a wrong one costs a comparison, never a wrong match.
 *
 * With many connections busy, a connection's table and history have left
 * the caches by its next message: a miss per probe made the encoder three
 * times slower at 50 connections than at one. A 4 KiB table (2**11
 * entries), all of it and the history prefetched up front, costs 2.5 us
 * per KiB there instead of 6. */
#include "_framequick.h"

#include <string.h>

/* The fixed literal/length code of each literal, bit-reversed for the LSB-
 * first bit buffer, and its length; the same for each match length 3..258
 * with its extra bits appended. Filled once (quick_tables). */
static uint32_t lit_bits[256];
static uint8_t lit_len[256];
static uint32_t match_bits[259];
static uint8_t match_len[259];
static uint32_t dist_bits[30];
static int tables_ready;

static uint32_t
reverse(uint32_t code, int len)
{
    uint32_t r = 0;
    for (int i = 0; i < len; i++) {
        r = (r << 1) | (code & 1);
        code >>= 1;
    }
    return r;
}

/* The fixed code of a literal/length symbol (RFC 1951 3.2.6). */
static void
fixed_code(int sym, uint32_t *code, int *len)
{
    if (sym < 144) {
        *code = 0x30 + sym;
        *len = 8;
    } else if (sym < 256) {
        *code = 0x190 + (sym - 144);
        *len = 9;
    } else if (sym < 280) {
        *code = sym - 256;
        *len = 7;
    } else {
        *code = 0xC0 + (sym - 280);
        *len = 8;
    }
}

static void
quick_tables(void)
{
    static const uint16_t base[29] = {3,  4,  5,  6,  7,  8,  9,  10,  11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint8_t extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    uint32_t code;
    int len;
    for (int c = 0; c < 256; c++) {
        fixed_code(c, &code, &len);
        lit_bits[c] = reverse(code, len);
        lit_len[c] = (uint8_t)len;
    }
    for (int k = 0; k < 29; k++) {
        fixed_code(257 + k, &code, &len);
        int last = k == 28 ? 258 : (k == 27 ? 257 : base[k + 1] - 1);
        for (int m = base[k]; m <= last; m++) {
            match_bits[m] = reverse(code, len) | ((uint32_t)(m - base[k]) << len);
            match_len[m] = (uint8_t)(len + extra[k]);
        }
    }
    for (int d = 0; d < 30; d++)
        dist_bits[d] = reverse((uint32_t)d, 5);
    tables_ready = 1;
}

static inline uint32_t
load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t
hash4(uint32_t v)
{
    return (v * 2654435761u) >> (32 - QUICK_HASH_BITS);
}

void
wsgate_quick_insert(const uint8_t *buf, Py_ssize_t from, Py_ssize_t to, uint64_t base,
                    uint16_t *head)
{
    for (Py_ssize_t i = from < 0 ? 0 : from; i < to; i++)
        head[hash4(load32(buf + i))] = (uint16_t)(base + (uint64_t)i);
}

/* The bit buffer: bits go in LSB first; whole 32-bit words go out. */
#define PUT(value, count)                                                                      \
    do {                                                                                       \
        bits |= (uint64_t)(value) << nbits;                                                    \
        nbits += (count);                                                                      \
        if (nbits >= 32) {                                                                     \
            o[0] = (uint8_t)bits;                                                              \
            o[1] = (uint8_t)(bits >> 8);                                                       \
            o[2] = (uint8_t)(bits >> 16);                                                      \
            o[3] = (uint8_t)(bits >> 24);                                                      \
            o += 4;                                                                            \
            bits >>= 32;                                                                       \
            nbits -= 32;                                                                       \
        }                                                                                      \
    } while (0)

Py_ssize_t
wsgate_quick_deflate(const uint8_t *buf, Py_ssize_t start, Py_ssize_t n, uint64_t base,
                     Py_ssize_t window, uint16_t *head, uint8_t *out)
{
    if (!tables_ready)
        quick_tables();
    /* The table and the history are cold by now (other connections ran
     * since): ask for all their lines at once rather than miss on each. */
    for (Py_ssize_t k = 0; k < QUICK_HASH; k += 64 / sizeof *head)
        __builtin_prefetch(head + k, 1);
    Py_ssize_t from = start > window ? start - window : 0;
    for (Py_ssize_t k = from; k < start + n; k += 64)
        __builtin_prefetch(buf + k, 0);
    uint8_t *o = out;
    uint64_t bits = 0;
    int nbits = 0;
    PUT(2, 3); /* BFINAL 0, BTYPE 01: fixed Huffman codes */
    Py_ssize_t i = start, end = start + n;
    while (i + 4 <= end) {
        uint32_t v = load32(buf + i);
        uint32_t h = hash4(v);
        uint32_t here = (uint32_t)((base + (uint64_t)i) & 0xFFFF);
        Py_ssize_t dist = (Py_ssize_t)((here - head[h]) & 0xFFFF);
        head[h] = (uint16_t)here;
        if (dist > 0 && dist <= window && dist <= i && load32(buf + i - dist) == v) {
            Py_ssize_t max = end - i < 258 ? end - i : 258, len = 4;
            const uint8_t *a = buf + i, *b = buf + i - dist;
            while (len < max && a[len] == b[len])
                len++;
            PUT(match_bits[len], match_len[len]);
            /* the distance: code d (5 bits, fixed), then its extra bits */
            uint32_t d1 = (uint32_t)dist - 1, code, extra = 0, value = 0;
            if (d1 < 4) {
                code = d1;
            } else {
                int top = 31 - __builtin_clz(d1);
                extra = (uint32_t)top - 1;
                code = 2 * (uint32_t)top + ((d1 >> extra) & 1);
                value = d1 & ((1u << extra) - 1);
            }
            PUT(dist_bits[code] | (value << 5), 5 + extra);
            i += len;
            continue;
        }
        PUT(lit_bits[buf[i]], lit_len[buf[i]]);
        i++;
    }
    for (; i < end; i++)
        PUT(lit_bits[buf[i]], lit_len[buf[i]]);
    PUT(0, 7); /* end of block */
    PUT(0, 3); /* the sync flush: an empty stored block, its header ... */
    while (nbits > 0) { /* ... padded to a byte; its 00 00 ff ff the peer adds */
        *o++ = (uint8_t)bits;
        bits >>= 8;
        nbits -= 8;
    }
    return o - out;
}
