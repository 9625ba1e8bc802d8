"""ARCHITECTURE.md stays true of the tree: every file it names exists, and every
`path:function` names something that file still defines or uses.

A reference is a path under one of the repository's top-level folders (core/...,
binding/..., tests/python/test_x.py, ...) or a file at the root (README.md,
meson.build), optionally followed by ":name" or ":Class.method". In a Python file a
name must be defined there (def, class, or an assignment); in any other file it must
appear as a whole word.
"""

import os
import re

import pytest

pytestmark = pytest.mark.no_uring_ok

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = "ARCHITECTURE.md"
TOP = ("core", "include", "binding", "pymongoose_uring", "tests", "benchmarks", "examples", "tools")
ROOT_FILES = ("README.md", "ARCHITECTURE.md", "meson.build", "meson.options", "pyproject.toml")

REF = re.compile(
    r"(?<![\w./-])"
    r"(?P<path>(?:%s)/[\w./-]*|%s)"
    r"(?::(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?"
    % ("|".join(TOP), "|".join(re.escape(f) for f in ROOT_FILES))
)


def references(text):
    """(path, name or None) for every reference in `text`, in order."""
    refs = []
    for m in REF.finditer(text):
        path = m.group("path").rstrip(".")  # a sentence may end right after a path
        refs.append((path, m.group("name")))
    return refs


def defines(source, name):
    """Whether Python source defines `name` (a function, class, or assigned name)."""
    return (
        re.search(
            r"^\s*(?:(?:async\s+)?def|class)\s+%s\b|^\s*%s\s*[:=]"
            % (re.escape(name), re.escape(name)),
            source,
            re.M,
        )
        is not None
    )


def broken(root, refs):
    """The references that do not hold, with why."""
    bad = []
    for path, name in refs:
        full = os.path.join(root, path)
        if not os.path.exists(full):
            bad.append(f"{path}: no such file or folder")
            continue
        if name is None:
            continue
        if os.path.isdir(full):
            bad.append(f"{path}:{name}: a folder has no functions")
            continue
        with open(full, encoding="utf-8") as f:
            source = f.read()
        for part in name.split("."):
            if path.endswith((".py", ".pyi")):
                ok = defines(source, part)
            else:
                ok = re.search(r"\b%s\b" % re.escape(part), source) is not None
            if not ok:
                bad.append(f"{path}:{name}: {part!r} not found in {path}")
    return bad


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_every_reference_holds():
    refs = references(read(DOC))
    named = [r for r in refs if r[1]]
    # The request's path alone cites dozens of functions; far fewer means the
    # pattern stopped matching, not that the document got shorter.
    assert len(named) >= 60, named
    assert broken(ROOT, refs) == []


def test_the_doc_covers_each_layer():
    files = {path for path, _ in references(read(DOC))}
    for layer in (
        "core/",
        "include/pmu/pmu.h",
        "binding/",
        "pymongoose_uring/",
        "tests/c/",
        "tests/python/",
        "tests/fuzz/",
        "tests/corpus/",
        "benchmarks/",
    ):
        assert any(f.startswith(layer) for f in files), layer


def test_a_stale_reference_is_caught():
    # The check itself: names that are not there, in each kind of file, are reported.
    text = (
        "`core/loop.c:pmu__loop_dispatch` `core/loop.c:no_such_function`, "
        "`core/gone.c`. `pymongoose_uring/_server.py:Server.start` "
        "`pymongoose_uring/_server.py:Server.no_such_method` "
        "`binding/engine.c:on_batch`."
    )
    refs = references(text)
    assert ("core/gone.c", None) in refs  # the full stop is not part of the path
    assert broken(ROOT, refs) == [
        "core/loop.c:no_such_function: 'no_such_function' not found in core/loop.c",
        "core/gone.c: no such file or folder",
        "pymongoose_uring/_server.py:Server.no_such_method: 'no_such_method' not found in "
        "pymongoose_uring/_server.py",
    ]


def test_readme_layout_links_it():
    readme = read("README.md")
    layout = readme[readme.index("## Layout") :]
    assert "ARCHITECTURE.md" in layout
