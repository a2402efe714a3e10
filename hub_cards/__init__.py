# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Model cards and Hub publishing for GCL models (filled by the Hub publishing work; see the README)."""
