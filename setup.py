"""Packaging for ms_optim: maintained, cross-backend LARS and THOR for MindSpore."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.abspath(os.path.dirname(__file__))


def _version():
    with open(os.path.join(HERE, "ms_optim", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

setup(
    name="ms_optim",
    version=_version(),
    description="Cross-backend LARS and THOR optimizers for MindSpore (CPU, GPU, Ascend)",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["ms_optim", "ms_optim.*"]),
    # The C++ source of the CPU kernels, compiled on first use (ms_optim/_cpu_kernels.py).
    package_data={"ms_optim": ["_csrc/*.cc"]},
    python_requires=">=3.9,<3.12",
    install_requires=[
        # Tested with 2.10.0; the 2.x Optimizer internals we rely on are stable since 2.2.
        "mindspore>=2.2,<2.11",
        # The MindSpore 2.10 wheel is compiled against NumPy 1.x and crashes on NumPy 2.
        "numpy>=1.20,<2",
    ],
    extras_require={
        "test": ["pytest>=7", "scikit-learn>=1.0", "matplotlib>=3.5", "psutil>=5", "websocket-client>=1.6"],
        "docs": ["sphinx>=7,<9", "sphinx-mathjax-offline>=0.0.2", "sphinx-rtd-theme>=2", "websocket-client>=1.6"],
        "examples": ["scikit-learn>=1.0", "matplotlib>=3.5"],
        # mnist1d generates its data locally (make_dataset); it imports requests, scipy, matplotlib.
        "bench": ["mnist1d>=0.0.2", "requests", "scipy", "matplotlib>=3.5", "scikit-learn>=1.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
