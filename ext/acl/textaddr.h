/* Text addresses read without a Python call: the strict dotted quad, and
 * IPv6 made of hex groups with at most one "::".
 *
 * Rules of this file:
 *
 * - Accept exactly what Python's ipaddress accepts, with the same value, or
 *   return 0 ("let someone else judge"): the caller then falls back to the
 *   twin's parse_address, which raises the twin's errors.  A reader here may
 *   refuse more than ipaddress does, never accept more.
 * - The text is n characters followed by a NUL (a Python str's data).  A
 *   reader loads a fixed width in place (16 bytes for the SSSE3 dotted quad,
 *   48 for IPv6) only when those bytes lie in the text's own page, else from
 *   a copy; what follows the text is ignored.  The portable dotted quad reads
 *   nothing past the NUL except within 8 bytes of the start.
 * - Built with AddressSanitizer, the readers always copy: a load past the
 *   end of a string, harmless inside its page, is what ASan reports, and
 *   copying exactly n bytes lets it check that the text is n bytes long.
 *   The normal build compiles to the same code as without this rule.
 * - acl_textaddr_init() runs once before the first read (the extension
 *   module calls it when it is imported): it fills the SSSE3 readers'
 *   tables, and does nothing in the portable build.
 * - No branch on each character: random client addresses have fields of
 *   random widths, and a character loop mispredicts its way to ~60 ns a
 *   call (measured on the routing bench set).  Checks are bit masks of where
 *   the separators and the digits are, OR-ed into one flag; the one loop
 *   left (IPv6's, once per group) branches once per group.
 * - Two implementations of the digit arithmetic: SSSE3 (shuffle each
 *   field's digits into a lane of their own, then multiply-adds) and
 *   portable scalar code.  A single lookup waits for its address before it
 *   can walk, so the SSSE3 readers are built for latency: the dotted quad,
 *   and IPv6 texts of eight groups (no "::"), find their shuffles in tables
 *   by where their separators are (4 KiB and 40 KiB), the 39-character full
 *   form uses fixed ones, and only texts with a "::" find their groups one
 *   by one.  Both implementations are compiled and compared by
 *   tests/core/test_textaddr.py; the extension build picks SSSE3 on x86-64
 *   (setup.py's CFLAGS).
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
#define ACL_TEXTADDR_SSSE3 1
#endif


#if defined(__SANITIZE_ADDRESS__)
#define ACL_TEXT_ALWAYS_COPY 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ACL_TEXT_ALWAYS_COPY 1
#endif
#endif

/* Where to read the text's first `width` bytes from: s itself when they lie
 * in s's page (what follows the text there is ignored), else `copy` (width
 * bytes), filled with the n characters and zeros.  A copy of a variable
 * length costs a call, so the readers take it only near a page's end (and
 * always under ASan: the rules above). */
static inline const unsigned char *acl_text_in_page(const char *s, size_t n, unsigned char *copy,
                                                   size_t width)
{
#if !defined(ACL_TEXT_ALWAYS_COPY)
    if (((uintptr_t)s & 4095) <= 4096 - width)
        return (const unsigned char *)s;
#endif
    memset(copy, 0, width);
    memcpy(copy, s, n);
    return copy;
}

#if defined(ACL_TEXTADDR_SSSE3)
/* The SSSE3 dotted quad's table.  A text's shape -- where its three dots
 * are, and its length -- is one 16-bit key: bit i set for a dot at i, and
 * bit n.  Of the 81 valid shapes (octets of 1-3 digits), each has its own
 * slot at (key * ACL_QUAD_HASH) >> 24: a multiplier found by search so that
 * no two shapes share a slot.  A slot holds the shuffle that gathers each
 * octet's last three characters into a 32-bit lane (hundreds, tens, units,
 * 0; 0x80, which shuffles in a 0, where the octet is shorter), and the key
 * of the shape that owns it: a text whose key differs is not a dotted quad.
 * Looking the shuffle up keeps the read to one chain of ~30 cycles: finding
 * the dots one by one (ctz) and building the shuffle from them took ~50,
 * and a single lookup waits for the address before it can walk. */
#define ACL_QUAD_HASH 0xe07bdb9fu
static uint8_t acl_quad_gather[256][16] __attribute__((aligned(16)));
static uint16_t acl_quad_owner[256];
/* 16 bytes of 0xFF, then 16 zeros: 16 bytes loaded from acl_quad_ones + 16 - n
 * are the mask of a text's first n bytes. */
static const uint8_t acl_quad_ones[32] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255};

