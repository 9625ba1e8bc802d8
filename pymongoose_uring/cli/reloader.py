"""--reload: notice that the app's Python sources changed."""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Dict, List, Tuple


class SourceWatcher:
    """The .py files under some folders, polled (at most every half second)
    for a changed, added or removed file."""

    SKIP = {"__pycache__", "node_modules", "build", "dist", "venv"}

    def __init__(self, roots: List[str], interval: float = 0.5) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.interval = interval
        self.last = ""  # the (first) file that changed, relative to the cwd
        self.next_poll = 0.0
        self.seen = self._scan()

    def _scan(self) -> Dict[str, Tuple[int, int]]:
        """path -> (mtime in ns, size) of every .py file, skipping hidden
        folders and SKIP."""
        found: Dict[str, Tuple[int, int]] = {}
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in self.SKIP]
                for name in files:
                    if name.endswith(".py"):
                        path = os.path.join(folder, name)
                        try:
                            st = os.stat(path)
                            found[path] = (st.st_mtime_ns, st.st_size)
                        except OSError:
                            pass
        return found

    def changed(self) -> bool:
        """Whether a source changed since the last call that said so (False
        without looking when called again within the interval). A changed
        file's cached .pyc is removed, so the new worker compiles it anew."""
        now = time.monotonic()
        if now < self.next_poll:
            return False
        self.next_poll = now + self.interval
        current = self._scan()
        if current == self.seen:
            return False
        diff = {p for p in current if self.seen.get(p) != current[p]} | (
            set(self.seen) - set(current)
        )
        for path in diff:
            # A .pyc records its source's mtime in whole seconds: an edit within
            # the same second that keeps the size would load the old code.
            try:
                os.unlink(importlib.util.cache_from_source(path))
            except (OSError, ValueError, NotImplementedError):
                pass
        self.last = os.path.relpath(sorted(diff)[0]) if diff else "a file"
        self.seen = current
        return True
