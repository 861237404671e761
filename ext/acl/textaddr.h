/* Text addresses read without a Python call: the strict dotted quad.
 *
 * Rules of this file:
 *
 * - Accept exactly what Python's ipaddress accepts, with the same value, or
 *   return 0 ("let someone else judge"): the caller then falls back to the
 *   twin's parse_address, which raises the twin's errors.  A reader here may
 *   refuse more than ipaddress does, never accept more.
 * - The text is n characters followed by a NUL (a Python str's data), and
 *   nothing here reads past that NUL except within 8 bytes of the start.
 * - No data-dependent branches on the characters: random client addresses
 *   have octets of random widths, and a digit-by-digit loop mispredicts its
 *   way to ~60 ns a call (measured on the routing bench set).  Checks are
 *   bit masks of where the dots and the digits are, OR-ed into one flag.
 * - Two implementations of the octet arithmetic: SSSE3 (shuffle the digits
 *   into four 32-bit lanes, one multiply-add) and portable 32-bit SWAR.  Both
 *   are compiled and compared by tests/core/test_textaddr.py; the extension
 *   build picks SSSE3 on x86-64 (setup.py's CFLAGS).
 *
 * Python.h is not needed: the functions take a char pointer and a length.
 */
#ifndef ACL_TEXTADDR_H
#define ACL_TEXTADDR_H

#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__) && !defined(ACL_TEXTADDR_PORTABLE)
#include <emmintrin.h>
#endif
#if defined(__SSSE3__) && !defined(ACL_TEXTADDR_PORTABLE)
#include <tmmintrin.h>
#define ACL_QUAD_SSSE3 1
#endif

/* The text's first 16 bytes as two little-endian words, characters past n
 * zeroed; n is 7..15 and s[7] readable.  Two 8-byte loads, no copy of a
 * variable length (that costs a call). */
static inline void acl_quad_words(const char *s, size_t n, uint64_t *lo, uint64_t *hi)
{
    size_t n8 = n < 8 ? 8 : n;
    memcpy(lo, s, 8);
    memcpy(hi, s + n8 - 8, 8);
    *lo = le64toh(*lo);
    *hi = le64toh(*hi);
    *hi = (*hi >> (8 * (16 - n8) - 1)) >> 1;    /* s[8..n) at bytes 0..n-9 */
}

/* Bit i of *dots / *digits / *zeros: character i is '.' / a decimal digit /
 * '0' (bits past the text are 0: its bytes were zeroed). */
static inline void acl_quad_masks(uint64_t lo, uint64_t hi, uint32_t *dots, uint32_t *digits,
                                  uint32_t *zeros)
{
#if defined(__SSE2__) && !defined(ACL_TEXTADDR_PORTABLE)
    __m128i x = _mm_set_epi64x((long long)hi, (long long)lo);
    __m128i d = _mm_sub_epi8(x, _mm_set1_epi8('0'));
    *dots = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('.')));
    *digits = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d));
    *zeros = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('0')));
#else
    uint32_t a = 0, b = 0, z = 0;
    for (int i = 0; i < 16; i++) {
        unsigned char c = (unsigned char)((i < 8 ? lo >> (8 * i) : hi >> (8 * (i - 8))) & 0xFF);
        a |= (uint32_t)(c == '.') << i;
        b |= (uint32_t)((unsigned char)(c - '0') < 10) << i;
        z |= (uint32_t)(c == '0') << i;
    }
    *dots = a;
    *digits = b;
    *zeros = z;
#endif
}

#if !defined(ACL_QUAD_SSSE3)
/* The value of a 1..3 digit octet starting at w's low byte (the text's next
 * characters above it).  The digits move to the top of the word behind a
 * zero, then two multiply-adds: pairs (d0*10 + d1 in each 16-bit half), then
 * the halves.  A non-digit above the octet borrows only upward, into bytes
 * the shift drops. */
static inline uint32_t acl_octet_swar(uint32_t w, uint32_t len)
{
    w -= 0x30303030u;
    w <<= 8 * ((4 - len) & 3);
    w = (w * 10 + (w >> 8)) & 0x00FF00FFu;
    return (w * 100 + (w >> 16)) & 0xFFFFu;
}
#endif

