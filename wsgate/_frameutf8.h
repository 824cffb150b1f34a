/* UTF-8 (RFC 3629) checked incrementally: shared by the reader and the
 * inflater of wsgate._framecore (each file keeps its own static copy). */
#ifndef WSGATE_FRAMEUTF8_H
#define WSGATE_FRAMEUTF8_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t need;    /* continuation bytes still expected */
    uint8_t lo, hi;  /* the range of the next continuation byte */
    uint8_t npend;   /* the bytes of the incomplete sequence so far */
    uint8_t pend[4];
} utf8_state;

/* 1: valid so far (state updated), 0: invalid. */
static inline int
utf8_feed(utf8_state *s, const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        if (s->need == 0) {
            if (b < 0x80) {
                /* ASCII run, eight bytes at a time */
                while (i + 8 <= n) {
                    uint64_t w;
                    memcpy(&w, p + i, 8);
                    if (w & 0x8080808080808080ULL)
                        break;
                    i += 8;
                }
                while (i < n && p[i] < 0x80)
                    i++;
                continue;
            }
            if (b >= 0xC2 && b <= 0xDF) {
                s->need = 1; s->lo = 0x80; s->hi = 0xBF;
            } else if (b == 0xE0) {
                s->need = 2; s->lo = 0xA0; s->hi = 0xBF;
            } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
                s->need = 2; s->lo = 0x80; s->hi = 0xBF;
            } else if (b == 0xED) {
                s->need = 2; s->lo = 0x80; s->hi = 0x9F;
            } else if (b == 0xF0) {
                s->need = 3; s->lo = 0x90; s->hi = 0xBF;
            } else if (b >= 0xF1 && b <= 0xF3) {
                s->need = 3; s->lo = 0x80; s->hi = 0xBF;
            } else if (b == 0xF4) {
                s->need = 3; s->lo = 0x80; s->hi = 0x8F;
            } else {
                return 0;
            }
            s->pend[0] = b;
            s->npend = 1;
        } else {
            if (b < s->lo || b > s->hi)
                return 0;
            s->need--;
            s->lo = 0x80; s->hi = 0xBF;
            if (s->need == 0)
                s->npend = 0;
            else
                s->pend[s->npend++] = b;
        }
        i++;
    }
    return 1;
}

#endif
