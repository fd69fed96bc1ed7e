"""Bit-serial weights: an int8 weight of few values kept as bit planes, multiplied by the bit planes of its
activations (mcu_kernels/edgebin_bitserial.h), so that a layer's work is (weight planes) x (activation planes).

    form = weight_form(w)                           # BitForm(planes=2, beta=-1, coef=(1, 2)) for a ternary w
    words = pack_planes(w.reshape(cout, -1), form)  # uint32, cout * planes * ceil(K / 32)
    form.constant()                                 # int32 [2, -1, 1, 2]: the kernel's form argument
    kernel_name("edgebin_matvec2_u8s8")             # "edgebin_bs_matvec2_u8s8"
    activation_planes(0, 3, signed=False)           # 2: a column of 2-bit codes

Bit-serial is the decomposition TOPI's bitserial_dense / bitserial_conv2d compute: with each weight
w = beta + sum_t coef[t] bit_t (the form) and each activation x = sum_a d_a bit_a (d_a = 2^a; for int8 the top
plane -2^(A-1), two's complement), a dot product is

    sum_i x_i w_i = sum_t sum_a coef[t] d_a popcount(W_t & X_a) + beta sum_i x_i

over 32-bit words of the planes W_t (of a weight row) and X_a (of an activation column): one AND and one bit count
per 32 multiply-accumulates and plane pair. The weight planes are constants made here (`pack_planes`); the
activations are split inside the kernel into the planes each call's columns need, the bit length of their OR
(`activation_planes` is that bound for a column within [qmin, qmax]), so the result is exact for any input and the
work follows the data: a column of 2-bit codes takes 2 planes, a full-range one 8.

`weight_form` gives each int8 weight the form with the fewest planes: beta the smallest value, coef[t] = g 2^t with
g the gcd of the values' distances from it, so binary weights {-1, 1} are one plane (beta -1, coef 2), ternary
{-1, 0, 1} two (beta -1, coef 1, 2), StatsQ W2 {-3, -1, 1, 3} two (beta -3, coef 2, 4).

When it pays (tools/bench/bitserial.py, docs/bitserial.md): on cortex-m4 (QEMU, ResNet-8's 3x3 conv shapes, kernel
calls alone) about 0.3 instructions per MAC and plane pair plus the columns' split, against 0.95 / 1.15 / 1.37 for
the int8 kernel at 4 / 2 / 1 columns. Planes x activation planes 1: 0.52 / 0.44 / 0.44; 2 (binary weights with 2-bit
activations, ternary with binary ones): 0.93 / 0.76-0.83 / 0.74-0.84, fewer than the int8 kernel at every shape;
3: 1.48 / 1.20 / 1.17, fewer only at one column; from 4 on more (8-bit activations: 4 to 7 times). The kernels' code
is 2.2-5.0 KB against the int8 kernel's 0.4-0.8 KB: on a small layer it outweighs the flash the planes save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_WEIGHT_PLANES = 3  # up to 8 levels; each plane costs about 0.3 instructions per MAC and activation plane
WORD_BITS = 32


@dataclass(frozen=True)
class BitForm:
    """w = beta + sum_t coef[t] bit_t for every value of a weight; `planes` bits a weight."""

    planes: int
    beta: int
    coef: tuple[int, ...]

    def constant(self) -> np.ndarray:
        """The kernel's `form` argument: int32 {planes, beta, coef[0], ..., coef[planes - 1]}."""
        return np.array([self.planes, self.beta, *self.coef], dtype=np.int32)


def weight_form(values: np.ndarray) -> BitForm | None:
    """The form with the fewest planes that gives every value of an int8 weight exactly, or None: not int8, empty,
    or more than MAX_WEIGHT_PLANES planes."""
    values = np.asarray(values)
    if values.dtype != np.int8 or not values.size:
        return None
    levels = np.unique(values).astype(np.int64)
    beta = int(levels[0])
    step = math.gcd(*(int(d) for d in levels - beta)) or 1  # one value: all codes 0, one plane
    planes = max(int((levels[-1] - beta) // step).bit_length(), 1)
    if planes > MAX_WEIGHT_PLANES:
        return None
    return BitForm(planes, beta, tuple(step << t for t in range(planes)))


def plane_words(k: int) -> int:
    """Words of one plane of a row of k weights (or of one activation column)."""
    return -(-k // WORD_BITS)


def pack_planes(rows: np.ndarray, form: BitForm) -> np.ndarray:
    """(n, k) int8 rows -> uint32 [n * planes * ceil(k / 32)]: row j's plane t at words (j planes + t) W, bit i % 32
    of its word i / 32 set when bit t of weight i's code (w - beta) / coef[0] is; bits past k are 0."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"pack_planes: rows must be (n, k), got shape {rows.shape}")
    codes = (rows.astype(np.int64) - form.beta) // form.coef[0]
    if ((codes < 0) | (codes >> form.planes > 0)).any() or not np.array_equal(
            form.beta + codes * form.coef[0], rows.astype(np.int64)):
        raise ValueError(f"pack_planes: a weight is not beta + a {form.planes}-bit code times {form.coef[0]}")
    n, k = rows.shape
    bits = (codes[:, None, :] >> np.arange(form.planes)[None, :, None]) & 1  # (n, planes, k)
    bits = np.pad(bits, ((0, 0), (0, 0), (0, plane_words(k) * WORD_BITS - k))).astype(np.uint8)
    return np.packbits(bits, axis=2, bitorder="little").view("<u4").reshape(-1).astype(np.uint32)


def kernel_name(matvec: str) -> str:
    """`edgebin_matvec2_u8s8` -> `edgebin_bs_matvec2_u8s8`: the bit-serial kernel that takes an int8 call's place."""
    if not matvec.startswith("edgebin_matvec"):
        raise ValueError(f"kernel_name: not an edgebin_matvec micro-kernel: {matvec}")
    return "edgebin_bs_" + matvec.removeprefix("edgebin_")


def activation_planes(qmin: int, qmax: int, signed: bool) -> int:
    """The activation planes the kernel takes for a column of values within [qmin, qmax], at most: uint8, the bit
    length of qmax; int8, that of the largest x ^ (x >> 7) (x, or -x - 1 below 0) plus the sign plane."""
    qmin, qmax = int(qmin), int(qmax)  # numpy integers have no bit_length
    low, high = (-128, 127) if signed else (0, 255)
    if not low <= qmin <= qmax <= high:
        raise ValueError(f"activation_planes: [{qmin}, {qmax}] is not within the {'int8' if signed else 'uint8'} range")
    if not signed:
        return qmax.bit_length()
    return max(max(qmax, 0).bit_length(), max(-qmin - 1, 0).bit_length()) + 1


def bitserial_matvec_reference(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The sums the kernels compute, int64: x (P, k) columns times rows (n, k) -> (P, n), x @ rows.T."""
    return np.asarray(x).astype(np.int64) @ np.asarray(rows).astype(np.int64).T
