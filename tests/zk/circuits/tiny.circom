pragma circom 2.0.0;
include "chain_template.circom";

// Compiled for BLS12-381 by the tests (a key for another curve); fits the committed 2^4 powers of tau.
component main {public [x]} = Chain(4);