/* The SSSE3 IPv6 reader's table, for texts of eight groups and no "::" --
 * what str() gives for most client addresses (SLAAC and privacy ones).
 * Such a text is two halves of four groups of 1-4 digits, each half ending
 * in a separator (the fourth colon, or the text's end); a half has one of
 * 256 shapes, keyed like the quad's: bit i set for a separator at i,
 * counted from the half's start.  ACL_HEX_SLOT gives each shape its own
 * slot of 2048 (a multiplier found by search, as no 9- or 10-bit one turned
 * up).  A slot holds the shuffle that gathers the half's 16 nibbles, four
 * per group right-aligned (0x80, a zero, before a short group's digits),
 * and the key of the shape that owns it.  Both halves are looked up at
 * once.  With the full form's fixed shuffles (acl_hex_full), a read took 21
 * ns where finding the groups one by one took 43, on the routing bench
 * set's keys (64% full form), and 28 against 43 on client-like ones (60%
 * eight groups, the rest with a "::", which take as long as before); C
 * harness, each read waiting for the previous one. */
#define ACL_HEX_HASH 0x9522ff10ad855ffdull
#define ACL_HEX_SLOT(key) ((unsigned)(((key) * ACL_HEX_HASH) >> (64 - 11)))
static int8_t acl_hex_gather[2048][16] __attribute__((aligned(16)));
static uint32_t acl_hex_owner[2048];

static void acl_hex_init(void)
{
    for (int shape = 0; shape < 256; shape++) {
        uint64_t key = 0;
        unsigned slot;
        int8_t gather[16];
        int at = 0;
        for (int k = 0; k < 4; k++) {
            int width = 1 + ((shape >> (2 * k)) & 3);
            for (int j = 0; j < 4; j++)                 /* the group's last digit last */
                gather[4 * k + j] = j < 4 - width ? (int8_t)0x80 : (int8_t)(at + j - (4 - width));
            at += width;
            key |= 1ull << at++;                        /* the separator after group k */
        }
        slot = ACL_HEX_SLOT(key);
        acl_hex_owner[slot] = (uint32_t)key;
        memcpy(acl_hex_gather[slot], gather, sizeof(gather));
    }
}

static void acl_textaddr_init(void)
{
    acl_hex_init();
    for (int shape = 0; shape < 81; shape++) {
        int width[4] = {shape % 3 + 1, shape / 3 % 3 + 1, shape / 9 % 3 + 1, shape / 27 + 1};
        int begin[4], at = 0;
        uint32_t key = 0, slot;
        for (int k = 0; k < 4; k++) {
            begin[k] = at;
            at += width[k];
            if (k < 3)
                key |= 1u << at++;                      /* the dot after octet k */
        }
        key |= 1u << at;                                /* the length */
        slot = (key * ACL_QUAD_HASH) >> 24;
        acl_quad_owner[slot] = (uint16_t)key;
        for (int k = 0; k < 4; k++) {
            int end = begin[k] + width[k];
            for (int j = 0; j < 3; j++) {
                int at_j = end - 3 + j;                 /* hundreds, tens, units */
                acl_quad_gather[slot][4 * k + j] = at_j >= begin[k] ? (uint8_t)at_j : 0x80;
            }
            acl_quad_gather[slot][4 * k + 3] = 0x80;
        }
    }
}

/* Strict dotted quad (four decimal octets 0..255, no leading zeros, nothing
 * else) from the n characters at s, host order in *out; 0 when the text is
 * anything else. */
static inline int acl_dotted_quad(const char *s, size_t n, uint32_t *out)
{
    unsigned char copy[16];
    __m128i x, d, value;
    uint32_t dots, digits, zeros, key, slot, full, starts, bad;
    if (n < 7 || n > 15)
        return 0;
    x = _mm_loadu_si128((const __m128i *)acl_text_in_page(s, n, copy, sizeof(copy)));
    x = _mm_and_si128(x, _mm_loadu_si128((const __m128i *)(acl_quad_ones + 16 - n)));  /* n bytes */
    d = _mm_sub_epi8(x, _mm_set1_epi8('0'));
    dots = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('.')));
    digits = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d));
    zeros = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('0')));
    key = dots | (1u << n);
    slot = (key * ACL_QUAD_HASH) >> 24;
    value = _mm_shuffle_epi8(d, _mm_load_si128((const __m128i *)acl_quad_gather[slot]));
    value = _mm_maddubs_epi16(value, _mm_setr_epi8(100, 10, 1, 0, 100, 10, 1, 0,
                                                   100, 10, 1, 0, 100, 10, 1, 0));
    value = _mm_madd_epi16(value, _mm_set1_epi16(1));
    full = (1u << n) - 1;
    starts = ((dots << 1) | 1) & full;                  /* where each octet begins */
    bad = (acl_quad_owner[slot] != key)                 /* three dots, octets of 1-3 digits */
        | ((dots | digits) != full)                     /* the rest digits */
        | ((zeros & starts & (digits >> 1)) != 0)       /* no leading zero */
        | (_mm_movemask_epi8(_mm_cmpgt_epi32(value, _mm_set1_epi32(255))) != 0);
    if (bad)
        return 0;
    /* lane 0 is the first octet, the highest byte of the address */
    *out = (uint32_t)_mm_cvtsi128_si32(_mm_shuffle_epi8(
        value, _mm_setr_epi8(12, 8, 4, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1)));
    return 1;
}

