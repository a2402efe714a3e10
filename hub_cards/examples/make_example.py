# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Render `hub_cards/examples/README.md`, the model card of a quick bundled run, as `gcl-train --push_to_hub` would
publish it:

    gcl-train --max_steps 30 --output_dir /tmp/hub_run
    python -m hub_cards.examples.make_example /tmp/hub_run

The run trains the bundled tiny CLIP from random initialisation; the card says so. The training record
(`gcl_training.json`) is written from the same arguments `gcl-train` parsed, with its from-scratch defaults applied.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from hub_cards import prepare_export_dir, write_training_record
from trainer.cli import FROM_SCRATCH_DEFAULTS, parse_arguments
from trainer.data import load_image_caption_dataset

EXAMPLE_CARD = Path(__file__).resolve().parent / "README.md"
EXAMPLE_REPO_ID = "your-org/gcl-tiny-clip-demo"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    output_dir = argv[0] if argv else "/tmp/hub_run"
    _, data_args, training_args, explicit = parse_arguments(["--max_steps", "30", "--output_dir", output_dir])
    for key, value in FROM_SCRATCH_DEFAULTS.items():
        if key not in explicit:
            setattr(training_args, key, value)
    pairs = len(load_image_caption_dataset(data_args.train_data, data_args.image_column, data_args.caption_column))
    write_training_record(output_dir, training_args, base_model=None, dataset=data_args.train_data,
                          train_pairs=pairs - data_args.eval_holdout, holdout_pairs=data_args.eval_holdout)
    with tempfile.TemporaryDirectory() as staging:
        export = prepare_export_dir(output_dir, Path(staging) / "repo", EXAMPLE_REPO_ID)
        shutil.copyfile(export.path / "README.md", EXAMPLE_CARD)
    print(f"wrote {EXAMPLE_CARD}")


if __name__ == "__main__":
    main()
