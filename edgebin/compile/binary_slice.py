"""The tables of the bit-sliced binary convs (`edgebin_bconv2d_slice_*`, `edgebin_bconv2d_pair_*`,
binary_kernels/edgebin_binary.h).

On a core without a popcount instruction (Cortex-M) those kernels count 32 lanes at once with carry-save adders.
The sliced kernel's lanes are 32 output channels (`fits`): it reads the weights one word per input bit
(`pack_sliced_weight_bits`, the same parameters / 8 bytes as the other layouts), and per count of taps inside the
image the limit its count of mismatches is compared with (`slice_limits`), derived from the epilogue's (dir, thr)
of `sign_thresholds`. The paired kernel's lanes are 16 output channels of two neighbouring pixels (`pair_fits`):
its weight words hold the 16 channels' bits twice (`pack_paired_weight_bits`), and it counts taps outside the image
too, so its limits (`pair_limits`) or float epilogue's bases (`pair_bases`) add those taps' mismatches back, per
class of border pixels.
"""

from __future__ import annotations

import numpy as np

LANES = 32  # output channels per word
BLOCK = 16  # input channels per carry-save block: c must be a multiple
DEPTH = 1023  # EDGEBIN_SLICE_DEPTH: the largest c · kh · kw (count planes 0-9)
LIMIT_PLANES = 10
LIMIT_WORDS = LIMIT_PLANES + 3  # EDGEBIN_SLICE_LIMIT_WORDS: the limit's planes, then the le, gt and one masks


def fits(c: int, cout: int, taps: int, epilogue: str = "_bits") -> bool:
    """True when the bit-sliced kernel takes a conv of c input and `cout` output channels over `taps` taps with
    `epilogue` ("_bits": the threshold; "_affine": floats). The float epilogue beat the dense kernel at every depth
    measured on the cortex-m4, ResNet-8's 1x1 shortcuts included (tools/bench/mcu_layers.py, per binary MAC): 1.50
    -> 0.82 at 16 products, 0.74 -> 0.55 at 32, and at 288 and 576 0.39 -> 0.27 and 0.24."""
    return epilogue in ("_bits", "_affine") and c % BLOCK == 0 and cout % LANES == 0 and c * taps <= DEPTH


def shortcut_fits(c: int, kh: int, kw: int, padding: tuple[int, int]) -> bool:
    """True when `edgebin_bconv2d_slice_shortcut` takes a shortcut conv of c input channels: 1x1 and unpadded (its
    one tap always inside), c a multiple of BLOCK and its counts below 256 (one byte a lane in the float epilogue)."""
    return kh == kw == 1 and tuple(padding) == (0, 0) and c % BLOCK == 0 and c < 256


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


def _inside(start: int, size: int, k: int) -> tuple[int, ...]:
    """Which of k taps from `start` fall inside [0, size)."""
    return tuple(j for j in range(k) if 0 <= start + j < size)


def inside_counts(size: int, k: int, stride: int, pad: int, out: int) -> set[int]:
    """How many of an axis's k taps fall inside an input of `size`, over the `out` output positions."""
    return {len(_inside(i * stride - pad, size, k)) for i in range(out)}


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
        for co in range(cout):
            g, bit = divmod(co, LANES)
            _set_lane(lim[row, g], bit, *_lane_limit(int(direction[co]), int(threshold[co]), nt * c))
    return slot, lim.astype(np.uint32)


