"""The tiled (memory-linear) and the lean untiled GCL / CLIP / sigmoid GCL losses against autograd through the full
logit matrix: loss, gradients with respect to every embedding and the temperature, on uneven tiles and masks on tile
edges, with every option, under GradCache, in 2 processes, and in `gcl-train`."""

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modeling_gcl import ALL_LOSS_PAIRS, MODALITIES, GCLModel
from trainer import GCLCollator, GCLTrainingArguments
from trainer.losses import (
    CachedLoss, CLIPLoss, GCLLoss, GCLSigmoidLoss, build_loss, clip_loss, gcl_loss, gcl_loss_from_candidates,
    gcl_sigmoid_loss, gcl_sigmoid_loss_from_candidates,
)
from trainer.losses.tiled import AUTO_TILE_CANDIDATES, DEFAULT_TILE_SIZE, resolve_tile_size

from .conftest import make_small_clip
from .test_losses import literal_gcl

TILE_SIZES = [1, 2, 3, 4, 5, 8, 1000]  # B = 7: tiles that split the batch unevenly, and one larger than it


def reference_gcl_loss(anchors, candidates, offset, temperature, pairs=ALL_LOSS_PAIRS, weights=None,
                       exclude_other_positive=False, modalities=MODALITIES):
    """GCL through autograd on the whole 3B × 3M logit matrix (log_softmax and lookups: the implementation this
    project had before the tiled kernel)."""
    weights = [1.0] * len(pairs) if weights is None else weights
    kept = [MODALITIES.index(m) for m in modalities]
    anchors, candidates = [anchors[m] for m in kept], [candidates[m] for m in kept]
    n, m = anchors[0].shape[0], candidates[0].shape[0]
    logits = torch.cat(anchors) @ torch.cat(candidates).T / temperature
    sample = torch.arange(n, device=logits.device)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    for a in range(len(kept)):
        mask[a * n + sample, a * m + offset + sample] = True
    logits = logits.masked_fill(mask, float("-inf"))
    terms = {}
    for name in pairs:
        a, b = (modalities.index(x) for x in name.split("2"))
        rows = logits[a * n + sample]
        if exclude_other_positive:
            other_mask = torch.zeros_like(rows, dtype=torch.bool)
            for c in set(range(len(kept))) - {a, b}:
                other_mask[sample, c * m + offset + sample] = True
            rows = rows.masked_fill(other_mask, float("-inf"))
        terms[name] = -(rows.log_softmax(dim=1)[sample, b * m + offset + sample]).mean()
    return sum(w * terms[p] for p, w in zip(pairs, weights)) / sum(weights), terms


def random_columns(n=7, d=6, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    e_i = torch.randn(n, d, generator=generator, dtype=dtype)
    e_t = torch.randn(n, d, generator=generator, dtype=dtype)
    e_it = e_i + e_t + 0.5 * torch.randn(n, d, generator=generator, dtype=dtype)
    return [F.normalize(x, dim=-1).requires_grad_() for x in (e_i, e_t, e_it)]


def loss_and_grads(function, columns, temperature, *extra):
    leaves = [c.detach().clone().requires_grad_() for c in columns]
    tau = torch.tensor(temperature, dtype=columns[0].dtype, requires_grad=True)
    extra = [torch.tensor(x, dtype=columns[0].dtype, requires_grad=True) for x in extra]
    loss = function(leaves, tau, *extra)
    loss.backward()
    return loss.detach(), [x.grad if x.grad is not None else torch.zeros_like(x) for x in (*leaves, tau, *extra)]


def assert_same(result, expected, tolerance):
    (loss, grads), (expected_loss, expected_grads) = result, expected
    torch.testing.assert_close(loss, expected_loss, atol=tolerance, rtol=tolerance)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=tolerance, rtol=tolerance)


