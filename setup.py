"""The one thing pyproject.toml cannot say yet: the optional compiled step of exitstack_otel.eager.

Optional: where it does not build (no C compiler, no Python headers, another interpreter), the
install goes on and eager.py runs its pure-Python path, which the tests cover as well.
"""

import platform

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "exitstack_otel._first_step",
            sources=["src/exitstack_otel/_first_step.c"],
            optional=True,
        )
    ]
    if platform.python_implementation() == "CPython"
    else [],
)
