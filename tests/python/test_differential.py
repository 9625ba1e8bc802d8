"""The differential check against h11 (tests/fuzz/differential.py), bounded:
a few thousand mutated requests with a fixed seed; every disagreement must
belong to a class documented in its allow-list (tests/fuzz/README.md)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fuzz"))
import differential  # noqa: E402

COUNT = 3000
SEED = 8


def test_every_disagreement_with_h11_is_a_documented_class():
    found = differential.run(COUNT, SEED)
    unknown = {
        cls: examples[0][0] for cls, examples in found.items() if not differential.allowed(cls)
    }
    assert not unknown, "undocumented disagreement classes (class: first example): %r" % unknown
    # most mutations are read alike: the check compares something
    assert sum(len(v) for v in found.values()) < COUNT / 2


@pytest.mark.no_uring_ok
def test_the_classifier_files_a_smuggling_vector_as_not_allowed():
    # What the engine answered before the strict-mode fix: a chunk whose data
    # is not followed by CRLF, taken as complete.
    data = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"
    ours = (
        "accept",
        {
            "method": "POST",
            "target": "/x",
            "version": "1.1",
            "headers": [["Host", "h"], ["Transfer-Encoding", "chunked"]],
            "body": b"hello",
        },
    )
    cls = differential.classify(data, ours, differential.theirs(data))
    assert cls == ("ours-only", "chunk framing")
    assert not differential.allowed(cls)


@pytest.mark.no_uring_ok
def test_agreement_is_not_a_class():
    data = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    theirs = differential.theirs(data)
    assert theirs[0] == "accept"
    assert differential.classify(data, theirs, theirs) is None
