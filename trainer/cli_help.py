# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Readable command lines for gcl-train and gcl-eval: help that states each default once, and a misspelt flag answered
with the nearest real one."""

import argparse
import difflib
import re
import sys

# A help text that already names its default ("Default: the bundled sample", "(default sum = CLIP-SF)") gets no
# second "(default: X)" from argparse.
_STATES_DEFAULT = re.compile(r"\bdefault", re.IGNORECASE)


class OneDefaultHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`ArgumentDefaultsHelpFormatter` that appends `(default: X)` only when the help text does not already say what
    the default is, and never `(default: None)` (an unset optional says nothing)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "%(default)" in help_text or _STATES_DEFAULT.search(help_text):
            return help_text
        if action.default is None or action.default is argparse.SUPPRESS or action.default == []:
            return help_text
        if action.nargs == 0:  # a switch (store_true): absent means off
            return help_text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return help_text + " (default: %(default)s)"
        return help_text


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every `--long` option string of `parser`."""
    return [name for action in parser._actions for name in action.option_strings if name.startswith("--")]


def suggest_option(unknown: str, known: list[str]) -> str | None:
    """The known option nearest to `unknown` (`--learning_rat` -> `--learning_rate`), or `None` when none is close.
    Hyphens and underscores are treated alike (`--max-steps` -> `--max_steps`)."""
    flag = unknown.split("=", 1)[0]
    normalised = {}
    for name in sorted(known, key=lambda name: "-" in name[2:]):  # the underscore spelling when both exist
        normalised.setdefault(name.replace("-", "_"), name)
    key = "--" + flag.lstrip("-").replace("-", "_")
    if key in normalised:
        return normalised[key]
    matches = difflib.get_close_matches(key, list(normalised), n=1, cutoff=0.6)
    return normalised[matches[0]] if matches else None


def unknown_arguments_message(unknown: list[str], known: list[str]) -> str:
    """`unrecognized arguments: --learning_rat 0.1 (did you mean --learning_rate?)`."""
    hints = []
    for token in unknown:
        if token.startswith("-"):
            suggestion = suggest_option(token, known)
            if suggestion and suggestion not in hints:
                hints.append(suggestion)
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


class SuggestingArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose "unrecognized arguments" error names the nearest real flag, and whose help states
    each default once (`OneDefaultHelpFormatter` unless another formatter is given)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", OneDefaultHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(unknown_arguments_message(unknown, option_names(self)))
        return parsed

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(minimum: int):
    """An argparse `type`: an integer of at least `minimum`, refused in one line otherwise."""
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {number}")
        return number

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
