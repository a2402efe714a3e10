"""The commands and snippets in README.md and docs/*.md cannot go stale.

Every ```python / ```bash block carries a marker on the line above it:

- `<!-- doctest: run -->`: run as written (bash with `-euo pipefail`, python as a script) in a fresh folder that
  holds the checkout's top-level folders, offline;
- `<!-- doctest: covered-by tests/test_x.py::test_name -->`: too slow for this file, run by the named test (which must
  exist);
- `<!-- doctest: skip <why> -->`: needs what a test cannot have (the Hub, a GPU, a real checkpoint, a benchmark's
  minutes). Still checked: python blocks compile, and every `--flag` given to a `gcl-*` command is one that
  command's `--help` lists.
"""

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
CHECKED_LANGUAGES = ("python", "bash")
MARKER = re.compile(r"^<!-- doctest: (run|covered-by|skip)\b\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)")
GCL_COMMAND = re.compile(r"^(gcl-[a-z0-9-]+)\b")
# The console scripts live beside the interpreter running the tests (a virtual environment need not be activated).
SCRIPTS_PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None
    argument: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start, body = index, []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        marker = MARKER.match(lines[start - 1].strip()) if start else None
        blocks.append(Block(path, start + 1, fence.group(1), "\n".join(body) + "\n",
                            marker.group(1) if marker else None, marker.group(2) if marker else ""))
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in read_blocks(path) if block.language in CHECKED_LANGUAGES]


def test_every_snippet_is_marked():
    unmarked = [block.name for block in ALL_BLOCKS if block.marker is None]
    assert not unmarked, f"code blocks without a doctest marker (see tests/test_docs.py): {unmarked}"
    assert any(block.marker == "run" for block in ALL_BLOCKS)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == "covered-by"], ids=lambda block: block.name)
def test_covering_test_exists(block):
    test_file, _, test_name = block.argument.partition("::")
    path = REPO_ROOT / test_file
    assert path.is_file(), f"{block.name}: {test_file} does not exist"
    assert re.search(rf"^def {re.escape(test_name)}\(", path.read_text(encoding="utf-8"), re.M), (
        f"{block.name}: {block.argument} does not exist")


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at `&&`, `;` and `|`."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.split("\n"):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # a quoted multi-line python -c: not a gcl-* command
            continue
        current = []
        for token in tokens:
            if token in ("&&", ";", "|", "||"):
                commands.append(current)
                current = []
            else:
                current.append(token.strip("()"))
        commands.append(current)
    return [command for command in commands if command]


@functools.lru_cache(maxsize=None)
def help_text(command: str) -> str:
    for flag in ("--help-all", "--help"):
        result = subprocess.run([command, flag], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, PATH=SCRIPTS_PATH))
        if result.returncode == 0:
            return result.stdout
    raise AssertionError(f"{command} --help failed: {result.stderr[-500:]}")


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker != "run"], ids=lambda block: block.name)
def test_skipped_snippets_still_check(block):
    if block.language == "python":
        compile(block.code, block.name, "exec")
        return
    for command in shell_commands(block.code):
        match = GCL_COMMAND.match(command[0])
        if not match:
            continue
        known = help_text(match.group(1))
        for token in command[1:]:
            if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", token):  # not a quoted value such as "--pools global"
                flag = token.split("=")[0]
                assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", known), (
                    f"{block.name}: {match.group(1)} has no flag {flag}")


def _workspace(tmp_path: Path) -> Path:
    """A folder that looks like the checkout's root to a command (its top-level folders linked in), so outputs of
    the snippet land in a temporary folder."""
    for entry in REPO_ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in ("build", "dist"):
            continue
        (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == "run"], ids=lambda block: block.name)
def test_run_snippet(block, tmp_path):
    workspace = _workspace(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO_ROOT), PATH=SCRIPTS_PATH)
    if block.language == "python":
        script = workspace / "snippet.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    result = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, f"{block.name}:\n{result.stderr[-3000:]}"
