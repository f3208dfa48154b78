/*
 * Native point arithmetic on the SM2 recommended curve (GB/T 32918.5-2017,
 * "sm2p256v1"), for pipeline/crypto/_sm2_curve.py.
 *
 * Only the hot operations of card preparation live here:
 *
 *   sm2n_mul_base_ct   [k]G for a secret k in [1, n-1] (ICC key generation,
 *                      signature nonces): fixed windows of signed digits
 *                      d_j in [-2^(w-1), 2^(w-1)] (Booth recoding) over a
 *                      table of i * 2^(wj) * G, entries 1 .. 2^(w-1) of every
 *                      row scanned in full (the memory access pattern does
 *                      not depend on k), y negated by a mask for d_j < 0, no
 *                      branch on k.  The Jacobian result is randomised by a caller's
 *                      random factor r, (X r^2, Y r^3, Z r) (the same point),
 *                      so that the caller's variable-time inversion of Z r
 *                      learns nothing about k.
 *   sm2n_mul2_vt       [s]G + [t]Q for public s, t (signature verification,
 *                      GB/T 32918.2 7.1 B6) over two such tables, variable
 *                      time, with every exceptional case of the addition
 *                      (doubling, P + (-P), infinity) handled.
 *   sm2n_mul2_vt_x_equals
 *                      the same sum, answering only whether its affine x is
 *                      congruent to a given v mod n (B7 needs nothing else):
 *                      X == v Z^2 or, when v + n < p, X == (v + n) Z^2, so no
 *                      inversion and no point leaves C.
 *   sm2n_point_valid   whether 64 bytes x || y are a point on the curve
 *                      (GB/T 32918.1 6.2.1 b, c).
 *   sm2n_field_op      one field operation on 32-byte operands, for the tests
 *                      to hold the field arithmetic to Python's integers.
 *
 * The point results are Jacobian (X, Y, Z), checked to be on the curve; the
 * Python caller makes them affine with one gmpy2 inversion, ~0.8 us against
 * ~10 us for Fermat's little theorem here.  fe_inv (Fermat, constant time) is
 * only used to build tables.
 *
 * Field elements are four 64-bit limbs, least significant first, in
 * Montgomery form (x * 2^256 mod p), always fully reduced (< p).  Because
 * p = 2^256 - 2^224 - 2^96 + 2^64 - 1 has a lowest limb of 2^64 - 1,
 * -p^-1 mod 2^64 = 1: each Montgomery reduction step's multiple m is the
 * lowest limb itself, and (t + m p) / 2^64 = (t >> 64) + m 2^192 - m 2^160
 * - m 2^32 + m, made of m, m << 32 and m >> 32 by additions and
 * subtractions: no multiplication by p (MONT_ADDEND).  fe_mul interleaves
 * the four steps with the four rows of the product (16 word products),
 * fe_sqr forms the 512-bit square from 10 word products first; both end with
 * one conditional subtraction of p, done, like fe_add's and fe_sub's, with
 * carry chains and masks (no branch, no table look-up).  The carries use the
 * adc/sbb intrinsics on x86-64 and plain C elsewhere (-DSM2N_PORTABLE forces
 * the latter).
 *
 * Formulas (Bernstein-Lange Explicit-Formulas Database, a = -3), the same as
 * the pure-Python module: mixed addition "madd-2004-hmv", doubling
 * "dbl-2001-b".  Correctness is checked against the pure-Python module and
 * gmssl on random scalars and against the GB/T 32918 known answers
 * (tests/unit/crypto/test_sm2_native.py).
 *
 * Why [k]G never meets an exceptional case in sm2n_mul_base_ct (width w, R
 * rows, w not dividing 256, so the top window has tb < w bits): before window
 * j the accumulator is [m]G with m = (k mod 2^(wj)) - c 2^(wj), c the carry
 * into window j, so |m| < 2^(wj), and m = 0 only while every digit so far was
 * 0 (the accumulator is infinity, selected separately).  Below the top
 * window the point added is [d 2^(wj)]G with 1 <= |d| <= 2^(w-1), and
 * |m| + |d| 2^(wj) < 2^(w(R-1)) < n, so m = +-d 2^(wj) mod n would need it as
 * integers, which |m| < 2^(wj) rules out.  In the top window d >= 0 and
 * m + d 2^(wj) = k: never P + (-P) as k != 0 mod n; a doubling would need
 * k = 2 d 2^(wj) - n, i.e. n = (K + 2c) 2^(wj) - (k mod 2^(wj)) for K = k >>
 * wj < 2^tb; as 2^256 - n < 2^225 that means K + 2c = 2^tb and k mod 2^(wj) =
 * 2^256 - n, whose window below the top is 0 so that c = 0 and K = 2^tb:
 * impossible.  A zero digit adds a dummy point whose result is discarded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef struct { uint64_t v[4]; } fe;
typedef struct { fe x, y; } affine;
typedef struct { fe X, Y, Z; } jacobian;

/* Bumped whenever a signature or an output layout below changes: the Python loader refuses a
   compiled module of another version (a tree updated without re-running tests/setup.sh). */
#define SM2N_ABI_VERSION 4

int sm2n_abi_version(void) { return SM2N_ABI_VERSION; }

struct sm2n_table {
    int width;
    int rows;
    int per_row; /* 2^width; entry 0 of each row is unused (zeros) */
    affine *points; /* rows * per_row, Montgomery form */
};
typedef struct sm2n_table sm2n_table;

static const uint64_t P[4] = {0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFF00000000ULL,
                              0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFEFFFFFFFFULL};
