"""deploy/install.sh, run for real: the README's first command, ``sh
deploy/install.sh && acl serve``, on a copy of the checkout, as root.

Rules of this file:

* Nothing the machine has installed is changed.  The script runs in a
  private mount namespace (held open by a ``sleep`` the test starts and
  stops by its PID) where an overlay covers each tree it writes to
  (COVERED): what it writes lands in the overlay's upper directory under the
  test's tmp dir, where the checks read it, and the mounts end with the
  namespace.  What an earlier install left in those trees (the lead runs
  install.sh by hand) is hidden first (EARLIER), so the run starts as on a
  fresh machine and every check sees what THIS run wrote.
* It also runs in a network namespace of its own, with loopback alone: a
  test talks to no other address (the project's rule), so apt's mirror and
  PyPI are out of reach, and what they would give comes from this machine.
  apt-get runs for real: its update only warns (the lists stay as they
  were), and the packages it names are installed already (tests/run installs
  tests/debian-packages.txt, a superset), so its install is a no-op; the
  test first asks apt (``-s``) and skips when the run would change the
  machine's packages.  pip runs with ``PIP_NO_INDEX``: what it would fetch
  (the build's setuptools, Cython, cffi; prometheus-client, uvloop) comes
  from the test's own environment ("pip") or a wheel directory ("venv").
* install.sh has two ways to install acl, chosen by whether ``python3`` on
  PATH lets pip install into it.  "pip": python3 is a fresh venv the test
  makes -- the way CI goes (tests/run pip-installs into its python3, so that
  one lets pip in) -- seeing the test's own packages (system site packages),
  which pip builds with (no build isolation).  "venv": python3 is Debian's
  /usr/bin/python3 (PEP 668, externally managed), so acl goes to a venv at
  /opt/acl with links in /usr/local/bin; that venv starts empty, so pip
  takes everything from the wheels in ACL_TEST_WHEELHOUSE (tests/README.md
  says how to fill it), else the test skips.  Each builds the Cython core
  from source (a minute or two), so only "pip" runs by default; "venv" with
  ACL_SLOW=1.
* Nothing is pip-installed into the python that runs the tests, and PATH has
  no pyenv shim nor the checkout: ``acl`` can only be the installed one.
* ``acl serve`` runs in a network namespace of its own too (it listens on
  127.0.0.1:9464 for metrics), stopped by its PID.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import SLOW, stop_process
from .conftest import DEPLOY, MAN_PREFIX, ROOT

#: The trees install.sh writes to, each covered by an overlay in the
#: namespace (/var/cache/man: where mandb keeps /usr/local/share/man's index).
COVERED = ("/opt", "/usr/local", "/usr/share/doc", "/var/cache/man")

PAGES = sorted(p for p in (ROOT / "man").iterdir() if re.fullmatch(r".+\.[1-9]", p.name))
DOCS = sorted((ROOT / "docs").glob("*.md"))
RULES = "/usr/local/sbin/acl-nfqueue-rules"
VENV = "/opt/acl"

#: What an earlier install left, hidden in the namespace before the run
#: (/var/cache/man/*local: mandb's indexes of /usr/local/share/man, by both
#: its names -- else whatis would answer from an earlier run's index).
EARLIER = (VENV, "/usr/local/bin/acl", "/usr/local/bin/acl-wrap", RULES, "/usr/share/doc/acl",
           "/var/cache/man/local", "/var/cache/man/oldlocal",
           *(f"{MAN_PREFIX}/man{p.suffix[1:]}/{p.name}" for p in PAGES))

#: Debian's PATH for root, with nothing of pyenv nor of the checkout in it.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: What pip fetches for ``pip install '.[fast]'`` into an empty venv: the
#: build's requirements and acl's own (pyproject.toml).
WHEELS_NEEDED = ("setuptools", "wheel", "packaging", "Cython", "cffi", "pycparser",
                 "prometheus-client", "uvloop")

#: What the checkout copy leaves out: build products of the developer's tree.
NOT_COPIED = shutil.ignore_patterns(".git", "__pycache__", "*.py[cod]", "*.so", "*.egg-info",
                                    "build", "dist", ".eggs", ".hypothesis", ".benchmarks",
                                    ".pytest_cache", ".ruff_cache", "*.html", "_nfq.c")


def version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (ROOT / "acl" / "__init__.py").read_text(),
                     re.M).group(1)


def copy_checkout(dest: Path) -> Path:
    """The checkout as a fresh clone has it (what pip builds in place)."""
    def ignore(directory, names):
        left_out = NOT_COPIED(directory, names)
        if Path(directory) == ROOT:
            left_out.add("acl-wrap")            # the in-place build's program
        if Path(directory) == ROOT / "ext" / "acl":
            left_out |= {n for n in names if n.endswith(".c")}   # cythonized
        return left_out
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


class Namespace:
    """A private mount namespace with an overlay on each COVERED tree; its
    commands run through nsenter, each with a timeout."""

    def __init__(self, layers: Path):
        self.layers = layers
        # (an hour: four times what the run's timeouts add up to, and a
        # holder left by a killed test run still goes; argv() checks before
        # each use that it has not)
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                        "sleep", "3600"])
        self._ours = os.readlink("/proc/self/ns/mnt")
        self._wait_until_entered()
        for tree in COVERED:
            upper, work = self.upper(tree), layers / self._name(tree) / "work"
            upper.mkdir(parents=True)
            work.mkdir()
            self.check(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={tree},upperdir={upper},workdir={work}", tree])
        self.check(["rm", "-rf", *EARLIER])

    def _wait_until_entered(self) -> None:
        # Until unshare has made the namespace and exec'd sleep, nsenter would
        # enter OUR namespace and mount over the machine's trees: never.
        ours = self._ours
        for _ in range(100):
            try:
                comm = Path(f"/proc/{self.holder.pid}/comm").read_text().strip()
                theirs = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
            except OSError:
                break
            if comm == "sleep" and theirs != ours:
                return
            time.sleep(0.05)
        self.close()
        pytest.fail("unshare made no mount namespace of its own", pytrace=False)

    @staticmethod
    def _name(tree: str) -> str:
        return tree.strip("/").replace("/", "-")

    def upper(self, tree: str) -> Path:
        """Where what was written under ``tree`` in the namespace lands."""
        return self.layers / self._name(tree) / "upper"

    def written(self, path: str) -> Path:
        """``path`` as this run wrote it (under its tree's upper directory)."""
        tree = max((t for t in COVERED if path.startswith(t + "/")), key=len)
        return self.upper(tree) / path.removeprefix(tree + "/")

    def argv(self, argv: list[str]) -> list[str]:
        # the holder still ours and still in its own namespace, every time:
        # else nsenter would run the command in some other process's mounts
        assert self.holder.poll() is None, "the namespace's holder has gone"
        assert os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != self._ours
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", *argv]

    def run(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def check(self, argv: list[str], **kw) -> str:
        out = self.run(argv, **kw)
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        return out.stdout

    def close(self) -> None:
        # the last process in the namespace: its mounts go with it
        stop_process(self.holder, timeout=10)


@pytest.fixture
def namespace(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: a mount namespace, overlays, apt-get")
    for tool in ("unshare", "nsenter", "mount", "ip", "apt-get"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    ns = Namespace(tmp_path / "layers")
    yield ns
    ns.close()


def apt_would_change_the_machine() -> str:
    """The packages install.sh's apt-get line would install or upgrade."""
    sim = subprocess.run(["apt-get", "install", "-s", *apt_line()], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert sim.returncode == 0, sim.stderr
    return " ".join(re.findall(r"^Inst (\S+)", sim.stdout, re.M))


def apt_line() -> list[str]:
    """The arguments of install.sh's ``apt-get install``."""
    line = re.search(r"apt-get install (.*?)>", (DEPLOY / "install.sh").read_text(), re.S)
    return line.group(1).replace("\\\n", " ").split()


def test_tests_run_installs_every_package_install_sh_names():
    """Else, on CI's fresh machine, the real run below would install them
    (and so skip): tests/run installs tests/debian-packages.txt first."""
    wanted = [a for a in apt_line() if not a.startswith("-")]
    assert wanted
    listed = (ROOT / "tests" / "debian-packages.txt").read_text().split()
    assert set(wanted) <= set(listed), set(wanted) - set(listed)


def clean_env(path: str, **extra) -> dict[str, str]:
    """The environment of a root shell: no python, pip or acl settings of
    the test run (PIP_BREAK_SYSTEM_PACKAGES would unmake PEP 668)."""
    drop = ("PYTHON", "VIRTUAL_ENV", "PYENV", "CONDA", "ACL_", "XDG_RUNTIME_DIR",
            "PIP_BREAK_SYSTEM_PACKAGES", "PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT",
            "PIP_REQUIRE_VIRTUALENV", "MANPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PATH": path, **extra}


def wheelhouse_or_skip() -> str:
    """ACL_TEST_WHEELHOUSE: a directory of the wheels an empty venv needs."""
    wheels = os.environ.get("ACL_TEST_WHEELHOUSE", "")
    if not wheels or not os.path.isdir(wheels):
        pytest.skip("the venv branch needs ACL_TEST_WHEELHOUSE, a directory of wheels for "
                    f"{', '.join(WHEELS_NEEDED)} (tests/README.md): the test fetches nothing")
    return wheels


def debian_python_or_skip() -> str:
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} is missing: install python3 and python3-venv (Debian)")
    probe = subprocess.run(
        [python, "-c", "import ensurepip, os, sysconfig, venv; "
                       "print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), "
                       "'EXTERNALLY-MANAGED')))"],
        capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot make a venv (python3-venv?): {probe.stderr.strip()}")
    if probe.stdout.strip() != "True":
        pytest.skip(f"{python} is not externally managed (PEP 668) here")
    return python


BRANCHES = [
    "pip",
    pytest.param("venv", marks=[pytest.mark.slow,
                                pytest.mark.skipif(not SLOW, reason="builds acl a second time: "
                                                   "set ACL_SLOW=1")]),
]


@pytest.mark.root
@pytest.mark.live
@pytest.mark.parametrize("branch", BRANCHES)
def test_install_sh_installs_acl_and_acl_serve_answers(tmp_path, namespace, branch):
    if shutil.which("man") is None:
        pytest.skip("man-db is not installed")
    changes = apt_would_change_the_machine()
    if changes:
        pytest.skip(f"install.sh's apt-get would install or upgrade {changes} on this machine")
    if branch == "pip":
        python = tmp_path / "python"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", python],
                       check=True, timeout=300)
        # "0" turns build isolation off (pip reads PIP_NO_* as "no")
        env = clean_env(f"{python}/bin:{SYSTEM_PATH}", PIP_NO_INDEX="1",
                        PIP_NO_BUILD_ISOLATION="0", PIP_NO_CACHE_DIR="1")
        installed = python                          # acl's environment
        bindir = f"{python}/bin"                    # where `acl` is found on PATH
    else:
        debian_python_or_skip()
        env = clean_env(SYSTEM_PATH, PIP_NO_INDEX="1", PIP_FIND_LINKS=wheelhouse_or_skip(),
                        PIP_NO_CACHE_DIR="1")
        installed, bindir = Path(VENV), "/usr/local/bin"
    checkout = copy_checkout(tmp_path / "acl")
    work = tmp_path / "cwd"         # not the checkout: nothing imports acl from there
    work.mkdir()

    # 1. the run, with loopback alone
    run = namespace.run(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec sh "$0"',
                         str(checkout / "deploy" / "install.sh")], env=env, cwd=work,
                        timeout=420)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    compiled = f"acl {version()} (compiled core)"
    assert run.stdout.strip().splitlines()[-1] == compiled, log[-3000:]

    # 2. acl and acl-wrap are on PATH, the installed ones, on the compiled core
    def ns(argv, **kw):
        return namespace.run(argv, env=env, cwd=work, **kw)

    where = ns(["sh", "-c", "command -v acl; command -v acl-wrap"])
    assert where.stdout.split() == [f"{bindir}/acl", f"{bindir}/acl-wrap"], where
    assert ns(["acl", "--version"]).stdout.strip() == compiled
    wrap = ns(["acl-wrap", "-h"])
    assert wrap.returncode == 100 and "usage: acl-wrap " in wrap.stderr, wrap
    imported = ns([f"{installed}/bin/python", "-c", "import acl; print(acl.__file__)"])
    assert imported.stdout.startswith(f"{installed}/lib/"), imported
    if branch == "venv":
        for cmd in ("acl", "acl-wrap"):
            link = namespace.written(f"/usr/local/bin/{cmd}")
            assert os.readlink(link) == f"{VENV}/bin/{cmd}", link
        assert namespace.written(f"{VENV}/bin/acl").exists()
        # and nothing into Debian's python (its pip would write to /usr/local/lib)
        assert not list(namespace.written("/usr/local/lib").glob("python3*/dist-packages/acl*"))
    else:
        # acl went into python3's environment: nothing to /opt, no links
        assert not namespace.written(VENV).exists()
        assert not namespace.written("/usr/local/bin/acl").exists()

    # 3. the manual pages: man finds them, whatis knows them (mandb ran)
    names = [p.name.rsplit(".", 1)[0] for p in PAGES]
    for page in PAGES:
        dest = f"{MAN_PREFIX}/man{page.suffix[1:]}/{page.name}"
        got = namespace.written(dest)
        assert got.is_file() and got.read_bytes() == page.read_bytes(), dest
        assert stat.S_IMODE(got.stat().st_mode) == 0o644, dest
    # (man may say /usr/local/man/..., Debian's link to share/man)
    found = ns(["sh", "-c", 'pages=$(man -w "$@") && realpath -e $pages', "sh", *names])
    assert found.stdout.split() == [f"{MAN_PREFIX}/man{p.suffix[1:]}/{p.name}"
                                    for p in PAGES], found
    said = ns(["whatis", *names])
    assert said.returncode == 0, said
    for page in PAGES:
        name, section = page.name.rsplit(".", 1)
        assert re.search(rf"^{re.escape(name)} \({section}\) +- \S", said.stdout, re.M), said

    # 4. the guides, and every Documentation= of the units resolves
    for doc in DOCS:
        got = namespace.written(f"/usr/share/doc/acl/{doc.name}")
        assert got.is_file() and got.read_bytes() == doc.read_bytes(), got
        assert stat.S_IMODE(got.stat().st_mode) == 0o644, got
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        for url in re.findall(r"^Documentation=(.+)$", unit.read_text(), re.M):
            for ref in url.split():
                if ref.startswith("file:"):
                    assert ns(["test", "-f", ref.removeprefix("file:")]).returncode == 0, \
                        (unit.name, ref)
                elif ref.startswith("man:"):
                    name, section = re.fullmatch(r"man:(.+)\((\d)\)", ref).groups()
                    assert ns(["man", "-w", section, name]).returncode == 0, (unit.name, ref)

    # 5. the NFQUEUE rules script, where the guides call it
    got = namespace.written(RULES)
    assert got.read_bytes() == (DEPLOY / "nfqueue" / "acl-nfqueue-rules").read_bytes()
    assert stat.S_IMODE(got.stat().st_mode) == 0o755
    assert ns(["sh", "-c", "command -v acl-nfqueue-rules"]).stdout.strip() == RULES

    # 6. `acl serve` on the shipped example policy answers `acl query`
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    serve_env = {**env, "XDG_RUNTIME_DIR": str(runtime)}
    sock = runtime / "acl" / "query.sock"
    serve = subprocess.Popen(
        namespace.argv(["unshare", "--net", "sh", "-c", "ip link set lo up && exec acl serve"]),
        env=serve_env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):                      # 30 s at most
            if sock.exists() or serve.poll() is not None:
                break
            time.sleep(0.1)
        assert sock.exists(), f"no {sock}; acl serve exited {serve.poll()}"
        for client, answer in (("192.0.2.10", 0), ("203.0.113.9", 1)):
            asked = ns(["acl", "query", "--socket", str(sock), "sshd", client])
            assert asked.returncode == answer, (client, asked)
    finally:
        status = stop_process(serve)
        said = serve.communicate(timeout=10)[0]
    assert status in (0, -15), said
    assert str(sock) in said, said

