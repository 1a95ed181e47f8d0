"""The protocol's draws: the fixed split (test, validation, labelled pool) and the nested subsets.

Stratified by the task's group (pathology for ACDC-layout data, the label pattern for the knee),
so a small subset or test set does not by chance hold one group only. The split is drawn once
from ``split_seed``; per seed, the first ``n`` subjects of a stratified permutation of the pool
are the subset for count ``n`` (different per seed, nested across counts).
"""
from __future__ import annotations

import numpy as np

__all__ = ["stratified_permutation", "draw_split", "draw_subsets"]


def stratified_permutation(ids: list[str], groups: dict[str, str] | None, rng: np.random.Generator) -> list[str]:
    """A permutation of ``ids`` whose every prefix holds the groups in proportion (systematic
    sampling: each group's shuffled members are spread evenly over (0, 1) with a random offset,
    then all are sorted by that position).  With 5 equal groups, any 5 consecutive draws hold one
    of each; without groups it is a plain shuffle."""
    ids = sorted(ids)
    if not groups:
        return [ids[i] for i in rng.permutation(len(ids))]
    by: dict[str, list[str]] = {}
    for i in ids:
        by.setdefault(groups.get(i, "?"), []).append(i)
    keyed = []
    for g in sorted(by):
        members = [by[g][i] for i in rng.permutation(len(by[g]))]
        u = rng.random()
        keyed += [((k + u) / len(members), rng.random(), m) for k, m in enumerate(members)]
    return [m for _, _, m in sorted(keyed)]


def draw_split(subjects: list[str], n_test: int, n_val: int, split_seed: int,
               test_ids: list[str] | None = None, groups: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Fixed test, validation and pool subjects from one seeded, group-stratified permutation
    (the test set is ``test_ids`` when given; validation is then drawn from the rest)."""
    rng = np.random.default_rng(split_seed)
    if test_ids:
        test = sorted(test_ids)
        order = stratified_permutation(sorted(set(subjects) - set(test)), groups, rng)
        return {"test": test, "val": sorted(order[:n_val]), "pool": sorted(order[n_val:])}
    order = stratified_permutation(subjects, groups, rng)
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "pool": sorted(order[n_test + n_val:])}


def draw_subsets(pool: list[str], counts: list[int], seed: int,
                 groups: dict[str, str] | None = None) -> dict[int, list[str]]:
    """Per seed, the first ``n`` of one seeded, group-stratified permutation of the pool: nested
    across ``n``, different per seed, and a small ``n`` spread over the groups."""
    order = stratified_permutation(pool, groups, np.random.default_rng(10_000 + seed))
    return {n: sorted(order[:n]) for n in counts}