/* n, the order of G, least significant limb first */
static const uint64_t N[4] = {0x53BBF40939D54123ULL, 0x7203DF6B21C6052BULL,
                              0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFEFFFFFFFFULL};
/* b of the curve, big-endian */
static const unsigned char B_BYTES[32] = {
    0x28, 0xE9, 0xFA, 0x9E, 0x9D, 0x9F, 0x5E, 0x34, 0x4D, 0x5A, 0x9E, 0x4B, 0xCF, 0x65, 0x09, 0xA7,
    0xF3, 0x97, 0x89, 0xF5, 0x15, 0xAB, 0x8F, 0x92, 0xDD, 0xBC, 0xBD, 0x41, 0x4D, 0x94, 0x0E, 0x93};

static fe R2;   /* 2^512 mod p: to Montgomery form */
static fe ONE;  /* 2^256 mod p: 1 in Montgomery form */
static fe BM;   /* b in Montgomery form */
static int ready = 0;

/* ---- field arithmetic mod p ------------------------------------------------------------- */

/* Add and subtract with carry (carry in and out 0 or 1).  On x86-64 the compiler's intrinsics
   (adc and sbb, which every x86-64 CPU has: no target flag needed) keep the carry in the
   flags; elsewhere, or compiled with -DSM2N_PORTABLE, the plain C definitions below, which
   compute the same thing.  Measured on x86-64 with them: clang 14 makes add-with-carry of
   them ([k]G ~20% slower than with the intrinsics, still faster than the generic Montgomery
   code this replaced); gcc 12 does not (fe_mul twice as slow as with the intrinsics, [k]G
   ~10% slower than the code this replaced). */
#if defined(__x86_64__) && !defined(SM2N_PORTABLE)
#include <immintrin.h>
typedef unsigned char carry_t;
static inline uint64_t addc(uint64_t a, uint64_t b, carry_t *c) {
    unsigned long long r;
    *c = _addcarry_u64(*c, a, b, &r);
    return r;
}
static inline uint64_t subb(uint64_t a, uint64_t b, carry_t *c) {
    unsigned long long r;
    *c = _subborrow_u64(*c, a, b, &r);
    return r;
}
#else
typedef uint64_t carry_t;
static inline uint64_t addc(uint64_t a, uint64_t b, carry_t *c) {
    uint64_t s = a + b;
    uint64_t c1 = s < a;
    uint64_t r = s + *c;
    *c = c1 | (r < s);
    return r;
}
static inline uint64_t subb(uint64_t a, uint64_t b, carry_t *c) {
    uint64_t d = a - b;
    uint64_t c1 = a < b;
    uint64_t r = d - *c;
    *c = c1 | (d < *c);
    return r;
}
#endif

/* The multiplication and the square are inlined into their callers: a call costs more than a
   quarter of one (registers saved and restored), and inlined, the independent products of a
   point operation overlap. */
#if defined(__GNUC__)
#define FE_INLINE static inline __attribute__((always_inline))
#else
#define FE_INLINE static inline
#endif

/* r = t - p if t >= p else t, for t = hi 2^256 + (t3 t2 t1 t0) < 2p (hi 0 or 1); constant
   time.  t - p = t + (2^256 - p) - 2^256 with 2^256 - p = 2^224 + 2^96 - 2^64 + 1 (limbs 1,
   2^32 - 1, 0, 2^32), and t >= p exactly when hi is set or t + (2^256 - p) carries out of 256
   bits; the second addition adds 2^256 - p under that mask.  (Two carry chains rather than
   one chain and a masked select of t or t - p: the compiler turns such a select into vector
   instructions, whose register transfers cost more.) */
FE_INLINE void fe_reduce5(fe *r, uint64_t t0, uint64_t t1, uint64_t t2, uint64_t t3,
                          uint64_t hi) {
    carry_t c = 0;
    (void)addc(t0, 1, &c);
    (void)addc(t1, 0xFFFFFFFFULL, &c);
    (void)addc(t2, 0, &c);
    (void)addc(t3, 0x100000000ULL, &c);
    uint64_t mask = (uint64_t)0 - ((hi | c) & 1); /* all ones when t >= p */
    c = 0;
    r->v[0] = addc(t0, mask & 1, &c);
    r->v[1] = addc(t1, mask & 0xFFFFFFFFULL, &c);
    r->v[2] = addc(t2, 0, &c);
    r->v[3] = addc(t3, mask & 0x100000000ULL, &c);
}

/* r = t - p if t >= p else t, for t = (hi, lo[0..3]) < 2p; constant time */
static void fe_reduce_once(fe *r, const uint64_t lo[4], uint64_t hi) {
    fe_reduce5(r, lo[0], lo[1], lo[2], lo[3], hi);
}

static inline void fe_add(fe *r, const fe *a, const fe *b) {
    carry_t c = 0;
    uint64_t t0 = addc(a->v[0], b->v[0], &c);
    uint64_t t1 = addc(a->v[1], b->v[1], &c);
    uint64_t t2 = addc(a->v[2], b->v[2], &c);
    uint64_t t3 = addc(a->v[3], b->v[3], &c);
    fe_reduce5(r, t0, t1, t2, t3, c);
}

/* a - b, plus p when that borrowed: p's limbs (all ones, 2^64 - 2^32, all ones,
   2^64 - 2^32 - 1) under the borrow's mask; constant time */