OPTIONS = {
    "eq2": {},
    "exclude_other_positive": {"exclude_other_positive": True},
    "pairs_and_weights": {"pairs": ["i2t", "t2it", "it2i"], "weights": [1.0, 2.0, 3.0]},
    "pairs_weights_exclude": {"pairs": ["i2it", "it2t"], "weights": [0.5, 2.0], "exclude_other_positive": True},
    "modalities_i_t": {"pairs": ["i2t", "t2i"], "modalities": ["i", "t"]},
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("tile_size", TILE_SIZES + [None])
def test_gcl_float64_matches_full_matrix_autograd(option, tile_size):
    kwargs = OPTIONS[option]
    columns = random_columns(seed=len(option))
    expected = loss_and_grads(lambda c, tau: reference_gcl_loss(c, c, 0, tau, **kwargs)[0], columns, 0.05)
    result = loss_and_grads(lambda c, tau: gcl_loss(*c, tau, tile_size=tile_size, **kwargs)[0], columns, 0.05)
    assert_same(result, expected, 1e-12 if tile_size is None else 1e-10)


@pytest.mark.parametrize("tile_size", [None, 3, 4])
def test_gcl_float32_matches_full_matrix_autograd(tile_size):
    columns = random_columns(n=13, d=16, seed=3, dtype=torch.float32)
    for kwargs in OPTIONS.values():
        expected = loss_and_grads(lambda c, tau: reference_gcl_loss(c, c, 0, tau, **kwargs)[0], columns, 0.02)
        result = loss_and_grads(lambda c, tau: gcl_loss(*c, tau, tile_size=tile_size, **kwargs)[0], columns, 0.02)
        assert_same(result, expected, 1e-5)


def test_terms_match_the_literal_loop_of_eq2():
    columns = random_columns(n=5, seed=9)
    e = dict(zip(MODALITIES, (c.detach() for c in columns)))
    expected_loss, expected_terms = literal_gcl(e, 0.07)
    for tile_size in (None, 2):
        loss, terms = gcl_loss(*columns, 0.07, tile_size=tile_size)
        assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
        assert not any(t.requires_grad for t in terms.values())
        for name, value in expected_terms.items():
            assert terms[f"loss_{name}"].item() == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("offset", [0, 2, 6])
@pytest.mark.parametrize("tile_size", [None, 2, 3, 5])
def test_local_anchors_against_larger_candidates_put_the_masks_on_tile_edges(offset, tile_size):
    """Cross-device shape in one process: 4 local anchors at `offset` in 10 candidates, so the anchor diagonal and
    both positives fall across tile boundaries."""
    candidates = random_columns(n=10, seed=11)

    def run(reference):
        def function(columns, tau):
            anchors = [c[offset: offset + 4] for c in columns]
            if reference:
                return reference_gcl_loss(anchors, columns, offset, tau, exclude_other_positive=True)[0]
            return gcl_loss_from_candidates(anchors, columns, offset, tau, exclude_other_positive=True,
                                            tile_size=tile_size)[0]
        return function

    assert_same(loss_and_grads(run(False), candidates, 0.1), loss_and_grads(run(True), candidates, 0.1), 1e-10)


@pytest.mark.parametrize("tile_size", [1, 3, 4, 100])
def test_clip_tiled_matches_cross_entropy(tile_size):
    columns = random_columns(n=9, seed=5)
    expected = loss_and_grads(lambda c, tau: clip_loss(c[0], c[1], tau)[0], columns, 0.05)
    result = loss_and_grads(lambda c, tau: clip_loss(c[0], c[1], tau, tile_size=tile_size)[0], columns, 0.05)
    assert_same(result, expected, 1e-10)
    _, terms = clip_loss(columns[0], columns[1], 0.05, tile_size=tile_size)
    _, expected_terms = clip_loss(columns[0], columns[1], 0.05)
    for key, value in expected_terms.items():
        assert terms[key].item() == pytest.approx(value.item(), abs=1e-12)


@pytest.mark.parametrize("pairs", [None, ["i2t", "it2t"]])
@pytest.mark.parametrize("tile_size", [1, 3, 4, 100])
def test_sigmoid_tiled_matches_untiled_with_bias_and_temperature_gradients(pairs, tile_size):
    columns = random_columns(n=7, seed=6)
    expected = loss_and_grads(lambda c, tau, b: gcl_sigmoid_loss(*c, tau, b, pairs=pairs)[0], columns, 0.1, -4.0)
    result = loss_and_grads(lambda c, tau, b: gcl_sigmoid_loss(*c, tau, b, pairs=pairs, tile_size=tile_size)[0],
                            columns, 0.1, -4.0)
    assert_same(result, expected, 1e-10)
    anchors = [c[2:5] for c in columns]  # local anchors against larger candidates
    expected = gcl_sigmoid_loss_from_candidates(anchors, columns, 2, 0.1, -4.0, pairs=pairs)
    tiled = gcl_sigmoid_loss_from_candidates(anchors, columns, 2, 0.1, -4.0, pairs=pairs, tile_size=tile_size)
    assert tiled[0].item() == pytest.approx(expected[0].item(), abs=1e-12)
    assert tiled[1].keys() == expected[1].keys()
    for key in expected[1]:
        assert tiled[1][key].item() == pytest.approx(expected[1][key].item(), abs=1e-12)


def test_half_precision_and_autocast_compute_in_float32():
    columns = [c.detach().float() for c in random_columns(n=8, d=16, seed=8)]
    reference = gcl_loss(*columns, 0.02)[0]
    half = [c.to(torch.bfloat16) for c in columns]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = gcl_loss(*half, 0.02, tile_size=3)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_second_backward_gives_the_same_gradients():
    """The untiled path turns its kept buffer into gradients in place; a retained graph's second backward recomputes
    the tiles and must give the same result (gradcheck relies on it)."""
    columns = random_columns(seed=12)
    loss, _ = gcl_loss(*columns, 0.05)
    first = torch.autograd.grad(loss, columns, retain_graph=True)
    second = torch.autograd.grad(loss, columns)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    inputs = [c.detach()[:3, :4].clone().requires_grad_() for c in columns]
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, it, tau: gcl_loss(i, t, it, tau, tile_size=2)[0], (*inputs, tau))


