"""Cross-device negatives: 2 processes (gloo, CPU) under DDP equal one process on the concatenated batch."""

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_gcl import GCLModel, GCLProcessor
from trainer import GCLCollator
from trainer.data import BUNDLED_TINY_CLIP_DIR, load_image_caption_dataset
from trainer.losses import CachedLoss, CLIPLoss, GCLLoss, GCLSigmoidLoss, gcl_loss_from_candidates

from .conftest import make_small_clip

WORLD_SIZE, PER_DEVICE = 2, 4
MODES = {
    "gcl": lambda: GCLLoss(gather_across_devices=True),
    "gcl_subset": lambda: GCLLoss(pairs=["i2t", "t2it", "it2i"], weights=[1, 2, 3], exclude_other_positive=True,
                                  gather_across_devices=True),
    "clip": lambda: CLIPLoss(gather_across_devices=True),
    "gcl_i_t_only": lambda: GCLLoss(pairs=["i2t", "t2i"], modalities=["i", "t"], gather_across_devices=True),
    "gcl_sigmoid": lambda: GCLSigmoidLoss(gather_across_devices=True),
}
# The sigmoid loss trains the model's logit bias; the other losses run on a model without one (DDP with
# find_unused_parameters=False refuses a trainable parameter that gets no gradient).
MODEL_KWARGS = {"gcl_sigmoid": {"sigmoid_bias_init": -5.0}}
# Uneven batches (a process whose collator skipped a bad sample): rank 0 keeps 4 rows, rank 1 only 3.
UNEVEN_ROWS = {0: (0, 4), 1: (4, 7)}


def full_batch() -> dict:
    processor = GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))
    processor.image_processor.size = {"shortest_edge": 32}
    processor.image_processor.crop_size = {"height": 32, "width": 32}
    dataset = load_image_caption_dataset()
    return GCLCollator(processor)([dataset[i] for i in range(WORLD_SIZE * PER_DEVICE)])


def loss_and_grads(model, batch, make_loss, cached: bool):
    model.zero_grad(set_to_none=True)
    if cached:
        loss, _, _ = CachedLoss(make_loss(), mini_batch_size=3)(model, batch)
    else:
        out = model(**batch)
        loss_fn = make_loss()
        extra = {"logit_bias": out.logit_bias} if getattr(loss_fn, "uses_logit_bias", False) else {}
        loss, _ = loss_fn(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale, **extra)
    loss.backward()
    module = model.module if hasattr(model, "module") else model
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


# gloo connects its processes through the interface that the host name resolves to; in a sandbox without a network
# that address can be unreachable and the connection then waits forever. Loopback is always there.
LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
CONNECT_DEADLINE_S, RUN_DEADLINE_S = 90, 240  # under pytest-timeout's 300 s