#else

/* The scalar dotted quad and its helpers (the SSSE3 reader above loads and
 * classifies its 16 bytes itself). */

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

static void acl_textaddr_init(void)
{
}

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
    return 1;
}
#endif

/* Bit i of *colons / *hexes: byte i of the 48 at text is ':' / a hex digit. */
static inline void acl_hex_masks(const unsigned char *text, uint64_t *colons, uint64_t *hexes)
{
    uint64_t c = 0, h = 0;
#if defined(__SSE2__) && !defined(ACL_TEXTADDR_PORTABLE)
    for (int k = 0; k < 3; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(text + 16 * k));
        __m128i d = _mm_sub_epi8(v, _mm_set1_epi8('0'));
        __m128i a = _mm_sub_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
        __m128i isd = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
        __m128i isa = _mm_cmpeq_epi8(_mm_min_epu8(a, _mm_set1_epi8(5)), a);
        __m128i isc = _mm_cmpeq_epi8(v, _mm_set1_epi8(':'));
        c |= (uint64_t)(uint32_t)_mm_movemask_epi8(isc) << (16 * k);
        h |= (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_or_si128(isd, isa)) << (16 * k);
    }
#else
    for (int i = 0; i < 48; i++) {
        unsigned char x = text[i];
        int digit = (unsigned char)(x - '0') < 10;
        int letter = (unsigned char)((x | 0x20) - 'a') < 6;
        c |= (uint64_t)(x == ':') << i;
        h |= (uint64_t)(digit | letter) << i;
    }
#endif
    *colons = c;
    *hexes = h;
}

#if !defined(ACL_TEXTADDR_SSSE3)
/* The 16-bit value of the four characters at d read as hex digits (junk
 * nibbles for any that is not one; callers shift those away).  In one
 * register: each byte's low nibble, plus 9 for letters (bit 6: 'A'-'F' and
 * 'a'-'f' end in 1..6), then the four nibbles side by side. */
static inline uint32_t acl_hex4(const unsigned char *d)
{
    uint32_t w;
    memcpy(&w, d, 4);
    w = le32toh(w);
    w = ((w & 0x0F0F0F0Fu) + 9 * ((w >> 6) & 0x01010101u)) & 0x0F0F0F0Fu;
    w = __builtin_bswap32(w);                   /* first character highest */
    w = ((w >> 4) | w) & 0x00FF00FFu;
    return (w | (w >> 8)) & 0xFFFFu;
}
#endif

#if defined(ACL_TEXTADDR_SSSE3)
/* The hex value of each of the 48 bytes at text, in three vectors (junk
 * for bytes that are not hex digits): its low nibble, plus 9 above '9'
 * ('A'-'F' and 'a'-'f' end in 1..6). */
static inline void acl_hex_nibbles(const unsigned char *text, __m128i nib[3])
{
    for (int k = 0; k < 3; k++) {
        __m128i c = _mm_loadu_si128((const __m128i *)(text + 16 * k));
        nib[k] = _mm_add_epi8(_mm_and_si128(c, _mm_set1_epi8(0x0F)),
                              _mm_and_si128(_mm_cmpgt_epi8(c, _mm_set1_epi8('9')), _mm_set1_epi8(9)));
    }
}

/* Bytes of the 48 nibbles nib[0..2] at the indexes idx (0..47; negative:
 * 0).  A shuffle reads one 16-byte chunk, so each chunk's pass drops the
 * indexes outside it, and the three passes are OR-ed. */
