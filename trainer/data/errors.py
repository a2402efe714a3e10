# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The error raised for training data that cannot be used as given, and the readers' bad-row policy."""

import logging

# Bad-row messages kept for the end-of-loading warning (the count covers all of them).
EXAMPLES_SHOWN = 5


class DataError(ValueError):
    """Training data that cannot be used as given; the message names the file, row or column."""


class BadRows:
    r"""
    A reader's policy for rows it cannot use: raise the first one's `DataError`, or (`skip=True`, i.e.
    `--skip_bad_samples`) count every one and report the count, with a few examples, in one warning once the file is
    read to its end.

    Args:
        source (`str`): the file, named in the warning.
        skip (`bool`): skip and count instead of raising.
        logger (`logging.Logger`): where the warning goes.
    """

    def __init__(self, source: str, skip: bool, logger: logging.Logger):
        self.source, self.skip, self.logger = source, skip, logger
        self.count, self.examples = 0, []

    def add(self, error: DataError) -> None:
        if not self.skip:
            raise error
        self.count += 1
        if len(self.examples) < EXAMPLES_SHOWN:
            self.examples.append(str(error))

    def report(self) -> None:
        if self.count:
            self.logger.warning("%s: skipped %d bad row(s) (skip_bad_samples), e.g.:\n  %s", self.source, self.count,
                                "\n  ".join(self.examples))
