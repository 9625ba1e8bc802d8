"""Setting sysctls for an experiment and putting them back afterwards (root only)."""

import os


def _path(key):
    return "/proc/sys/" + key.replace(".", "/")


def read(key):
    with open(_path(key)) as f:
        return " ".join(f.read().split())


class Sysctls:
    """Remembers the original value of every key it is given, sets values on request, and
    restores all originals in restore() (call it from a finally:)."""

    def __init__(self, keys):
        if keys and os.geteuid() != 0:
            raise SystemExit("setting sysctls needs root: run as root, or drop --sysctl")
        missing = [k for k in keys if not os.path.exists(_path(k))]
        if missing:
            raise SystemExit("no such sysctl: %s" % ", ".join(missing))
        self.original = {k: read(k) for k in keys}

    def set(self, values):
        """values: {key: value}; keys not given are put back to their original value."""
        for key, original in self.original.items():
            want = str(values.get(key, original))
            if read(key) != " ".join(want.split()):
                with open(_path(key), "w") as f:
                    f.write(want)

    def restore(self):
        errors = []
        for key, value in self.original.items():
            try:
                with open(_path(key), "w") as f:
                    f.write(value)
            except OSError as e:
                errors.append("%s=%s: %s" % (key, value, e))
        return errors