static inline void fe_sub(fe *r, const fe *a, const fe *b) {
    carry_t c = 0;
    uint64_t t0 = subb(a->v[0], b->v[0], &c);
    uint64_t t1 = subb(a->v[1], b->v[1], &c);
    uint64_t t2 = subb(a->v[2], b->v[2], &c);
    uint64_t t3 = subb(a->v[3], b->v[3], &c);
    uint64_t mask = (uint64_t)0 - c;
    c = 0;
    r->v[0] = addc(t0, mask, &c);
    r->v[1] = addc(t1, mask & 0xFFFFFFFF00000000ULL, &c);
    r->v[2] = addc(t2, mask, &c);
    r->v[3] = addc(t3, mask & 0xFFFFFFFEFFFFFFFFULL, &c);
}

/* One Montgomery step without a multiplication: for m the lowest limb of t, t + m p clears
   that limb, and since -p^-1 mod 2^64 = 1 that m is the step's multiple, with
   (t + m p) / 2^64 = (t >> 64) + m (p + 1) / 2^64 and (p + 1) / 2^64 = 2^192 - 2^160 - 2^32 + 1.
   The addend m (2^192 - 2^160 - 2^32 + 1) is (m, 0, 0, m) - (m << 32, m >> 32, m << 32,
   m >> 32) limb by limb; it is below 2^256 - 2^224, so its top limb plus a carry bit does not
   overflow. */
#define MONT_ADDEND(m, d0, d1, d2, d3)                                                         \
    do {                                                                                       \
        uint64_t lo_ = (m) << 32, hi_ = (m) >> 32;                                             \
        carry_t b_ = 0;                                                                        \
        d0 = subb((m), lo_, &b_);                                                              \
        d1 = subb(0, hi_, &b_);                                                                \
        d2 = subb(0, lo_, &b_);                                                                \
        d3 = subb((m), hi_, &b_);                                                              \
    } while (0)

/* Montgomery product a * b / 2^256 mod p for a, b < p, canonical (< p).  Operand scanning
   with the reduction interleaved (CIOS): four rows t = (t + a b[i]) / 2^64 reduced by one
   MONT_ADDEND step each; 16 word products, none by p.  t stays below 2p, so one conditional
   subtraction ends it. */
FE_INLINE void fe_mul(fe *r, const fe *a, const fe *b) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3];
    uint64_t t0, t1, t2, t3, t4, d0, d1, d2, d3, bi, r1, r2, r3, r4;
    u128 p0, p1, p2, p3;
    carry_t c;
    bi = b->v[0];
    p0 = (u128)a0 * bi;
    p1 = (u128)a1 * bi;
    p2 = (u128)a2 * bi;
    p3 = (u128)a3 * bi;
    t0 = (uint64_t)p0;
    c = 0;
    t1 = addc((uint64_t)(p0 >> 64), (uint64_t)p1, &c);
    t2 = addc((uint64_t)(p1 >> 64), (uint64_t)p2, &c);
    t3 = addc((uint64_t)(p2 >> 64), (uint64_t)p3, &c);
    t4 = (uint64_t)(p3 >> 64) + c;
    for (int i = 1; i < 4; i++) {
        /* t = (t + m p) / 2^64 for m = t0 */
        MONT_ADDEND(t0, d0, d1, d2, d3);
        c = 0;
        t0 = addc(t1, d0, &c);
        t1 = addc(t2, d1, &c);
        t2 = addc(t3, d2, &c);
        t3 = addc(t4, d3, &c);
        t4 = c;
        /* t += a b[i] */
        bi = b->v[i];
        p0 = (u128)a0 * bi;
        p1 = (u128)a1 * bi;
        p2 = (u128)a2 * bi;
        p3 = (u128)a3 * bi;
        c = 0;
        r1 = addc((uint64_t)(p0 >> 64), (uint64_t)p1, &c);
        r2 = addc((uint64_t)(p1 >> 64), (uint64_t)p2, &c);
        r3 = addc((uint64_t)(p2 >> 64), (uint64_t)p3, &c);
        r4 = (uint64_t)(p3 >> 64) + c;
        c = 0;
        t0 = addc(t0, (uint64_t)p0, &c);
        t1 = addc(t1, r1, &c);
        t2 = addc(t2, r2, &c);
        t3 = addc(t3, r3, &c);
        t4 = addc(t4, r4, &c);
    }
    MONT_ADDEND(t0, d0, d1, d2, d3);
    c = 0;
    t0 = addc(t1, d0, &c);
    t1 = addc(t2, d1, &c);
    t2 = addc(t3, d2, &c);
    t3 = addc(t4, d3, &c);
    fe_reduce5(r, t0, t1, t2, t3, c);
}

/* Montgomery square a^2 / 2^256 mod p for a < p, canonical: the 512-bit square from the six
   cross products (doubled by a shift) and the four squares, 10 word products instead of 16;
   then four MONT_ADDEND steps, the carry out of each step's top limb held and added with the
   next step's addend instead of being carried up to limb 7. */
