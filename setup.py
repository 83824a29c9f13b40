"""The one thing pyproject.toml cannot say yet: the optional compiled parts of the hot path.

``_first_step`` is the unwind's first step (exitstack_otel.eager), ``_identity`` every push's key
(exitstack_otel.naming), ``_fold`` the in-process histograms' fold (exitstack_otel.sdk_histograms).
Optional: where they do not build (no C compiler, no Python headers,
another interpreter), the install goes on and the pure-Python code runs, which the tests cover too.
"""

import platform

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(f"exitstack_otel.{name}", sources=[f"src/exitstack_otel/{name}.c"], optional=True)
        for name in ("_first_step", "_identity", "_fold")
    ]
    if platform.python_implementation() == "CPython"
    else [],
)
