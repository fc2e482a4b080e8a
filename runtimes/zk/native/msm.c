/* Multi-scalar multiplication on BN254 G1 and G2, and the NTT over Fr, in C: the ZK runtime's optional
 * "native" kernel.
 *
 * The same computation as runtimes/zk/msm.py (msm_g1 / msm_g2): Pippenger's bucket method with signed
 * c-bit digits in (-2^(c-1), 2^(c-1)], point i added (or subtracted) into bucket |d| of each window,
 * each window summed as sum(b * bucket_b) by two running sums, windows lo..hi-1 joined by c doublings
 * each. Only the arithmetic differs: field elements are four 64-bit limbs in Montgomery form with
 * R = 2^256 (ffjavascript's, so .zkey sections are read as they are), buckets are Jacobian and points
 * are added with mixed additions, since in C one modular multiplication costs ~20 ns and a batched
 * inversion would save less than it costs in bookkeeping.
 *
 * Built on first use by runtimes/zk/native/__init__.py with the system's C compiler (the one scripts/setup.sh
 * makes sure of, for llama.cpp), loaded through ctypes: no Python headers are needed. Its results are
 * checked against the Python MSM in tests/zk/test_native.py.
 *
 * MSM interface: the points are a .zkey section as snarkjs writes it, coordinates as little-endian 64-bit
 * limbs in Montgomery form, checked first (hyperion_check_section); G1 points take 4 limbs a coordinate, G2
 * points 8 (c0 then c1, for c0 + c1*u with u^2 = -1), and (0, 0) is the point at infinity. Scalars are
 * little-endian, < 2^256. The result is Jacobian (X, Y, Z) in normal form, 12 limbs (G1) or 24 (G2); Z = 0
 * at infinity.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t u64;
typedef unsigned __int128 u128;

#define HYPERION_MSM_ABI 4 /* 4: the MSMs read .zkey sections only (hyperion_msm_section) */

int hyperion_msm_abi(void) { return HYPERION_MSM_ABI; }

/* --- Fq (the base field) and Fr (the scalar field, for the NTT), Montgomery form ------------------------
 * Both moduli are below 2^254, so a + b < 2^255 never carries out of the top limb.
 */

typedef struct { u64 v[4]; } fp;
typedef struct { u64 v[4]; } fr;

