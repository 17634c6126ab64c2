"""The demo corpus: tens of MB of English and Python text that every Python installation already carries, so
`nanoforge pipeline --preset demo` runs anywhere without a download.

Documents, in the order they are taken until the size target is reached:
1. pydoc's documentation topics (the language reference pages behind `help("assert")`),
2. API documentation of the standard library: every module's, class's and function's docstring with its
   signature. Pure-Python modules are read with `ast` from their source files instead of being imported, so
   nothing runs (no `antigravity` browser, no Tk window) and no runtime value (an address, a path of this
   machine) can leak in; compiled modules, which have no source, are imported and documented from their
   `__doc__` strings,
3. the standard library's source files themselves (the library first, its test suite last).
The selection is then shuffled with a fixed seed so that the validation shard (the last one) looks like the
rest. Every listing is sorted, so the output is byte-identical on every run with the same Python installation.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import json
import math
import os
import pkgutil
import random
import re
import shutil
import sys
import sysconfig
import textwrap
import tokenize
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nanoforge.data.shards import write_shards

DEFAULT_SIZE_MB = 30.0
DEMO_SHARDS = 10  # the last one is validation: about a tenth of the corpus
MAX_DOC_CHARS = 20_000  # longer documents are split at blank lines
SHUFFLE_SEED = 20240101
MANIFEST_FILE = "corpus.json"

# Compiled modules that are test fixtures or that touch the terminal or a display when imported.
_SKIP_COMPILED = re.compile(r"^(_test.*|_xx.*|xx.*|_ctypes_test|_tkinter|readline|_curses.*)$")
_TEST_PARTS = {"test", "tests", "idle_test"}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass
class DemoCorpusSummary:
    documents: int
    bytes: int
    shards: int
    out_dir: Path
    complete: bool  # False when the installation has less text than asked for


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# -- 1. pydoc topics ----------------------------------------------------------------------------------------


def pydoc_topic_documents() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield text


# -- 2. API documentation -----------------------------------------------------------------------------------


def _indent(text: str, level: int) -> str:
    return textwrap.indent(text, "    " * level)


def _render_python_defs(body: list[ast.stmt], level: int) -> list[str]:
    parts = []
    for node in body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        name = node.name
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            continue
        doc = ast.get_docstring(node, clean=True)
        if isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            header = f"class {name}({bases}):" if bases else f"class {name}:"
            inner = _render_python_defs(node.body, level + 1)
            if not doc and not inner:
                continue
            block = _indent(header, level)
            if doc:
                block += "\n" + _indent(doc, level + 1)
            parts.append("\n\n".join([block, *inner]))
        elif doc:
            keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
            returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
            header = f"{keyword} {name}({ast.unparse(node.args)}){returns}:"
            parts.append(_indent(header, level) + "\n" + _indent(doc, level + 1))
    return parts


def render_python_module(name: str, source: str) -> str | None:
    """A module's docstrings with their signatures, read from source without importing it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return None
    doc = ast.get_docstring(tree, clean=True)
    defs = _render_python_defs(tree.body, 0)
    if not doc and not defs:
        return None
    head = f"Module {name}\n" + "=" * (len(name) + 7)
    return "\n\n".join([head] + ([doc] if doc else []) + defs)


def _builtin_signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""  # the docstring's first line carries the signature instead


def render_compiled_module(name: str, module) -> str | None:
    """A compiled module's docstrings; only members defined by the module itself, so nothing repeats."""
    parts = [f"Module {name}\n" + "=" * (len(name) + 7)]
    if inspect.getdoc(module):
        parts.append(inspect.getdoc(module))
    for attr in sorted(vars(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr)
        if getattr(obj, "__module__", None) != name:
            continue
        doc = inspect.getdoc(obj) if (inspect.isclass(obj) or callable(obj)) else None
        if not doc:
            continue
        if inspect.isclass(obj):
            block = f"class {attr}:\n" + _indent(doc, 1)
            for member in sorted(vars(obj)):
                if member.startswith("_"):
                    continue
                member_doc = inspect.getdoc(vars(obj)[member])
                if member_doc and member_doc != doc:
                    block += "\n\n" + _indent(f"{member}{_builtin_signature(vars(obj)[member])}\n", 1)
                    block += _indent(member_doc, 2)
            parts.append(block)
        else:
            parts.append(f"{attr}{_builtin_signature(obj)}\n" + _indent(doc, 1))
    if len(parts) == 1:
        return None
    return _ADDRESS.sub("", "\n\n".join(parts))


def _is_test_path(relative: Path) -> bool:
    return any(part in _TEST_PARTS or part.endswith("_test") for part in relative.parts)


def python_module_files(root: Path) -> list[tuple[str, Path]]:
    """(dotted name, source path) of every pure-Python stdlib module, found with pkgutil, sorted by name."""
    found: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: str) -> None:
        for info in sorted(pkgutil.iter_modules([str(directory)]), key=lambda m: m.name):
            if not info.name.isidentifier():
                continue
            path = directory / info.name / "__init__.py" if info.ispkg else directory / f"{info.name}.py"
            if not path.is_file():
                continue
            found.append((prefix + info.name, path))
            if info.ispkg:
                walk(directory / info.name, f"{prefix}{info.name}.")

    walk(root, "")
    return sorted(found)


