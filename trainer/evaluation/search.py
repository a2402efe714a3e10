# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Nearest-neighbour search over L2-normalised embeddings (inner product = cosine), with bounded memory.

`exact_top_k` never holds the full `queries × pool` score matrix: it scores one block of `query_chunk_size ×
candidate_chunk_size` at a time and merges each block's top k into a running top k, so its peak extra memory is one
block plus `queries × k`. `FaissIndex` (the optional `faiss` extra) does the same search with FAISS, exact (`Flat`)
or approximate (any `index_factory` string), for pools too large to scan repeatedly.

Tie order among equal scores is unspecified in `exact_top_k`; the metrics never depend on it. They come from
`positive_ranks` / `relevant_ranks`, which rank each relevant candidate under a stated tie convention (`TIES`):

- `"pessimistic"` (the default everywhere): every candidate that scores *the same* as a relevant one ranks ahead of
  it, so a collapsed model (all embeddings equal) scores 0, never 100;
- `"optimistic"`: only strictly higher scores rank ahead (ties go to the query), the old behaviour;
- `"first_listed"`: MMEB's official scorer (`argmax` over the query's own candidate list, the positive listed first):
  a tie goes to whichever candidate is listed first (exact float comparison, as the official code does).

"The same" means within `TIE_TOLERANCE` (1e-6 in cosine similarity): identical inputs in different rows of a batch
come out of float32 kernels a few units in the last place apart (a collapsed model's scores differ by ~6e-8), and a
difference that small says nothing about the model.
"""

import torch

TIES = ("pessimistic", "optimistic", "first_listed")
TIE_TOLERANCE = 1e-6
TIE_DESCRIPTIONS = {
    "pessimistic": "pessimistic: a candidate scoring the same as a relevant one (within 1e-6) ranks ahead of it",
    "optimistic": "optimistic: only candidates scoring more than 1e-6 higher rank ahead of a relevant one",
    "first_listed": "MMEB's official argmax: a tie goes to the candidate listed first (the positive)",
}


def check_ties(ties: str, allowed: tuple[str, ...] = ("pessimistic", "optimistic")) -> str:
    if ties not in allowed:
        raise ValueError(f"ties={ties!r}; expected one of {list(allowed)}.")
    return ties


def ahead_mask(scores: torch.Tensor, reference: torch.Tensor, ties: str) -> torch.Tensor:
    """Which `scores` rank ahead of `reference` (broadcast) under `ties`: higher or within `TIE_TOLERANCE` below
    (pessimistic), more than `TIE_TOLERANCE` higher (optimistic), strictly higher (first_listed)."""
    if ties == "pessimistic":
        return scores >= reference - TIE_TOLERANCE
    if ties == "optimistic":
        return scores > reference + TIE_TOLERANCE
    return scores > reference


def _ahead(block_scores: torch.Tensor, reference: torch.Tensor, ties: str) -> torch.Tensor:
    """How many scores of each row of `block_scores` rank ahead of `reference` `(rows, 1)` under `ties`."""
    return ahead_mask(block_scores, reference, ties).sum(dim=1)


def exact_top_k(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    query_chunk_size: int = 1024,
    candidate_chunk_size: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Exact top-k by inner product, in blocks.

    Args:
        queries (`torch.Tensor` of shape `(num_queries, dim)`)
        candidates (`torch.Tensor` of shape `(num_candidates, dim)`)
        k (`int`): how many to return; capped at `num_candidates`.
        query_chunk_size, candidate_chunk_size (`int`): the block scored at once; peak extra memory is about
            `query_chunk_size × (candidate_chunk_size + 2k)` scores.

    Returns:
        `(scores, indices)`, both `(num_queries, min(k, num_candidates))`, best first.
    """
    if candidates.shape[0] == 0:
        raise ValueError("exact_top_k: the candidate pool is empty.")
    if queries.shape[-1] != candidates.shape[-1]:
        raise ValueError(f"exact_top_k: query dim {queries.shape[-1]} != candidate dim {candidates.shape[-1]}.")
    k = min(k, candidates.shape[0])
    all_scores, all_indices = [], []
    for q_start in range(0, queries.shape[0], query_chunk_size):
        query_block = queries[q_start : q_start + query_chunk_size]
        best_scores = torch.full((query_block.shape[0], 0), float("-inf"), dtype=queries.dtype)
        best_indices = torch.zeros((query_block.shape[0], 0), dtype=torch.long)
        for c_start in range(0, candidates.shape[0], candidate_chunk_size):
            block_scores = query_block @ candidates[c_start : c_start + candidate_chunk_size].T  # (q, c)
            scores, indices = block_scores.topk(min(k, block_scores.shape[1]), dim=1)
            del block_scores  # release the block before merging
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged_indices = torch.cat([best_indices, indices + c_start], dim=1)
            best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_indices = merged_indices.gather(1, order)
        all_scores.append(best_scores)
        all_indices.append(best_indices)
    return torch.cat(all_scores), torch.cat(all_indices)


def positive_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    positive_indices: torch.Tensor,
    query_chunk_size: int = 1024,
    candidate_chunk_size: int = 16384,
    ties: str = "pessimistic",
) -> torch.Tensor:
    r"""
    The 0-based rank of each query's single relevant candidate: how many other candidates rank ahead of it under
    `ties` (`"pessimistic"`: those scoring higher or equal; `"optimistic"`: strictly higher). Blocked like
    `exact_top_k` (two passes over the pool when it spans several candidate blocks).

    Args:
        queries (`torch.Tensor` of shape `(num_queries, dim)`)
        candidates (`torch.Tensor` of shape `(num_candidates, dim)`)
        positive_indices (`torch.LongTensor` of shape `(num_queries,)`): the relevant candidate of each query.

    Returns:
        `torch.LongTensor` of shape `(num_queries,)`.
    """
    if candidates.shape[0] == 0:
        raise ValueError("positive_ranks: the candidate pool is empty.")
    check_ties(ties)
    positive_indices = positive_indices.to(torch.long)
    ranks = []
    for q_start in range(0, queries.shape[0], query_chunk_size):
        query_block = queries[q_start : q_start + query_chunk_size]
        positives = positive_indices[q_start : q_start + query_chunk_size]
        rows = torch.arange(query_block.shape[0])
        blocks = range(0, candidates.shape[0], candidate_chunk_size)
        # The positive's score is read out of the same matrix products it is compared with: near-collapsed embeddings
        # (an untrained model) have scores within float rounding of each other, and a separately computed dot product
        # would flip those comparisons. With one candidate block this is a single pass; otherwise two.
        positive_scores = torch.empty(query_block.shape[0], 1, dtype=query_block.dtype)
        cached_block = None
        for c_start in blocks:
            block_scores = query_block @ candidates[c_start : c_start + candidate_chunk_size].T  # (q, c)
            inside = (positives >= c_start) & (positives < c_start + block_scores.shape[1])
            positive_scores[inside, 0] = block_scores[rows[inside], positives[inside] - c_start]
            cached_block = block_scores if len(blocks) == 1 else None
        above = torch.zeros(query_block.shape[0], dtype=torch.long)
        for c_start in blocks:
            block_scores = cached_block if cached_block is not None else (
                query_block @ candidates[c_start : c_start + candidate_chunk_size].T)
            above += _ahead(block_scores, positive_scores, ties)
        # A pessimistic count includes the positive itself (its score equals itself).
        ranks.append(above - 1 if ties == "pessimistic" else above)
    return torch.cat(ranks)


