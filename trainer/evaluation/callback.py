# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Run a retrieval evaluator periodically during training and log its numbers through the Trainer.

    evaluator = ModalityMatrixEvaluator(heldout_pairs, show_progress=False)
    add_retrieval_evaluation(trainer, evaluator, eval_steps=100)      # logs eval_matrix/t2i/hit@1, ...
    trainer.train()
"""

import logging

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def flatten_metrics(output: dict) -> dict[str, float]:
    """An evaluator's output -> `{"row/metric": value}` (plus `gap/...` for the modality matrix)."""
    flat = {f"{row}/{metric}": float(value) for row, values in output["results"].items()
            for metric, value in values.items()}
    for kind, values in output.get("modality_gap", {}).items():
        flat.update({f"gap/{kind}/{pair}": float(value) for pair, value in values.items()})
    for key, value in output.get("average", {}).items():
        flat[f"average/{key}"] = float(value)
    return flat


class RetrievalEvaluationCallback(TrainerCallback):
    r"""
    Every `eval_steps` optimizer steps (and at the end of training), runs `evaluator(model, processor)` on the main
    process and logs the flattened metrics with `prefix` (default `eval_{evaluator.name}/`) through `trainer.log`, so
    every reporting integration (TensorBoard, W&B, `log_history`) sees them.

    Args:
        trainer (`Trainer`): the trainer to log through (its model is unwrapped from DDP before evaluation).
        evaluator: a callable `(model, processor) -> {"results": ...}` such as [`ModalityMatrixEvaluator`].
        eval_steps (`int`, *optional*): default `trainer.args.eval_steps`, else `trainer.args.logging_steps`.
        prefix (`str`, *optional*): the metric-name prefix.
        at_train_end (`bool`): also evaluate after the last step (unless it was just evaluated).
        processor (*optional*): the processor to encode with (default `trainer.processing_class`).
    """

    def __init__(self, trainer, evaluator, eval_steps: int | None = None, prefix: str | None = None,
                 at_train_end: bool = True, processor=None):
        self.trainer = trainer
        self.processor = processor if processor is not None else trainer.processing_class
        if self.processor is None:
            raise ValueError("RetrievalEvaluationCallback needs a processor: pass processor= or processing_class= "
                             "to the trainer.")
        self.evaluator = evaluator
        steps = eval_steps or getattr(trainer.args, "eval_steps", None) or trainer.args.logging_steps
        if not steps or steps < 1:
            raise ValueError(f"eval_steps must be a positive number of steps, got {steps!r}.")
        self.eval_steps = int(steps)
        self.prefix = prefix if prefix is not None else f"eval_{getattr(evaluator, 'name', 'retrieval')}/"
        self.at_train_end = at_train_end
        self.history: list[tuple[int, dict[str, float]]] = []
        self._last_step = None

    def evaluate(self, step: int) -> dict[str, float]:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        output = self.evaluator(model, self.processor)
        metrics = {f"{self.prefix}{key}": value for key, value in flatten_metrics(output).items()}
        self.history.append((step, metrics))
        self._last_step = step
        self.trainer.log(metrics)
        return metrics

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps == 0 and state.is_world_process_zero:
            self.evaluate(state.global_step)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.at_train_end and state.is_world_process_zero and self._last_step != state.global_step:
            self.evaluate(state.global_step)
        return control


def add_retrieval_evaluation(trainer, evaluator, eval_steps: int | None = None, prefix: str | None = None,
                             at_train_end: bool = True, processor=None) -> RetrievalEvaluationCallback:
    """Attach a [`RetrievalEvaluationCallback`] to `trainer` and return it."""
    callback = RetrievalEvaluationCallback(trainer, evaluator, eval_steps, prefix, at_train_end, processor)
    trainer.add_callback(callback)
    return callback