FE_INLINE void fe_sqr(fe *r, const fe *a) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3];
    u128 p01 = (u128)a0 * a1, p02 = (u128)a0 * a2, p03 = (u128)a0 * a3;
    u128 p12 = (u128)a1 * a2, p13 = (u128)a1 * a3, p23 = (u128)a2 * a3;
    uint64_t t0, t1, t2, t3, t4, t5, t6, t7, d0, d1, d2, d3, k;
    carry_t c;
    /* the sum of a_i a_j 2^(64 (i + j)) over i < j, limbs t1..t6 */
    t1 = (uint64_t)p01;
    c = 0;
    t2 = addc((uint64_t)(p01 >> 64), (uint64_t)p02, &c);
    t3 = addc((uint64_t)(p02 >> 64), (uint64_t)p03, &c);
    t4 = addc((uint64_t)(p03 >> 64), (uint64_t)p13, &c);
    t5 = addc((uint64_t)(p13 >> 64), (uint64_t)p23, &c);
    t6 = (uint64_t)(p23 >> 64) + c;
    c = 0;
    t3 = addc(t3, (uint64_t)p12, &c);
    t4 = addc(t4, (uint64_t)(p12 >> 64), &c);
    t5 = addc(t5, 0, &c);
    t6 += c;
    /* doubled */
    t7 = t6 >> 63;
    t6 = (t6 << 1) | (t5 >> 63);
    t5 = (t5 << 1) | (t4 >> 63);
    t4 = (t4 << 1) | (t3 >> 63);
    t3 = (t3 << 1) | (t2 >> 63);
    t2 = (t2 << 1) | (t1 >> 63);
    t1 <<= 1;
    /* plus the squares a_i^2 2^(128 i) */
    u128 s0 = (u128)a0 * a0, s1 = (u128)a1 * a1, s2 = (u128)a2 * a2, s3 = (u128)a3 * a3;
    t0 = (uint64_t)s0;
    c = 0;
    t1 = addc(t1, (uint64_t)(s0 >> 64), &c);
    t2 = addc(t2, (uint64_t)s1, &c);
    t3 = addc(t3, (uint64_t)(s1 >> 64), &c);
    t4 = addc(t4, (uint64_t)s2, &c);
    t5 = addc(t5, (uint64_t)(s2 >> 64), &c);
    t6 = addc(t6, (uint64_t)s3, &c);
    t7 += (uint64_t)(s3 >> 64) + c;
    /* reduction: limbs 0..3 cleared one by one */
    MONT_ADDEND(t0, d0, d1, d2, d3);
    c = 0;
    t1 = addc(t1, d0, &c);
    t2 = addc(t2, d1, &c);
    t3 = addc(t3, d2, &c);
    t4 = addc(t4, d3, &c);
    k = c;
    MONT_ADDEND(t1, d0, d1, d2, d3);
    d3 += k;
    c = 0;
    t2 = addc(t2, d0, &c);
    t3 = addc(t3, d1, &c);
    t4 = addc(t4, d2, &c);
    t5 = addc(t5, d3, &c);
    k = c;
    MONT_ADDEND(t2, d0, d1, d2, d3);
    d3 += k;
    c = 0;
    t3 = addc(t3, d0, &c);
    t4 = addc(t4, d1, &c);
    t5 = addc(t5, d2, &c);
    t6 = addc(t6, d3, &c);
    k = c;
    MONT_ADDEND(t3, d0, d1, d2, d3);
    d3 += k;
    c = 0;
    t4 = addc(t4, d0, &c);
    t5 = addc(t5, d1, &c);
    t6 = addc(t6, d2, &c);
    t7 = addc(t7, d3, &c);
    /* (a^2 + M p) / 2^256 < 2p */
    fe_reduce5(r, t4, t5, t6, t7, c);
}

static int fe_is_zero(const fe *a) { return (a->v[0] | a->v[1] | a->v[2] | a->v[3]) == 0; }

static int fe_equal(const fe *a, const fe *b) {
    return ((a->v[0] ^ b->v[0]) | (a->v[1] ^ b->v[1]) | (a->v[2] ^ b->v[2]) |
            (a->v[3] ^ b->v[3])) == 0;
}

/* 1 / a mod p (Montgomery in and out) = a^(p-2), 4-bit fixed windows: no branch on a */
static void fe_inv(fe *r, const fe *a) {
    fe pow[16];
    pow[0] = ONE;
    pow[1] = *a;
    for (int i = 2; i < 16; i++) fe_mul(&pow[i], &pow[i - 1], a);
    /* p - 2, most significant limb first */
    const uint64_t e[4] = {0xFFFFFFFEFFFFFFFFULL, 0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFF00000000ULL,
                           0xFFFFFFFFFFFFFFFDULL};
    fe acc = ONE;
    for (int limb = 0; limb < 4; limb++) {
        for (int shift = 60; shift >= 0; shift -= 4) {
            for (int s = 0; s < 4; s++) fe_sqr(&acc, &acc);
            fe_mul(&acc, &acc, &pow[(e[limb] >> shift) & 15]);
        }
    }
    *r = acc;
}

static void fe_from_bytes(fe *r, const unsigned char in[32]) {
    for (int i = 0; i < 4; i++) {
        uint64_t w = 0;
        for (int j = 0; j < 8; j++) w = (w << 8) | in[(3 - i) * 8 + j];
        r->v[i] = w;
    }
}

static void fe_to_bytes(unsigned char out[32], const fe *a) {
    for (int i = 0; i < 4; i++) {
        uint64_t w = a->v[i];
        for (int j = 7; j >= 0; j--) {
            out[(3 - i) * 8 + j] = (unsigned char)w;
            w >>= 8;
        }
    }
}

/* 1 when the 256-bit value a < m (both four limbs, least significant first) */
static int below(const fe *a, const uint64_t m[4]) {
    u128 borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)a->v[i] - m[i] - borrow;
        borrow = (d >> 64) & 1;
    }
    return (int)borrow;
}

/* 1 when 0 <= value < p */
static int fe_canonical(const fe *a) { return below(a, P); }

static void to_mont(fe *r, const fe *a) { fe_mul(r, a, &R2); }

