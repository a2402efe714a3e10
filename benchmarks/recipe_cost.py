"""What one epoch of LCS-558K costs for each paper recipe: training FLOPs per pair COUNTED (torch.utils.flop_counter)
on the real architectures (randomly initialised from their configurations, no download), and the GPU time that
implies at an ASSUMED utilisation. An estimate for planning, not a measurement of a GPU run.

    cd benchmarks && python recipe_cost.py [--gpus 8 --peak_tflops 312 --utilisation 0.35]

Per pair and step the recipe runs: one forward without graph (GradCache's first pass, when mini_batch_size is set),
then forward + backward with activation checkpointing (which recomputes the forward once more). The fused embedding of
a CLIP-SF model is a sum (free); VISTA runs its encoder three times (image, text, fused).
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

from modeling_gcl import GCLConfig, GCLModel

LCS_558K_PAIRS = 558_128
CAPTION_TOKENS = 32  # LCS-558K's BLIP captions are short; tokens incl. [CLS]/[SEP] or BOS/EOS


def score_fusion_clip(text: tuple[int, int, int], vision: tuple[int, int, int], patch_size: int,
                      projection_dim: int) -> GCLModel:
    """A CLIP with towers of (width, layers, heads), MLPs 4x wide, 224-px images."""
    def tower(width, layers, heads):
        return dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                    projection_dim=projection_dim)

    vision_config = dict(tower(*vision), patch_size=patch_size, image_size=224)
    config = CLIPConfig(text_config=tower(*text), vision_config=vision_config, projection_dim=projection_dim)
    return GCLModel.from_backbone(CLIPModel(config))


def clip_l14() -> GCLModel:
    """OpenAI CLIP ViT-L/14 (224 px): the sizes of openai/clip-vit-large-patch14's config.json."""
    return score_fusion_clip(text=(768, 12, 12), vision=(1024, 24, 16), patch_size=14, projection_dim=768)


def tinyclip_8m16() -> GCLModel:
    """TinyCLIP ViT-8M/16 + Text-3M: width 256 towers (10 vision layers, 3 text layers), 16-px patches, as we read
    the release's configuration; compare with the downloaded config.json before trusting the number."""
    return score_fusion_clip(text=(256, 3, 4), vision=(256, 10, 4), patch_size=16, projection_dim=512)


def vista_base() -> GCLModel:
    """Visualized-BGE base: GCLConfig's VISTA defaults are Visualized_base_en_v1.5's sizes (bge-base + EVA02-B/16)."""
    return GCLModel(GCLConfig(backbone_type="vista"))


RECIPES = {  # name: (build, uses GradCache, activation checkpointing)
    "VISTA (base)": (vista_base, True, True),
    "CLIP-SF (ViT-L/14)": (clip_l14, True, True),
    "TinyCLIP-SF (ViT-8M/16)": (tinyclip_8m16, False, False),
}


def training_flops_per_pair(model: GCLModel, grad_cache: bool, checkpointing: bool, pairs: int = 2) -> float:
    image_size = 224
    pixel_values = torch.randn(pairs, 3, image_size, image_size)
    input_ids = torch.randint(5, 1000, (pairs, CAPTION_TOKENS))
    attention_mask = torch.ones_like(input_ids)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        forward = counter.get_total_flops()
        (out.image_embeds.sum() + out.text_embeds.sum() + out.fused_embeds.sum()).backward()
    forward_and_backward = counter.get_total_flops()
    total = forward_and_backward + forward * (int(grad_cache) + int(checkpointing))
    return total / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--peak_tflops", type=float, default=312.0, help="Per GPU (A100 bf16 dense: 312).")
    parser.add_argument("--utilisation", type=float, default=0.35, help="Assumed fraction of the peak reached.")
    args = parser.parse_args()
    torch.manual_seed(0)
    rate = args.gpus * args.peak_tflops * 1e12 * args.utilisation
    print(f"One epoch of LCS-558K ({LCS_558K_PAIRS:,} pairs, captions of {CAPTION_TOKENS} tokens); time at "
          f"{args.utilisation:.0%} of {args.gpus} x {args.peak_tflops:g} TFLOP/s (assumed, not measured):")
    print(f"{'recipe':<26}{'TFLOP / pair':>14}{'PFLOP / epoch':>16}{'minutes':>9}{'minutes on 1 GPU':>18}")
    for name, (build, grad_cache, checkpointing) in RECIPES.items():
        flops = training_flops_per_pair(build().train(), grad_cache, checkpointing)
        epoch = flops * LCS_558K_PAIRS
        minutes = epoch / rate / 60
        print(f"{name:<26}{flops / 1e12:>14.3f}{epoch / 1e15:>16.1f}{minutes:>9.1f}{minutes * args.gpus:>18.1f}")


if __name__ == "__main__":
    main()
