"""The published NAS-FPN cell as decoded in shared/REFERENCE.md, written out independently of the code."""

# The published cell as decoded in the reference: (pool index, op, inputs, level, unused entries added).
# n5 = gp(P6, P4)@4; n6 = sum(P4, n5)@4; P3' = sum(P3, n6)@3; P4' = sum(n6, P3')@4;
# P5' = gp(P4', P3')@5 + P5; P7' = gp(P5', n6)@7 + P7; P6' = gp(P7', P5')@6.
P3, P4, P5, P6, P7 = range(5)
N5, N6, P3_OUT, P4_OUT, P5_OUT, P7_OUT, P6_OUT = range(5, 12)
NASFPN_DECODED = [
    (N5, "global_pool", {P6, P4}, 4, ()),
    (N6, "sum", {P4, N5}, 4, ()),
    (P3_OUT, "sum", {P3, N6}, 3, ()),
    (P4_OUT, "sum", {N6, P3_OUT}, 4, ()),
    (P5_OUT, "global_pool", {P4_OUT, P3_OUT}, 5, (P5,)),
    (P7_OUT, "global_pool", {P5_OUT, N6}, 7, (P7,)),
    (P6_OUT, "global_pool", {P7_OUT, P5_OUT}, 6, ()),
]
