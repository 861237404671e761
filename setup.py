"""Build acl: the Cython core, the cffi NFQUEUE binding and the acl-wrap program.

Rules of this file:

* Cython sources live under ``ext/acl/`` and mirror the package path
  (``ext/acl/_core.pyx`` builds ``acl._core``), so ``.pyx``/``.pxd`` pairs are
  found by qualified name with ``include_path=["ext"]``.  Every ``.pyx`` there
  becomes an extension; adding a module needs no edit here.
* Cythonizing happens lazily inside ``build_ext``, so an sdist that ships only
  ``.pyx`` files rebuilds from source, and ``setup.py --version`` needs no Cython.
* ``ACL_NO_EXTENSIONS=1`` builds nothing native: the package then runs on the
  pure-Python twins (and has no acl-wrap, no NFQUEUE binding).
* ``ext/wrap/*.c`` is the native ``acl-wrap`` program.  It is listed as a
  *script* (``ext/wrap/main.c`` is the marker entry) and ``build_scripts``
  compiles it instead of copying it, so pip puts ``acl-wrap`` in the
  environment's bin directory (on PATH) for ``pip install .`` and for the
  editable ``pip install -e .`` alike -- setuptools' editable wheels carry
  scripts but not data_files.  Compiler: ``$CC`` or ``cc``.
* ``ext/nfq_build.py`` (cffi, against libnetfilter_queue via pkg-config) is
  built only when the system library is present; without it acl still
  installs and the NFQUEUE front door reports itself unavailable.
* ``ACL_SANITIZE=address,undefined`` (any ``-fsanitize=`` list) builds every
  native part -- the Cython extensions, the NFQUEUE binding and acl-wrap --
  instrumented, with the flags of ``ext/sanitizer.py`` (the one list), for
  the sanitizer runs of tests/README.md.  Unset or empty: the normal build.
  An instrumented extension needs the sanitizer's runtime loaded before
  Python starts (LD_PRELOAD; see tests/README.md): never install such a
  build (tests/sanitize builds one in a copy of the checkout).
"""

import os
import platform
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NO_EXTENSIONS = os.environ.get("ACL_NO_EXTENSIONS", "") not in ("", "0")
CFLAGS = ["-O3", "-fno-strict-aliasing"]


# ext/sanitizer.py's list (run by its path: that file's rules).  Placed
# after the other flags: its -O1 replaces -O3 (and the wrap's -O2).
SANITIZE_FLAGS = runpy.run_path(str(HERE / "ext" / "sanitizer.py"))["flags"]()
if platform.machine() in ("x86_64", "AMD64"):
    # The prefix core's trie walk is popcount-bound, and its address text
    # readers shuffle bytes (SSSE3): both in every Intel CPU since 2008 and
    # AMD one since 2011 (the x86-64-v2 level, which RHEL 9 requires).
    # Elsewhere textaddr.h's portable code runs.
    CFLAGS += ["-mpopcnt", "-mssse3"]
# GCC's inlining limits, raised for the prefix core (see build_extensions).
CORE_INLINE_FLAGS = ["--param=max-inline-insns-single=400", "--param=inline-unit-growth=100"]


def cython_extensions():
    """One Extension per ext/acl/*.pyx, named after its package path."""
    exts = []
    for pyx in sorted((HERE / "ext" / "acl").glob("*.pyx")):
        name = "acl." + pyx.stem
        exts.append(
            Extension(
                name,
                [str(pyx.relative_to(HERE))],
                include_dirs=["ext/acl"],
                extra_compile_args=CFLAGS + SANITIZE_FLAGS,
                extra_link_args=SANITIZE_FLAGS,
            )
        )
    return exts


def libnetfilter_queue_present():
    if shutil.which("pkg-config") is None:
        return False
    return subprocess.run(
        ["pkg-config", "--exists", "libnetfilter_queue"], check=False
    ).returncode == 0