/* Strict dotted quad (four decimal octets 0..255, no leading zeros, nothing
 * else) from the n characters at s, host order in *out; 0 when the text is
 * anything else. */
static inline int acl_dotted_quad(const char *s, size_t n, uint32_t *out)
{
    uint64_t lo, hi;
    uint32_t dots, digits, zeros, full, starts, bad, e0, e1, e2, rest;
    if (n < 7 || n > 15)
        return 0;
    acl_quad_words(s, n, &lo, &hi);
    acl_quad_masks(lo, hi, &dots, &digits, &zeros);
    full = (1u << n) - 1;
    starts = ((dots << 1) | 1) & full;                 /* where each octet begins */
    bad = ((dots | digits) != full)                    /* only dots and digits */
        | (__builtin_popcount(dots) != 3)
        | (dots & 1) | (dots >> (n - 1))               /* no dot first or last */
        | ((dots & (dots >> 1)) != 0)                  /* no empty octet */
        | ((digits & (digits >> 1) & (digits >> 2) & (digits >> 3)) != 0)  /* <= 3 digits */
        | ((zeros & starts & (digits >> 1)) != 0);     /* no leading zero */
    if (bad)
        return 0;
    e0 = (uint32_t)__builtin_ctz(dots);
    rest = dots & (dots - 1);
    e1 = (uint32_t)__builtin_ctz(rest);
    rest &= rest - 1;
    e2 = (uint32_t)__builtin_ctz(rest);
#if defined(ACL_QUAD_SSSE3)
    {
        /* Lane k (bytes 4k..4k+3) gathers octet k's last three characters
         * (indexes end-3 .. end-1, end = the dot or n after it) and a zero;
         * an index before the octet's start, or the fourth, has its high bit
         * set, which makes the shuffle write 0.  The lane is then
         * hundreds/tens/units: one multiply-add by (100, 10, 1, 0). */
        uint32_t ends = e0 | (e1 << 8) | (e2 << 16) | ((uint32_t)n << 24);
        uint32_t begins = (ends << 8) + 0x01010100u;   /* 0, e0+1, e1+1, e2+1 */
        const __m128i spread = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        __m128i end = _mm_shuffle_epi8(_mm_cvtsi32_si128((int)ends), spread);
        __m128i begin = _mm_shuffle_epi8(_mm_cvtsi32_si128((int)begins), spread);
        __m128i idx = _mm_add_epi8(end, _mm_setr_epi8(-3, -2, -1, -128, -3, -2, -1, -128,
                                                      -3, -2, -1, -128, -3, -2, -1, -128));
        __m128i text = _mm_set_epi64x((long long)hi, (long long)lo);
        __m128i digit, value;
        idx = _mm_or_si128(idx, _mm_cmpgt_epi8(begin, idx));
        digit = _mm_shuffle_epi8(_mm_sub_epi8(text, _mm_set1_epi8('0')), idx);
        value = _mm_madd_epi16(_mm_maddubs_epi16(digit, _mm_setr_epi8(100, 10, 1, 0, 100, 10, 1, 0,
                                                                      100, 10, 1, 0, 100, 10, 1, 0)),
                               _mm_set1_epi16(1));
        if (_mm_movemask_epi8(_mm_cmpgt_epi32(value, _mm_set1_epi32(255))))
            return 0;
        /* lane 0 is the first octet, the highest byte of the address */
        *out = (uint32_t)_mm_cvtsi128_si32(_mm_shuffle_epi8(
            value, _mm_setr_epi8(12, 8, 4, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1)));
    }
#else
    {
        unsigned __int128 v = ((unsigned __int128)hi << 64) | lo;
        uint32_t a = acl_octet_swar((uint32_t)lo, e0);
        uint32_t b = acl_octet_swar((uint32_t)(v >> (8 * (e0 + 1))), e1 - e0 - 1);
        uint32_t c = acl_octet_swar((uint32_t)(v >> (8 * (e1 + 1))), e2 - e1 - 1);
        uint32_t d = acl_octet_swar((uint32_t)(v >> (8 * (e2 + 1))), (uint32_t)n - e2 - 1);
        if ((a | b | c | d) > 255)
            return 0;
        *out = (a << 24) | (b << 16) | (c << 8) | d;
    }
#endif
    return 1;
}

#endif
