# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Ranking metrics, implemented once and used by every evaluator (and by the `evaluate` module in
`trainer/evaluation/metric_module/gcl_retrieval`, loaded with
`evaluate.load(GCL_RETRIEVAL_METRIC_PATH)`).

Names follow the GCL spec (§5), since the field mixes them up:

- `hit@k`: 1 if any relevant candidate is in the top k, averaged over queries (UniIR / M-BEIR's "Recall@k", MMEB's
  "Precision@1" at k=1, CoVR's "R@k" with its single target).
- `recall@k`: the fraction of the query's relevant candidates that are in the top k, averaged over queries.
- `mrr@k`: 1 / rank of the first relevant candidate if it is in the top k, else 0.
- `ndcg@k`: DCG@k / ideal DCG@k with gain = the graded relevance and discount log2(rank + 1) (trec_eval's
  `ndcg_cut`).

Every value is returned in percent (0–100), as retrieval papers report them, computed in float64.

Ties: the evaluators rank a relevant candidate behind every candidate that scores the same ("pessimistic", see
`search.TIES`), except MMEB, which keeps its official argmax over the listed candidates (the positive listed first).
"""

import math
import re
from collections.abc import Hashable, Mapping, Sequence

import torch

METRIC_KINDS = ("hit", "recall", "mrr", "ndcg")
_METRIC_PATTERN = re.compile(r"^(hit|recall|mrr|ndcg)@([1-9][0-9]*)$")


def parse_metric(name: str) -> tuple[str, int]:
    """`"ndcg@10"` -> `("ndcg", 10)`; raises `ValueError` for anything else."""
    match = _METRIC_PATTERN.match(name)
    if match is None:
        raise ValueError(f"Unknown metric {name!r}; expected one of {METRIC_KINDS} followed by @k, e.g. 'hit@10'.")
    return match.group(1), int(match.group(2))


def max_cutoff(metrics: Sequence[str]) -> int:
    """The deepest k the metrics need: how many ranked candidates to retrieve."""
    return max(parse_metric(name)[1] for name in metrics)


def _discounts(length: int) -> torch.Tensor:
    """`1 / log2(rank + 1)` for ranks 1..length: `(length,)` float64."""
    return 1.0 / torch.log2(torch.arange(2, length + 2, dtype=torch.float64))


def ranking_metrics(
    ranked_gains: torch.Tensor,
    ideal_gains: torch.Tensor,
    metrics: Sequence[str],
    reduce: bool = True,
) -> dict[str, float | torch.Tensor]:
    r"""
    The metrics of ranked lists, given the relevance of what was retrieved.

    Args:
        ranked_gains (`torch.Tensor` of shape `(num_queries, depth)`):
            The graded relevance of the candidate at each rank (0 = not relevant). `depth` may be smaller than a
            metric's k when the pool is smaller: the missing ranks count as not relevant.
        ideal_gains (`torch.Tensor` of shape `(num_queries, max_relevant)`):
            Each query's relevance grades of *all* its relevant candidates, sorted in descending order and padded
            with 0. `(ideal_gains > 0).sum(1)` is the number of relevant candidates; each query needs at least one.
        metrics (`Sequence[str]`): names such as `"hit@5"`, `"recall@10"`, `"mrr@10"`, `"ndcg@10"`.
        reduce (`bool`): average over queries (floats) or return per-query tensors `(num_queries,)`.

    Returns:
        `{name: value}` in percent.
    """
    ranked_gains = ranked_gains.to(torch.float64)
    ideal_gains = ideal_gains.to(torch.float64)
    num_relevant = (ideal_gains > 0).sum(dim=1)
    if bool((num_relevant == 0).any()):
        first = int((num_relevant == 0).nonzero()[0])
        raise ValueError(f"query {first} has no relevant candidate: its metrics would be undefined.")
    relevant = ranked_gains > 0
    results = {}
    for name in metrics:
        kind, k = parse_metric(name)
        top = relevant[:, :k]
        if kind == "hit":
            values = top.any(dim=1).to(torch.float64)
        elif kind == "recall":  # counts are integers: divide in float64, not torch's default float32
            values = top.sum(dim=1).to(torch.float64) / num_relevant.to(torch.float64)
        elif kind == "mrr":
            first_rank = torch.where(top.any(dim=1), top.to(torch.int8).argmax(dim=1) + 1, 0)  # 1-based, 0 = none
            first_rank = first_rank.to(torch.float64)
            values = torch.where(first_rank > 0, 1.0 / first_rank.clamp(min=1), 0.0)
        else:  # ndcg
            gains = ranked_gains[:, :k]
            dcg = (gains * _discounts(gains.shape[1])).sum(dim=1)
            ideal = ideal_gains[:, :k]
            idcg = (ideal * _discounts(ideal.shape[1])).sum(dim=1)
            values = dcg / idcg
        values = 100.0 * values
        results[name] = float(values.mean()) if reduce else values
    return results


def metrics_from_positive_ranks(
    ranks: torch.Tensor, metrics: Sequence[str], reduce: bool = True
) -> dict[str, float | torch.Tensor]:
    """Metrics for queries with exactly one relevant candidate, from its 0-based rank `(num_queries,)` (the number of
    candidates scored above it). Same formulas as `ranking_metrics`."""
    depth = max_cutoff(metrics)
    ranks = ranks.to(torch.long)
    ranked_gains = torch.zeros(len(ranks), depth, dtype=torch.float64)
    inside = ranks < depth
    ranked_gains[inside.nonzero().squeeze(1), ranks[inside]] = 1.0
    return ranking_metrics(ranked_gains, torch.ones(len(ranks), 1), metrics, reduce=reduce)


def metrics_from_relevant_ranks(
    ranks: Sequence[torch.Tensor],
    gains: Sequence[torch.Tensor],
    metrics: Sequence[str],
    ties: str = "pessimistic",
    reduce: bool = True,
) -> dict[str, float | torch.Tensor]:
    r"""
    Metrics for queries with several relevant candidates, from `search.relevant_ranks`.

    Args:
        ranks: per query, `(num_relevant, 2)`: the non-relevant candidates ahead of each relevant one, and the
            relevant ones ahead of it (both under the tie convention that produced them).
        gains: per query, `(num_relevant,)` relevance grades (> 0), in the same order.
        ties (`str`): the convention `ranks` were counted with; relevant candidates tied with each other are then
            ordered lowest grade first (`"pessimistic"`) or highest first (`"optimistic"`).

    A relevant candidate's 0-based position is the non-relevant ones ahead of it plus the relevant ones placed before
    it: the ranking a full sort with that tie rule would give.
    """
    if len(ranks) != len(gains):
        raise ValueError(f"{len(ranks)} rank lists but {len(gains)} gain lists.")
    depth = max_cutoff(metrics)
    width = max((len(g) for g in gains), default=1)
    ranked_gains = torch.zeros(len(ranks), depth, dtype=torch.float64)
    ideal_gains = torch.zeros(len(ranks), width, dtype=torch.float64)
    sign = 1.0 if ties == "pessimistic" else -1.0
    for row, (counts, grades) in enumerate(zip(ranks, gains)):
        grades = grades.to(torch.float64)
        # Both counts fall as the score rises, so sorting by the pair follows the scores; equal pairs are ties.
        order = sorted(range(len(grades)),
                       key=lambda j: (int(counts[j, 1]), int(counts[j, 0]), sign * float(grades[j])))
        position = -1
        for placed, j in enumerate(order):
            position = max(int(counts[j, 0]) + placed, position + 1)
            if position < depth:
                ranked_gains[row, position] = grades[j]
        ideal_gains[row, : len(grades)] = grades.sort(descending=True).values
    return ranking_metrics(ranked_gains, ideal_gains, metrics, reduce=reduce)


def metrics_from_rankings(
    rankings: Sequence[Sequence[Hashable]],
    qrels: Sequence[Mapping[Hashable, float]],
    metrics: Sequence[str],
    query_ids: Sequence[Hashable] | None = None,
    reduce: bool = True,
) -> dict[str, float | torch.Tensor]:
    r"""
    Metrics of ranked candidate ids against relevance judgements.

    Args:
        rankings: per query, the retrieved candidate ids, best first (at least as deep as the largest k, or the
            whole pool).
        qrels: per query, `{candidate_id: relevance}`; entries with relevance <= 0 are not relevant.
        metrics: metric names, see `ranking_metrics`.
        query_ids: names for error messages (default: the position).

    Example (hand-checked in the tests): a query with relevant `{"a", "b"}` ranked `["x", "a", "y", "b"]` has
    `hit@1 = 0`, `hit@2 = 100`, `recall@2 = 50`, `recall@4 = 100`, `mrr@10 = 50`.
    """
    if len(rankings) != len(qrels):
        raise ValueError(f"{len(rankings)} rankings but {len(qrels)} qrels.")
    depth = max(max_cutoff(metrics), 1)
    positives = [{doc: float(rel) for doc, rel in judged.items() if rel > 0} for judged in qrels]
    for position, relevant in enumerate(positives):
        if not relevant:
            name = query_ids[position] if query_ids is not None else position
            raise ValueError(f"query {name!r} has no relevant candidate in its qrels.")
    width = max(len(relevant) for relevant in positives) if positives else 1
    ranked_gains = torch.zeros(len(rankings), depth, dtype=torch.float64)
    ideal_gains = torch.zeros(len(rankings), width, dtype=torch.float64)
    for row, (ranking, relevant) in enumerate(zip(rankings, positives)):
        for rank, doc in enumerate(ranking[:depth]):
            ranked_gains[row, rank] = relevant.get(doc, 0.0)
        grades = sorted(relevant.values(), reverse=True)
        ideal_gains[row, : len(grades)] = torch.tensor(grades, dtype=torch.float64)
    return ranking_metrics(ranked_gains, ideal_gains, metrics, reduce=reduce)


def round_metrics(values: Mapping[str, float], digits: int = 2) -> dict[str, float]:
    """Round for reports; NaN stays NaN."""
    return {key: (round(value, digits) if not math.isnan(value) else value) for key, value in values.items()}