def _worker(rank: int, store: str, out_path: str, batch_path: str):
    import faulthandler

    # Should the group ever hang, print every thread's stack (to the test's output) before the parent kills it.
    faulthandler.dump_traceback_later(RUN_DEADLINE_S - 20, exit=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=CONNECT_DEADLINE_S))
    try:
        dist.barrier()
        Path(f"{out_path}.connected{rank}").touch()
        # The batch comes from the parent, so the workers do no data loading (and share no dataset cache).
        batch = {k: v[rank * PER_DEVICE : (rank + 1) * PER_DEVICE]
                 for k, v in torch.load(batch_path, weights_only=True).items()}
        results = {}
        for mode, make_loss in MODES.items():
            model = GCLModel.from_backbone(make_small_clip(seed=0), **MODEL_KWARGS.get(mode, {})).train()
            ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False,
                                                            find_unused_parameters=False)
            for cached in (False, True):
                loss, grads = loss_and_grads(ddp, batch, make_loss, cached)
                dist.all_reduce(loss)  # the concatenated batch's loss is the mean of the local ones
                results[(mode, cached)] = (loss / WORLD_SIZE, grads)
        # Uneven batch sizes: each process's loss over its own anchors against all 7 rows.
        full = torch.load(batch_path, weights_only=True)
        start, end = UNEVEN_ROWS[rank]
        model = GCLModel.from_backbone(make_small_clip(seed=0)).eval()
        with torch.no_grad():
            out = model(**{k: v[start:end] for k, v in full.items()})
            for name in ("gcl", "clip"):
                results[("uneven", name, rank)] = MODES[name]()(out.image_embeds, out.text_embeds, out.fused_embeds,
                                                                1 / out.logit_scale)[0]
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, {k: v for k, v in results.items() if k[0] == "uneven"})
        for part in gathered:
            results.update(part)
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()
    # Interpreter shutdown of a spawned child sometimes never returns (seen ~1 run in 3 here, after the group was
    # destroyed and the results written); the work is done, so leave without it.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    out_path = folder / "results.pt"
    previous = {key: os.environ.get(key) for key in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)  # the spawned workers inherit it
    try:
        torch.save(full_batch(), folder / "batch.pt")
        context = mp.spawn(_worker, args=(str(folder / "store"), str(out_path), str(folder / "batch.pt")),
                           nprocs=WORLD_SIZE, join=False)
    finally:
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    start = time.monotonic()
    # Never hang the suite: a group that cannot even connect is the environment (skip, saying so); one that connects
    # and then does not finish is a deadlock in our collective code (fail).
    while not context.join(timeout=1):
        connected = all(Path(f"{out_path}.connected{rank}").exists() for rank in range(WORLD_SIZE))
        elapsed = time.monotonic() - start
        if (not connected and elapsed > CONNECT_DEADLINE_S + 30) or elapsed > RUN_DEADLINE_S:
            for process in context.processes:
                process.kill()
            if not connected and not os.environ.get("CI"):  # CI must run the check, so there it fails
                pytest.skip(f"2 gloo processes could not connect within {CONNECT_DEADLINE_S} s on this machine "
                            f"({LOOPBACK_ENV or 'no loopback interface found'})")
            pytest.fail(f"2-process DDP run did not finish within {RUN_DEADLINE_S} s (connected: {connected})")
    return torch.load(out_path, weights_only=True)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_two_processes_equal_one_process_on_the_concatenated_batch(two_process_results, mode, cached):
    model = GCLModel.from_backbone(make_small_clip(seed=0), **MODEL_KWARGS.get(mode, {})).train()
    expected_loss, expected_grads = loss_and_grads(model, full_batch(), MODES[mode], cached=False)
    loss, grads = two_process_results[(mode, cached)]
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_uneven_batches_across_processes_gather_every_real_row(two_process_results):
    """A process with fewer rows (skipped samples) neither hangs the gather nor adds padding as candidates: each
    process's loss equals its anchors scored against the 7 real rows in one process."""
    model = GCLModel.from_backbone(make_small_clip(seed=0)).eval()
    with torch.no_grad():
        out = model(**{k: v[:7] for k, v in full_batch().items()})
    columns = (out.image_embeds, out.text_embeds, out.fused_embeds)
    for rank, (start, end) in UNEVEN_ROWS.items():
        anchors = tuple(column[start:end] for column in columns)
        expected, _ = gcl_loss_from_candidates(anchors, columns, start, 1 / out.logit_scale)
        assert two_process_results[("uneven", "gcl", rank)].item() == pytest.approx(expected.item(), abs=1e-5)
    # CLIP: rank 1's 3 anchors against all 7 of the other modality.
    i2t = torch.nn.functional.cross_entropy(out.image_embeds[4:7] @ out.text_embeds.T * out.logit_scale,
                                            torch.arange(4, 7))
    t2i = torch.nn.functional.cross_entropy(out.text_embeds[4:7] @ out.image_embeds.T * out.logit_scale,
                                            torch.arange(4, 7))
    assert two_process_results[("uneven", "clip", 1)].item() == pytest.approx(((i2t + t2i) / 2).item(), abs=1e-5)


def test_without_distributed_gathering_is_a_no_op(sample_batch):
    model = GCLModel.from_backbone(make_small_clip()).eval()
    with torch.no_grad():
        out = model(**sample_batch)
    gathered, _ = GCLLoss(gather_across_devices=True)(out.image_embeds, out.text_embeds, out.fused_embeds, 0.05)
    local, _ = GCLLoss(gather_across_devices=False)(out.image_embeds, out.text_embeds, out.fused_embeds, 0.05)
    assert gathered.item() == local.item()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_gcl_train_runs_under_torchrun_with_two_processes(tmp_path):
    """GCLTrainer under real multi-process training (torchrun, gloo on CPU): gathered negatives, GradCache, drop_last
    and the DDP defaults together; the saved model loads."""
    import json
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "trainer.cli",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--mini_batch_size", "4", "--use_cpu", "true",
        "--eval_holdout", "0", "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm", "true",
        "--logging_steps", "1", "--report_to", "none",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **LOOPBACK_ENV}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "retrieval_holdout.json").read_text())
    assert record["train"]["train_loss"] > 0
    assert "'loss_it2t'" in result.stdout or "loss_it2t" in result.stdout
    assert isinstance(GCLModel.from_pretrained(out), GCLModel)
