# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The library's version: the one place it is written (setup.cfg reads it with `attr:`)."""

__version__ = "0.2.0"
