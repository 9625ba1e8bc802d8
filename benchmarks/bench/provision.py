"""Installing and building what the selected servers need, before anything is measured.

System tools come from apt-get (Debian/Ubuntu, as root), Python peers from pip into this
interpreter, examples/hello_server from meson + ninja in build-bench/engine/, and the
pymongoose_uring package from `pip install --target build-bench/python` of the repository.
The two live in sibling folders so that neither build can remove the other's output (a fresh
`meson setup` clears its own folder). Whatever cannot be provided leaves its servers
"unavailable" with the reason: a peer is then left out of the run, and one of the project's
own servers stops it (see run.py).
"""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys

from . import REPO_DIR, BenchError

APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light"}
BUILD_DIR = os.path.join(REPO_DIR, "build-bench")  # the runner's; only its subfolders are built
ENGINE_BUILD_DIR = os.path.join(BUILD_DIR, "engine")  # meson: examples/hello_server
# What the Python package is built from: newer files here mean a rebuild.
SOURCES = (
    "core",
    "include",
    "binding",
    "pymongoose_uring",
    "meson.build",
    "meson.options",
    "pyproject.toml",
)


def say(message):
    print(message, flush=True)


def _run(argv, log, cwd=None, env=None):
    """Run a command with its output appended to `log`; returns its exit status."""
    with open(log, "a") as f:
        f.write("\n$ %s\n" % " ".join(argv))
        f.flush()
        try:
            return subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        except OSError as e:
            f.write("%s\n" % e)
            return 127


def find_tool(name):
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def apt_install(packages, log):
    """apt-get install -y the packages (apt-get update first if the first try fails)."""
    if not shutil.which("apt-get"):
        return "no apt-get on this machine: install %s yourself" % " ".join(packages)
    if os.geteuid() != 0:
        return "not root: run `sudo apt-get install -y %s`" % " ".join(packages)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("  installing %s with apt-get ..." % " ".join(packages))
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if _run(argv, log, env=env) == 0:
        return None
    _run(["apt-get", "update"], log, env=env)
    if _run(argv, log, env=env) == 0:
        return None
    return "apt-get install %s failed (see %s)" % (" ".join(packages), log)


def ensure_tool(name, log):
    """Returns None when the tool is there (installing it if it was missing), else why not."""
    if find_tool(name):
        return None
    error = apt_install([APT_PACKAGES.get(name, name)], log)
    if error:
        return error
    return None if find_tool(name) else "%s still missing after installing it" % name


def missing_modules(names):
    importlib.invalidate_caches()
    return [n for n in names if importlib.util.find_spec(n) is None]


def pip_install(requirements, log):
    say("  installing %s with pip ..." % " ".join(requirements))
    rc = _run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *requirements], log
    )
    return None if rc == 0 else "pip install %s failed (see %s)" % (" ".join(requirements), log)


def ensure_pip(pairs, log):
    """pairs: (import name, requirement). Installs what is missing; returns None or why not."""
    missing = [req for mod, req in pairs if missing_modules([mod])]
    if not missing:
        return None
    error = pip_install(sorted(set(missing)), log)
    if error:
        return error
    still = missing_modules([mod for mod, _ in pairs])
    return "still missing after pip install: %s" % ", ".join(still) if still else None


def hello_server(log, explicit=None, build=True):
    """Path of examples/hello_server, building it in build-bench/engine/ when needed.

    An explicit path (--hello-server or $PMU_HELLO_SERVER) is used as given. Otherwise the
    runner owns build-bench/engine/: `meson setup` once, then `ninja` every run (a no-op when
    nothing changed), so the binary measured is always the current source's.
    Returns (path, None) or (None, reason)."""
    explicit = explicit or os.environ.get("PMU_HELLO_SERVER")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit, None
        return None, "%s is not an executable" % explicit
    binary = os.path.join(ENGINE_BUILD_DIR, "hello_server")
    if not build:
        for candidate in [binary] + sorted(
            glob.glob(os.path.join(REPO_DIR, "build*", "hello_server"))
        ):
            if os.access(candidate, os.X_OK):
                return candidate, None
        return None, "no hello_server binary under build*/ (and --no-build given)"
    for tool, req in (("meson", "meson"), ("ninja", "ninja")):
        if not shutil.which(tool):
            error = pip_install([req], log)
            if error:
                return None, error
    _ensure_build_deps(log)
    if not os.path.exists(os.path.join(ENGINE_BUILD_DIR, "build.ninja")):
        if os.path.isdir(ENGINE_BUILD_DIR):
            shutil.rmtree(ENGINE_BUILD_DIR)  # a setup that failed half-way; ours to redo
        say("  configuring %s ..." % os.path.relpath(ENGINE_BUILD_DIR, REPO_DIR))
        if (
            _run(
                [
                    "meson",
                    "setup",
                    ENGINE_BUILD_DIR,
                    "-Dtests=false",
                    "-Dpython=false",
                    "-Dbuildtype=release",
                ],
                log,
                cwd=REPO_DIR,
            )
            != 0
        ):
            return None, "meson setup failed: see %s" % log
    if _run(["ninja", "-C", ENGINE_BUILD_DIR, "hello_server"], log, cwd=REPO_DIR) != 0:
        return None, "the build failed: see %s" % log
    if not os.access(binary, os.X_OK):
        return None, "the build produced no %s" % binary
    return binary, None


