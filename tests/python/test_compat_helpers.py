"""pymongoose's data helpers in compat (Mongoose's mg_json_get* and mg_url_encode):
the answers a pymongoose program gets for the same inputs."""

import pytest

from pymongoose_uring.compat import (
    json_get,
    json_get_bool,
    json_get_long,
    json_get_num,
    json_get_str,
    url_encode,
)

DOC = """
{ "name": "srv", "port": 8000, "ratio": 0.75, "on": true, "off": false, "none": null,
  "list": [10, {"k": "v", "deep": [1, [2, 3]]}, "s"],
  "nested": {"a": {"b": {"c": -12.9}}},
  "esc": "tab\\there \\u00e9 \\"q\\"",
  "dup": 1, "dup": 2 }
"""


@pytest.mark.parametrize(
    "path, text",
    [
        ("$.name", '"srv"'),  # a string keeps its quotes
        ("$.port", "8000"),
        ("$.on", "true"),
        ("$.none", "null"),
        ("$.list[0]", "10"),
        ("$.list[1].k", '"v"'),
        ("$.list[1].deep[1][0]", "2"),
        ("$.list[2]", '"s"'),
        ("$.nested.a.b.c", "-12.9"),
        ("$.nested.a", '{"b": {"c": -12.9}}'),  # an object as written, inner spaces kept
        ("$.dup", "1"),  # the first of two equal keys
    ],
)
def test_json_get_returns_the_value_text(path, text):
    assert json_get(DOC, path) == text
    assert json_get(DOC.encode(), path) == text  # bytes alike


@pytest.mark.parametrize(
    "path",
    [
        "$.missing",
        "$.list[3]",
        "$.list.k",
        "$.name[0]",
        "$.port.x",
        "name",
        "$..name",
        "$.list[x]",
        "",
    ],
)
def test_json_get_none_for_what_is_not_there(path):
    assert json_get(DOC, path) is None


def test_json_get_whole_document_and_broken_json():
    assert json_get("  [1, 2] ", "$") == "[1, 2]"
    assert json_get('{"a": 1, "b": }', "$.b") is None  # not JSON where it matters
    assert json_get('{"a": 1, "b": }', "$.a") == "1"  # ...but what comes before is found
    assert json_get("", "$") is None
    assert json_get("{", "$.a") is None


def test_typed_getters_and_their_defaults():
    assert json_get_num(DOC, "$.port") == 8000.0 and isinstance(json_get_num(DOC, "$.port"), float)
    assert json_get_num(DOC, "$.ratio") == 0.75
    assert json_get_num(DOC, "$.name") is None
    assert json_get_num(DOC, "$.on") is None  # a boolean is not a number
    assert json_get_num(DOC, "$.missing", 5.5) == 5.5
    assert json_get_bool(DOC, "$.on") is True
    assert json_get_bool(DOC, "$.off") is False
    assert json_get_bool(DOC, "$.port") is None
    assert json_get_bool(DOC, "$.missing", True) is True
    assert json_get_long(DOC, "$.port") == 8000
    assert json_get_long(DOC, "$.nested.a.b.c") == -12  # truncated toward zero
    assert json_get_long(DOC, "$.name") == 0
    assert json_get_long(DOC, "$.missing", 7) == 7
    assert json_get_str(DOC, "$.name") == "srv"
    assert json_get_str(DOC, "$.esc") == 'tab\there é "q"'
    assert json_get_str(DOC, "$.port") is None
    assert json_get_str(DOC, "$.missing") is None


@pytest.mark.parametrize(
    "text, encoded",
    [
        ("", ""),
        ("AZaz09._-~", "AZaz09._-~"),  # left as they are
        ("a b/c?d=e&f", "a%20b%2fc%3fd%3de%26f"),  # lowercase hex
        ("100%+", "100%25%2b"),
        ("é€", "%c3%a9%e2%82%ac"),  # UTF-8 bytes
    ],
)
def test_url_encode_as_mongoose(text, encoded):
    assert url_encode(text) == encoded