static void from_mont(fe *r, const fe *a) {
    fe one = {{1, 0, 0, 0}};
    fe_mul(r, a, &one);
}

static void init_constants(void) {
    if (ready) return;
    /* 2^256 mod p = 2^256 - p (p > 2^255) */
    u128 borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)0 - P[i] - borrow;
        ONE.v[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
    /* R2 = 2^256 * 2^256 mod p: double ONE 256 times */
    R2 = ONE;
    for (int i = 0; i < 256; i++) fe_add(&R2, &R2, &R2);
    fe b;
    fe_from_bytes(&b, B_BYTES);
    to_mont(&BM, &b);
    ready = 1;
}

/* y^2 == x^3 - 3x + b (Montgomery form) */
static int on_curve(const fe *x, const fe *y) {
    fe y2, x3, t;
    fe_sqr(&y2, y);
    fe_sqr(&x3, x);
    fe_mul(&x3, &x3, x);
    fe_add(&t, x, x);
    fe_add(&t, &t, x);
    fe_sub(&x3, &x3, &t);
    fe_add(&x3, &x3, &BM);
    return fe_equal(&y2, &x3);
}

/* ---- point arithmetic (Jacobian, a = -3) ------------------------------------------------ */

static void jac_double(jacobian *r, const jacobian *a) {
    fe delta, gamma, beta, alpha, t1, t2, X3, Y3, Z3;
    fe_sqr(&delta, &a->Z);
    fe_sqr(&gamma, &a->Y);
    fe_mul(&beta, &a->X, &gamma);
    fe_sub(&t1, &a->X, &delta);
    fe_add(&t2, &a->X, &delta);
    fe_mul(&alpha, &t1, &t2);
    fe_add(&t1, &alpha, &alpha);
    fe_add(&alpha, &t1, &alpha); /* alpha = 3 (X - delta)(X + delta) */
    fe_sqr(&X3, &alpha);
    fe_add(&t1, &beta, &beta);
    fe_add(&t1, &t1, &t1);
    fe_add(&t2, &t1, &t1); /* 8 beta */
    fe_sub(&X3, &X3, &t2);
    fe_add(&Z3, &a->Y, &a->Z);
    fe_sqr(&Z3, &Z3);
    fe_sub(&Z3, &Z3, &gamma);
    fe_sub(&Z3, &Z3, &delta);
    fe_sub(&t1, &t1, &X3); /* 4 beta - X3 */
    fe_mul(&Y3, &alpha, &t1);
    fe_sqr(&t2, &gamma);
    fe_add(&t2, &t2, &t2);
    fe_add(&t2, &t2, &t2);
    fe_add(&t2, &t2, &t2); /* 8 gamma^2 */
    fe_sub(&Y3, &Y3, &t2);
    r->X = X3;
    r->Y = Y3;
    r->Z = Z3;
}

/* r = a + (x2, y2) with no exceptional case handled ("madd-2004-hmv"); sets *h_zero, *r_zero */
static void jac_madd_raw(jacobian *r, const jacobian *a, const affine *q, int *h_zero,
                         int *r_zero) {
    fe T1, H, R, HH, HHH, V, t;
    fe_sqr(&T1, &a->Z);
    fe_mul(&H, &T1, &q->x);
    fe_sub(&H, &H, &a->X);
    fe_mul(&R, &T1, &a->Z);
    fe_mul(&R, &R, &q->y);
    fe_sub(&R, &R, &a->Y);
    if (h_zero) *h_zero = fe_is_zero(&H);
    if (r_zero) *r_zero = fe_is_zero(&R);
    fe_sqr(&HH, &H);
    fe_mul(&HHH, &HH, &H);
    fe_mul(&V, &a->X, &HH);
    fe_sqr(&r->X, &R);
    fe_sub(&r->X, &r->X, &HHH);
    fe_add(&t, &V, &V);
    fe_sub(&r->X, &r->X, &t);
    fe_sub(&t, &V, &r->X);
    fe_mul(&t, &R, &t);
    fe_mul(&HHH, &a->Y, &HHH);
    fe_sub(&r->Y, &t, &HHH);
    fe_mul(&r->Z, &a->Z, &H);
}

/* r = a + q, every case handled (variable time); a may be infinity (Z = 0) */
static void jac_madd(jacobian *r, const jacobian *a, const affine *q) {
    if (fe_is_zero(&a->Z)) {
        r->X = q->x;
        r->Y = q->y;
        r->Z = ONE;
        return;
    }
    int hz, rz;
    jacobian out;
    jac_madd_raw(&out, a, q, &hz, &rz);
    if (hz) {
        if (rz) {
            jacobian qa = {q->x, q->y, ONE};
            jac_double(r, &qa);
        } else {
            memset(r, 0, sizeof *r); /* P + (-P) = infinity */
        }
        return;
    }
    *r = out;
}

/* affine from Jacobian; 0 for infinity */
static int jac_to_affine(affine *r, const jacobian *a) {
    if (fe_is_zero(&a->Z)) return 0;
    fe zi, zi2, zi3;
    fe_inv(&zi, &a->Z);
    fe_sqr(&zi2, &zi);
    fe_mul(&zi3, &zi2, &zi);
    fe_mul(&r->x, &a->X, &zi2);
    fe_mul(&r->y, &a->Y, &zi3);
    return 1;
}

static void select_fe(fe *r, const fe *a, uint64_t mask) {
    for (int i = 0; i < 4; i++) r->v[i] = (r->v[i] & ~mask) | (a->v[i] & mask);
}

