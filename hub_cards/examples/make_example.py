# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Render `hub_cards/examples/README.md`: the model card `gcl-push` publishes for the bundled run, with its images.

    gcl-train --model_name_or_path tiny-clip --output_dir /tmp/hub_run --max_steps 40   # random init (the committed card)
    gcl-eval --model /tmp/hub_run --suite matrix --holdout 64 --output_dir /tmp/hub_run/eval/matrix   # optional
    python -m hub_cards.examples.make_example /tmp/hub_run

The card is exactly the `README.md` of `gcl-push /tmp/hub_run --repo_id your-org/gcl-tiny-clip-demo --export_dir ...`;
the images it links (the held-out heatmap, gcl-eval's plots) are copied beside it at the same relative paths, so the
links resolve in the repository as they do on the Hub.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from hub_cards import prepare_export_dir

EXAMPLES_DIR = Path(__file__).resolve().parent
EXAMPLE_REPO_ID = "your-org/gcl-tiny-clip-demo"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    output_dir = argv[0] if argv else "/tmp/hub_run"
    with tempfile.TemporaryDirectory() as staging:
        export = prepare_export_dir(output_dir, Path(staging) / "repo", EXAMPLE_REPO_ID)
        for name in export.files:
            if name == "README.md" or name.endswith(".png"):
                target = EXAMPLES_DIR / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(export.path / name, target)
                print(f"wrote {target}")


if __name__ == "__main__":
    main()
