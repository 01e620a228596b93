"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python block under '## {title}'"
    return blocks[0]


def test_python_example_runs_as_written(capsys):
    code = _section_code("Python example")
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "torch.Size([1, 320])" in out
    assert "300 64" in out
    assert "['model.layers.0.ahn.fn.A_log', 'model.layers.0.ahn.fn.D']" in out
