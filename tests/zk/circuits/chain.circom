pragma circom 2.0.0;
include "chain_template.circom";

// 101 constraints + 2 public signals + 1 -> a domain of 2^7, within the committed 2^8 powers of tau.
component main {public [x]} = Chain(100);