def test_tile_size_validation_and_automatic_choice():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="loss_tile_size must be a positive integer"):
            GCLLoss(tile_size=bad)
        with pytest.raises(ValueError, match="loss_tile_size must be a positive integer"):
            build_loss("clip", tile_size=bad)
    with pytest.raises(ValueError, match="loss_tile_size must be a positive integer"):
        GCLTrainingArguments(output_dir="unused", loss_tile_size=0)
    assert GCLTrainingArguments(output_dir="unused").loss_tile_size is None
    assert resolve_tile_size(None, AUTO_TILE_CANDIDATES) is None
    assert resolve_tile_size(None, AUTO_TILE_CANDIDATES + 1) == DEFAULT_TILE_SIZE
    assert resolve_tile_size(64, 10) == 64  # a tile larger than the batch is one tile
    for name in ("gcl", "clip", "gcl_sigmoid"):
        assert build_loss(name, tile_size=5).tile_size == 5


def test_cached_loss_with_tiles_equals_the_untiled_uncached_step(processor, sample_dataset):
    batch = GCLCollator(processor)([sample_dataset[i] for i in range(10)])
    for tiled, plain in ((GCLLoss(tile_size=3), GCLLoss()), (CLIPLoss(tile_size=4), CLIPLoss()),
                         (GCLSigmoidLoss(tile_size=3), GCLSigmoidLoss())):
        reference = GCLModel.from_backbone(make_small_clip(), sigmoid_bias_init=-5.0).train()
        out = reference(**batch)
        extra = {"logit_bias": out.logit_bias} if getattr(plain, "uses_logit_bias", False) else {}
        loss, _ = plain(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale, **extra)
        loss.backward()
        model = GCLModel.from_backbone(make_small_clip(), sigmoid_bias_init=-5.0).train()
        cached, _, _ = CachedLoss(tiled, mini_batch_size=4)(model, batch)
        cached.backward()
        assert cached.item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-5)
        expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads.keys() == expected.keys() and grads
        for name in grads:
            torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
        assert model.encoder.logit_scale.grad is not None