def compiled_module_names(root: Path) -> list[str]:
    names = set(sys.builtin_module_names)
    dynload = root / "lib-dynload"
    if dynload.is_dir():
        names.update(info.name for info in pkgutil.iter_modules([str(dynload)]))
    return sorted(n for n in names if not _SKIP_COMPILED.match(n))


def _import_quietly(name: str):
    """Import a compiled module, swallowing anything it prints and any failure (missing system library)."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:
        return None


def api_documents(root: Path) -> Iterator[str]:
    modules: list[tuple[str, object]] = []
    for name in compiled_module_names(root):
        modules.append((name, None))
    for name, path in python_module_files(root):
        if not _is_test_path(path.relative_to(root)):
            modules.append((name, path))
    for name, path in sorted(modules, key=lambda item: item[0]):
        if path is None:
            module = _import_quietly(name)
            text = render_compiled_module(name, module) if module is not None else None
        else:
            source = read_source(path)
            text = render_python_module(name, source) if source is not None else None
        if text:
            yield text


# -- 3. source files ----------------------------------------------------------------------------------------


def read_source(path: Path) -> str | None:
    """A source file decoded the way Python would (coding cookie), or None if it is not valid text."""
    try:
        raw = path.read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        text = raw.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return None
    if "\x00" in text:
        return None
    return text.replace("\r\n", "\n")


def source_documents(root: Path) -> Iterator[str]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in names:
            if name.endswith(".py"):
                relative = (Path(directory) / name).relative_to(root)
                files.append((_is_test_path(relative), relative.as_posix()))
    for _, relative in sorted(files):
        text = read_source(root / relative)
        if text and text.strip():
            yield f"# {relative}\n{text}"


# -- assembling ---------------------------------------------------------------------------------------------


def split_long(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Split at blank lines (lines if a paragraph is too long) into pieces of at most ~max_chars."""
    if len(text) <= max_chars:
        return [text]
    pieces, current = [], ""
    for paragraph in re.split(r"(?<=\n)\n", text):
        while len(paragraph) > max_chars:
            cut = paragraph.rfind("\n", 0, max_chars) + 1 or max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(paragraph[:cut])
            paragraph = paragraph[cut:]
        if current and len(current) + len(paragraph) + 1 > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current}\n{paragraph}" if current else paragraph
    if current:
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def all_documents(root: Path | None = None) -> Iterator[str]:
    root = root or stdlib_dir()
    for source in (pydoc_topic_documents(), api_documents(root), source_documents(root)):
        for text in source:
            yield from split_long(text)


def collect_documents(size_bytes: int, progress: bool = True) -> tuple[list[str], bool]:
    """Documents in order until `size_bytes` of UTF-8 text; the flag says whether the target was reached."""
    from tqdm import tqdm

    docs, total = [], 0
    with tqdm(total=size_bytes, unit="B", unit_scale=True, desc="collecting text", disable=not progress) as bar:
        for text in all_documents():
            docs.append(text)
            size = len(text.encode("utf-8"))
            total += size
            bar.update(min(size, size_bytes - bar.n))
            if total >= size_bytes:
                return docs, True
    return docs, False


def build_demo_corpus(out_dir: Path, size_mb: float = DEFAULT_SIZE_MB, progress: bool = True) -> DemoCorpusSummary:
    """Write the demo corpus to `out_dir` (replacing what is there): built beside it, then renamed into place."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    docs, complete = collect_documents(int(size_mb * 1_000_000), progress=progress)
    random.Random(SHUFFLE_SEED).shuffle(docs)
    total_bytes = sum(len(d.encode("utf-8")) for d in docs)

    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shards = write_shards(
            tqdm(docs, desc="writing shards", unit="doc", disable=not progress),
            tmp,
            docs_per_shard=max(1, math.ceil(len(docs) / DEMO_SHARDS)),
        )
        manifest = {
            "name": "demo",
            "source": "Python standard library docstrings, pydoc topics and source files",
            "python": sys.version.split()[0],
            "size_mb_requested": size_mb,
            "documents": len(docs),
            "bytes": total_bytes,
            "shards": [p.name for p in shards],
            "validation_shard": shards[-1].name if shards else None,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DemoCorpusSummary(len(docs), total_bytes, len(shards), out_dir, complete)
