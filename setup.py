"""Builds the one C extension; everything else is declared in pyproject.toml.

registry/index/_mih.c holds the multi-index kernels (plain C against the CPython API: gcc and
the Python headers, no numpy headers). No -march flags: popcount is chosen at run time.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("registry.index._mih", ["registry/index/_mih.c"],
                             extra_compile_args=["-O3", "-Wall"])])
