"""Multi-dicts for request headers and query strings.

Both are read-only mappings over the *distinct* names, where ``m[name]`` is
the first value; ``getall(name)`` gives every value and ``multi_items()``
every pair in the order received. ``Headers`` compares names
case-insensitively and keeps them as sent.

The C extension builds them lazily: ``Headers(pairs)`` the first time a
handler reads ``request.headers``, ``QueryParams(query_string)`` the first time
it reads ``request.query``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Dict, List, Optional, Tuple, TypeVar, Union, overload
from urllib.parse import parse_qsl

__all__ = ["Headers", "QueryParams"]

_T = TypeVar("_T")
_Pairs = Union[Iterable[Tuple[str, str]], Mapping[str, Any], str, None]


class _MultiDict(Mapping[str, str]):
    __slots__ = ("_pairs", "_index")
    _pairs: List[Tuple[str, str]]
    _index: Optional[Dict[str, List[int]]]

    def __init__(self, items: _Pairs = None) -> None:
        pairs: List[Tuple[str, str]]
        if items is None:
            pairs = []
        elif isinstance(items, _MultiDict):
            pairs = list(items._pairs)
        elif isinstance(items, Mapping):
            pairs = []
            for k, v in items.items():
                if isinstance(v, (list, tuple)):
                    pairs.extend((k, x) for x in v)
                else:
                    pairs.append((k, v))
        elif isinstance(items, str):
            raise TypeError("a str is not a list of pairs (QueryParams parses strings)")
        else:
            pairs = [(k, v) for k, v in items]
        self._pairs = pairs
        self._index = None

    @staticmethod
    def _fold(key: str) -> str:
        return key

    def _positions(self) -> Dict[str, List[int]]:
        index = self._index
        if index is None:
            index = {}
            fold = self._fold
            for i, (k, _) in enumerate(self._pairs):
                index.setdefault(fold(k), []).append(i)
            self._index = index
        return index

    def __getitem__(self, key: str) -> str:
        pos = self._positions().get(self._fold(key))
        if not pos:
            raise KeyError(key)
        return self._pairs[pos[0]][1]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._fold(key) in self._positions()

    def __iter__(self) -> Iterator[str]:
        pairs = self._pairs
        return (pairs[pos[0]][0] for pos in self._positions().values())

    def __len__(self) -> int:
        return len(self._positions())

    @overload
    def getall(self, key: str) -> List[str]: ...
    @overload
    def getall(self, key: str, default: _T) -> Union[List[str], _T]: ...

    def getall(self, key: str, default: Any = None) -> Any:
        """Every value of ``key`` in order received; ``default`` (or ``[]``)
        when absent."""
        pos = self._positions().get(self._fold(key))
        if not pos:
            return [] if default is None else default
        pairs = self._pairs
        return [pairs[i][1] for i in pos]

    def multi_items(self) -> List[Tuple[str, str]]:
        """Every (name, value) pair, duplicates included, in order received."""
        return list(self._pairs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _MultiDict):
            return type(self) is type(other) and self._pairs == other._pairs
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._pairs!r})"


class Headers(_MultiDict):
    """Request headers: case-insensitive names, several values per name.

    >>> h = Headers([("Accept", "text/html"), ("X-Tag", "a"), ("x-tag", "b")])
    >>> h["accept"], h.getall("X-TAG"), "x-tag" in h, len(h)
    ('text/html', ['a', 'b'], True, 2)
    """

    __slots__ = ()

    @staticmethod
    def _fold(key: str) -> str:
        return key.lower()


class QueryParams(_MultiDict):
    """A parsed query string: ``a=1&b=2&a=3`` gives ``q["a"] == "1"`` and
    ``q.getall("a") == ["1", "3"]``. Blank values are kept."""

    __slots__ = ()

    def __init__(self, items: _Pairs = None) -> None:
        if isinstance(items, str):
            items = parse_qsl(items, keep_blank_values=True)
        super().__init__(items)
