# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-push`: publish a `gcl-train` output directory to the Hugging Face Hub with its model card and remote code.

    gcl-push clip-gcl --repo_id my-org/clip-gcl                      # model, processor, remote code, card
    gcl-push clip-gcl-lora --repo_id my-org/clip-gcl-lora --lora adapter
    gcl-push clip-gcl --repo_id my-org/clip-gcl --export_dir preview  # write what would be pushed, push nothing
    python -m hub_cards.cli ...                                       # the same without the console script
"""

import argparse
import sys

from .card import DEFAULT_PIPELINE_TAG, PIPELINE_TAGS
from .export import LORA_MODES, RemoteCodeError, prepare_export_dir
from .publish import HubPublishError, push_to_hub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcl-push",
        description="Push a gcl-train output directory (model or LoRA adapter, processor, remote code and a model "
        "card) to the Hugging Face Hub. A CLIP-backbone model is a native CLIP checkpoint (CLIPModel / the "
        "zero-shot pipeline load it with transformers alone); AutoModel.from_pretrained(repo, trust_remote_code=True) "
        "gives the full GCL model of any backbone without this library.",
        allow_abbrev=False,
    )
    parser.add_argument("output_dir", help="A gcl-train output directory.")
    parser.add_argument("--repo_id", required=True, help="The Hub repository, org/name (created if absent).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or the login).")
    parser.add_argument("--lora", "--push_lora_as", dest="lora", choices=LORA_MODES, default=None,
                        help="LoRA runs: push the adapter or the merged model (default: merged when saved).")
    parser.add_argument("--base_model", default=None,
                        help="Hub id the model was fine-tuned from (default: as recorded in gcl_training.json).")
    parser.add_argument("--dataset", dest="datasets", action="append", default=None,
                        help="Hub dataset id trained on (repeatable; default: as recorded).")
    parser.add_argument("--license", default=None, help="Licence id for the card (apache-2.0, mit, ...).")
    parser.add_argument("--eval_metrics", default=None, help="An evaluation metrics.json to report in the card.")
    parser.add_argument("--pipeline_tag", choices=PIPELINE_TAGS, default=None,
                        help=f"The model's Hub task (default: {DEFAULT_PIPELINE_TAG} with its widget for a native CLIP "
                        "checkpoint, feature-extraction without a widget for models only their own code runs).")
    parser.add_argument("--library_url", default=None, help="Where gcl-hf is published, linked from the card.")
    parser.add_argument("--commit_message", default=None, help="Commit message on the Hub.")
    parser.add_argument("--export_dir", default=None,
                        help="Write exactly what would be pushed to this directory and push nothing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `gcl-push`; returns the exit status."""
    args = build_parser().parse_args(argv)
    card_options = {"base_model": args.base_model, "datasets": args.datasets, "license": args.license,
                    "eval_metrics": args.eval_metrics, "pipeline_tag": args.pipeline_tag,
                    "library_url": args.library_url}
    try:
        if args.export_dir:
            export = prepare_export_dir(args.output_dir, args.export_dir, args.repo_id, lora=args.lora, **card_options)
            print(f"gcl-push: wrote {len(export.files)} files to {export.path} (nothing pushed):")
            for name in export.files:
                print(f"  {name}")
            return 0
        url = push_to_hub(args.output_dir, args.repo_id, token=args.token, private=args.private or None, lora=args.lora,
                          commit_message=args.commit_message, **card_options)
    except (HubPublishError, RemoteCodeError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"gcl-push: error: {error}", file=sys.stderr)
        return 1
    print(f"gcl-push: pushed {args.output_dir} to https://huggingface.co/{args.repo_id} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
