"""Conda package names -> PyPI names, and the conda packages an image built with pip leaves out.

Conda and PyPI name some projects differently (conda's ``pytorch`` is PyPI's ``torch``), and conda
also ships runtime libraries (CUDA, MKL, the C++ runtime) as packages of their own, which on PyPI live
inside the wheels that need them. The names come from conda files of public Azure ML v1 examples
(the tutorials' ``pytorch-env.yml``, the AutoML notebooks' ``automl_env.yml``, curated environments)
and from the conda-forge and ``defaults`` channels. A name in neither table is the same on both.
"""

from __future__ import annotations

from packaging.utils import canonicalize_name

_CUDA = "conda-only CUDA runtime; torch and tensorflow wheels bundle the CUDA libraries they use"
_BLAS = "conda-only BLAS/LAPACK build; numpy, scipy and torch wheels bundle their own"
_OPENMP = "conda-only OpenMP runtime; wheels bundle theirs (libgomp comes with the image)"
_C_RUNTIME = "conda-only C/C++ runtime; the image's Debian system libraries provide it"
_TOOL = "a program, not a Python package; pip has no equivalent"
_META = "conda metapackage that only selects a build variant; pip has no equivalent"

#: Conda name -> (PyPI name, why). Versions carry over unchanged (both follow the project's releases).
RENAMED: dict[str, tuple[str, str]] = {
    "pytorch": ("torch", "conda's name for PyPI's torch"),
    "pytorch-cpu": ("torch", "conda's old CPU-only build of torch; PyPI has one torch"),
    "pytorch-gpu": ("torch", "conda-forge's CUDA build of torch; PyPI has one torch"),
    "py-xgboost": ("xgboost", "conda's name for PyPI's xgboost"),
    "py-xgboost-cpu": ("xgboost", "conda's CPU build of xgboost; PyPI has one xgboost"),
    "py-xgboost-gpu": ("xgboost", "conda's CUDA build of xgboost; PyPI has one xgboost"),
    "tensorflow-gpu": ("tensorflow", "PyPI's tensorflow-gpu has no wheel (a 2.12 stub)"),
    "tensorflow-mkl": ("tensorflow", "conda's MKL build of tensorflow; PyPI has one tensorflow"),
    "opencv": ("opencv-python-headless", "conda's OpenCV; PyPI's headless build needs no X libraries in the image"),
    "py-opencv": ("opencv-python-headless", "conda's OpenCV bindings; PyPI's headless build needs no X libraries"),
    "matplotlib-base": ("matplotlib", "conda's matplotlib without a GUI backend; PyPI has one matplotlib"),
    "pytables": ("tables", "conda's name for PyPI's tables"),
    "pyqt": ("PyQt5", "conda's name for PyPI's PyQt5"),
    "msgpack-python": ("msgpack", "conda's name for PyPI's msgpack"),
    "python-graphviz": ("graphviz", "conda's name for PyPI's graphviz (the Python bindings)"),
    "dask-core": ("dask", "conda's dask without extras; PyPI's dask is the same"),
}

#: Conda packages with no pip form: left out of the image, with the reason.
CONDA_ONLY: dict[str, str] = {
    "cudatoolkit": _CUDA, "cudatoolkit-dev": _CUDA, "cudnn": _CUDA, "nccl": _CUDA, "cuda-toolkit": _CUDA,
    "cuda-version": _CUDA, "cuda-cudart": _CUDA, "cuda-nvcc": _CUDA, "pytorch-cuda": _CUDA, "magma-cuda": _CUDA,
    "mkl": _BLAS, "nomkl": _BLAS, "mkl-service": _BLAS, "mkl_fft": _BLAS, "mkl_random": _BLAS, "mkl-include": _BLAS,
    "blas": _BLAS, "libblas": _BLAS, "libcblas": _BLAS, "liblapack": _BLAS, "openblas": _BLAS, "libopenblas": _BLAS,
    "intel-openmp": _OPENMP, "openmp": _OPENMP, "llvm-openmp": _OPENMP, "_openmp_mutex": _OPENMP,
    "libgomp": _OPENMP,
    "libgcc": _C_RUNTIME, "libgcc-ng": _C_RUNTIME, "libstdcxx-ng": _C_RUNTIME, "libgfortran-ng": _C_RUNTIME,
    "_libgcc_mutex": _C_RUNTIME, "ld_impl_linux-64": _C_RUNTIME, "libffi": _C_RUNTIME, "zlib": _C_RUNTIME,
    "openssl": _C_RUNTIME, "ca-certificates": _C_RUNTIME, "libuuid": _C_RUNTIME, "readline": _C_RUNTIME,
    "ncurses": _C_RUNTIME, "sqlite": _C_RUNTIME, "tk": _C_RUNTIME, "xz": _C_RUNTIME, "bzip2": _C_RUNTIME,
    "libprotobuf": _C_RUNTIME, "arrow-cpp": _C_RUNTIME, "libopencv": _C_RUNTIME,
    "ffmpeg": _TOOL, "unzip": _TOOL, "git": _TOOL, "graphviz": _TOOL, "openmpi": _TOOL, "make": _TOOL,
    "gcc_linux-64": _TOOL, "gxx_linux-64": _TOOL,
    "cpuonly": _META, "pytorch-mutex": _META, "_pytorch_select": _META,
}

#: Conda packages that are the environment itself: ``python`` is recorded, ``pip`` is the installer.
ENVIRONMENT_ITSELF = frozenset({"python", "pip"})

_RENAMED = {canonicalize_name(name): target for name, target in RENAMED.items()}
_CONDA_ONLY = {canonicalize_name(name): why for name, why in CONDA_ONLY.items()}


def pypi_name(conda_name: str) -> tuple[str, str] | None:
    """(PyPI name, why) when conda names the project differently, else None (the same name on both)."""
    return _RENAMED.get(canonicalize_name(conda_name))


def conda_only(conda_name: str) -> str | None:
    """Why the image leaves out a conda-only package (CUDA, MKL, C runtime, tools), else None."""
    return _CONDA_ONLY.get(canonicalize_name(conda_name))
