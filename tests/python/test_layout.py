"""The source tree keeps its seams: checks on the code itself, not on behaviour."""

import os
import re

import pytest

pytestmark = pytest.mark.no_uring_ok

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def sources(*dirs):
    for d in dirs:
        for name in sorted(os.listdir(os.path.join(ROOT, d))):
            if name.endswith((".c", ".h")):
                yield f"{d}/{name}"


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def code(rel):
    """The file without its comments (kept as blank lines, so numbers hold):
    a comment may name a flag to say what a field means."""

    def blank(m):
        return "\n" * m.group(0).count("\n")

    return re.sub(r"/\*.*?\*/|//[^\n]*", blank, read(rel), flags=re.S)


def test_only_uring_names_io_uring_flags():
    # core/uring.[ch] own every io_uring detail: no other engine or binding
    # file decodes a completion's flags or sets up a ring itself. (String
    # literals would count too; none names a flag.)
    found = list(sources("core", "binding", "include/pmu"))
    assert "core/uring.c" in found and "core/uring.h" in found
    offenders = [
        f"{rel}:{n}: {line.strip()}"
        for rel in found
        if rel not in ("core/uring.c", "core/uring.h")
        for n, line in enumerate(code(rel).splitlines(), 1)
        if "IORING_" in line
    ]
    assert offenders == []
    assert "IORING_CQE_F_MORE" in code("core/uring.h")


def test_binding_knows_nothing_of_io_uring():
    for rel in sources("binding"):
        text = read(rel)
        assert "liburing" not in text, rel
        assert not re.search(r"\bio_uring_\w+\(", text), rel
