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
* ``ext/nfq_build.py`` (cffi, against libnetfilter_queue via pkg-config) is
  built only when the system library is present; without it acl still
  installs and the NFQUEUE front door reports itself unavailable.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NO_EXTENSIONS = os.environ.get("ACL_NO_EXTENSIONS", "") not in ("", "0")
CFLAGS = ["-O3", "-fno-strict-aliasing"]


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
                extra_compile_args=CFLAGS,
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
        super().finalize_options()
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
        self.extensions = self.distribution.ext_modules


ext_modules = [] if NO_EXTENSIONS else cython_extensions()
cffi_modules = []
if not NO_EXTENSIONS and (HERE / "ext" / "nfq_build.py").exists() and libnetfilter_queue_present():
    cffi_modules = ["ext/nfq_build.py:ffibuilder"]
elif not NO_EXTENSIONS and (HERE / "ext" / "nfq_build.py").exists():
    print("acl: libnetfilter_queue not found by pkg-config; NFQUEUE binding not built", file=sys.stderr)

setup(
    ext_modules=ext_modules,
    cffi_modules=cffi_modules,
    cmdclass={"build_ext": LazyCythonBuildExt},
)
