"""Run transformers' own ModelTesterMixin / TrainingTesterMixin against a tiny AHN model (issue 24).

A script, not a test module (the repo's pytest does not collect it: no ``test_`` prefix). It downloads the
transformers sdist matching the installed version from PyPI into a cache dir, extracts only ``tests/*.py``
(third-party code is never committed), writes stubs for the two mixins the sdist lacks (``tests/exporters``,
``tests/generation``), generates a test module there and runs pytest in that dir.

    .venv/bin/python tests/transformers_mixins/run_mixins.py [--sdist PATH] [extra pytest args]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

VERSION = transformers.__version__
CACHE = Path(os.environ.get("AHN_TF_TESTS_CACHE", Path.home() / ".cache/modeling_ahn/transformers-tests")) / VERSION

STUBS = {
    "tests/__init__.py": "",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": "class ExportTesterMixin:  # stub: not in the sdist\n    pass\n",
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py": "class GenerationTesterMixin:  # stub: not in the sdist\n    pass\n",
    "pytest.ini": "[pytest]\naddopts =\nfilterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n",
}

TEST_MODULE = '''
import unittest

import torch
from transformers import Qwen2Config

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

from modeling_ahn import AhnConfig, AhnForCausalLM, AhnModel

# The mixins pick labels and skip head-less classes by transformers' static name tables, which list only
# transformers' own models (a remote-code model is registered with the Auto classes instead, as importing
# modeling_ahn does): enter AHN in them the way an in-library model would be.
MODEL_MAPPING_NAMES.setdefault("ahn", "AhnModel")
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("ahn", "AhnForCausalLM")

from .generation.test_utils import GenerationTesterMixin
from .test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask
from .test_training_mixin import TrainingTesterMixin


class AhnModelTester:
    def __init__(self, parent, batch_size=2, seq_length=16, prefill_chunk_size=None):
        self.parent = parent
        self.batch_size, self.seq_length = batch_size, seq_length
        self.vocab_size, self.hidden_size, self.num_hidden_layers = 320, 64, 2
        self.num_attention_heads, self.intermediate_size = 4, 96
        self.is_training = True
        self.prefill_chunk_size = prefill_chunk_size
        self.causal_lm_class, self.base_model_class = AhnForCausalLM, AhnModel

    def get_config(self):
        base = Qwen2Config(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                           num_attention_heads=self.num_attention_heads, num_key_value_heads=2,
                           max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        kw = {} if self.prefill_chunk_size is None else {"prefill_chunk_size": self.prefill_chunk_size}
        return AhnConfig(base_config=base, ahn_type="gdn", sliding_window=8, num_sinks=2, **kw)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 3) + 3
        attention_mask = torch.ones_like(input_ids)
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class _Common(ModelTesterMixin, GenerationTesterMixin, TrainingTesterMixin):
    all_model_classes = (AhnModel, AhnForCausalLM)
    test_resize_embeddings = True
    test_torch_exportable = False
    training_overfit_steps = 100  # CPU


class AhnConfigOnlyTest(_Common, unittest.TestCase):
    """A model built from an AhnConfig alone (random base from config.base_config); 16-token prompts."""

    def setUp(self):
        self._model_tester = AhnModelTester(self)

    @property
    def model_tester(self):
        return self._model_tester


class AhnChunkedPrefillTest(_Common, unittest.TestCase):
    """prefill_chunk_size=8 with 20-token prompts: cached forwards take the chunked-prefill path."""

    def setUp(self):
        self._model_tester = AhnModelTester(self, seq_length=20, prefill_chunk_size=8)

    @property
    def model_tester(self):
        return self._model_tester
'''


def fetch_tests(sdist: str | None) -> Path:
    if (CACHE / "tests/test_modeling_common.py").exists():
        return CACHE
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", f"transformers=={VERSION}", "--no-binary",
                            ":all:", "--no-deps", "--no-build-isolation", "-d", tmp], check=True)
            sdist = str(next(Path(tmp).glob("transformers-*.tar.gz")))
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                parts = m.name.split("/")
                if m.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    m.name = "tests/" + parts[2]
                    tar.extract(m, CACHE, filter="data")
    return CACHE


def ensure_deps() -> Path:
    deps = CACHE / "deps"
    try:
        import parameterized  # noqa: F401
    except ImportError:
        if not (deps / "parameterized").exists():
            subprocess.run([sys.executable, "-m", "pip", "install", "--target", str(deps), "parameterized"], check=True)
    return deps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdist", help="a local transformers sdist tarball instead of downloading from PyPI")
    args, extra = ap.parse_known_args()
    root = fetch_tests(args.sdist)
    deps = ensure_deps()
    for rel, text in STUBS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "tests/test_ahn_mixins.py").write_text(TEST_MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(deps), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--rootdir", str(root),
           "-c", str(root / "pytest.ini"), "tests/test_ahn_mixins.py", *extra]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
