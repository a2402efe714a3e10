"""Ranking metrics on hand-computed cases, blocked search against brute force, FAISS, the embedding cache, encoding of
mixed modalities and videos, modality-gap numbers, and the `evaluate` metric module loaded from its local folder."""

import math
import os

import pytest
import torch

from trainer.evaluation import (
    GCL_RETRIEVAL_METRIC_PATH,
    EmbeddingCache,
    LookupEmbedder,
    RetrievalItem,
    encode_items,
    exact_top_k,
    metrics_from_positive_ranks,
    metrics_from_rankings,
    modality_gap,
    modality_matrix,
    parse_metric,
    positive_ranks,
    search_top_k,
)
from trainer.evaluation.search import faiss_available, listwise_positive_ranks


def test_metrics_single_and_multi_positive_by_hand():
    # Query A: relevant {a, b} ranked 2nd and 4th. Query B: relevant {c} ranked 1st. Query C: {d} not retrieved.
    rankings = [["x", "a", "y", "b"], ["c", "x", "y", "z"], ["x", "y", "z", "w"]]
    qrels = [{"a": 1, "b": 1}, {"c": 1}, {"d": 1}]
    values = metrics_from_rankings(rankings, qrels, ["hit@1", "hit@2", "recall@2", "recall@4", "mrr@10", "ndcg@10"])
    assert values["hit@1"] == pytest.approx(100 / 3)
    assert values["hit@2"] == pytest.approx(200 / 3)
    assert values["recall@2"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert values["recall@4"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    assert values["mrr@10"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    ndcg_a = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert values["ndcg@10"] == pytest.approx(100 * (ndcg_a + 1 + 0) / 3)


def test_graded_ndcg_and_zero_relevance_ignored():
    # Gains 1 at rank 1 and 3 at rank 2; ideal order 3, 1. A relevance-0 judgement is not relevant.
    values = metrics_from_rankings([["p", "q", "r"]], [{"p": 1, "q": 3, "r": 0}], ["ndcg@10", "recall@1", "hit@1"])
    assert values["ndcg@10"] == pytest.approx(100 * (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert values["recall@1"] == 50 and values["hit@1"] == 100


def test_metric_errors_and_names():
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    with pytest.raises(ValueError, match="Unknown metric 'map@10'"):
        parse_metric("map@10")
    with pytest.raises(ValueError, match="query 'q7' has no relevant"):
        metrics_from_rankings([["a"]], [{"b": 0}], ["hit@1"], query_ids=["q7"])


def test_positive_ranks_metrics_match_rankings():
    ranks = torch.tensor([0, 3, 12])
    values = metrics_from_positive_ranks(ranks, ["hit@1", "hit@5", "mrr@10", "ndcg@10"])
    assert values["hit@1"] == pytest.approx(100 / 3) and values["hit@5"] == pytest.approx(200 / 3)
    assert values["mrr@10"] == pytest.approx(100 * (1 + 1 / 4) / 3)
    assert values["ndcg@10"] == pytest.approx(100 * (1 + 1 / math.log2(5)) / 3)


@pytest.mark.parametrize("query_chunk, candidate_chunk", [(1024, 16384), (7, 13), (1, 1)])
def test_exact_top_k_blocked_equals_brute_force(query_chunk, candidate_chunk):
    generator = torch.Generator().manual_seed(0)
    queries, candidates = torch.randn(37, 16, generator=generator), torch.randn(101, 16, generator=generator)
    scores, indices = exact_top_k(queries, candidates, 10, query_chunk, candidate_chunk)
    expected_scores, expected_indices = (queries @ candidates.T).topk(10, dim=1)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(indices, expected_indices)
    # k larger than the pool is capped; the result covers the whole pool in order.
    scores, indices = exact_top_k(queries[:2], candidates[:5], 50, query_chunk, candidate_chunk)
    assert indices.shape == (2, 5) and torch.equal(indices, (queries[:2] @ candidates[:5].T).argsort(1, descending=True))
    with pytest.raises(ValueError, match="pool is empty"):
        exact_top_k(queries, candidates[:0], 5)


def test_positive_ranks_blocked_and_tie_conventions():
    generator = torch.Generator().manual_seed(1)
    queries, candidates = torch.randn(20, 8, generator=generator), torch.randn(50, 8, generator=generator)
    positives = torch.randint(0, 50, (20,), generator=generator)
    scores = queries @ candidates.T
    expected = (scores > scores[torch.arange(20), positives][:, None]).sum(1)
    for chunks in [(1024, 16384), (3, 7)]:  # no ties in random data: both conventions agree
        assert torch.equal(positive_ranks(queries, candidates, positives, *chunks), expected)
        assert torch.equal(positive_ranks(queries, candidates, positives, *chunks, ties="optimistic"), expected)
    same = torch.ones(4, 2) / math.sqrt(2)  # all candidates identical (a collapsed model)
    assert positive_ranks(same[:1], same, torch.tensor([3])).tolist() == [3]  # pessimistic: all 3 others ahead
    assert positive_ranks(same[:1], same, torch.tensor([3]), 1, 1).tolist() == [3]  # blocked the same
    assert positive_ranks(same[:1], same, torch.tensor([3]), ties="optimistic").tolist() == [0]
    # One tie: candidates 0 and 2 score the same for query 0; candidate 1 scores higher.
    tied = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    query = torch.tensor([[0.6, 0.8]])
    assert positive_ranks(query, tied, torch.tensor([0])).tolist() == [2]
    assert positive_ranks(query, tied, torch.tensor([0]), ties="optimistic").tolist() == [1]
    with pytest.raises(ValueError, match="ties='random'"):
        positive_ranks(query, tied, torch.tensor([0]), ties="random")
    lists = torch.tensor([[0, 1, 2], [2, 1, 0]])
    listed = listwise_positive_ranks(queries[:2], candidates, lists)
    assert listed.tolist() == [int((scores[q, lists[q]] > scores[q, lists[q, 0]]).sum()) for q in range(2)]
    # MMEB's argmax: a tie with the positive (listed first) goes to the positive; pessimistic counts it; padding
    # past a list's length never counts.
    collapsed_lists = torch.tensor([[0, 1, 2], [1, 0, 1]])
    assert listwise_positive_ranks(same[:2], same, collapsed_lists).tolist() == [0, 0]
    assert listwise_positive_ranks(same[:2], same, collapsed_lists, ties="pessimistic").tolist() == [2, 2]
    assert listwise_positive_ranks(same[:2], same, collapsed_lists, ties="pessimistic",
                                   list_lengths=torch.tensor([3, 2])).tolist() == [2, 1]


def test_relevant_ranks_with_several_positives_and_ties():
    """Query 0: relevant candidates 1 (grade 1) and 3 (grade 3) tie with non-relevant 0 and 4; candidate 2 is
    relevant and scores highest; candidate 5 scores highest of all."""
    from trainer.evaluation.metrics import metrics_from_relevant_ranks
    from trainer.evaluation.search import relevant_ranks

    scores = torch.tensor([0.5, 0.5, 0.8, 0.5, 0.5, 0.9])
    candidates = torch.diag(scores)  # query = all ones -> candidate j scores scores[j]
    query = torch.ones(1, 6)
    grades = torch.tensor([1.0, 3.0, 2.0])
    for chunk in (16384, 2):
        pessimistic = relevant_ranks(query, candidates, [[1, 3, 2]], candidate_chunk_size=chunk)[0]
        # Non-relevant ahead: {5, 0, 4} for the tied ones, {5} for candidate 2; relevant ahead: {3, 2}, {1, 2}, {}.
        assert pessimistic.tolist() == [[3, 2], [3, 2], [1, 0]]
        optimistic = relevant_ranks(query, candidates, [[1, 3, 2]], candidate_chunk_size=chunk, ties="optimistic")[0]
        assert optimistic.tolist() == [[1, 1], [1, 1], [1, 0]]
    # Pessimistic ranking: 5, 2, 0, 4, 1 (grade 1), 3 (grade 3); optimistic: 5, 2, 3, 1, 0, 4.
    values = metrics_from_relevant_ranks([pessimistic], [grades], ["hit@1", "hit@2", "recall@5", "mrr@10", "ndcg@10"])
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert values["hit@1"] == 0 and values["hit@2"] == 100 and values["mrr@10"] == 50
    assert values["recall@5"] == pytest.approx(200 / 3, abs=1e-12)
    assert values["ndcg@10"] == pytest.approx(100 * (2 / math.log2(3) + 1 / math.log2(6) + 3 / math.log2(7)) / ideal)
    values = metrics_from_relevant_ranks([optimistic], [grades], ["recall@3", "ndcg@10"], ties="optimistic")
    assert values["recall@3"] == pytest.approx(200 / 3, abs=1e-12)
    assert values["ndcg@10"] == pytest.approx(100 * (2 / math.log2(3) + 3 / math.log2(4) + 1 / math.log2(5)) / ideal)
    # The same numbers as sorting the full list by hand.
    by_hand = metrics_from_rankings([["5", "2", "0", "4", "1", "3"]], [{"1": 1, "3": 3, "2": 2}], ["ndcg@10"])
    assert by_hand["ndcg@10"] == pytest.approx(
        metrics_from_relevant_ranks([pessimistic], [grades], ["ndcg@10"])["ndcg@10"], abs=1e-12)


def test_recall_and_mrr_are_computed_in_float64():
    # recall 1/3 and mrr 1/3 for every query: in float32 1/3 is 0.3333333432674408, off by 1e-8 after x100.
    rankings = [["x", "y", "a", "z", "w"]] * 3
    qrels = [{"a": 1, "b": 1, "c": 1}] * 3
    values = metrics_from_rankings(rankings, qrels, ["recall@5", "mrr@10"])
    assert values["recall@5"] == 100 * (1 / 3) and values["mrr@10"] == 100 * (1 / 3)
    ranks = metrics_from_positive_ranks(torch.tensor([2, 6]), ["mrr@10"], reduce=False)["mrr@10"]
    assert ranks.dtype == torch.float64 and ranks.tolist() == [100 * (1 / 3), 100 * (1 / 7)]


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu (the 'faiss' extra) is not installed")
def test_faiss_flat_matches_exact_search():
    generator = torch.Generator().manual_seed(2)
    queries = torch.nn.functional.normalize(torch.randn(9, 12, generator=generator), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(200, 12, generator=generator), dim=1)
    scores, indices = search_top_k(queries, candidates, 5, backend="faiss")
    expected_scores, expected_indices = exact_top_k(queries, candidates, 5)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="Unknown search backend"):
        search_top_k(queries, candidates, 5, backend="annoy")


def test_evaluate_load_of_the_metric_module_offline(monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    metric = evaluate.load(GCL_RETRIEVAL_METRIC_PATH, cache_dir=str(tmp_path))
    values = metric.compute(predictions=[["x", "a", "y", "b"], ["c", "x"]], references=[["a", "b"], ["c"]],
                            metrics=["hit@1", "recall@2", "mrr@10"])
    assert values == pytest.approx({"hit@1": 50.0, "recall@2": 75.0, "mrr@10": 75.0})
    # The same numbers as the library function: one implementation.
    assert values == pytest.approx(metrics_from_rankings([["x", "a", "y", "b"], ["c", "x"]],
                                                         [{"a": 1, "b": 1}, {"c": 1}], ["hit@1", "recall@2", "mrr@10"]))


def _lookup() -> LookupEmbedder:
    e = torch.eye(4)
    return LookupEmbedder({"a.jpg": e[0], "b.jpg": 2 * e[1], "f1.jpg": e[2], "f2.jpg": 3 * e[3]},
                          {"red": e[1], "blue": e[3]})


def test_encode_items_mixed_modalities_and_videos():
    e = torch.eye(4)
    items = [RetrievalItem(text="red"), RetrievalItem(image="a.jpg"), RetrievalItem(text="red", image="b.jpg"),
             RetrievalItem(image=("f1.jpg", "f2.jpg")), RetrievalItem(text="blue", image=("f1.jpg", "f2.jpg"))]
    assert [item.modality for item in items] == ["t", "i", "it", "i", "it"]
    embeds = encode_items(_lookup(), items, batch_size=2, show_progress=False)
    torch.testing.assert_close(embeds[0], e[1])
    torch.testing.assert_close(embeds[1], e[0])
    torch.testing.assert_close(embeds[2], e[1])  # fused = 2 e1 + e1, normalised
    # A video: the mean of its frames' *normalised* embeddings (e2 and e3, not e2 and 3 e3).
    torch.testing.assert_close(embeds[3], (e[2] + e[3]) / math.sqrt(2))
    # Fused video: mean of unnormalised frame projections (0.5 e2 + 1.5 e3) plus the text (e3).
    torch.testing.assert_close(embeds[4], torch.nn.functional.normalize(0.5 * e[2] + 2.5 * e[3], dim=0))
    with pytest.raises(ValueError, match="neither text nor image"):
        RetrievalItem(source="file.jsonl:3").modality
    with pytest.raises(ValueError, match="empty list"):
        encode_items(_lookup(), [], show_progress=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_shape", "not_a_tensor", "nan"])
def test_damaged_embedding_cache_entry_is_recomputed(tmp_path, damage, caplog):
    cache = EmbeddingCache(tmp_path / "cache")
    items = [RetrievalItem(text="red"), RetrievalItem(image="a.jpg")]
    embedder = _lookup()
    first = encode_items(embedder, items, show_progress=False, cache=cache)
    (entry,) = (tmp_path / "cache").iterdir()
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:40])
    elif damage == "garbage":
        entry.write_bytes(b"not a torch file at all")
    elif damage == "wrong_shape":
        torch.save(torch.zeros(5, 4), entry)
    elif damage == "not_a_tensor":
        torch.save({"embeddings": first}, entry)
    else:
        torch.save(torch.full_like(first, float("nan")), entry)
    with caplog.at_level("WARNING"):
        again = encode_items(embedder, items, show_progress=False, cache=cache)
    assert torch.equal(again, first) and embedder.calls == {"image": 2, "text": 2}  # recomputed, not crashed
    assert f"Embedding cache entry {entry}" in caplog.text and "recomputing" in caplog.text
    assert torch.equal(torch.load(entry, weights_only=True), first)  # and the entry repaired


def test_embedding_cache_reuses_and_keys_on_model_and_data(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    items = [RetrievalItem(text="red"), RetrievalItem(image="a.jpg")]
    embedder = _lookup()
    first = encode_items(embedder, items, show_progress=False, cache=cache)
    assert embedder.calls == {"image": 1, "text": 1}
    files = sorted(os.listdir(tmp_path / "cache"))
    assert len(files) == 1 and files[0].endswith(".pt")  # no temporary file left behind
    again = encode_items(embedder, items, show_progress=False, cache=cache)
    assert embedder.calls == {"image": 1, "text": 1} and torch.equal(first, again)  # served from disk
    encode_items(embedder, items[:1], show_progress=False, cache=cache)  # other data: a new entry
    other_model = _lookup()
    other_model.text_vectors["red"] = torch.eye(4)[2]
    changed = encode_items(other_model, items, show_progress=False, cache=cache)  # other model: recomputed
    assert other_model.calls["text"] == 1 and not torch.equal(changed, first)
    assert len(os.listdir(tmp_path / "cache")) == 3


def test_modality_matrix_and_gap_by_hand():
    # Two pairs in 2-D: images e0, texts e1; fused = normalised sum. Every cell ranks its own pair... ties aside.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both captions identical: a tie, ranked pessimistically
    fused = torch.nn.functional.normalize(images + texts, dim=1)
    embeds = {"i": images, "t": texts, "it": fused}
    results = modality_matrix(embeds, ks=(1,))
    assert list(results) == ["t2i", "i2t", "t2it", "i2it", "it2t", "it2i"]
    assert results["t2i"]["hit@1"] == 50  # caption 2 (e0) prefers image 1 (e0) over its own image (e1)
    assert results["i2t"]["hit@1"] == 0  # image 1 ties its caption with caption 2; image 2 scores 0 with both
    assert modality_matrix(embeds, ks=(1,), ties="optimistic")["i2t"]["hit@1"] == 100  # the old convention
    gap = modality_gap(embeds)
    assert gap["centroid_distance"]["i-t"] == pytest.approx(math.dist([0.5, 0.5], [1.0, 0.0]))
    assert gap["matched_cosine"]["i-t"] == pytest.approx(0.5)  # cos 1 and cos 0
    assert gap["matched_cosine"]["t-it"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def test_comparison_table_rows_and_average():
    from trainer.evaluation.report import comparison_markdown

    def run(value):
        cells = ["t2i", "i2t", "t2it", "i2it", "it2t", "it2i"]
        gap = {"i-t": 0.5, "i-it": 0.25, "t-it": 0.125}
        return {"results": {cell: {"hit@1": value + k} for k, cell in enumerate(cells)},
                "modality_gap": {"centroid_distance": gap, "matched_cosine": gap}}

    lines = comparison_markdown({"pretrained": run(0.0), "gcl": run(10.0)}).splitlines()
    assert lines[0].startswith("| model | t → i | i → t | t → it | i → it | it → t | it → i | avg | dist i-t")
    assert lines[2] == "| pretrained | 0.0 | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 2.5 | 0.500 | 0.250 | 0.125 | 0.500 | 0.250 | 0.125 |"
    assert lines[3].startswith("| gcl | 10.0 | 11.0 | 12.0 | 13.0 | 14.0 | 15.0 | 12.5 |")
