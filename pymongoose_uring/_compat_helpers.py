"""pymongoose's data helpers (Mongoose's mg_json_get* and mg_url_encode), for
``pymongoose_uring.compat``: the same answers for the same inputs.

``json_get(doc, path)`` returns the JSON text of the value at ``path`` (a string keeps
its quotes), ``None`` when there is none or the document is not JSON up to it. Paths
are Mongoose's: ``$`` (the whole document), then ``.key`` and ``[index]`` steps, e.g.
``$.items[0].id``. The typed getters decode that text: ``json_get_num`` (a float),
``json_get_bool``, ``json_get_long`` (an int, a float truncated), ``json_get_str``
(the string unescaped); each gives its default when the value is missing or of
another type."""

import json
from typing import Any, List, Optional, Tuple, Union

__all__ = [
    "json_get",
    "json_get_num",
    "json_get_bool",
    "json_get_long",
    "json_get_str",
    "url_encode",
]

_decoder = json.JSONDecoder()
_WS = " \t\r\n"
_MISSING = object()


def _steps(path: str) -> Optional[List[Union[str, int]]]:
    """``$.a[2].b`` -> ["a", 2, "b"]; None for a path Mongoose would not take."""
    if not path.startswith("$"):
        return None
    steps: List[Union[str, int]] = []
    i, n = 1, len(path)
    while i < n:
        if path[i] == ".":
            j = i + 1
            while j < n and path[j] not in ".[":
                j += 1
            if j == i + 1:
                return None
            steps.append(path[i + 1 : j])
            i = j
        elif path[i] == "[":
            j = path.find("]", i)
            index = path[i + 1 : j] if j > 0 else ""
            if not index.isdigit():
                return None
            steps.append(int(index))
            i = j + 1
        else:
            return None
    return steps


def _skip_ws(doc: str, pos: int) -> int:
    while pos < len(doc) and doc[pos] in _WS:
        pos += 1
    return pos


def _member(doc: str, pos: int, step: Union[str, int]) -> int:
    """Where the value named by step starts inside the object or array at pos; -1
    when there is none. Raises ValueError/IndexError on text that is not JSON."""
    opening = doc[pos]
    if opening != ("{" if isinstance(step, str) else "["):
        return -1
    closing = "}" if opening == "{" else "]"
    pos = _skip_ws(doc, pos + 1)
    if doc[pos] == closing:
        return -1
    index = 0
    while True:
        if opening == "{":
            key, pos = _decoder.raw_decode(doc, pos)
            pos = _skip_ws(doc, pos)
            if doc[pos] != ":":
                raise ValueError("':' expected")
            pos = _skip_ws(doc, pos + 1)
            if key == step:
                return pos
        elif index == step:
            return pos
        _, pos = _decoder.raw_decode(doc, pos)
        pos = _skip_ws(doc, pos)
        if doc[pos] == closing:
            return -1
        if doc[pos] != ",":
            raise ValueError("',' expected")
        pos = _skip_ws(doc, pos + 1)
        index += 1


def _locate(data: Union[str, bytes], path: str) -> Optional[Tuple[str, int, int]]:
    """(document, start, end) of the value at path, or None."""
    doc = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    steps = _steps(path)
    if steps is None:
        return None
    try:
        pos = _skip_ws(doc, 0)
        for step in steps:
            pos = _member(doc, pos, step)
            if pos < 0:
                return None
        _, end = _decoder.raw_decode(doc, pos)
    except (ValueError, IndexError):
        return None
    return doc, pos, end


def _value(data: Union[str, bytes], path: str) -> Any:
    found = _locate(data, path)
    if found is None:
        return _MISSING
    doc, start, _ = found
    return _decoder.raw_decode(doc, start)[0]


def json_get(data: Union[str, bytes], path: str) -> Optional[str]:
    """The JSON text of the value at path (a string with its quotes), or None."""
    found = _locate(data, path)
    if found is None:
        return None
    doc, start, end = found
    return doc[start:end]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def json_get_num(
    data: Union[str, bytes], path: str, default: Optional[float] = None
) -> Optional[float]:
    """The number at path as a float; default when missing or not a number."""
    v = _value(data, path)
    return float(v) if _is_number(v) else default


def json_get_bool(
    data: Union[str, bytes], path: str, default: Optional[bool] = None
) -> Optional[bool]:
    """The boolean at path; default when missing or not true/false."""
    v = _value(data, path)
    return v if isinstance(v, bool) else default


def json_get_long(data: Union[str, bytes], path: str, default: int = 0) -> int:
    """The number at path as an int (a float truncated); default otherwise."""
    v = _value(data, path)
    return int(v) if _is_number(v) else default


def json_get_str(data: Union[str, bytes], path: str) -> Optional[str]:
    """The string at path, unescaped; None when missing or not a string."""
    v = _value(data, path)
    return v if isinstance(v, str) else None


# Mongoose leaves ASCII letters, digits and ". _ - ~" as they are; every other byte of
# the UTF-8 encoding becomes %xx (lowercase hex, as mg_url_encode writes it).
_URL_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-~")


def url_encode(data: str) -> str:
    """Percent-encode data's UTF-8 bytes as Mongoose's mg_url_encode does."""
    return "".join(chr(b) if b in _URL_SAFE else "%%%02x" % b for b in data.encode("utf-8"))
