# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The error raised for training data that cannot be used as given."""


class DataError(ValueError):
    """Training data that cannot be used as given; the message names the file, row or column."""
