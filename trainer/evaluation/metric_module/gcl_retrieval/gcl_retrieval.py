# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""GCL retrieval metrics as an `evaluate` module: `hit@k`, `recall@k`, `mrr@k`, `ndcg@k` of ranked candidate ids.

    import evaluate
    from trainer.evaluation import GCL_RETRIEVAL_METRIC_PATH

    metric = evaluate.load(GCL_RETRIEVAL_METRIC_PATH)  # a local folder: works offline
    metric.compute(predictions=[["x", "a", "y", "b"]], references=[["a", "b"]], metrics=["hit@1", "recall@2"])
    # {'hit@1': 0.0, 'recall@2': 50.0}

The formulas live in `trainer.evaluation.metrics` (one implementation for every evaluator); this file only adapts
them to `evaluate`'s `predictions` / `references` interface.
"""

import datasets
import evaluate

from trainer.evaluation.metrics import metrics_from_rankings

_DESCRIPTION = """
Ranking metrics for retrieval, named as in the GCL spec: `hit@k` (1 if any relevant candidate is in the top k; what
UniIR / M-BEIR call Recall@k and MMEB calls Precision@1 at k=1), `recall@k` (fraction of the relevant candidates in
the top k), `mrr@k` and `ndcg@k` (binary gains, log2 discount). Values are percentages averaged over queries.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`): per query, the retrieved candidate ids, best first (at least as deep as the
        largest k you ask for, or the whole pool).
    references (`list[list[str]]`): per query, the ids of its relevant candidates (at least one).
    metrics (`list[str]`, *optional*): e.g. `["hit@1", "hit@5", "recall@10", "ndcg@10", "mrr@10"]` (the default).
Returns:
    `{metric: value}` in percent.
Example:
    >>> metric = evaluate.load(GCL_RETRIEVAL_METRIC_PATH)
    >>> metric.compute(predictions=[["x", "a", "y", "b"]], references=[["a", "b"]], metrics=["mrr@10"])
    {'mrr@10': 50.0}
"""

_CITATION = """
@inproceedings{lee2025gcl,
  title={Generalized Contrastive Learning for Universal Multimodal Retrieval},
  author={Lee, Jungsoo and Cho, Janghoon and Park, Hyojin and Hayat, Munawar and Hwang, Kyuwoong and Porikli, Fatih and Choi, Sungha},
  booktitle={NeurIPS},
  year={2025}
}
"""

DEFAULT_METRICS = ("hit@1", "hit@5", "hit@10", "recall@10", "ndcg@10", "mrr@10")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GclRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, metrics=DEFAULT_METRICS):
        qrels = [{doc: 1 for doc in relevant} for relevant in references]
        return metrics_from_rankings(predictions, qrels, list(metrics))