static inline __m128i acl_hex_pick(const __m128i nib[3], __m128i idx)
{
    __m128i r = _mm_setzero_si128();
    for (int k = 0; k < 3; k++) {
        __m128i ik = _mm_sub_epi8(idx, _mm_set1_epi8((char)(16 * k)));
        ik = _mm_or_si128(ik, _mm_cmpgt_epi8(ik, _mm_set1_epi8(15)));
        r = _mm_or_si128(r, _mm_shuffle_epi8(nib[k], ik));
    }
    return r;
}

/* 32 nibbles, four per group in group order, as the address's 16 bytes in
 * network order: each pair of nibbles is a byte. */
static inline unsigned __int128 acl_hex_bytes(__m128i first16, __m128i last16)
{
    const __m128i pair = _mm_setr_epi8(16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1);
    __m128i bytes = _mm_packus_epi16(_mm_maddubs_epi16(first16, pair), _mm_maddubs_epi16(last16, pair));
    return ((unsigned __int128)be64toh((uint64_t)_mm_cvtsi128_si64(bytes)) << 64)
           | be64toh((uint64_t)_mm_cvtsi128_si64(_mm_srli_si128(bytes, 8)));
}

/* The full form (39 characters: eight groups of four digits; colons and
 * hexes are the text's masks, cut to its 39 characters), read with fixed
 * shuffles: the address depends on nothing but the nibbles, so it does not
 * wait for the checks, which a predicted branch resolves later.  0 if the
 * 39 characters are anything else. */
static inline int acl_hex_full(const __m128i nib[3], uint64_t colons, uint64_t hexes,
                               unsigned __int128 *out)
{
    const uint64_t full = (1ull << 39) - 1, colons_at = 0x421084210ull;  /* 4, 9, ..., 34 */
    *out = acl_hex_bytes(
        _mm_or_si128(_mm_shuffle_epi8(nib[0], _mm_setr_epi8(0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, -1, -1, -1)),
                     _mm_shuffle_epi8(nib[1], _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2))),
        _mm_or_si128(_mm_shuffle_epi8(nib[1], _mm_setr_epi8(4, 5, 6, 7, 9, 10, 11, 12, 14, 15, -1, -1, -1, -1, -1, -1)),
                     _mm_shuffle_epi8(nib[2], _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 3, 4, 5, 6))));
    return colons == colons_at && hexes == (full & ~colons_at);
}

/* Eight groups of 1-4 digits and seven colons (the caller checked the
 * count, and that all else is hex digits) in n characters, from their
 * nibbles and colon mask: each half's
 * shuffle from acl_hex_gather.  0 if a half has no valid shape (a group of
 * 0 or 5+ digits). */
static inline int acl_hex_eight(const __m128i nib[3], size_t n, uint64_t colons,
                                unsigned __int128 *out)
{
    uint64_t c = colons & (colons - 1), first_half, second_half;
    unsigned first_slot, second_slot;
    int middle;
    c &= c - 1;
    c &= c - 1;
    middle = __builtin_ctzll(c);                        /* the fourth colon */
    first_half = colons & ((2ull << middle) - 1);
    second_half = (colons | (1ull << n)) >> (middle + 1);
    first_slot = ACL_HEX_SLOT(first_half);
    second_slot = ACL_HEX_SLOT(second_half);
    *out = acl_hex_bytes(
        acl_hex_pick(nib, _mm_load_si128((const __m128i *)acl_hex_gather[first_slot])),
        acl_hex_pick(nib, _mm_add_epi8(_mm_load_si128((const __m128i *)acl_hex_gather[second_slot]),
                                       _mm_set1_epi8((char)(middle + 1)))));
    return acl_hex_owner[first_slot] == first_half && acl_hex_owner[second_slot] == second_half;
}
#endif

/* IPv6 text made only of 1-4 digit hex groups and colons, with at most one
 * "::" standing for one or more zero groups -- what str() of an IPv6Address
 * gives outside the embedded-IPv4 forms -- into *out; 0 for anything else
 * (the caller tries inet_pton, then the twin). */
