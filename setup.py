"""Build the Cython/C kernels.

One compiled extension, pynn._kernels.core: the Cython layer and all of
csrc/ in one shared object; beside it the C API's plain shared library
pynn/lib/libpynn.so (csrc/capi over the same kernel objects) and its
header. Each ISA's code is compiled with per-function target attributes,
never with -march, so one wheel runs on any x86-64 CPU and chooses its path
at import (csrc/cpu.c).

Environment switches for developers:
  PYNN_CYTHON_DEBUG=1     bounds/wraparound checks on in every Cython module
  PYNN_SANITIZE=address,undefined   build with those sanitizers
  PYNN_NO_OPENMP=1        build without OpenMP (single-threaded kernels)
  PYNN_EMULATE_AVX512=1   run the AVX-512 paths on an AVX2 CPU, their intrinsics
                          emulated (tools/avx512_emulation.h): for testing them
                          where the CPU has no AVX-512, never for a release
"""
import glob
import os
import re
import shutil
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The one extension: pynn/_kernels/core.pyx (which includes the other .pxi
# files there) over every C file of csrc/.
C_SOURCES = sorted(glob.glob("csrc/*.c"))
# The C API (include/pynn.h) over the same kernels: package data, pynn/lib/libpynn.so.
CAPI_SOURCES = sorted(glob.glob("csrc/capi/*.c"))

# Each function and datum in its own section, so the linker drops what the C
# library never reaches (training kernels) with --gc-sections.
BASE_FLAGS = ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden",
              "-ffunction-sections", "-fdata-sections"]
GC_SECTIONS = ["-Wl,-dead_strip"] if sys.platform == "darwin" else ["-Wl,--gc-sections"]


def emulation_flags():
    if not os.environ.get("PYNN_EMULATE_AVX512"):
        return []
    header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools", "avx512_emulation.h")
    # -Wno-psabi: the emulated 512-bit vectors pass between inlined functions only
    return ["-DPYNN_EMULATE_AVX512", "-include", header, "-Wno-psabi"]


def sanitizer_flags():
    kinds = os.environ.get("PYNN_SANITIZE", "").strip()
    if not kinds:
        return [], []
    flags = [f"-fsanitize={kinds}", "-fno-omit-frame-pointer", "-g", "-O1"]
    return flags, [f"-fsanitize={kinds}"]


class BuildExtWithOpenMP(build_ext):
    """Adds OpenMP flags when the compiler accepts them; builds without otherwise."""

    def openmp_flags(self):
        if os.environ.get("PYNN_NO_OPENMP"):
            return None
        compiler = self.compiler
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
            for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp"]):
                try:
                    objects = compiler.compile([source], output_dir=tmp, extra_postargs=flags)
                    link_flags = flags if flags == ["-fopenmp"] else ["-lomp"]
                    compiler.link_executable(objects, "probe", output_dir=tmp,
                                             extra_postargs=link_flags)
                    return flags, link_flags
                except Exception:
                    continue
        return None

    def build_extensions(self):
        openmp = self.openmp_flags()
        sanitize_compile, sanitize_link = sanitizer_flags()
        compile_flags = list(BASE_FLAGS) + sanitize_compile + emulation_flags()
        link_flags = list(sanitize_link) + GC_SECTIONS
        if openmp:
            compile_flags += openmp[0]
            link_flags += openmp[1]
        else:
            print("pynn: building without OpenMP; kernels run on one thread", file=sys.stderr)
        build_flags = " ".join(compile_flags)
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags + ext.extra_compile_args
            ext.extra_link_args = link_flags + ext.extra_link_args
            ext.define_macros.append(("PYNN_BUILD_FLAGS", f'"{build_flags}"'))
        super().build_extensions()
        self.build_c_library(compile_flags, link_flags)

    def build_c_library(self, compile_flags, link_flags):
        """The C API's shared library, pynn/lib/libpynn.so, and its header,
        pynn/include/pynn.h: package data beside the extension (a plain
        shared library, not an importable module), linked from the kernel
        objects the extension was built from plus csrc/capi."""
        package = os.path.join(self.build_lib, "pynn")
        with open(os.path.join("pynn", "_version.py")) as file:
            version = re.search(r'__version__ = "([^"]+)"', file.read()).group(1)
        objects = self.compiler.object_filenames(C_SOURCES, output_dir=self.build_temp)
        missing = [source for source, built in zip(C_SOURCES, objects) if not os.path.exists(built)]
        if missing:  # the extension was up to date, its objects cleaned away
            self.compiler.compile(missing, output_dir=self.build_temp, include_dirs=["csrc"],
                                  extra_postargs=compile_flags)
        objects += self.compiler.compile(
            CAPI_SOURCES, output_dir=self.build_temp, include_dirs=["csrc"],
            macros=[("PYNN_VERSION", f'"{version}"')], extra_postargs=compile_flags)
        library = os.path.join(package, "lib", self.compiler.library_filename("pynn", "shared"))
        os.makedirs(os.path.dirname(library), exist_ok=True)
        # found through the program's rpath (python -m pynn config --libs) wherever it is installed
        install_name = ["-Wl,-install_name,@rpath/libpynn.dylib"] if sys.platform == "darwin" else []
        self.compiler.link_shared_object(objects, library, libraries=["m"],
                                         extra_postargs=link_flags + install_name)
        os.makedirs(os.path.join(package, "include"), exist_ok=True)
        shutil.copyfile(os.path.join("include", "pynn.h"), os.path.join(package, "include", "pynn.h"))
        self.c_library = [library, os.path.join(package, "include", "pynn.h")]

    def copy_extensions_to_source(self):
        """--inplace: the C library and its header beside the extension too."""
        super().copy_extensions_to_source()
        for built in self.c_library:
            source = os.path.join("pynn", os.path.relpath(built, os.path.join(self.build_lib, "pynn")))
            os.makedirs(os.path.dirname(source), exist_ok=True)
            shutil.copyfile(built, source)
            shutil.copymode(built, source)


def extensions():
    debug = bool(os.environ.get("PYNN_CYTHON_DEBUG"))
    modules = [Extension(
        "pynn._kernels.core",
        sources=["pynn/_kernels/core.pyx"] + C_SOURCES,
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        depends=sorted(glob.glob("pynn/_kernels/*.pxi") + glob.glob("csrc/*.h")),
    )]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": debug,
            "initializedcheck": debug,
            "cdivision": not debug,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithOpenMP})
