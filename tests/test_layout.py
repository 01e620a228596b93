"""The tree is the architecture: the payload (what a Hub repo ships as remote code) stands alone, tooling lives in
subpackages and reaches the payload through its public names only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import modeling_ahn
from modeling_ahn.modeling_ahn import PAYLOAD_FILES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_ahn"
TOOLING = ("benchmarking", "cli", "default", "evaluation", "hub", "training")


def _python_files(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path):
    """``(module, names, level)`` of every import statement in a file (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            yield node.module or "", [a.name for a in node.names], node.level
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], 0


def test_the_top_level_is_exactly_the_payload():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert top == sorted(PAYLOAD_FILES)
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert subpackages == sorted(TOOLING)


def test_the_payload_imports_only_its_siblings():
    siblings = {name[:-3] for name in PAYLOAD_FILES}
    for name in PAYLOAD_FILES:
        for module, _, level in _imports(PACKAGE / name):
            if level:  # relative: a sibling, never a subpackage
                assert level == 1 and module in siblings, f"{name} imports .{module}"
            else:
                assert not module.startswith("modeling_ahn"), f"{name} imports {module}"


def test_no_private_name_crosses_a_file():
    """``from X import _name`` is refused everywhere: the package, the converter, the benchmarks and the tests."""
    offenders = []
    for path in _python_files("modeling_ahn", "conversion", "benchmarks", "lm_eval_tasks", "tests"):
        for module, names, _ in _imports(path):
            offenders += [f"{path.relative_to(ROOT)}: from {module} import {n}" for n in names
                          if n.startswith("_") and n != "__version__" and not module.startswith("__future__")]
    assert not offenders, offenders


def test_import_loads_the_payload_and_nothing_else():
    """``import modeling_ahn`` loads no tooling module and none of peft / lm_eval / matplotlib / datasets; accelerate
    only where transformers' own model code imports it anyway. Measured in fresh interpreters."""
    probe = (
        "import json, sys, time\n"
        "import transformers.modeling_utils, transformers.cache_utils, transformers.masking_utils\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter()\n"
        "import modeling_ahn\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps({'new': sorted(set(sys.modules) - before), 'seconds': dt}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                    cwd=ROOT).stdout.strip().splitlines()[-1])
    ours = sorted(m for m in out["new"] if m.startswith("modeling_ahn"))
    assert ours == ["modeling_ahn"] + sorted(f"modeling_ahn.{n[:-3]}" for n in PAYLOAD_FILES), ours
    heavy = sorted({m.split(".")[0] for m in out["new"]} & {"peft", "lm_eval", "matplotlib", "datasets", "accelerate",
                                                            "tqdm", "gguf"})
    assert not heavy, heavy
    print(f"import modeling_ahn after transformers: {out['seconds']:.3f} s")


def test_tooling_names_at_the_top_level_are_lazy():
    probe = ("import sys, modeling_ahn\n"
             "assert 'peft' not in sys.modules\n"
             "from modeling_ahn import AhnPeftConfig\n"
             "assert 'peft' in sys.modules and AhnPeftConfig.__module__ == 'modeling_ahn.hub.peft_adapter'\n"
             "try:\n"
             "    modeling_ahn.no_such_name\n"
             "except AttributeError as e:\n"
             "    assert 'no_such_name' in str(e)\n"
             "else:\n"
             "    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT)


def test_an_exported_repo_ships_exactly_the_payload(tmp_path):
    from .conftest import make_ahn

    model = make_ahn("llama", "gdn", 5, 2)
    model.config.base_model_name_or_path = None
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(PAYLOAD_FILES)
    for name in PAYLOAD_FILES:
        assert (tmp_path / name).read_bytes() == (PACKAGE / name).read_bytes()
    assert modeling_ahn.code_hash(tmp_path) == modeling_ahn.code_hash()