/* ---- tables --------------------------------------------------------------------------- */

void sm2n_table_free(sm2n_table *t) {
    if (t) {
        free(t->points);
        free(t);
    }
}

/* A table of i 2^(width j) B (1 <= i < 2^width) for B = xy (64 bytes x || y, big-endian);
   NULL when B is not on the curve, the width is not 2..8, or memory is short. */
sm2n_table *sm2n_table_new(const unsigned char xy[64], int width) {
    init_constants();
    if (width < 2 || width > 8) return NULL;
    fe x, y;
    fe_from_bytes(&x, xy);
    fe_from_bytes(&y, xy + 32);
    if (!fe_canonical(&x) || !fe_canonical(&y)) return NULL;
    affine base;
    to_mont(&base.x, &x);
    to_mont(&base.y, &y);
    if (!on_curve(&base.x, &base.y)) return NULL;
    sm2n_table *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->width = width;
    t->rows = (256 + width - 1) / width;
    t->per_row = 1 << width;
    /* 64-byte aligned: each affine entry (64 bytes) is then one cache line, so a verification's
       random look-ups touch one line each instead of two */
    size_t bytes = (size_t)t->rows * t->per_row * sizeof(affine);
    t->points = aligned_alloc(64, bytes);
    if (t->points) memset(t->points, 0, bytes);
    if (!t->points) {
        free(t);
        return NULL;
    }
    /* one row at a time: the multiples in Jacobian form, then all made affine with one
       inversion (Montgomery's trick: prefix products of the Z's) */
    jacobian *jac = malloc((size_t)t->per_row * sizeof(jacobian));
    fe *prefix = malloc((size_t)t->per_row * sizeof(fe));
    if (!jac || !prefix) {
        free(jac);
        free(prefix);
        sm2n_table_free(t);
        return NULL;
    }
    int ok = 1;
    for (int j = 0; j < t->rows && ok; j++) {
        affine *row = t->points + (size_t)j * t->per_row;
        jac[1].X = base.x;
        jac[1].Y = base.y;
        jac[1].Z = ONE;
        for (int i = 2; i < t->per_row; i++) jac_madd(&jac[i], &jac[i - 1], &base);
        prefix[1] = jac[1].Z;
        for (int i = 2; i < t->per_row; i++) fe_mul(&prefix[i], &prefix[i - 1], &jac[i].Z);
        if (fe_is_zero(&prefix[t->per_row - 1])) { /* a multiple at infinity: not on this curve */
            ok = 0;
            break;
        }
        fe inv; /* 1 / (Z_1 ... Z_i), walking down */
        fe_inv(&inv, &prefix[t->per_row - 1]);
        for (int i = t->per_row - 1; i >= 1; i--) {
            fe zi, zi2, zi3;
            if (i > 1) {
                fe_mul(&zi, &inv, &prefix[i - 1]);
                fe_mul(&inv, &inv, &jac[i].Z);
            } else {
                zi = inv;
            }
            fe_sqr(&zi2, &zi);
            fe_mul(&zi3, &zi2, &zi);
            fe_mul(&row[i].x, &jac[i].X, &zi2);
            fe_mul(&row[i].y, &jac[i].Y, &zi3);
        }
        /* next base: 2^width B = 2 (2^(width-1) B) */
        jacobian half = {row[t->per_row / 2].x, row[t->per_row / 2].y, ONE};
        jacobian twice;
        jac_double(&twice, &half);
        ok = jac_to_affine(&base, &twice);
    }
    free(jac);
    free(prefix);
    if (!ok) {
        sm2n_table_free(t);
        return NULL;
    }
    return t;
}

static unsigned digit_at(const unsigned char k[32], int bit, int width) {
    /* bits [bit, bit + width) of the big-endian 256-bit k */
    unsigned value = 0;
    for (int i = 0; i < width; i++) {
        int b = bit + i;
        if (b >= 256) break;
        value |= (unsigned)((k[31 - b / 8] >> (b % 8)) & 1) << i;
    }
    return value;
}

/* y^2 = x^3 - 3 x z^4 + b z^6 for a Jacobian (X, Y, Z) (Montgomery form) */
static int jac_on_curve(const jacobian *a) {
    fe y2, x3, z2, z4, z6, t;
    fe_sqr(&y2, &a->Y);
    fe_sqr(&x3, &a->X);
    fe_mul(&x3, &x3, &a->X);
    fe_sqr(&z2, &a->Z);
    fe_sqr(&z4, &z2);
    fe_mul(&z6, &z4, &z2);
    fe_mul(&t, &a->X, &z4);
    fe_sub(&x3, &x3, &t);
    fe_sub(&x3, &x3, &t);
    fe_sub(&x3, &x3, &t);
    fe_mul(&t, &BM, &z6);
    fe_add(&x3, &x3, &t);
    return fe_equal(&y2, &x3);
}

/* out = X || Y || Z (96 bytes big-endian, not Montgomery form): the caller divides by Z (one
   modular inversion, blinded by the caller where the point depends on a secret).  Returns 1,
   0 for infinity, -1 if the result is off the curve (a fault check: never expected). */
static int write_jacobian(unsigned char out[96], const jacobian *acc) {
    if (fe_is_zero(&acc->Z)) return 0;
    if (!jac_on_curve(acc)) return -1;
    fe v;
    from_mont(&v, &acc->X);
    fe_to_bytes(out, &v);
    from_mont(&v, &acc->Y);
    fe_to_bytes(out + 32, &v);
    from_mont(&v, &acc->Z);
    fe_to_bytes(out + 64, &v);
    return 1;
}

