"""Training-set size as a study axis: the first N examples of one fixed, class-balanced order of a split.

The order depends only on the split's labels and a constant seed, never on a run's seed: every point and
every seed of a study that trains on N examples trains on the same N, and the subsets are nested (N examples
are a prefix of the order, so the first 1,000 contain the first 500). Classes are dealt round-robin: each
class's examples in a seeded shuffled order, the first example of every class (in label order), then the
second of every class, and so on, a class that has run out skipped. So in any prefix the per-class counts
differ by at most one while every class still has examples left.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np

ORDER_SEED = 1234  # fixed, so that subsets are the same in every study; changing it changes every subset

_ORDERS: dict[Hashable, np.ndarray] = {}


def balanced_order(labels: np.ndarray, seed: int = ORDER_SEED) -> np.ndarray:
  """Every index of `labels` (int64), dealt round-robin over classes, each class in its seeded shuffled order."""
  labels = np.asarray(labels, dtype=np.int64)
  # RandomState: numpy keeps its streams fixed across versions (NEP 19), so a study's subsets do not change
  # with the numpy of the machine a point runs on; Generator's streams carry no such promise.
  shuffled = np.random.RandomState(seed).permutation(len(labels))
  # A stable sort by label keeps the shuffle within each class: each class's examples in their seeded order.
  by_class = shuffled[np.argsort(labels[shuffled], kind='stable')]
  sorted_labels = labels[by_class]
  rank = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels)  # position within its class
  return by_class[np.lexsort((sorted_labels, rank))]  # by rank, then by class


def cached_order(key: Hashable, read_labels: Callable[[], np.ndarray]) -> np.ndarray:
  """`balanced_order` of a split's labels, made once per process for `key` (the labels are read only then);
  the last split's order is kept (a sweep's points and seeds share it)."""
  if key not in _ORDERS:
    order = balanced_order(read_labels())
    _ORDERS.clear()
    _ORDERS[key] = order
  return _ORDERS[key]