static inline int acl_hex_groups(const char *s, size_t n, unsigned __int128 *out)
{
    unsigned char copy[48];
    const unsigned char *text;
    uint64_t colons, hexes, full, gap, starts, run;
    int count, before;
#if defined(ACL_TEXTADDR_SSSE3)
    __m128i nib[3];
#endif
    if (n < 2 || n > 39)
        return 0;
    text = acl_text_in_page(s, n, copy, sizeof(copy));
    acl_hex_masks(text, &colons, &hexes);
    full = (1ull << n) - 1;
    colons &= full;
    hexes &= full;
#if defined(ACL_TEXTADDR_SSSE3)
    acl_hex_nibbles(text, nib);
    if (n == 39 && acl_hex_full(nib, colons, hexes, out))
        return 1;
    if (__builtin_popcountll(colons) == 7 && (colons | hexes) == full && acl_hex_eight(nib, n, colons, out))
        return 1;
#endif
    gap = colons & (colons >> 1);                /* bit i: "::" at i */
    starts = hexes & ~(hexes << 1);              /* bit i: a group starts at i */
    run = hexes & (hexes << 1) & (hexes << 2) & (hexes << 3) & (hexes << 4);
    if ((colons | hexes) != full || (gap & (gap - 1)) || run   /* two "::", ":::", 5 digits */
        || ((colons & 1) && !(gap & 1))                        /* a lone leading ':' */
        || ((colons >> (n - 1) & 1) && !(gap >> (n - 2) & 1))) /* a lone trailing one */
        return 0;
    count = __builtin_popcountll(starts);
    if ((gap == 0 && count != 8) || (gap != 0 && count > 7))
        return 0;
    /* Groups left of the "::" keep their places, the others move right. */
    before = gap ? __builtin_popcountll(starts & (gap - 1)) : count;
#if defined(ACL_TEXTADDR_SSSE3)
    {
        /* Texts with a "::" (eight groups were read above).  Output group g
         * (nibbles 4g..4g+3 of two vectors of 16) gathers the characters at
         * its last digit - 3 .. its last digit; indexes before the group's
         * first digit, and every index of a zero group (last digit 0x83:
         * all negative), have their high bit set, so acl_hex_pick writes 0.
         * The groups' first and last digits are found in text order (byte k
         * of first/last: group k), then moved to their output groups: those
         * after the "::" move right by the zero groups it stands for. */
        uint64_t la = hexes & ~(hexes >> 1);    /* bit i: a group's last digit */
        uint64_t first = 0, last = 0, st = starts;
        const __m128i off = _mm_setr_epi8(-3, -2, -1, 0, -3, -2, -1, 0, -3, -2, -1, 0, -3, -2, -1, 0);
        const __m128i g = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m128i idx[2], firsts, lasts8, after, zero, src;
        int zeros = 8 - count;
        for (int sh = 0; st; sh += 8) {
            first |= (uint64_t)__builtin_ctzll(st) << sh;
            last |= (uint64_t)__builtin_ctzll(la) << sh;
            st &= st - 1;
            la &= la - 1;
        }
        after = _mm_cmpgt_epi8(g, _mm_set1_epi8((char)(before + zeros - 1)));   /* g >= before + zeros */
        zero = _mm_andnot_si128(after, _mm_cmpgt_epi8(g, _mm_set1_epi8((char)(before - 1))));
        src = _mm_sub_epi8(g, _mm_and_si128(after, _mm_set1_epi8((char)zeros)));
        firsts = _mm_shuffle_epi8(_mm_cvtsi64_si128((long long)first), src);
        lasts8 = _mm_or_si128(_mm_andnot_si128(zero, _mm_shuffle_epi8(_mm_cvtsi64_si128((long long)last), src)),
                              _mm_and_si128(zero, _mm_set1_epi8((char)0x83)));
        for (int h = 0; h < 2; h++) {       /* groups 0-3, then 4-7 */
            const __m128i spread = _mm_add_epi8(_mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                                _mm_set1_epi8((char)(4 * h)));
            idx[h] = _mm_add_epi8(_mm_shuffle_epi8(lasts8, spread), off);
            idx[h] = _mm_or_si128(idx[h], _mm_cmpgt_epi8(_mm_shuffle_epi8(firsts, spread), idx[h]));
        }
        *out = acl_hex_bytes(acl_hex_pick(nib, idx[0]), acl_hex_pick(nib, idx[1]));
    }
#else
    {
        unsigned __int128 acc = 0, low;
        uint64_t st = starts;
        while (st) {
            int p = __builtin_ctzll(st);
            int length = __builtin_ctzll(~(hexes >> p));      /* 1..4 digits */
            st &= st - 1;
            acc = (acc << 16) | (acl_hex4(text + p) >> (16 - 4 * length));
        }
        if (gap && before && count > before) {
            low = acc & (((unsigned __int128)1 << (16 * (count - before))) - 1);
            acc = ((acc >> (16 * (count - before))) << (16 * (8 - before))) | low;
        } else if (gap && before) {
            acc <<= 16 * (8 - before);                         /* "x:y::" */
        }
        *out = acc;
    }
#endif
    return 1;
}

#endif
