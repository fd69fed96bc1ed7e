"""MST-compression (edgebin.compile.mst): the plan's tree, its cost accounting, and exact reconstruction."""

from __future__ import annotations

import itertools

import numpy as np

from edgebin.compile.mst import dense_codes, hamming, mst_plan


def _random_codes(cout: int = 12, c: int = 8, k: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array([-1, 1], np.int8), size=(cout, c, k, k))


def _kruskal_total(distances: np.ndarray) -> int:
    """The minimum spanning tree weight, by Kruskal with union-find: an independent reference."""
    n = len(distances)
    root = list(range(n))

    def find(a: int) -> int:
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    total = 0
    for d, a, b in sorted((distances[a, b], a, b) for a, b in itertools.combinations(range(n), 2)):
        ra, rb = find(a), find(b)
        if ra != rb:
            root[ra] = rb
            total += int(d)
    return total


def test_tree_is_a_minimum_spanning_tree_in_parent_first_order():
    codes = _random_codes()
    plan = mst_plan(codes)
    assert sorted(plan.order.tolist()) == list(range(len(codes)))
    assert (plan.parent < 0).sum() == 1 and plan.parent[plan.order[0]] == -1
    position = {int(ch): i for i, ch in enumerate(plan.order)}
    assert all(position[int(plan.parent[ch])] < position[int(ch)] for ch in plan.order[1:])
    assert int(plan.distance.sum()) == _kruskal_total(hamming(codes))
    k = codes[0].size
    assert plan.bit_ops == k + int(plan.distance.sum()) and plan.plain_bit_ops == len(codes) * k


def test_reconstruction_from_parents_equals_the_direct_sums():
    """o_j = o_parent + 2 · Σ_{p in D} x_p w_j,p for random ±1 inputs: exact integers (methods.md §8 (e) 1)."""
    codes = _random_codes(cout=16, c=8)
    plan = mst_plan(codes)
    flat = dense_codes(codes).astype(np.int64)
    x = np.random.default_rng(1).choice([-1, 1], size=flat.shape[1])
    direct = flat @ x
    rebuilt = np.zeros(len(flat), np.int64)
    for ch in plan.order:
        p = plan.parent[ch]
        if p < 0:
            rebuilt[ch] = flat[ch] @ x
        else:
            differ = flat[ch] != flat[p]
            rebuilt[ch] = rebuilt[p] + 2 * int(x[differ] @ flat[ch][differ])
    np.testing.assert_array_equal(rebuilt, direct)


def test_identical_channels_cost_nothing_and_random_ones_about_half():
    base = _random_codes(cout=1, c=32)
    same = np.repeat(base, 6, axis=0)
    plan = mst_plan(same)
    assert plan.distance.sum() == 0 and plan.word_ops() == (9, 6 * 9)  # the root's 9 words, nothing else
    random = mst_plan(_random_codes(cout=32, c=32, seed=3))
    k = 32 * 9
    assert 0.3 * k < random.distance[random.parent >= 0].mean() < 0.5 * k  # d ≈ K/2, a little less for the MST


def test_kernel_tables_list_only_the_words_that_differ():
    codes = np.ones((3, 32, 1, 2), np.int8)  # K = 64: two words per channel
    codes[1, 0, 0, 1] = -1  # channel 1 differs from 0 in word 1 (tap 1, channel 0 -> bit 32)
    codes[2, 5, 0, 0] = -1  # channel 2 differs from 0 in word 0 (bit 5)
    plan = mst_plan(codes)
    nodes, edges = plan.kernel_tables()
    order, parent, distance, first = np.split(nodes, [3, 6, 9])
    assert order.tolist() == [0, 1, 2] and parent.tolist() == [-1, 0, 0]  # 0 is the centre: 1 and 2 hang off it
    assert distance.tolist() == [0, 1, 1] and first.tolist() == [0, 0, 1, 2]
    assert edges.reshape(-1, 2).tolist() == [[1, 1], [0, 1 << 5]]  # (word, mask): channel 1, then channel 2
    assert plan.word_ops() == (2 + 1 + 1, 3 * 2)
