"""The tables of the bit-sliced binary conv (`edgebin_bconv2d_slice_bits`, binary_kernels/edgebin_binary.h).

On a core without a popcount instruction (Cortex-M) that kernel counts 32 output channels at once, one per bit
lane, with carry-save adders; it takes the threshold epilogue's layers whose channels fit its lanes (`fits`).
It reads the weights one word per input bit, holding the bits of 32 output channels (`pack_sliced_weight_bits`:
the same parameters / 8 bytes as the other layouts), and per count of taps inside the image the limit its count
of mismatches is compared with (`slice_limits`), derived from the epilogue's (dir, thr) of `sign_thresholds`.
"""

from __future__ import annotations

import numpy as np

LANES = 32  # output channels per word
BLOCK = 16  # input channels per carry-save block: c must be a multiple
DEPTH = 1023  # EDGEBIN_SLICE_DEPTH: the largest c · kh · kw (count planes 0-9)
LIMIT_PLANES = 10
LIMIT_WORDS = LIMIT_PLANES + 3  # EDGEBIN_SLICE_LIMIT_WORDS: the limit's planes, then the le, gt and one masks


AFFINE_DEPTH = 256  # the float epilogue takes its 32 counts out of the planes (four instructions a plane per four
# lanes), which pays against the dense kernel only over a long reduction: 0.39 -> 0.36 per binary MAC at 288 and
# 0.39 -> 0.29 at 576 (ResNet-8's stack2.conv2, stack3.conv2; tools/bench/mcu_layers.py), and by that cost would lose on
# a 1x1 shortcut's 16 or 32


def fits(c: int, cout: int, taps: int, epilogue: str = "_bits") -> bool:
    """True when the bit-sliced kernel takes a conv of c input and `cout` output channels over `taps` taps with
    `epilogue` ("_bits": the threshold; "_affine": floats, over a reduction of AFFINE_DEPTH or more)."""
    if epilogue not in ("_bits", "_affine") or (epilogue == "_affine" and c * taps < AFFINE_DEPTH):
        return False
    return c % BLOCK == 0 and cout % LANES == 0 and c * taps <= DEPTH


def pack_sliced_weight_bits(codes: np.ndarray) -> np.ndarray:
    """(Cout, C, KH, KW) codes in {-1, +1} -> uint32 (Cout / 32, KH·KW, C): bit j of word [g, t, ch] is
    codes[32 g + j, ch, ky, kx] > 0 with t = ky·KW + kx."""
    cout, c, kh, kw = codes.shape
    if not np.isin(codes, (-1, 1)).all():
        raise ValueError("pack_sliced_weight_bits: codes must all be -1 or +1")
    if cout % LANES:
        raise ValueError(f"pack_sliced_weight_bits: {cout} output channels is not a multiple of {LANES}")
    lanes = (codes > 0).astype(np.uint64).reshape(cout // LANES, LANES, c, kh * kw)
    words = (lanes << np.arange(LANES, dtype=np.uint64).reshape(1, LANES, 1, 1)).sum(axis=1)
    return np.ascontiguousarray(words.transpose(0, 2, 1)).astype(np.uint32)


def inside_counts(size: int, k: int, stride: int, pad: int, out: int) -> set[int]:
    """How many of an axis's k taps fall inside an input of `size`, over the `out` output positions."""
    counts = set()
    for i in range(out):
        start = i * stride - pad
        counts.add(min(size - start, k) - max(-start, 0))
    return counts


def tap_counts(h: int, w: int, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
               oh: int, ow: int) -> set[int]:
    """The counts of taps inside an h x w image over every output pixel of a kh x kw conv: the rows of
    `slice_limits` the kernel reads."""
    (sh, sw), (ph, pw) = stride, padding
    return {ny * nx for ny in inside_counts(h, kh, sh, ph, oh) for nx in inside_counts(w, kw, sw, pw, ow)}


def slice_limits(direction: np.ndarray, threshold: np.ndarray, c: int, taps: int,
                 tap_counts: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(slot, lim): int8 (taps + 1,) row of each count of taps inside the image (-1 where none occurs), and uint32
    (rows, Cout / 32, LIMIT_WORDS) per row and group of 32 channels: the limit L as bit planes, then the masks of
    the lanes whose bit is count <= L, count > L, and always 1.

    A pixel with nt taps inside sums nt·c products: sum = nt·c - 2·count, count the mismatches. Channel bit
    dir·sum >= thr is, for dir = +1, count <= floor((nt·c - thr) / 2); for dir = -1, count >= ceil((nt·c + thr) / 2),
    that is not count <= that - 1; for dir = 0 the constant 0 >= thr. A limit outside [0, nt·c) is a constant too."""
    cout = direction.size
    rows = sorted(tap_counts)
    slot = np.full(taps + 1, -1, np.int8)
    lim = np.zeros((len(rows), cout // LANES, LIMIT_WORDS), np.uint64)
    for row, nt in enumerate(rows):
        slot[nt] = row
        valid = nt * c
        for co in range(cout):
            d, t = int(direction[co]), int(threshold[co])
            if d > 0:
                limit, mode = (valid - t) // 2, 10
            elif d < 0:
                limit, mode = -(-(valid + t) // 2) - 1, 11
            else:
                limit, mode = (valid if t <= 0 else -1), 10
            if limit >= valid:  # every count: the bit is 1 for dir = +1, 0 for dir = -1
                limit, mode = 0, 12 if mode == 10 else None
            elif limit < 0:  # no count
                limit, mode = 0, 12 if mode == 11 else None
            g, bit = divmod(co, LANES)
            lane = np.uint64(1 << bit)
            for b in range(LIMIT_PLANES):
                if limit >> b & 1:
                    lim[row, g, b] |= lane
            if mode is not None:
                lim[row, g, mode] |= lane
    return slot, lim.astype(np.uint32)


__all__ = ["DEPTH", "LIMIT_WORDS", "fits", "inside_counts", "pack_sliced_weight_bits", "slice_limits", "tap_counts"]