def relevant_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: list[list[int]],
    query_chunk_size: int = 256,
    candidate_chunk_size: int = 16384,
    ties: str = "pessimistic",
) -> list[torch.Tensor]:
    r"""
    For queries with several relevant candidates: how many candidates that are *not* relevant rank ahead of each
    relevant one (scoring higher, or the same under `ties="pessimistic"`), without a full score matrix.

    Args:
        queries (`torch.Tensor` of shape `(num_queries, dim)`), candidates (`torch.Tensor` of shape `(pool, dim)`)
        relevant (`list[list[int]]`): per query, the indices of its relevant candidates (at least one).

    Returns:
        Per query, `(num_relevant, 2)` long tensor: column 0 the count of non-relevant candidates ahead, column 1 the
        count of *relevant* ones ahead under the same rule (itself excluded), so the caller can order the relevant
        ones among themselves. Scores of the relevant candidates are read from the same products they are compared
        with.
    """
    if candidates.shape[0] == 0:
        raise ValueError("relevant_ranks: the candidate pool is empty.")
    check_ties(ties)
    results = []
    blocks = range(0, candidates.shape[0], candidate_chunk_size)
    for q_start in range(0, queries.shape[0], query_chunk_size):
        query_block = queries[q_start : q_start + query_chunk_size]
        lists = relevant[q_start : q_start + query_chunk_size]
        width = max(len(entries) for entries in lists)
        # (q, width) padded with the first relevant index; `valid` marks the real entries.
        index = torch.tensor([entries + [entries[0]] * (width - len(entries)) for entries in lists], dtype=torch.long)
        valid = torch.tensor([[True] * len(entries) + [False] * (width - len(entries)) for entries in lists])
        own = torch.empty(index.shape, dtype=query_block.dtype)
        for c_start in blocks:
            block_scores = query_block @ candidates[c_start : c_start + candidate_chunk_size].T
            inside = (index >= c_start) & (index < c_start + block_scores.shape[1])
            rows = torch.arange(index.shape[0]).unsqueeze(1).expand_as(index)
            own[inside] = block_scores[rows[inside], index[inside] - c_start]
        ahead_all = torch.zeros(index.shape, dtype=torch.long)
        for c_start in blocks:
            block_scores = query_block @ candidates[c_start : c_start + candidate_chunk_size].T  # (q, c)
            for column in range(width):
                ahead_all[:, column] += _ahead(block_scores, own[:, column : column + 1], ties)
        # Relevant candidates ahead of each relevant one (same rule), from their own scores.
        compare = ahead_mask(own.unsqueeze(1), own.unsqueeze(2), ties) & valid.unsqueeze(1)  # (q, self, other)
        relevant_ahead = compare.sum(dim=2)
        if ties == "pessimistic":  # both counts include the relevant candidate itself
            relevant_ahead -= 1
            ahead_all -= 1
        for row, entries in enumerate(lists):
            count = len(entries)
            non_relevant = ahead_all[row, :count] - relevant_ahead[row, :count]
            results.append(torch.stack([non_relevant, relevant_ahead[row, :count]], dim=1))
    return results