def _lane_limit(d: int, t: int, valid: int) -> tuple[int, int | None]:
    """(L, mode) of one channel summing `valid` products: mode 10 (bit is count <= L), 11 (count > L), 12 (always 1)
    or None (always 0); L is 0 for the constants."""
    if d > 0:
        limit, mode = (valid - t) // 2, 10
    elif d < 0:
        limit, mode = -(-(valid + t) // 2) - 1, 11
    else:
        limit, mode = (valid if t <= 0 else -1), 10
    if limit >= valid:  # every count: the bit is 1 for dir = +1, 0 for dir = -1
        return 0, 12 if mode == 10 else None
    if limit < 0:  # no count
        return 0, 12 if mode == 11 else None
    return limit, mode


def _set_lane(row: np.ndarray, bit: int, limit: int, mode: int | None) -> None:
    """Write lane `bit`'s limit planes and mode mask into a uint64 row of LIMIT_WORDS."""
    lane = np.uint64(1 << bit)
    for b in range(LIMIT_PLANES):
        if limit >> b & 1:
            row[b] |= lane
    if mode is not None:
        row[mode] |= lane


# --- the paired kernel (`edgebin_bconv2d_pair_bits`): 16 output channels, two pixels a word -----------------------

PAIR_CHANNELS = 16  # output channels of the paired kernel: lanes 0-15 one pixel, 16-31 the next
PAIR_BUFFER_WORDS = 2048  # EDGEBIN_PAIR_BUFFER_WORDS: kh rows of masks on the stack
PAIR_ROWS = 16  # EDGEBIN_PAIR_ROWS: the tallest kernel
PAIR_AFFINE_DEPTH = 144  # the float epilogue (its counts out of the planes by a bit transpose, a convert and an FMA
# each) at 144: ResNet-8's stack1.conv2 (16 x 3 x 3) 0.52 -> 0.33 per binary MAC against the dense kernel
# (tools/bench/mcu_layers.py); shorter reductions were not measured and stay dense


def pair_fits(c: int, cout: int, kh: int, kw: int, sw: int, ow: int, epilogue: str = "_bits") -> bool:
    """True when the paired kernel takes a conv (16 output channels, its mask rows within PAIR_BUFFER_WORDS) with
    `epilogue`: "_bits" (the threshold) or "_affine" (floats, over a reduction of PAIR_AFFINE_DEPTH or more)."""
    cols = 2 * ((ow + 1) // 2 - 1) * sw + kw
    if epilogue == "_affine" and c * kh * kw < PAIR_AFFINE_DEPTH:
        return False
    return (epilogue in ("_bits", "_affine") and cout == PAIR_CHANNELS and c % BLOCK == 0 and c * kh * kw <= DEPTH
            and kh <= PAIR_ROWS and kh * cols * c <= PAIR_BUFFER_WORDS)


def pack_paired_weight_bits(codes: np.ndarray) -> np.ndarray:
    """(16, C, KH, KW) codes -> uint32 (KH·KW, C): the 16 channels' bits in both halves of each word."""
    if codes.shape[0] != PAIR_CHANNELS:
        raise ValueError(f"pack_paired_weight_bits: {codes.shape[0]} output channels, not {PAIR_CHANNELS}")
    return pack_sliced_weight_bits(np.concatenate([codes, codes]))[0]


def _pair_halves(codes: np.ndarray, h: int, w: int, stride: tuple[int, int], padding: tuple[int, int], oh: int,
                 ow: int) -> tuple[np.ndarray, int, list[tuple[int, int, int, np.ndarray]]]:
    """The paired kernel's classes of border pixels: slot (oh + pairs,), the pair at row y and columns 2q, 2q + 1
    reading row slot[y] + slot[oh + q]; the number of rows; and per row and half (0: pixel 2q, 1: 2q + 1) the row,
    the half, the products inside (taps inside · C) and per output channel the mismatches that the taps outside add
    as input bit 0 (its weight bits there). Rows of the same taps inside share a row class, pairs of the same taps
    inside (both pixels) a column class."""
    (sh, sw), (ph, pw) = stride, padding
    _, c, kh, kw = codes.shape
    pairs = (ow + 1) // 2

    def columns(x: int) -> tuple[int, ...]:
        return _inside(min(x, ow - 1) * sw - pw, w, kw)  # a pair's missing second pixel: any columns (unread)

    row_classes = sorted({_inside(y * sh - ph, h, kh) for y in range(oh)})
    col_classes = sorted({(columns(2 * q), columns(2 * q + 1)) for q in range(pairs)})
    if len(row_classes) * len(col_classes) > 127:
        raise ValueError("pair tables: more than 127 classes of border pixels")
    slot = np.zeros(oh + pairs, np.int8)
    for y in range(oh):
        slot[y] = row_classes.index(_inside(y * sh - ph, h, kh)) * len(col_classes)
    for q in range(pairs):
        slot[oh + q] = col_classes.index((columns(2 * q), columns(2 * q + 1)))
    ones, halves = codes > 0, []
    for r, ky_in in enumerate(row_classes):
        for k, both in enumerate(col_classes):
            for half, kx_in in enumerate(both):
                outside = np.ones((kh, kw), bool)
                outside[np.ix_(ky_in, kx_in)] = False
                halves.append((r * len(col_classes) + k, half, len(ky_in) * len(kx_in) * c,
                               ones[:, :, outside].sum(axis=(1, 2))))
    return slot, len(row_classes) * len(col_classes), halves


def pair_limits(direction: np.ndarray, threshold: np.ndarray, codes: np.ndarray, h: int, w: int,
                stride: tuple[int, int], padding: tuple[int, int], oh: int, ow: int) -> tuple[np.ndarray, np.ndarray]:
    """(slot, lim) of `edgebin_bconv2d_pair_bits`: slot as `_pair_halves`; uint32 (rows, 1, LIMIT_WORDS) as
    `slice_limits`' rows, lanes 0-15 for pixel 2q and 16-31 for 2q + 1.

    The kernel counts every tap, those outside the image as input bit 0: there a lane mismatches where its weight
    bit is 1 (code +1). So a lane's limit is `slice_limits`' for the taps inside plus those outside taps' weight
    bits."""
    slot, rows, halves = _pair_halves(codes, h, w, stride, padding, oh, ow)
    lim = np.zeros((rows, 1, LIMIT_WORDS), np.uint64)
    for row, half, valid, pads in halves:
        for co in range(codes.shape[0]):
            limit, mode = _lane_limit(int(direction[co]), int(threshold[co]), valid)
            _set_lane(lim[row, 0], half * PAIR_CHANNELS + co, limit + int(pads[co]) * (mode in (10, 11)), mode)
    return slot, lim.astype(np.uint32)


def pair_bases(codes: np.ndarray, h: int, w: int, stride: tuple[int, int], padding: tuple[int, int], oh: int,
               ow: int) -> tuple[np.ndarray, np.ndarray]:
    """(slot, base) of `edgebin_bconv2d_pair_affine`: slot as `_pair_halves`; int32 (rows, 16, 2) per channel and
    pixel of the pair the sum before the mismatches, nt·c + 2·(outside taps' weight bits), so that sum = base -
    2·count over every tap (a channel's two pixels side by side: one LDRD)."""
    slot, rows, halves = _pair_halves(codes, h, w, stride, padding, oh, ow)
    base = np.zeros((rows, PAIR_CHANNELS, 2), np.int32)
    for row, half, valid, pads in halves:
        base[row, :, half] = valid + 2 * pads
    return slot, base


def pair_deltas(codes: np.ndarray, h: int, w: int, stride: tuple[int, int], padding: tuple[int, int], oh: int,
                ow: int) -> tuple[np.ndarray, np.ndarray]:
    """(slot, delta) of `edgebin_bconv2d_pair_counts`: slot as `_pair_halves`; uint32 (rows, 9) per row the bytes
    (taps · c - base) / 2 that move each lane's count to that of an interior pixel, count' = (taps · c - sum) / 2
    (base as `pair_bases`), modulo 256 in the lane order of `edgebin_slice_bytes` (lane j: byte j // 8 of word j % 8),
    then a word that is nonzero where any is."""
    cout, c, kh, kw = codes.shape
    slot, base = pair_bases(codes, h, w, stride, padding, oh, ow)
    lanes = (kh * kw * c - base.transpose(0, 2, 1).reshape(len(base), 2 * cout)) // 2  # lane j = half · 16 + ch
    as_bytes = (lanes % 256).astype(np.uint32).reshape(len(base), 4, 8)  # [row, byte g, word l] of lane 8 g + l
    words = (as_bytes << (8 * np.arange(4, dtype=np.uint32)).reshape(1, 4, 1)).sum(axis=1, dtype=np.uint32)
    delta = np.zeros((len(base), 9), np.uint32)
    delta[:, :8] = words
    delta[:, 8] = (words != 0).any(axis=1)
    return slot, delta


__all__ = ["DEPTH", "LIMIT_WORDS", "fits", "inside_counts", "pack_paired_weight_bits", "pack_sliced_weight_bits",
           "pair_bases", "pair_deltas", "pair_fits", "pair_limits", "shortcut_fits", "slice_limits", "tap_counts"]
