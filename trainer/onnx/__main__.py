# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`python -m trainer.onnx`: the same as `gcl-export-onnx`."""

import sys

from .cli import main

sys.exit(main())
