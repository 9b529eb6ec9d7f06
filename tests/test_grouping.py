"""MAS partition search, TAG and HOA selection: brute force, hand-computed cases, ties and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mas_lightning.grouping.hoa_selection import hoa_select
from mas_lightning.grouping.mas_split import best_split, split_score, task_scores
from mas_lightning.grouping.tag_selection import tag_select

# ---------------------------------------------------------------- independent brute force (no shared code)


def _all_partitions(items: list[int]):
    """Set partitions by inserting each item into an existing block or a new one."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partial in _all_partitions(rest):
        for i in range(len(partial)):
            yield partial[:i] + [[first, *partial[i]]] + partial[i + 1 :]
        yield [[first], *partial]


def _brute_score(z: np.ndarray, partition: list[list[int]]) -> float:
    n = len(z)
    total = 0.0
    for block in partition:
        for t in block:
            if len(block) == 1:
                total += np.mean([z[t, s] for s in range(n) if s != t] + [z[s, t] for s in range(n) if s != t])
            else:
                total += np.mean([z[s, t] for s in block if s != t])
    return total / n


def _brute_best_split(z: np.ndarray, k: int) -> tuple[float, list[tuple[int, ...]]]:
    scored = [
        (_brute_score(z, p), sorted(tuple(sorted(b)) for b in p))
        for p in _all_partitions(list(range(len(z))))
        if len(p) <= k
    ]
    best = max(s for s, _ in scored)
    return best, min((len(p), p) for s, p in scored if s > best - 1e-9)[1]


SINGLE = {"a": 1.0, "b": 1.0, "c": 1.0}
PAIRS = {("a", "b"): {"a": 0.8, "b": 0.9}, ("a", "c"): {"a": 1.2, "c": 0.7}, ("c", "b"): {"b": 1.1, "c": 1.3}}

# ---------------------------------------------------------------- MAS


@pytest.mark.parametrize("tasks", [3, 4, 5, 6])
@pytest.mark.parametrize("max_groups", [1, 2, 3])
def test_best_split_matches_brute_force(tasks: int, max_groups: int) -> None:
    rng = np.random.default_rng(100 * tasks + max_groups)
    for _ in range(3):
        z = rng.normal(size=(tasks, tasks))
        expected_score, expected = _brute_best_split(z, max_groups)
        groups = best_split(z, max_groups)
        assert groups == expected
        assert split_score(z, groups) == pytest.approx(expected_score, abs=1e-12)


def test_best_split_eight_tasks_any_number_of_groups_matches_brute_force() -> None:
    z = np.random.default_rng(9).normal(size=(8, 8))
    _, expected = _brute_best_split(z, 8)
    groups = best_split(z, 8)
    assert groups == expected and len(groups) >= 3


def test_best_split_hand_computed() -> None:
    # Tasks 0 and 1 help each other, both hurt 2; the diagonal (100) must never count.
    z = np.array([[100.0, 1.0, -1.0], [1.0, 100.0, -1.0], [-1.0, -1.0, 100.0]])
    assert best_split(z, 1) == [(0, 1, 2)]
    assert split_score(z, [(0, 1, 2)]) == pytest.approx(-1 / 3)  # scores 0, 0, -1
    assert best_split(z, 2) == [(0, 1), (2,)]
    assert split_score(z, [(1, 0), (2,)]) == pytest.approx(1 / 3)  # scores 1, 1, self affinity -1
    assert best_split(torch.tensor(z), 3) == [(0, 1), (2,)]  # a third group cannot help


def test_task_scores_read_the_direction_source_onto_target() -> None:
    z = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    # task 0 gets z[1, 0] = 0, task 1 gets z[0, 1] = 2, task 2 alone: (z[0,2] + z[1,2] + z[2,0] + z[2,1]) / 4 = 1
    assert task_scores(z, [(0, 1), (2,)]) == pytest.approx([0.0, 2.0, 1.0])
    assert task_scores(z, [(0, 1, 2)]) == pytest.approx([0.5, 1.0, 1.5])


def test_best_split_ties_prefer_fewer_groups_then_lexicographic() -> None:
    assert best_split(np.zeros((4, 4)), 3) == [(0, 1, 2, 3)]
    # Task 0 likes 1 and 2 equally; everything else is -1. With two groups, {01|23}, {02|13} and {012|3}
    # all score 0; with three, {01|2|3} and {02|1|3} both score 1/6.
    z = -np.ones((4, 4))
    z[0, 1] = z[1, 0] = z[0, 2] = z[2, 0] = 1.0
    assert best_split(z, 2) == [(0, 1), (2, 3)]
    assert split_score(z, [(0, 2), (1, 3)]) == split_score(z, [(0, 1, 2), (3,)]) == pytest.approx(0.0)
    assert best_split(z, 3) == [(0, 1), (2,), (3,)]
    assert split_score(z, [(0, 2), (1,), (3,)]) == pytest.approx(1 / 6)