class LazyCythonBuildExt(build_ext):
    """Cythonize only when extensions are actually built."""

    def finalize_options(self):
        # Cythonize first: setuptools' finalize_options annotates the very
        # Extension objects it will build, and cythonize returns new ones.
        from Cython.Build import cythonize

        cython_exts = [e for e in self.distribution.ext_modules if e.sources[0].endswith(".pyx")]
        others = [e for e in self.distribution.ext_modules if not e.sources[0].endswith(".pyx")]
        if cython_exts:
            cython_exts = cythonize(
                cython_exts,
                include_path=["ext"],
                language_level=3,
                compiler_directives={
                    "boundscheck": False,
                    "wraparound": False,
                    "cdivision": True,
                    "initializedcheck": False,
                },
            )
        self.distribution.ext_modules[:] = cython_exts + others
        super().finalize_options()
        self.extensions = self.distribution.ext_modules

    def build_extensions(self):
        # The prefix core's single lookup inlines its whole walk (the top
        # word, a Lone, node steps, a wide trie's steps, each way of storing
        # leaves) into the lookup methods.  That is more than GCC's default
        # limits let an inline function grow: it then calls the walk, ~8-25
        # instructions more a lookup (callgrind, routing v4 and v6 sets).
        # Raised for _core only, where the compiler takes them (GCC).
        if self.compiler.compiler_type == "unix" and self._compiler_takes(CORE_INLINE_FLAGS):
            for ext in self.extensions:
                if ext.name == "acl._core":
                    ext.extra_compile_args = list(ext.extra_compile_args) + CORE_INLINE_FLAGS
        super().build_extensions()

    def _compiler_takes(self, flags):
        """Whether the C compiler accepts ``flags`` (compiles an empty unit)."""
        import tempfile

        from setuptools.errors import CompileError

        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "probe.c"
            source.write_text("int acl_probe;\n")
            try:
                self.compiler.compile([str(source)], output_dir=tmp, extra_postargs=flags + ["-Werror"])
            except CompileError:
                return False
        return True


WRAP_ENTRY = "ext/wrap/main.c"
WRAP_CFLAGS = ["-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2"]
_BuildScripts = Distribution().get_command_class("build_scripts")


class BuildScriptsWithWrap(_BuildScripts):
    """Compile ext/wrap/*.c into ``acl-wrap`` where scripts are built."""

    def run(self):
        scripts = list(self.scripts or [])
        if WRAP_ENTRY in scripts:
            self.mkpath(self.build_dir)
            out = os.path.join(self.build_dir, "acl-wrap")
            sources = sorted(str(p) for p in (HERE / "ext" / "wrap").glob("*.c"))
            cmd = (shlex.split(os.environ.get("CC") or "cc") + WRAP_CFLAGS + SANITIZE_FLAGS
                   + ["-o", out] + sources)
            print("acl: building acl-wrap:", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True)
            os.chmod(out, 0o755)
        self.scripts = [s for s in scripts if s != WRAP_ENTRY]
        if self.scripts:
            super().run()
        self.scripts = scripts


ext_modules = [] if NO_EXTENSIONS else cython_extensions()
wrap_scripts = [] if NO_EXTENSIONS or not (HERE / WRAP_ENTRY).exists() else [WRAP_ENTRY]
cffi_modules = []
if not NO_EXTENSIONS and (HERE / "ext" / "nfq_build.py").exists() and libnetfilter_queue_present():
    cffi_modules = ["ext/nfq_build.py:ffibuilder"]
elif not NO_EXTENSIONS and (HERE / "ext" / "nfq_build.py").exists():
    print("acl: libnetfilter_queue not found by pkg-config; NFQUEUE binding not built", file=sys.stderr)

setup(
    ext_modules=ext_modules,
    cffi_modules=cffi_modules,
    scripts=wrap_scripts,
    cmdclass={"build_ext": LazyCythonBuildExt, "build_scripts": BuildScriptsWithWrap},
)