def listwise_positive_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    candidate_lists: torch.Tensor,
    query_chunk_size: int = 256,
    ties: str = "first_listed",
    list_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    Rank of the *first* entry of each query's own candidate list (MMEB's layout: the positive first).

    Args:
        queries (`torch.Tensor` of shape `(num_queries, dim)`)
        candidates (`torch.Tensor` of shape `(num_candidates, dim)`): every distinct candidate.
        candidate_lists (`torch.LongTensor` of shape `(num_queries, list_length)`): indices into `candidates`.
        ties (`str`): `"first_listed"` (MMEB's argmax: only strictly higher scores rank above the positive, which is
            listed first), `"pessimistic"` (an equal score ranks above it too) or `"optimistic"` (= first_listed).
        list_lengths (`torch.LongTensor` of shape `(num_queries,)`, *optional*): the real length of each list; the
            entries past it are padding and never rank above the positive.

    Returns:
        `torch.LongTensor` of shape `(num_queries,)`.
    """
    check_ties(ties, TIES)
    ranks = []
    for start in range(0, queries.shape[0], query_chunk_size):
        lists = candidate_lists[start : start + query_chunk_size]  # (q, L)
        scores = torch.einsum("qd,qld->ql", queries[start : start + query_chunk_size], candidates[lists])
        ahead = ahead_mask(scores, scores[:, :1], ties)
        ahead[:, 0] = False  # the positive itself
        if list_lengths is not None:
            ahead &= torch.arange(lists.shape[1]) < list_lengths[start : start + query_chunk_size, None]
        ranks.append(ahead.sum(dim=1))
    return torch.cat(ranks)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class FaissIndex:
    r"""
    Inner-product search with FAISS (`pip install faiss-cpu`: the `faiss` extra).

    Args:
        candidates (`torch.Tensor` of shape `(num_candidates, dim)`): L2-normalised embeddings.
        index_factory (`str`, defaults to `"Flat"`): `"Flat"` is exact; any FAISS `index_factory` string (e.g.
            `"IVF4096,Flat"`, `"HNSW32"`) builds an approximate index, trained on the candidates.
        nprobe (`int`, *optional*): for IVF indexes, the lists visited per query.
    """

    def __init__(self, candidates: torch.Tensor, index_factory: str = "Flat", nprobe: int | None = None):
        try:
            import faiss
        except ImportError as error:
            raise ImportError("FaissIndex needs faiss: pip install faiss-cpu (the `faiss` extra).") from error
        if candidates.shape[0] == 0:
            raise ValueError("FaissIndex: the candidate pool is empty.")
        vectors = candidates.detach().to(torch.float32).contiguous().numpy()
        dim = vectors.shape[1]
        if index_factory == "Flat":
            self.index = faiss.IndexFlatIP(dim)
        else:
            self.index = faiss.index_factory(dim, index_factory, faiss.METRIC_INNER_PRODUCT)
            self.index.train(vectors)
        if nprobe is not None:
            faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.index.add(vectors)
        self.size = vectors.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(num_queries, dim)` -> `(scores, indices)`, both `(num_queries, min(k, num_candidates))`."""
        k = min(k, self.size)
        scores, indices = self.index.search(queries.detach().to(torch.float32).contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).to(torch.long)


def search_top_k(
    queries: torch.Tensor, candidates: torch.Tensor, k: int, backend: str = "torch", **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by inner product with `backend="torch"` (`exact_top_k`) or `"faiss"` (`FaissIndex`; options
    `index_factory`, `nprobe`). Returns `(scores, indices)` of shape `(num_queries, min(k, num_candidates))`."""
    if backend == "torch":
        return exact_top_k(queries, candidates, k, **options)
    if backend == "faiss":
        return FaissIndex(candidates, **options).search(queries, k)
    raise ValueError(f"Unknown search backend {backend!r}; expected 'torch' or 'faiss'.")