def _ensure_build_deps(log):
    """liburing and llhttp sources for the engine (Debian packages), when apt is at hand."""
    wanted = []
    if (
        subprocess.call(
            ["pkg-config", "--exists", "liburing"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        != 0
    ):
        wanted.append("liburing-dev")
    if (
        not os.path.exists("/usr/share/llhttp/llhttp.c")
        and subprocess.call(
            ["pkg-config", "--exists", "llhttp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        != 0
    ):
        wanted.append("node-llhttp")
    if wanted and shutil.which("apt-get") and os.geteuid() == 0:
        apt_install(wanted + ["pkg-config"], log)


# pymongoose_uring is built from this checkout into a folder of the runner's own, which the
# servers that need it get on PYTHONPATH: the run never touches the interpreter's
# site-packages, and always measures the checkout's code.
PYTHON_TARGET = os.path.join(BUILD_DIR, "python")


def _installed_dir(module, pythonpath):
    """Folder of `module` as a server process would import it, or None."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    p = subprocess.run(
        [sys.executable, "-c", "import os, %s as m; print(os.path.dirname(m.__file__))" % module],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
    )
    return (p.stdout.strip() or None) if p.returncode == 0 else None


def _newest_mtime(paths):
    newest = 0.0
    for top in paths:
        if os.path.isfile(top):
            newest = max(newest, os.path.getmtime(top))
        for root, _dirs, files in os.walk(top):
            for name in files:
                if not name.endswith(".pyc"):
                    newest = max(newest, os.path.getmtime(os.path.join(root, name)))
    return newest


def pymongoose_uring(log, build=True, rebuild=False):
    """Build and install this checkout's pymongoose_uring into PYTHON_TARGET when it is not
    there, is older than the sources, or `rebuild`. Returns (pythonpath, None) or
    (None, why not). With build=False, whatever `import pymongoose_uring` finds is used."""
    if not build:
        if _installed_dir("pymongoose_uring", PYTHON_TARGET):
            return PYTHON_TARGET, None
        return None, "pymongoose_uring is not importable (and --no-build given)"
    if not os.path.exists(os.path.join(REPO_DIR, "pyproject.toml")):
        return None, "no pyproject.toml in %s" % REPO_DIR
    installed = _installed_dir("pymongoose_uring", PYTHON_TARGET)
    fresh = (
        installed
        and os.path.realpath(installed).startswith(os.path.realpath(PYTHON_TARGET))
        and _newest_mtime([os.path.join(REPO_DIR, p) for p in SOURCES])
        <= _newest_mtime([installed])
    )
    if fresh and not rebuild:
        return PYTHON_TARGET, None
    say(
        "  building pymongoose_uring from the checkout into %s ..."
        % os.path.relpath(PYTHON_TARGET, REPO_DIR)
    )
    base = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-deps",
        "--upgrade",
        "--target",
        PYTHON_TARGET,
    ]
    rc = _run(base + [REPO_DIR], log)
    if rc != 0 and not missing_modules(["mesonpy"]):
        say("  (retrying without build isolation, with the meson-python installed here)")
        rc = _run(base + ["--no-build-isolation", REPO_DIR], log)
    if rc != 0:
        return None, "building the Python package failed: see %s" % log
    if not _installed_dir("pymongoose_uring", PYTHON_TARGET):
        return None, "built, yet `import pymongoose_uring` fails"
    return PYTHON_TARGET, None


def check_wrk(log):
    error = ensure_tool("wrk", log)
    if error:
        raise BenchError("wrk is required: %s" % error)