/* (X r^2, Y r^3, Z r), the same point, for r = blind mod p (1 if that is 0) */
static void randomise(jacobian *a, const unsigned char blind[32]) {
    fe raw, r, r2, r3, zero = {{0, 0, 0, 0}};
    fe_from_bytes(&raw, blind);
    fe_reduce_once(&r, raw.v, 0); /* blind < 2^256 < 2p */
    uint64_t is_zero = (uint64_t)0 - (uint64_t)fe_equal(&r, &zero);
    fe one = {{1, 0, 0, 0}};
    select_fe(&r, &one, is_zero);
    to_mont(&r, &r);
    fe_sqr(&r2, &r);
    fe_mul(&r3, &r2, &r);
    fe_mul(&a->X, &a->X, &r2);
    fe_mul(&a->Y, &a->Y, &r3);
    fe_mul(&a->Z, &a->Z, &r);
}

/* q = row[mag] for 0 <= mag <= count ((0, 0) for mag = 0), reading every entry 1 .. count
   whatever mag is, with no branch on it: each entry is and-ed with an all-ones or all-zero
   mask and or-ed into q.  With gcc or clang, in 128-bit vectors (their generic vector
   extension: SSE2 on x86-64, scalar code where a target has none), 1.5x faster than the
   compiler's own vectorisation of the scalar loop below (which -DSM2N_PORTABLE selects). */
static inline void select_entry_ct(affine *q, const affine *row, unsigned count, unsigned mag) {
#if defined(__GNUC__) && !defined(SM2N_PORTABLE)
    typedef uint64_t v2u64 __attribute__((vector_size(16)));
    v2u64 a0 = {0, 0}, a1 = {0, 0}, a2 = {0, 0}, a3 = {0, 0};
    for (unsigned i = 1; i <= count; i++) {
        uint64_t m = (uint64_t)0 - (((uint64_t)(i ^ mag) - 1) >> 63); /* all ones: i = mag */
        v2u64 mv = {m, m}, e0, e1, e2, e3;
        memcpy(&e0, &row[i].x.v[0], 16);
        memcpy(&e1, &row[i].x.v[2], 16);
        memcpy(&e2, &row[i].y.v[0], 16);
        memcpy(&e3, &row[i].y.v[2], 16);
        a0 |= e0 & mv;
        a1 |= e1 & mv;
        a2 |= e2 & mv;
        a3 |= e3 & mv;
    }
    memcpy(&q->x.v[0], &a0, 16);
    memcpy(&q->x.v[2], &a1, 16);
    memcpy(&q->y.v[0], &a2, 16);
    memcpy(&q->y.v[2], &a3, 16);
#else
    uint64_t qx[4] = {0, 0, 0, 0}, qy[4] = {0, 0, 0, 0};
    for (unsigned i = 1; i <= count; i++) {
        uint64_t m = (uint64_t)0 - (((uint64_t)(i ^ mag) - 1) >> 63); /* all ones: i = mag */
        for (int l = 0; l < 4; l++) {
            qx[l] |= row[i].x.v[l] & m;
            qy[l] |= row[i].y.v[l] & m;
        }
    }
    memcpy(q->x.v, qx, sizeof qx);
    memcpy(q->y.v, qy, sizeof qy);
#endif
}

/* [k]B for the table's base B and a secret k in [1, n-1] (32 bytes big-endian), in constant
   time as described at the top, randomised by r = blind mod p (1 if that is 0): out is
   (X r^2, Y r^3, Z r) and the return value as write_jacobian; -2 for a table whose width
   divides 256 (the signed digits need a top window narrower than the others).

   Signed digits (Booth recoding): window j's value plus the carry from below, w in
   [0, 2^width], becomes the digit w - 2^width (carry 1) when w >= 2^(width-1), else w (carry
   0); the top window takes its w as it is (at most 2^(its bits) <= 2^(width-1), no carry).
   So |digit| <= 2^(width-1): entries 1 .. 2^(width-1) of each row are scanned, and the
   selected point's y is negated, without a branch, for a negative digit. */
int sm2n_mul_base_ct(const sm2n_table *t, const unsigned char k[32], const unsigned char blind[32],
                     unsigned char out[96]) {
    if (256 % t->width == 0) return -2;
    const unsigned half = (unsigned)t->per_row / 2;
    const fe zero = {{0, 0, 0, 0}};
    jacobian acc;
    memset(&acc, 0, sizeof acc);
    uint64_t acc_inf = ~(uint64_t)0; /* all ones while the accumulator is infinity */
    unsigned carry = 0;
    for (int j = 0; j < t->rows; j++) {
        unsigned w = digit_at(k, j * t->width, t->width) + carry; /* 0 .. 2^width */
        unsigned neg = 0;
        if (j < t->rows - 1) { /* (the row index is public) */
            neg = (w + half) >> t->width; /* 1 when w >= 2^(width-1) */
            carry = neg;
        }
        unsigned nmask = 0u - neg;
        unsigned mag = (((unsigned)t->per_row - w) & nmask) | (w & ~nmask); /* 0 .. half */
        const affine *row = t->points + (size_t)j * t->per_row;
        affine q;
        select_entry_ct(&q, row, half, mag);
        fe negy; /* -y; 0 for the dummy (0, 0) of a zero digit */
        fe_sub(&negy, &zero, &q.y);
        select_fe(&q.y, &negy, (uint64_t)0 - (uint64_t)neg);
        jacobian sum;
        jac_madd_raw(&sum, &acc, &q, NULL, NULL);
        uint64_t nonzero = (((uint64_t)mag - 1) >> 63) - 1; /* all ones when mag != 0 */
        /* acc infinity and d != 0: take q itself */
        uint64_t take_q = acc_inf & nonzero;
        uint64_t take_sum = ~acc_inf & nonzero;
        select_fe(&acc.X, &sum.X, take_sum);
        select_fe(&acc.Y, &sum.Y, take_sum);
        select_fe(&acc.Z, &sum.Z, take_sum);
        select_fe(&acc.X, &q.x, take_q);
        select_fe(&acc.Y, &q.y, take_q);
        select_fe(&acc.Z, &ONE, take_q);
        acc_inf &= ~nonzero;
    }
    randomise(&acc, blind);
    return write_jacobian(out, &acc);
}

