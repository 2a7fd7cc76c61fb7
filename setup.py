"""Build the C extension pysockkit._core from csrc/: the core (csrc/core/),
the test kit (csrc/testkit/, the fault proxy) and the CPython binding
(csrc/binding/).  Every folder includes the others' headers as
"core/io.h" from csrc/ (-Icsrc), and its own by bare name.

Metadata lives in pyproject.toml; this file only describes the extension.

Environment knobs:
  PYSOCKKIT_WERROR=1    add -Werror (CI sets it)
  PYSOCKKIT_SANITIZE=1  build with -fsanitize=address,undefined (run the
                        interpreter with LD_PRELOAD of libasan, see .ci/run)
  PYSOCKKIT_DEBUG=1     -O0 -g3
"""
import os
from glob import glob

from setuptools import Extension, setup

LAYERS = ("core", "testkit", "binding")
sources = sorted(f for d in LAYERS for f in glob(os.path.join("csrc", d, "*.c")))
depends = sorted(f for d in LAYERS for f in glob(os.path.join("csrc", d, "*.h")))

cflags = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wstrict-prototypes",
    "-Wwrite-strings",
]
macros = [("_GNU_SOURCE", "1")]
ldflags = []
if os.environ.get("PYSOCKKIT_WERROR") == "1":
    cflags.append("-Werror")
if os.environ.get("PYSOCKKIT_DEBUG") == "1":
    cflags += ["-O0", "-g3"]
else:
    cflags += ["-O2"]
if os.environ.get("PYSOCKKIT_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
    cflags += san + ["-g"]
    ldflags += san

setup(
    ext_modules=[
        Extension(
            "pysockkit._core",
            sources=sources,
            depends=depends,
            include_dirs=["csrc"],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
