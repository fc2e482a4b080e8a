pragma circom 2.0.0;

// s[0] = x * secret, s[i] = s[i-1]^2 + i: one quadratic constraint per step, and witness values that are
// full-size field elements after a few steps (the hardest case for a prover's multi-scalar products).
template Chain(n) {
    signal input x;
    signal input secret;
    signal output out;
    signal s[n + 1];
    s[0] <== x * secret;
    for (var i = 1; i <= n; i++) {
        s[i] <== s[i - 1] * s[i - 1] + i;
    }
    out <== s[n];
}