/* acc = [s]G + [t]Q for public s, t over G's and Q's tables, variable time, every exceptional
   case handled */
static void mul2_vt(jacobian *acc, const sm2n_table *g, const unsigned char s[32],
                    const sm2n_table *q, const unsigned char t[32]) {
    /* the entries to add, looked up and prefetched first: between cards the tables (~0.5 MB
       each) fall out of the caches, and the misses then overlap instead of coming one by one */
    const affine *picked[2 * 256];
    int count = 0;
    for (int j = 0; j < g->rows; j++) {
        unsigned d = digit_at(s, j * g->width, g->width);
        if (d) picked[count++] = g->points + (size_t)j * g->per_row + d;
    }
    for (int j = 0; j < q->rows; j++) {
        unsigned d = digit_at(t, j * q->width, q->width);
        if (d) picked[count++] = q->points + (size_t)j * q->per_row + d;
    }
    for (int i = 0; i < count; i++) __builtin_prefetch(picked[i]);
    memset(acc, 0, sizeof *acc);
    for (int i = 0; i < count; i++) jac_madd(acc, acc, picked[i]);
}

/* [s]G + [t]Q for public s, t (32 bytes big-endian each); out and the return value as
   write_jacobian. */
int sm2n_mul2_vt(const sm2n_table *g, const unsigned char s[32], const sm2n_table *q,
                 const unsigned char t[32], unsigned char out[96]) {
    jacobian acc;
    mul2_vt(&acc, g, s, q, t);
    return write_jacobian(out, &acc);
}

/* 1 when [s]G + [t]Q is a finite point whose affine x is congruent to v mod n (v: 32 bytes
   big-endian, v < n), i.e. x = v or x = v + n < p, tested as X == x Z^2 without an inversion;
   0 when not (or the sum is infinity); -1 if the sum is off the curve (a fault check: never
   expected); -2 when v >= n. */
int sm2n_mul2_vt_x_equals(const sm2n_table *g, const unsigned char s[32], const sm2n_table *q,
                          const unsigned char t[32], const unsigned char v[32]) {
    fe x;
    fe_from_bytes(&x, v);
    if (!below(&x, N)) return -2;
    jacobian acc;
    mul2_vt(&acc, g, s, q, t);
    if (fe_is_zero(&acc.Z)) return 0;
    if (!jac_on_curve(&acc)) return -1;
    fe z2, xm, xz2;
    fe_sqr(&z2, &acc.Z);
    for (int candidate = 0; candidate < 2; candidate++) {
        if (candidate) { /* x = v + n, when that is still below p */
            uint64_t w[4];
            u128 c = 0;
            for (int i = 0; i < 4; i++) {
                c += (u128)x.v[i] + N[i];
                w[i] = (uint64_t)c;
                c >>= 64;
            }
            if (c) return 0;
            memcpy(x.v, w, sizeof w);
            if (!fe_canonical(&x)) return 0;
        }
        to_mont(&xm, &x);
        fe_mul(&xz2, &xm, &z2);
        if (fe_equal(&xz2, &acc.X)) return 1;
    }
    return 0;
}

/* 1 when xy (64 bytes x || y, big-endian) is a point on the curve with x, y < p, else 0 */
int sm2n_point_valid(const unsigned char xy[64]) {
    init_constants();
    fe x, y;
    fe_from_bytes(&x, xy);
    fe_from_bytes(&y, xy + 32);
    if (!fe_canonical(&x) || !fe_canonical(&y)) return 0;
    to_mont(&x, &x);
    to_mont(&y, &y);
    return on_curve(&x, &y);
}

/* One field operation on a, b < p (32 bytes big-endian each), for tests: op 0 the Montgomery
   product a b / 2^256, 1 the Montgomery square a^2 / 2^256, 2 a + b, 3 a - b, 4 the Montgomery
   inverse 2^512 / a (0 for a = 0), all mod p, into out (32 bytes big-endian).  Returns 1, or 0
   (out untouched) when an operand is not below p or op is none of these. */
int sm2n_field_op(int op, const unsigned char a[32], const unsigned char b[32],
                  unsigned char out[32]) {
    init_constants();
    fe x, y, r;
    fe_from_bytes(&x, a);
    fe_from_bytes(&y, b);
    if (!fe_canonical(&x) || !fe_canonical(&y)) return 0;
    switch (op) {
    case 0: fe_mul(&r, &x, &y); break;
    case 1: fe_sqr(&r, &x); break;
    case 2: fe_add(&r, &x, &y); break;
    case 3: fe_sub(&r, &x, &y); break;
    case 4: fe_inv(&r, &x); break;
    default: return 0;
    }
    fe_to_bytes(out, &r);
    return 1;
}
