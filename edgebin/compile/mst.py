"""MST-compression of a binary conv (Vo et al., ICCV 2023; research/methods.md §8): output channels computed from
a parent channel and the positions where their weights differ, in a minimum spanning tree's order.

For ±1 inputs x and two output channels i, j whose ±1 weights differ exactly on D_ij, `o_j = o_i + 2·Σ_{p∈D_ij}
x_p·w_{j,p}`: d_ij = |D_ij| products instead of K, bit-exact. Over the complete graph of output channels weighted
by Hamming distance, a minimum spanning tree orders the work: the root costs K, every other channel d to its
parent. No code was published; edgebin derives the plan from the algebra:

    plan = mst_plan(codes)                  # codes (Cout, C, KH, KW) in {-1, +1}
    plan.order, plan.parent                 # channels in computation order; parent -1 for the root
    plan.bit_ops, plan.plain_bit_ops        # K + Σ d over the tree edges, against Cout·K
    tables = plan.kernel_tables(c)          # what `edgebin_bconv2d_dense_mst*` reads

Tree: Prim's algorithm from every candidate root would be costly; edgebin grows the tree from channel 0 with ties
broken towards the shallower parent, then re-roots it at its centre (the node whose farthest channel is nearest),
which keeps the chain of dependent channels short (the paper's "minimum depth" MST; ties are many, Hamming
distances being integers). Any spanning tree rooted anywhere is exact; only the cost and depth change.

In the packed kernels the saving is counted in 32-bit words: a child XORs, masks and counts only the words of its
dense receptive-field column where its difference mask is non-zero. Random or plainly trained binary weights differ
in about half the positions (d ≈ K/2), so nearly every word has a difference and the gain is small; the paper's
training regulariser, which pulls neighbouring channels together, is what makes MST pay (not implemented here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORD_BITS = 32


@dataclass(frozen=True)
class MstPlan:
    """The computation order of one binary conv's output channels (see the module docstring)."""

    order: np.ndarray  # (Cout,) channel indices, parents before children
    parent: np.ndarray  # (Cout,) parent channel, -1 for the root
    distance: np.ndarray  # (Cout,) Hamming distance to the parent (0 for the root)
    depth: int  # longest root-to-leaf chain, in edges
    codes: np.ndarray  # (Cout, K) ±1 weights in the dense receptive-field order (tap-major, channels inside)

    @property
    def plain_bit_ops(self) -> int:
        return int(self.codes.size)

    @property
    def bit_ops(self) -> int:
        """XNOR-popcount products: the root's K plus the tree's total Hamming distance."""
        return int(self.codes.shape[1] + self.distance.sum())

    def word_ops(self) -> tuple[int, int]:
        """(words the MST kernel counts, words the dense kernel counts) per output pixel."""
        words = -(-self.codes.shape[1] // WORD_BITS)
        masks = self._masks()
        return int(words + sum(int((m != 0).sum()) for m in masks[1:])), int(len(self.order) * words)

    def _masks(self) -> list[np.ndarray]:
        """Per channel in `order`: its difference-mask words against its parent (all ones for the root)."""
        bits = _pack_rows(self.codes > 0)
        out = []
        for ch in self.order:
            p = self.parent[ch]
            out.append(np.full(bits.shape[1], 0xFFFFFFFF, np.uint32) if p < 0 else bits[ch] ^ bits[p])
        return out

    def kernel_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(nodes, edges) for `edgebin_bconv2d_dense_mst*`: nodes int32 (4·Cout + 1) = order, parent, d, and the
        start of each channel's (word, mask) pairs in `edges` (uint32, 2 per non-zero difference word), in order."""
        cout = len(self.order)
        starts, pairs = [], []
        for ch, mask in zip(self.order, self._masks(), strict=True):
            starts.append(len(pairs) // 2)
            if self.parent[ch] < 0:
                continue  # the root: the full count, no pairs
            for word in np.flatnonzero(mask):
                pairs += [int(word), int(mask[word])]
        starts.append(len(pairs) // 2)
        nodes = np.concatenate([self.order, self.parent, self.distance, np.asarray(starts)]).astype(np.int32)
        assert len(nodes) == 4 * cout + 1
        return nodes, np.asarray(pairs or [0, 0], dtype=np.uint32)


def dense_codes(codes: np.ndarray) -> np.ndarray:
    """(Cout, C, KH, KW) -> (Cout, KH·KW·C) in the dense column order of `edgebin_bconv2d_dense` (tap-major)."""
    cout = codes.shape[0]
    return codes.transpose(0, 2, 3, 1).reshape(cout, -1)


def hamming(codes: np.ndarray) -> np.ndarray:
    """(Cout, Cout) numbers of positions where two channels' ±1 weights differ."""
    flat = (dense_codes(codes) > 0).astype(np.int32)
    return (flat[:, None, :] != flat[None, :, :]).sum(-1)


def mst_plan(codes: np.ndarray) -> MstPlan:
    """A minimum spanning tree over the output channels by Hamming distance, rooted at its centre."""
    distances = hamming(codes)
    cout = len(distances)
    in_tree = np.zeros(cout, bool)
    best = distances[0].astype(np.int64)
    link = np.zeros(cout, np.int64)
    depth = np.zeros(cout, np.int64)
    edges: list[tuple[int, int]] = []
    in_tree[0] = True
    for _ in range(cout - 1):  # Prim: the cheapest edge into the tree, ties to the shallowest parent
        candidates = np.flatnonzero(~in_tree)
        key = best[candidates] * (cout + 1) + depth[link[candidates]]
        v = int(candidates[np.argmin(key)])
        in_tree[v] = True
        edges.append((int(link[v]), v))
        depth[v] = depth[link[v]] + 1
        closer = ~in_tree & (distances[v] < best)
        best[closer], link[closer] = distances[v][closer], v
    neighbours: dict[int, list[int]] = {i: [] for i in range(cout)}
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    root = min(range(cout), key=lambda r: (_height(neighbours, r), r))  # the centre: shortest chains
    order, parent, seen = [root], np.full(cout, -1, np.int64), {root}
    for node in order:  # breadth first: every parent before its children
        for nxt in neighbours[node]:
            if nxt not in seen:
                seen.add(nxt)
                parent[nxt] = node
                order.append(nxt)
    distance = np.array([0 if parent[c] < 0 else distances[c, parent[c]] for c in range(cout)], np.int64)
    return MstPlan(np.asarray(order), parent, distance, _height(neighbours, root), dense_codes(codes))


def _height(neighbours: dict[int, list[int]], root: int) -> int:
    level, frontier, seen = 0, [root], {root}
    while True:
        nxt = [n for node in frontier for n in neighbours[node] if n not in seen]
        if not nxt:
            return level
        seen.update(nxt)
        frontier, level = nxt, level + 1


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """(rows, K) bools -> (rows, ceil(K/32)) uint32, bit k % 32 of word k // 32."""
    rows, k = bits.shape
    words = -(-k // WORD_BITS)
    padded = np.zeros((rows, words * WORD_BITS), np.uint64)
    padded[:, :k] = bits
    lanes = padded.reshape(rows, words, WORD_BITS)
    return (lanes << np.arange(WORD_BITS, dtype=np.uint64)).sum(-1).astype(np.uint32)


__all__ = ["MstPlan", "dense_codes", "hamming", "mst_plan"]