@pytest.mark.parametrize(
    ("affinity", "max_groups", "message"),
    [
        (np.zeros((2, 3)), 2, r"square T x T matrix, got shape \(2, 3\)"),
        (np.zeros((1, 1)), 1, "has 1 tasks; grouping needs 2 to 12"),
        (np.zeros((13, 13)), 2, "has 13 tasks"),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), 2, r"finite; entry \[0, 1\] is nan"),
        (np.zeros((3, 3)), 0, "max_groups must be an int >= 1, got 0"),
        (np.zeros((3, 3)), 2.0, "max_groups must be an int >= 1, got 2.0"),
    ],
)
def test_best_split_bad_input(affinity: np.ndarray, max_groups: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        best_split(affinity, max_groups)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([(0, 1)], r"missing \[2\]"),
        ([(0, 1), (1, 2)], r"repeated \[1\]"),
        ([(0, 1, 2, 3)], r"outside \[3\]"),
        ([(0, 1, 2), ()], "must not be empty"),
    ],
)
def test_split_score_rejects_non_partitions(groups: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_score(np.zeros((3, 3)), groups)


# ---------------------------------------------------------------- TAG


def _tag_value(z: np.ndarray, groups: list[tuple[int, ...]]) -> float:
    total = 0.0
    for t in range(len(z)):
        scores = [np.mean([z[s, t] for s in g if s != t]) for g in groups if t in g]
        if not scores:
            return -math.inf
        total += max(scores)
    return total


@pytest.mark.parametrize("tasks", [3, 4, 5])
def test_tag_matches_brute_force(tasks: int) -> None:
    rng = np.random.default_rng(tasks)
    candidates = [c for size in range(2, tasks + 1) for c in itertools.combinations(range(tasks), size)]
    for max_groups in (1, 2, 3):
        z = rng.normal(size=(tasks, tasks))
        best, best_groups = -math.inf, None
        for size in range(1, max_groups + 1):  # fewer groups first, so they win ties
            for groups in itertools.combinations(candidates, size):
                value = _tag_value(z, list(groups))
                if value > best + 1e-12:
                    best, best_groups = value, sorted(groups, key=lambda g: (len(g), g))
        selection = tag_select(z, max_groups)
        assert selection.groups == best_groups
        assert selection.objective == pytest.approx(best, abs=1e-12)
        for t, group in selection.served_by.items():
            assert t in group and group in selection.groups


def test_tag_hand_computed_and_overlapping() -> None:
    z = np.array([[0.0, 1.0, -1.0], [1.0, 0.0, -1.0], [-1.0, -1.0, 0.0]])
    one = tag_select(z, 1)  # only the full set serves every task: scores 0, 0, -1
    assert one.groups == [(0, 1, 2)] and one.objective == pytest.approx(-1.0) and one.cost == 1.0
    # With two groups task 2 scores -1 in any group, 0 and 1 score 1 together. Three selections tie at 1;
    # the rule (fewer, then smaller groups) picks {01, 02}: groups overlap on task 0.
    two = tag_select(z, 2)
    assert two.groups == [(0, 1), (0, 2)] and two.objective == pytest.approx(1.0)
    assert two.served_by == {0: (0, 1), 1: (0, 1), 2: (0, 2)}
    assert tag_select(z, 5).groups == [(0, 1), (0, 2)]  # more budget, nothing better: no extra groups


def test_tag_and_hoa_ties_prefer_fewer_groups() -> None:
    # All zero: every selection scores 0, and the full set alone is the one with the fewest groups.
    assert tag_select(np.zeros((3, 3)), 3).groups == [(0, 1, 2)]
    flat = {("a", "b"): {"a": 1.0, "b": 1.0}, ("a", "c"): {"a": 1.0, "c": 1.0}, ("b", "c"): {"b": 1.0, "c": 1.0}}
    assert hoa_select(SINGLE, flat, 3).groups == [("a", "b", "c")]


def test_tag_nine_tasks_is_exact_and_quick() -> None:
    z = np.random.default_rng(1).normal(size=(9, 9))
    previous = -math.inf
    for max_groups in (1, 2, 3, 4, 9):
        selection = tag_select(z, max_groups)
        assert len(selection.groups) <= max_groups
        assert selection.objective == pytest.approx(_tag_value(z, selection.groups), abs=1e-12)
        assert selection.objective >= previous  # a larger budget can only help
        previous = selection.objective


def test_tag_bad_input() -> None:
    with pytest.raises(ValueError, match="max_groups must be an int >= 1, got 0"):
        tag_select(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match="grouping needs 2 to 12"):
        tag_select(np.zeros((1, 1)), 1)


# ---------------------------------------------------------------- HOA


def test_hoa_hand_computed() -> None:
    # {a, b, c} is estimated from the pairs: a (0.8 + 1.2) / 2 = 1, b (0.9 + 1.1) / 2 = 1, c (0.7 + 1.3) / 2 = 1.
    one = hoa_select(SINGLE, PAIRS, 1)
    assert one.groups == [("a", "b", "c")] and one.objective == pytest.approx(3.0)
    # Two networks: {ab, ac} gives a 0.8, b 0.9, c 0.7 = 2.4, better than {ab, c} = 2.7 or {abc, ab} = 2.7.
    two = hoa_select(SINGLE, PAIRS, 2)
    assert two.groups == [("a", "b"), ("a", "c")] and two.objective == pytest.approx(2.4) and two.cost == 2.0
    assert two.served_by == {"a": ("a", "b"), "b": ("a", "b"), "c": ("a", "c")}
    assert hoa_select(SINGLE, PAIRS, 3).groups == two.groups  # nothing beats 2.4, so no third network
    # Cost = group size: budget 3 now affords {ab, c} (2.7) but not {ab, ac} (cost 4).
    sized = hoa_select(SINGLE, PAIRS, 3, network_cost=len)
    assert sized.groups == [("c",), ("a", "b")] and sized.objective == pytest.approx(2.7) and sized.cost == 3.0


def test_hoa_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    tasks = ["s", "d", "n", "k"]
    single = {t: float(rng.uniform(0.5, 1.0)) for t in tasks}
    pairs = {
        (a, b): {a: float(rng.uniform(0.3, 1.2)), b: float(rng.uniform(0.3, 1.2))}
        for a, b in itertools.combinations(tasks, 2)
    }

    def estimate(group: tuple[str, ...], t: str) -> float:
        if len(group) == 1:
            return single[t]
        return float(np.mean([pairs[tuple(sorted((t, s), key=tasks.index))][t] for s in group if s != t]))

    candidates = [c for size in range(1, 5) for c in itertools.combinations(tasks, size)]
    for budget, cost in ((2, lambda g: 1.0), (3, lambda g: 1.0), (3.5, lambda g: 0.5 + 0.5 * len(g))):
        best, best_groups = math.inf, None
        for size in range(1, 5):
            for groups in itertools.combinations(candidates, size):
                if sum(cost(g) for g in groups) > budget or {t for g in groups for t in g} != set(tasks):
                    continue
                value = sum(min(estimate(g, t) for g in groups if t in g) for t in tasks)
                if value < best - 1e-12:
                    best, best_groups = value, list(groups)
        selection = hoa_select(single, pairs, budget, network_cost=cost)
        assert selection.groups == best_groups and selection.objective == pytest.approx(best, abs=1e-12)


def test_hoa_never_uses_a_group_with_an_unmeasured_pair() -> None:
    only_ab = {("a", "b"): PAIRS[("a", "b")]}
    assert hoa_select(SINGLE, only_ab, 2).groups == [("c",), ("a", "b")]
    with pytest.raises(ValueError, match="no selection of groups with total cost <= 1 serves every task"):
        hoa_select(SINGLE, only_ab, 1)  # {a, b, c} would need the pairs ac and bc


@pytest.mark.parametrize(
    ("pairs", "budget", "message"),
    [
        ({("a", "x"): {"a": 1.0, "x": 1.0}}, 2, r"pair key \('a', 'x'\) must be a tuple of two different tasks"),
        ({("a", "a"): {"a": 1.0}}, 2, "two different tasks"),
        ({("a", "b"): {"a": 1.0}}, 2, r"must give exactly the losses of 'a' and 'b'"),
        ({("a", "b"): {"a": 1.0, "b": 1.0}, ("b", "a"): {"a": 1.0, "b": 1.0}}, 2, "appears twice"),
        ({("a", "b"): {"a": float("nan"), "b": 1.0}}, 2, r"pair_losses\[\('a', 'b'\)\]\['a'\] must be a finite"),
        ({}, 0, "budget must be a finite number > 0, got 0"),
        ({}, 2, "total cost <= 2 serves every task"),  # singles alone need 3 networks
    ],
)
def test_hoa_bad_input(pairs: dict, budget: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hoa_select(SINGLE, pairs, budget)


def test_hoa_bad_cost_is_named() -> None:
    with pytest.raises(ValueError, match=r"network cost of \('a',\) must be a finite number > 0, got 0"):
        hoa_select(SINGLE, PAIRS, 3, network_cost=lambda g: 0)


def test_blocks_with_lowest_are_exactly_the_subsets_holding_the_lowest_task() -> None:
    from mas_lightning.grouping.bitsets import blocks_with_lowest, members

    remaining = 0b101100  # tasks 2, 3, 5
    blocks = list(blocks_with_lowest(remaining))
    assert [members(b) for b in blocks] == [(2, 3, 5), (2, 5), (2, 3), (2,)]
    assert list(blocks_with_lowest(0)) == []
