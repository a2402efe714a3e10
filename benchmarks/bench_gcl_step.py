"""GCL vs CLIP: (a) a full training step of the bundled tiny CLIP at N = 64 and 256; (c) the 3N×3N GCL loss alone vs
the N×N CLIP loss. Measured side by side (interleaved repeats) in one run; prints ratios.

    python benchmarks/bench_gcl_step.py [--repeats 5]
"""

import argparse

import torch

from trainer.losses import CLIPLoss, GCLLoss, clip_loss, gcl_loss

from common import median_seconds, model_and_batch


def training_step(model, batch, loss_module, optimizer):
    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(**batch)
        loss, _ = loss_module(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale)
        loss.backward()
        optimizer.step()

    return step


def bench_steps(batch_sizes, repeats):
    print("(a) training step of the bundled tiny CLIP (fusion = sum), median seconds")
    print(f"{'N':>6} {'clip':>9} {'gcl':>9} {'gcl/clip':>9}")
    for n in batch_sizes:
        model, batch = model_and_batch(n)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        times = {"clip": [], "gcl": []}
        steps = {"clip": training_step(model, batch, CLIPLoss(), optimizer),
                 "gcl": training_step(model, batch, GCLLoss(), optimizer)}
        for name in steps:  # warm-up
            steps[name]()
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            for name, step in steps.items():
                times[name].append(median_seconds(step, repeats=1, warmup=0))
        clip_t, gcl_t = sorted(times["clip"])[repeats // 2], sorted(times["gcl"])[repeats // 2]
        print(f"{n:>6} {clip_t:9.4f} {gcl_t:9.4f} {gcl_t / clip_t:9.3f}")


def bench_losses(batch_sizes, dim, repeats):
    print(f"(c) loss alone, forward + backward on random embeddings (d = {dim}), median milliseconds")
    print(f"{'N':>6} {'clip NxN':>10} {'gcl 3Nx3N':>10} {'gcl/clip':>9}")
    for n in batch_sizes:
        generator = torch.Generator().manual_seed(0)
        embeds = [torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1).requires_grad_()
                  for _ in range(3)]

        def run_clip():
            clip_loss(embeds[0], embeds[1], 0.05)[0].backward()

        def run_gcl():
            gcl_loss(embeds[0], embeds[1], embeds[2], 0.05)[0].backward()

        clip_t = median_seconds(run_clip, repeats)
        gcl_t = median_seconds(run_gcl, repeats)
        print(f"{n:>6} {1e3 * clip_t:10.2f} {1e3 * gcl_t:10.2f} {gcl_t / clip_t:9.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step_batch_sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--loss_batch_sizes", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    bench_steps(args.step_batch_sizes, args.repeats)
    bench_losses(args.loss_batch_sizes, 512, args.repeats)
