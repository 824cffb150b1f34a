/* The compiled path's fast deflate encoder for small whole messages
 * (_framequick.c), used by the Deflater at level 1. */
#ifndef WSGATE_FRAMEQUICK_H
#define WSGATE_FRAMEQUICK_H

#include <Python.h>
#include <stdint.h>

/* The hash table: QUICK_HASH entries, each the last position (mod 2**16)
 * whose next four bytes hashed there. */
#define QUICK_HASH_BITS 11
#define QUICK_HASH (1 << QUICK_HASH_BITS)

/* The largest message it takes (larger ones stream through zlib). */
#define QUICK_MAX 1024

/* Room for the output of n bytes: at worst 9 bits a byte, and a few bytes
 * of block header, end of block and sync flush. */
#define QUICK_BOUND(n) ((n) + (n) / 8 + 16)

/* Deflate buf[start:start+n] as one fixed-Huffman block and a sync flush
 * without its 00 00 ff ff tail, matching against buf[0:start] too as far as
 * `window` bytes back; buf[0] is position `base` of the stream. Returns the
 * bytes written to out (at most QUICK_BOUND(n)). */
Py_ssize_t wsgate_quick_deflate(const uint8_t *buf, Py_ssize_t start, Py_ssize_t n,
                                uint64_t base, Py_ssize_t window, uint16_t *head, uint8_t *out);

/* Hash positions [from, to) of buf (each needs four bytes after it). */
void wsgate_quick_insert(const uint8_t *buf, Py_ssize_t from, Py_ssize_t to, uint64_t base,
                         uint16_t *head);

#endif
