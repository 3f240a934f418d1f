"""The README cannot rot: its blocks marked ```bash test and ```python test run, in order, in one
scratch folder, and a ```text block right after one of them must be what it prints (numbers that
vary from machine to machine, like errors and timings, are compared as placeholders). Running is
opt-in: every other block is shown only, so install commands (pip, make) never run from a test.
The tables name every rule and reason code."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from onnx_fc2conv import REASONS, RULE_NAMES
from onnx_fc2conv.stride import STRIDE_REASONS

README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>\w*)(?P<test> test)?\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
# Floats (1.16e-06, 0.0001, 3.2572): they depend on the CPU's arithmetic, so only their place is checked.
FLOAT = re.compile(r"\d+\.\d+(e[-+]\d+)?|\d+e[-+]\d+")


def blocks():
    """(lang, code, expected output or None) for every block that runs, in README order."""
    found = [(m["lang"], _dedent(m["body"], m["indent"]), m.end(), m.start(), bool(m["test"]))
             for m in FENCE.finditer(README)]
    runnable = []
    for i, (lang, body, end, _, marked) in enumerate(found):
        if not marked:
            continue
        assert lang in ("bash", "python"), f"only bash and python blocks can be marked test, not {lang!r}"
        following = found[i + 1] if i + 1 < len(found) else None
        expected = None
        if following and following[0] == "text" and not README[end:following[3]].strip():
            expected = following[1]
        runnable.append((lang, body, expected))
    return runnable


def _dedent(body: str, indent: str) -> str:
    return "".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines(True))


def normalise(text: str) -> list[str]:
    return [FLOAT.sub("<num>", line.rstrip()) for line in text.strip().splitlines() if not line.startswith("  time:")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder where ``models/`` is the repository's, so the README's relative paths work."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "models").symlink_to(ROOT / "models")
    return folder


BLOCKS = blocks()


def test_readme_has_runnable_blocks_with_outputs():
    assert sum(lang == "bash" for lang, _, _ in BLOCKS) >= 4
    assert sum(expected is not None for _, _, expected in BLOCKS) >= 5


@pytest.mark.e2e
@pytest.mark.parametrize("lang, code, expected", BLOCKS, ids=[f"block{i}-{b[0]}" for i, b in enumerate(BLOCKS)])
def test_readme_block_runs_and_prints_what_the_readme_shows(workdir, monkeypatch, lang, code, expected):
    if lang == "bash":
        # The README's commands, run with this checkout's package and interpreter.
        prelude = f'onnx-fc2conv() {{ "{sys.executable}" -m onnx_fc2conv "$@"; }}\npython() {{ "{sys.executable}" "$@"; }}\n'
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(["bash", "-ec", prelude + code], cwd=workdir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        printed = done.stdout
    else:
        monkeypatch.chdir(workdir)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
        printed = out.getvalue()
    if expected is not None:
        assert normalise(printed) == normalise(expected)


def _table_first_column(heading: str) -> list[str]:
    """The first column of the first table under ``## heading``, below its header and rule."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("\n| "):].split("\n\n", 1)[0]
    return [line.split("|")[1].strip() for line in table.strip().splitlines()][2:]


def test_reason_code_table_lists_every_reason_code():
    codes = [cell.strip("`") for cell in _table_first_column("Reason codes")]
    assert sorted(codes) == sorted([*REASONS, *STRIDE_REASONS])


def test_supported_patterns_table_links_every_rule_module():
    cells = _table_first_column("Supported patterns")
    links = dict(re.fullmatch(r"\[`(\w+)`\]\((.+)\)", cell).groups() for cell in cells)
    assert list(links) == list(RULE_NAMES)
    assert all((ROOT / path).is_file() for path in links.values())


def test_contents_line_links_every_section_in_order():
    contents = next(line for line in README.splitlines() if line.startswith("Contents: "))
    linked = re.findall(r"\[([^]]+)\]\(#([\w-]+)\)", contents)
    sections = re.findall(r"(?m)^## (.+)$", README)
    assert [title for title, _ in linked] == sections, "add new README sections to the Contents line"
    assert all(anchor == re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-") for title, anchor in linked)