#define FIELD(F, M0, M1, M2, M3, INV, S0, S1, S2, S3, O0, O1, O2, O3)                                      \
    static const F F##_MOD = {{M0, M1, M2, M3}};                                                            \
    static const F F##_R2 = {{S0, S1, S2, S3}};   /* 2^512 mod m: to Montgomery form */                       \
    static const F F##_ONE = {{O0, O1, O2, O3}};  /* 2^256 mod m: 1 in Montgomery form */                    \
    static const u64 F##_INV = INV;               /* -m^-1 mod 2^64 */                                        \
                                                                                                              \
    static inline int F##_geq_mod(const F *a) {                                                               \
        for (int i = 3; i >= 0; i--) {                                                                        \
            if (a->v[i] != F##_MOD.v[i]) return a->v[i] > F##_MOD.v[i];                                       \
        }                                                                                                     \
        return 1;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    static inline void F##_sub_mod(F *a) {                                                                    \
        u64 borrow = 0;                                                                                       \
        for (int i = 0; i < 4; i++) {                                                                         \
            u128 d = (u128)a->v[i] - F##_MOD.v[i] - borrow;                                                   \
            a->v[i] = (u64)d;                                                                                 \
            borrow = (u64)(d >> 64) & 1;                                                                      \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    static inline void F##_add(F *r, const F *a, const F *b) {                                                \
        u64 carry = 0;                                                                                        \
        for (int i = 0; i < 4; i++) {                                                                         \
            u128 s = (u128)a->v[i] + b->v[i] + carry;                                                         \
            r->v[i] = (u64)s;                                                                                 \
            carry = (u64)(s >> 64);                                                                           \
        }                                                                                                     \
        if (F##_geq_mod(r)) F##_sub_mod(r);                                                                   \
    }                                                                                                         \
                                                                                                              \
    static inline void F##_sub(F *r, const F *a, const F *b) {                                                \
        u64 borrow = 0;                                                                                       \
        for (int i = 0; i < 4; i++) {                                                                         \
            u128 d = (u128)a->v[i] - b->v[i] - borrow;                                                        \
            r->v[i] = (u64)d;                                                                                 \
            borrow = (u64)(d >> 64) & 1;                                                                      \
        }                                                                                                     \
        if (borrow) {                                                                                         \
            u64 carry = 0;                                                                                    \
            for (int i = 0; i < 4; i++) {                                                                     \
                u128 s = (u128)r->v[i] + F##_MOD.v[i] + carry;                                                \
                r->v[i] = (u64)s;                                                                             \
                carry = (u64)(s >> 64);                                                                       \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    /* Montgomery multiplication, CIOS: r = a * b / 2^256 mod m. */                                           \
    static inline void F##_mul(F *r, const F *a, const F *b) {                                                \
        u64 t[6] = {0, 0, 0, 0, 0, 0};                                                                        \
        for (int i = 0; i < 4; i++) {                                                                         \
            u64 c = 0;                                                                                        \
            for (int j = 0; j < 4; j++) {                                                                     \
                u128 s = (u128)a->v[j] * b->v[i] + t[j] + c;                                                  \
                t[j] = (u64)s;                                                                                \
                c = (u64)(s >> 64);                                                                           \
            }                                                                                                 \
            u128 s = (u128)t[4] + c;                                                                          \
            t[4] = (u64)s;                                                                                    \
            t[5] = (u64)(s >> 64);                                                                            \
            u64 m = t[0] * F##_INV;                                                                           \
            s = (u128)m * F##_MOD.v[0] + t[0];                                                                \
            c = (u64)(s >> 64);                                                                               \
            for (int j = 1; j < 4; j++) {                                                                     \
                s = (u128)m * F##_MOD.v[j] + t[j] + c;                                                        \
                t[j - 1] = (u64)s;                                                                            \
                c = (u64)(s >> 64);                                                                           \
            }                                                                                                 \
            s = (u128)t[4] + c;                                                                               \
            t[3] = (u64)s;                                                                                    \
            t[4] = t[5] + (u64)(s >> 64);                                                                     \
        }                                                                                                     \
        memcpy(r->v, t, sizeof r->v);                                                                         \
        if (t[4] || F##_geq_mod(r)) F##_sub_mod(r);                                                           \
    }                                                                                                         \
                                                                                                              \
    static inline void F##_sqr(F *r, const F *a) { F##_mul(r, a, a); }                                        \
    static inline int F##_eq(const F *a, const F *b) { return !memcmp(a->v, b->v, sizeof a->v); }            \
    static inline int F##_is_zero(const F *a) { return !(a->v[0] | a->v[1] | a->v[2] | a->v[3]); }            \
    static inline void F##_dbl(F *r, const F *a) { F##_add(r, a, a); }                                       \
    static inline void F##_zero(F *r) { memset(r->v, 0, sizeof r->v); }                                      \
    static inline void F##_one(F *r) { *r = F##_ONE; }                                                        \
    static inline void F##_neg(F *r, const F *a) {                                                            \
        F zero = {{0, 0, 0, 0}};                                                                              \
        F##_sub(r, &zero, a);                                                                                 \
    }                                                                                                         \
    static void F##_load(F *r, const unsigned char *bytes) { /* normal form, little-endian -> Montgomery */  \
        F a;                                                                                                  \
        memcpy(a.v, bytes, sizeof a.v);                                                                       \
        F##_mul(r, &a, &F##_R2);                                                                              \
    }                                                                                                         \
    static void F##_store(u64 *out, const F *a) { /* Montgomery -> normal form */                            \
        F one = {{1, 0, 0, 0}}, n;                                                                            \
        F##_mul(&n, a, &one);                                                                                 \
        memcpy(out, n.v, sizeof n.v);                                                                         \
    }

FIELD(fp, 0x3c208c16d87cfd47ULL, 0x97816a916871ca8dULL, 0xb85045b68181585dULL, 0x30644e72e131a029ULL,
      0x87d20782e4866389ULL,
      0xf32cfc5b538afa89ULL, 0xb5e71911d44501fbULL, 0x47ab1eff0a417ff6ULL, 0x06d89f71cab8351fULL,
      0xd35d438dc58f0d9dULL, 0x0a78eb28f5c70b3dULL, 0x666ea36f7879462cULL, 0x0e0a77c19a07df2fULL)

FIELD(fr, 0x43e1f593f0000001ULL, 0x2833e84879b97091ULL, 0xb85045b68181585dULL, 0x30644e72e131a029ULL,
      0xc2e1f593efffffffULL,
      0x1bb8e645ae216da7ULL, 0x53fe3ab1e35c59e3ULL, 0x8c49833d53bb8085ULL, 0x0216d0b17f4e44a5ULL,
      0xac96341c4ffffffbULL, 0x36fc76959f60cd29ULL, 0x666ea36f7879462eULL, 0x0e0a77c19a07df2fULL)

/* --- Fq2 = Fq[u] / (u^2 + 1) ------------------------------------------------------------------------ */

typedef struct { fp c0, c1; } fp2;

static inline void fp2_add(fp2 *r, const fp2 *a, const fp2 *b) { fp_add(&r->c0, &a->c0, &b->c0); fp_add(&r->c1, &a->c1, &b->c1); }

static inline void fp2_sub(fp2 *r, const fp2 *a, const fp2 *b) { fp_sub(&r->c0, &a->c0, &b->c0); fp_sub(&r->c1, &a->c1, &b->c1); }

static inline void fp2_dbl(fp2 *r, const fp2 *a) { fp2_add(r, a, a); }

static inline void fp2_neg(fp2 *r, const fp2 *a) { fp_neg(&r->c0, &a->c0); fp_neg(&r->c1, &a->c1); }

static inline void fp2_mul(fp2 *r, const fp2 *a, const fp2 *b) { /* Karatsuba: 3 multiplications */
    fp t0, t1, s0, s1, m;
    fp_mul(&t0, &a->c0, &b->c0);
    fp_mul(&t1, &a->c1, &b->c1);
    fp_add(&s0, &a->c0, &a->c1);
    fp_add(&s1, &b->c0, &b->c1);
    fp_mul(&m, &s0, &s1);
    fp_sub(&r->c0, &t0, &t1);
    fp_sub(&m, &m, &t0);
    fp_sub(&r->c1, &m, &t1);
}

static inline void fp2_sqr(fp2 *r, const fp2 *a) { /* (a0 + a1)(a0 - a1) + 2 a0 a1 u */
    fp s, d, m;
    fp_add(&s, &a->c0, &a->c1);
    fp_sub(&d, &a->c0, &a->c1);
    fp_mul(&m, &a->c0, &a->c1);
    fp_mul(&r->c0, &s, &d);
    fp_dbl(&r->c1, &m);
}

static inline int fp2_is_zero(const fp2 *a) { return fp_is_zero(&a->c0) && fp_is_zero(&a->c1); }

static inline void fp2_zero(fp2 *r) { fp_zero(&r->c0); fp_zero(&r->c1); }

static inline void fp2_one(fp2 *r) { fp_one(&r->c0); fp_zero(&r->c1); }

static void fp2_load(fp2 *r, const unsigned char *bytes) { fp_load(&r->c0, bytes); fp_load(&r->c1, bytes + 32); }

static void fp2_store(u64 *out, const fp2 *a) { fp_store(out, &a->c0); fp_store(out + 4, &a->c1); }

/* --- the curve and the MSM, once for each field ------------------------------------------------------
 * a = 0 formulas from the Explicit Formulas Database (auto-shortw-jacobian-0): dbl-2009-l, madd-2007-bl,
 * add-2007-bl, the same as runtimes/zk/curve.py. Jacobian (X, Y, Z) is (X/Z^2, Y/Z^3); Z = 0 at infinity.
 */

#define CURVE(F, LIMBS)                                                                                       \
    typedef struct { F x, y; } F##_aff;                                                                       \
    typedef struct { F x, y, z; } F##_jac;                                                                    \
                                                                                                              \
    static void F##_jac_dbl(F##_jac *r, const F##_jac *p) {                                                   \
        if (F##_is_zero(&p->z)) { *r = *p; return; }                                                         \
        F a, b, c, d, e, f, t;                                                                                \
        F##_sqr(&a, &p->x);                                                                                   \
        F##_sqr(&b, &p->y);                                                                                   \
        F##_sqr(&c, &b);                                                                                      \
        F##_add(&t, &p->x, &b);                                                                               \
        F##_sqr(&t, &t);                                                                                      \
        F##_sub(&t, &t, &a);                                                                                  \
        F##_sub(&t, &t, &c);                                                                                  \
        F##_dbl(&d, &t);                                                                                      \
        F##_dbl(&e, &a);                                                                                      \
        F##_add(&e, &e, &a);                                                                                  \
        F##_sqr(&f, &e);                                                                                      \
        F z3;                                                                                                 \
        F##_mul(&z3, &p->y, &p->z);                                                                           \
        F##_dbl(&r->z, &z3);                                                                                  \
        F##_dbl(&t, &d);                                                                                      \
        F##_sub(&r->x, &f, &t);                                                                               \
        F##_sub(&t, &d, &r->x);                                                                               \
        F##_mul(&t, &e, &t);                                                                                  \
        F##_dbl(&c, &c);                                                                                      \
        F##_dbl(&c, &c);                                                                                      \
        F##_dbl(&c, &c);                                                                                      \
        F##_sub(&r->y, &t, &c);                                                                               \
    }                                                                                                         \
                                                                                                              \
    /* The shared end of madd and add: X3 = rr^2 - J - 2V, Y3 = rr (V - X3) - sj (sj = 2 S1 J). */            \
    static inline void F##_jac_xy(F##_jac *r, const F *rr, const F *j, const F *v, const F *sj) {             \
        F t;                                                                                                  \
        F##_sqr(&t, rr);                                                                                      \
        F##_sub(&t, &t, j);                                                                                   \
        F##_sub(&t, &t, v);                                                                                   \
        F##_sub(&r->x, &t, v);                                                                                \
        F##_sub(&t, v, &r->x);                                                                                \
        F##_mul(&t, rr, &t);                                                                                  \
        F##_sub(&r->y, &t, sj);                                                                               \
    }                                                                                                         \
                                                                                                              \
    /* r += q (affine, not at infinity) */                                                                    \
    static void F##_jac_madd(F##_jac *r, const F##_aff *q) {                                                  \
        if (F##_is_zero(&r->z)) { r->x = q->x; r->y = q->y; F##_one(&r->z); return; }                        \
        F z1z1, u2, s2, h, hh, i, j, rr, v;                                                                   \
        F##_sqr(&z1z1, &r->z);                                                                                \
        F##_mul(&u2, &q->x, &z1z1);                                                                           \
        F##_mul(&s2, &q->y, &r->z);                                                                           \
        F##_mul(&s2, &s2, &z1z1);                                                                             \
        F##_sub(&h, &u2, &r->x);                                                                              \
        F##_sub(&rr, &s2, &r->y);                                                                             \
        if (F##_is_zero(&h)) {                                                                                \
            if (F##_is_zero(&rr)) { /* the same point: double it */                                          \
                F##_jac p;                                                                                    \
                p.x = q->x; p.y = q->y; F##_one(&p.z);                                                        \
                F##_jac_dbl(r, &p);                                                                           \
            } else { /* P + (-P) */                                                                           \
                F##_one(&r->x); F##_one(&r->y); F##_zero(&r->z);                                              \
            }                                                                                                 \
            return;                                                                                           \
        }                                                                                                     \
        F##_sqr(&hh, &h);                                                                                     \
        F##_dbl(&i, &hh);                                                                                     \
        F##_dbl(&i, &i);                                                                                      \
        F##_mul(&j, &h, &i);                                                                                  \
        F##_dbl(&rr, &rr);                                                                                    \
        F##_mul(&v, &r->x, &i);                                                                               \
        F z3;                                                                                                 \
        F##_add(&z3, &r->z, &h);                                                                              \
        F##_sqr(&z3, &z3);                                                                                    \
        F##_sub(&z3, &z3, &z1z1);                                                                             \
        F##_sub(&r->z, &z3, &hh);                                                                             \
        F y1j;                                                                                                \
        F##_mul(&y1j, &r->y, &j);                                                                             \
        F##_dbl(&y1j, &y1j);                                                                                  \
        F##_jac_xy(r, &rr, &j, &v, &y1j);                                                                     \
    }                                                                                                         \
                                                                                                              \
    /* r += p (both Jacobian) */                                                                              \
    static void F##_jac_add(F##_jac *r, const F##_jac *p) {                                                   \
        if (F##_is_zero(&p->z)) return;                                                                       \
        if (F##_is_zero(&r->z)) { *r = *p; return; }                                                         \
        F z1z1, z2z2, u1, u2, s1, s2, h, i, j, rr, v;                                                         \
        F##_sqr(&z1z1, &r->z);                                                                                \
        F##_sqr(&z2z2, &p->z);                                                                                \
        F##_mul(&u1, &r->x, &z2z2);                                                                           \
        F##_mul(&u2, &p->x, &z1z1);                                                                           \
        F##_mul(&s1, &r->y, &p->z);                                                                           \
        F##_mul(&s1, &s1, &z2z2);                                                                             \
        F##_mul(&s2, &p->y, &r->z);                                                                           \
        F##_mul(&s2, &s2, &z1z1);                                                                             \
        F##_sub(&h, &u2, &u1);                                                                                \
        F##_sub(&rr, &s2, &s1);                                                                               \
        if (F##_is_zero(&h)) {                                                                                \
            if (F##_is_zero(&rr)) { F##_jac_dbl(r, p); }                                                      \
            else { F##_one(&r->x); F##_one(&r->y); F##_zero(&r->z); }                                         \
            return;                                                                                           \
        }                                                                                                     \
        F##_dbl(&i, &h);                                                                                      \
        F##_sqr(&i, &i);                                                                                      \
        F##_mul(&j, &h, &i);                                                                                  \
        F##_dbl(&rr, &rr);                                                                                    \
        F##_mul(&v, &u1, &i);                                                                                 \
        F z3;                                                                                                 \
        F##_add(&z3, &r->z, &p->z);                                                                           \
        F##_sqr(&z3, &z3);                                                                                    \
        F##_sub(&z3, &z3, &z1z1);                                                                             \
        F##_sub(&z3, &z3, &z2z2);                                                                             \
        F##_mul(&r->z, &z3, &h);                                                                              \
        F s1j;                                                                                                \
        F##_mul(&s1j, &s1, &j);                                                                               \
        F##_dbl(&s1j, &s1j);                                                                                  \
        F##_jac_xy(r, &rr, &j, &v, &s1j);                                                                     \
    }                                                                                                         \
                                                                                                              \
    static void F##_jac_infinity(F##_jac *r) { F##_one(&r->x); F##_one(&r->y); F##_zero(&r->z); }           \
                                                                                                              \
    /* Point i's x at xs + i * stride, its y at ys + i * stride, in Montgomery form (a .zkey section),      \
     * where all-zero coordinates are the point at infinity. */                                               \
    static int F##_msm(const unsigned char *xs, const unsigned char *ys, size_t stride,                      \
                       const unsigned char *scalars, size_t n, int c, int lo, int hi, u64 *out) {             \
        if (c < 1 || c > 16 || lo < 0 || hi < lo) return -1;                                                  \
        const int half = 1 << (c - 1), full = 1 << c, nw = hi - lo;                                          \
        F##_aff *points = malloc((n ? n : 1) * 2 * sizeof(F##_aff)); /* P_i, then -P_i */                   \
        size_t cells = n * (size_t)nw;                                                                        \
        int32_t *digits = malloc((cells ? cells : 1) * sizeof(int32_t));                                   \
        F##_jac *buckets = malloc((size_t)half * sizeof(F##_jac));                                            \
        if (!points || !digits || !buckets) { free(points); free(digits); free(buckets); return -2; }        \
        for (size_t i = 0; i < n; i++) {                                                                      \
            memcpy(&points[2 * i].x, xs + i * stride, sizeof(F));                                             \
            memcpy(&points[2 * i].y, ys + i * stride, sizeof(F));                                             \
            points[2 * i + 1].x = points[2 * i].x;                                                            \
            F##_neg(&points[2 * i + 1].y, &points[2 * i].y);                                                 \
            u64 s[4] = {0, 0, 0, 0};                                                                          \
            if (!(F##_is_zero(&points[2 * i].x) && F##_is_zero(&points[2 * i].y))) /* else: at infinity */  \
                memcpy(s, scalars + i * 32, sizeof s);                                                        \
            int carry = 0;                                                                                    \
            for (int w = 0; w < hi; w++) { /* the signed digits of msm.py, recoded from window 0 */          \
                int offset = w * c, limb = offset >> 6, shift = offset & 63;                                 \
                u64 raw = 0;                                                                                  \
                if (limb < 4) {                                                                               \
                    raw = s[limb] >> shift;                                                                   \
                    if (shift + c > 64 && limb + 1 < 4) raw |= s[limb + 1] << (64 - shift);                  \
                    raw &= (u64)(full - 1);                                                                   \
                }                                                                                             \
                int d = (int)raw + carry;                                                                     \
                carry = d > half;                                                                             \
                if (carry) d -= full;                                                                         \
                if (w >= lo) digits[i * nw + (w - lo)] = d;                                                   \
            }                                                                                                 \
        }                                                                                                     \
        F##_jac acc;                                                                                          \
        F##_jac_infinity(&acc);                                                                               \
        for (int w = nw - 1; w >= 0; w--) {                                                                   \
            for (int k = 0; k < c; k++) F##_jac_dbl(&acc, &acc);                                              \
            for (int b = 0; b < half; b++) F##_jac_infinity(&buckets[b]);                                     \
            for (size_t i = 0; i < n; i++) {                                                                  \
                int d = digits[i * nw + w];                                                                   \
                if (d > 0) F##_jac_madd(&buckets[d - 1], &points[2 * i]);                                     \
                else if (d < 0) F##_jac_madd(&buckets[-d - 1], &points[2 * i + 1]);                           \
            }                                                                                                 \
            F##_jac running, sum;                                                                             \
            F##_jac_infinity(&running);                                                                       \
            F##_jac_infinity(&sum);                                                                           \
            for (int b = half - 1; b >= 0; b--) {                                                             \
                F##_jac_add(&running, &buckets[b]);                                                           \
                F##_jac_add(&sum, &running);                                                                  \
            }                                                                                                 \
            F##_jac_add(&acc, &sum);                                                                          \
        }                                                                                                     \
        if (F##_is_zero(&acc.z)) F##_jac_infinity(&acc);                                                      \
        F##_store(out, &acc.x);                                                                               \
        F##_store(out + LIMBS, &acc.y);                                                                       \
        F##_store(out + 2 * LIMBS, &acc.z);                                                                   \
        free(points);                                                                                         \
        free(digits);                                                                                         \
        free(buckets);                                                                                        \
        return 0;                                                                                             \
    }

CURVE(fp, 4)
CURVE(fp2, 8)

/* The MSM of a .zkey point section as it is in the file: n points of (x, y) in Montgomery form, 64 bytes a G1
 * point and 128 a G2 point, (0, 0) at infinity; checked first with hyperion_check_section. */
int hyperion_msm_section(int group, const unsigned char *section, const unsigned char *scalars, size_t n, int c,
                         int lo, int hi, u64 *out) {
    if (group == 1) return fp_msm(section, section + 32, 64, scalars, n, c, lo, hi, out);
    if (group == 2) return fp2_msm(section, section + 64, 128, scalars, n, c, lo, hi, out);
    return -1;
}

/* Checks a .zkey point section: every coordinate below q, every point other than (0, 0) on the curve
 * y^2 = x^3 + b (G1: b = 3; G2: b = 3 / (9 + u), given in normal form as c0 then c1). Returns -1 when all
 * points pass, else the index of the first that does not, with *why = 1 (a coordinate >= q) or 2 (not on
 * the curve). */
long hyperion_check_section(int group, const unsigned char *section, size_t n, const unsigned char *b, int *why) {
    size_t coords = group == 1 ? 2 : 4, size = 32 * coords;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *point = section + i * size;
        int zero = 1;
        for (size_t k = 0; k < coords; k++) {
            fp e;
            memcpy(e.v, point + 32 * k, 32);
            if (fp_geq_mod(&e)) { *why = 1; return (long)i; }
            zero &= fp_is_zero(&e);
        }
        if (zero) continue;
        if (group == 1) {
            fp x, y, t, u, bm;
            memcpy(x.v, point, 32);
            memcpy(y.v, point + 32, 32);
            fp_load(&bm, b);
            fp_sqr(&t, &y);
            fp_sqr(&u, &x);
            fp_mul(&u, &u, &x);
            fp_add(&u, &u, &bm);
            if (!fp_eq(&t, &u)) { *why = 2; return (long)i; }
        } else {
            fp2 x, y, t, u, bm;
            memcpy(&x, point, 64);
            memcpy(&y, point + 64, 64);
            fp2_load(&bm, b);
            fp2_sqr(&t, &y);
            fp2_sqr(&u, &x);
            fp2_mul(&u, &u, &x);
            fp2_add(&u, &u, &bm);
            if (!(fp_eq(&t.c0, &u.c0) && fp_eq(&t.c1, &u.c1))) { *why = 2; return (long)i; }
        }
    }
    return -1;
}

/* --- the number-theoretic transform over Fr (runtimes/zk/fft.py's ntt) ------------------------------------
 * values: n elements of 32 bytes, little-endian, normal form, transformed in place: the evaluations of the
 * polynomial with these coefficients at omega^0 .. omega^(n-1), in natural order. n is a power of two.
 */

int hyperion_ntt(unsigned char *values, size_t n, const unsigned char *omega_bytes) {
    if (n == 0 || (n & (n - 1))) return -1;
    fr *a = malloc(n * sizeof(fr));
    fr *twiddles = malloc((n / 2 ? n / 2 : 1) * sizeof(fr));
    if (!a || !twiddles) { free(a); free(twiddles); return -2; }
    for (size_t i = 0; i < n; i++) fr_load(&a[i], values + 32 * i);
    fr w_m;
    fr_load(&w_m, omega_bytes);
    for (size_t m = n / 2; m >= 1; m /= 2) { /* decimation in frequency: natural in, bit-reversed out */
        fr_one(&twiddles[0]);
        for (size_t j = 1; j < m; j++) fr_mul(&twiddles[j], &twiddles[j - 1], &w_m);
        for (size_t start = 0; start < n; start += 2 * m) {
            for (size_t j = 0; j < m; j++) {
                fr x = a[start + j], y = a[start + j + m], d;
                fr_add(&a[start + j], &x, &y);
                fr_sub(&d, &x, &y);
                fr_mul(&a[start + j + m], &d, &twiddles[j]);
            }
        }
        fr_sqr(&w_m, &w_m);
    }
    int bits = 0;
    while (((size_t)1 << bits) < n) bits++;
    for (size_t i = 0; i < n; i++) {
        size_t r = 0;
        for (int b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
        u64 out[4];
        fr_store(out, &a[r]);
        memcpy(values + 32 * i, out, 32);
    }
    free(a);
    free(twiddles);
    return 0;
}
