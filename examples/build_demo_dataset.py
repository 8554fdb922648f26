"""Builds the bundled demo dataset, `pdl_trl/data/pydoc_qa_{train,test}.jsonl`, from CPython's own documentation.

Every row is a conversational prompt-completion pair: a question about a standard-library function, class or method
and, as the answer, the first paragraph of its docstring.
That text is part of CPython and ships under the PSF License Version 2 (see `pdl_trl/data/DATA.md`).

The output depends only on the CPython version that runs this script (docstrings change between versions), not on
the machine, the environment or hash seeds: modules, members and templates are walked in sorted order and the
held-out split is chosen by a SHA-256 of each row's name. The committed files were built with CPython 3.11.7:

    python examples/build_demo_dataset.py            # rewrites pdl_trl/data/*.jsonl and prints the counts
    python examples/build_demo_dataset.py --check    # exits 1 if the committed files differ from a rebuild
"""

import argparse
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import tempfile
from pathlib import Path


DATA_DIR = Path(__file__).resolve().parent.parent / "pdl_trl" / "data"
TRAIN_FILE = "pydoc_qa_train.jsonl"
TEST_FILE = "pydoc_qa_test.jsonl"
# One row in 16 is held out: about 100 of ~1,500
TEST_BUCKETS = 16

# Pure-Python or always-built modules present on every CPython 3.11+ platform, so that a rebuild elsewhere finds
# the same members. Platform-specific ones (posix, winreg, curses, tkinter) and deprecated ones are left out.
MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "binascii", "bisect", "builtins", "bz2", "calendar",
    "cmath", "codecs", "collections", "colorsys", "configparser", "contextlib", "contextvars", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "email.utils", "enum", "filecmp", "fnmatch", "fractions",
    "functools", "gc", "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.parser", "http.client", "http.cookies", "imaplib", "importlib", "inspect", "io", "ipaddress", "itertools",
    "json", "keyword", "linecache", "locale", "logging", "lzma", "mimetypes", "math", "numbers", "operator",
    "pathlib", "pickle", "pkgutil", "platform", "plistlib", "pprint", "queue", "quopri", "random", "re", "reprlib",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics",
    "string", "struct", "subprocess", "sys", "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "time",
    "timeit", "tokenize", "tomllib", "traceback", "types", "typing", "unicodedata", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zlib", "zoneinfo",
]  # fmt: skip

# Varied phrasings, so that the model does not learn one question shape; picked per row by hash, not at random
TEMPLATES = {
    "function": [
        "What does `{name}` do in Python?",
        "In Python, what is `{name}` used for?",
        "Explain the Python standard-library function `{name}`.",
        "Briefly, what does calling `{name}` do?",
    ],
    "class": [
        "What is `{name}` in Python?",
        "Describe the Python class `{name}`.",
        "In the Python standard library, what does `{name}` represent?",
    ],
    "method": [
        "What does the method `{name}` do in Python?",
        "In Python, what happens when you call `{name}`?",
        "Explain `{name}` from the Python standard library.",
    ],
}

SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")
# Docstrings that describe a mechanism rather than a behaviour make poor answers
SKIP_WORDS = ("deprecated", "internal", "undocumented", "xxx", "todo", "private", "helper", "see ", "i.e.", "e.g.")


def _sentences(text: str) -> int:
    return len(re.findall(r"[.!?](\s|$)", text))


def first_paragraph(doc: str) -> str | None:
    """The docstring's first prose paragraph, on one line, or None when it does not make a 1-3 sentence answer."""
    paragraphs = [p.strip() for p in inspect.cleandoc(doc).split("\n\n") if p.strip()]
    # C functions start with their signature as a paragraph of its own (or as the first line of the first one)
    while paragraphs and all(SIGNATURE.match(line.strip()) for line in paragraphs[0].splitlines()):
        paragraphs.pop(0)
    if not paragraphs:
        return None
    lines = [line for line in paragraphs[0].splitlines() if not SIGNATURE.match(line.strip())]
    text = " ".join(" ".join(lines).split())
    text = text.replace("``", "`")
    if not (40 <= len(text) <= 360 and text.endswith(".") and 1 <= _sentences(text) <= 3):
        return None
    if text[0].islower() or ">>>" in text or "::" in text or any(word in text.lower() for word in SKIP_WORDS):
        return None
    return text


def _own_members(owner, module_name: str):
    for name, obj in sorted(inspect.getmembers(owner), key=lambda item: item[0]):
        if name.startswith("_"):
            continue
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and obj.__module__ == module_name:
            yield name, obj


def docstring_rows() -> list[dict]:
    rows = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in _own_members(module, module.__name__):
            kind = "class" if inspect.isclass(obj) else "function"
            qualname = f"{module_name}.{name}" if module_name != "builtins" else name
            rows.append({"name": qualname, "kind": kind, "doc": inspect.getdoc(obj)})
            if kind == "class":
                for method_name, method in sorted(vars(obj).items()):
                    if method_name.startswith("_") or not inspect.isroutine(method):
                        continue
                    # `vars` holds the function itself, so inherited docstrings are not repeated per subclass
                    rows.append({"name": f"{qualname}.{method_name}", "kind": "method", "doc": method.__doc__})
    return rows


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def build() -> tuple[list[dict], list[dict]]:
    train, test, seen_answers, seen_names = [], [], set(), set()
    for row in docstring_rows():
        if row["doc"] is None or row["name"] in seen_names:
            continue
        answer = first_paragraph(row["doc"])
        # Shared docstrings (aliases, overloads) would give one answer to several questions
        if answer is None or answer in seen_answers:
            continue
        seen_answers.add(answer)
        seen_names.add(row["name"])
        templates = TEMPLATES[row["kind"]]
        digest = _digest(row["name"])
        example = {
            "prompt": [{"role": "user", "content": templates[digest % len(templates)].format(name=row["name"])}],
            "completion": [{"role": "assistant", "content": answer}],
        }
        (test if (digest >> 32) % TEST_BUCKETS == 0 else train).append(example)
    return train, test


def _dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# Not pdl_trl.atomic: this script imports nothing beyond the standard library, since importing torch or
# transformers changes what some stdlib modules expose and so the rows built (`--check` catches it)
def _write_atomically(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp creates the file private (0600): give it the mode a plain write would
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare a rebuild with the committed files")
    parser.add_argument("--output-dir", type=Path, default=DATA_DIR, help=f"default: {DATA_DIR}")
    args = parser.parse_args(argv)

    train, test = build()
    outputs = {TRAIN_FILE: _dumps(train), TEST_FILE: _dumps(test)}
    version = ".".join(map(str, sys.version_info[:3]))
    if args.check:
        stale = [name for name, text in outputs.items() if (args.output_dir / name).read_text("utf-8") != text]
        if stale:
            print(f"{', '.join(stale)} differ from a rebuild with CPython {version}.", file=sys.stderr)
            return 1
        print(f"Up to date with CPython {version}: {len(train)} train rows, {len(test)} test rows.")
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in outputs.items():
        _write_atomically(args.output_dir / name, text)
        print(f"{args.output_dir / name}: {text.count(chr(10))} rows, {len(text.encode()):,} bytes")
    print(f"Built with CPython {version}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