# ---- 2 processes (gloo, CPU): local anchors, gathered candidates, the same spawn pattern as test_distributed.py ----

LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
CONNECT_DEADLINE_S, RUN_DEADLINE_S = 90, 200
ROWS = {0: (0, 4), 1: (4, 8)}  # even batches; the uneven case drops row 7 from rank 1
UNEVEN = {0: (0, 4), 1: (4, 7)}
DISTRIBUTED_LOSSES = {
    "gcl": lambda: GCLLoss(tile_size=3, exclude_other_positive=True, pairs=["i2t", "t2it", "it2i"], weights=[1, 2, 3]),
    "clip": lambda: CLIPLoss(tile_size=3),
    "gcl_sigmoid": lambda: GCLSigmoidLoss(tile_size=3),
}


def _distributed_worker(rank: int, store: str, out_path: str):
    import faulthandler

    faulthandler.dump_traceback_later(RUN_DEADLINE_S - 20, exit=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=CONNECT_DEADLINE_S))
    try:
        dist.barrier()
        Path(f"{out_path}.connected{rank}").touch()
        columns = [c.detach() for c in random_columns(n=8, seed=21)]
        results = {}
        for layout, rows in (("even", ROWS), ("uneven", UNEVEN)):
            start, end = rows[rank]
            for name, make_loss in DISTRIBUTED_LOSSES.items():
                local = [c[start:end].clone().requires_grad_() for c in columns]
                tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
                extra = {"logit_bias": torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)} \
                    if name == "gcl_sigmoid" else {}
                loss, _ = make_loss()(*local, tau, **extra)
                loss.backward()
                results[(layout, name, rank)] = (loss.detach(), [c.grad for c in local], tau.grad,
                                                 extra["logit_bias"].grad if extra else None)
        try:  # a process whose model has another embedding size: a clear error on every process, no hang
            GCLLoss(tile_size=3)(*[torch.randn(4, 6 if rank == 0 else 5, dtype=torch.float64) for _ in range(3)], 0.1)
        except ValueError as error:
            results[("mismatch", rank)] = str(error)
        gathered = [None] * 2
        dist.all_gather_object(gathered, results)
        if rank == 0:
            merged = {}
            for part in gathered:
                merged.update(part)
            torch.save(merged, out_path)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)  # interpreter shutdown of a spawned child can hang (see test_distributed.py)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiled_ddp")
    out_path = folder / "results.pt"
    previous = {key: os.environ.get(key) for key in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    try:
        context = mp.spawn(_distributed_worker, args=(str(folder / "store"), str(out_path)), nprocs=2, join=False)
    finally:
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    start = time.monotonic()
    while not context.join(timeout=1):
        connected = all(Path(f"{out_path}.connected{rank}").exists() for rank in range(2))
        elapsed = time.monotonic() - start
        if (not connected and elapsed > CONNECT_DEADLINE_S + 30) or elapsed > RUN_DEADLINE_S:
            for process in context.processes:
                process.kill()
            if not connected and not os.environ.get("CI"):
                pytest.skip(f"2 gloo processes could not connect within {CONNECT_DEADLINE_S} s on this machine")
            pytest.fail(f"2-process run did not finish within {RUN_DEADLINE_S} s (connected: {connected})")
    return torch.load(out_path, weights_only=True)


@pytest.mark.parametrize("layout", ["even", "uneven"])
@pytest.mark.parametrize("name", list(DISTRIBUTED_LOSSES))
def test_two_processes_equal_one_process(two_process_results, layout, name):
    """Each process's tiled loss over its anchors against both processes' candidates, and the gradients summed over
    both processes' losses (what the gather's backward delivers), equal the untiled loss in one process."""
    rows = ROWS if layout == "even" else UNEVEN
    total_rows = rows[1][1]
    columns = [c.detach()[:total_rows].clone().requires_grad_() for c in random_columns(n=8, seed=21)]
    tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    total = 0
    for rank, (start, end) in rows.items():
        anchors = [c[start:end] for c in columns]
        if name == "gcl":
            expected, _ = gcl_loss_from_candidates(anchors, columns, start, tau, pairs=["i2t", "t2it", "it2i"],
                                                   weights=[1, 2, 3], exclude_other_positive=True)
        elif name == "clip":
            i2t = F.cross_entropy(anchors[0] @ columns[1].T / tau, torch.arange(start, end))
            t2i = F.cross_entropy(anchors[1] @ columns[0].T / tau, torch.arange(start, end))
            expected = (i2t + t2i) / 2
        else:
            expected, _ = gcl_sigmoid_loss_from_candidates(anchors, columns, start, tau, bias)
        loss, _, _, _ = two_process_results[(layout, name, rank)]
        assert loss.item() == pytest.approx(expected.item(), abs=1e-10)
        total = total + expected
    total.backward()
    for rank, (start, end) in rows.items():
        _, grads, _, _ = two_process_results[(layout, name, rank)]
        for grad, column in zip(grads, columns):
            if column.grad is None:  # CLIP leaves the fused column unused
                assert grad is None or not grad.any()
                continue
            torch.testing.assert_close(grad, column.grad[start:end], atol=1e-10, rtol=1e-10)
    tau_grad = sum(two_process_results[(layout, name, rank)][2] for rank in rows)
    torch.testing.assert_close(tau_grad, tau.grad, atol=1e-10, rtol=1e-10)
    if name == "gcl_sigmoid":
        bias_grad = sum(two_process_results[(layout, name, rank)][3] for rank in rows)
        torch.testing.assert_close(bias_grad, bias.grad, atol=1e-10, rtol=1e-10)


def test_mismatched_embedding_sizes_across_processes_raise_on_every_process(two_process_results):
    for rank in range(2):
        message = two_process_results[("mismatch", rank)]
        assert message == ("Embedding sizes differ across processes (rank 0: [6, 6, 6], rank 1: [5, 5, 5]); every "
                           "process must run the same model.")


# ---- gcl-train --loss_tile_size: the same loss curve ----

def _train_losses(model_dir: Path, output_dir: Path, extra: list[str]) -> list[float]:
    command = [sys.executable, "-m", "trainer.cli", "--model_name_or_path", str(model_dir), "--max_steps", "5",
               "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1",
               "--eval_holdout", "0", "--save_strategy", "steps", "--save_steps", "5", "--disable_tqdm", "true",
               "--report_to", "none", "--use_cpu", "true", "--dataloader_num_workers", "0", "--seed", "0",
               "--output_dir", str(output_dir), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((output_dir / "checkpoint-5" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_gcl_train_with_loss_tile_size_gives_the_same_loss_curve(tmp_path, processor):
    model_dir = tmp_path / "clip"
    make_small_clip().save_pretrained(model_dir)
    processor.image_processor.save_pretrained(model_dir)
    processor.tokenizer.save_pretrained(model_dir)
    plain = _train_losses(model_dir, tmp_path / "plain", [])
    tiled = _train_losses(model_dir, tmp_path / "tiled", ["--loss_tile_size", "5", "--mini_batch_size", "3"])
    assert len(plain) == len(tiled) == 5
    assert plain[0] != plain[-1]  # it trains
    for a, b in zip(plain, tiled):
        assert a == pytest.approx(b, abs=1e-5)
    bad = subprocess.run([sys.executable, "-m", "trainer.cli", "--loss_tile_size", "0", "--output_dir",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert bad.returncode != 0
    assert "loss_tile_size must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr
