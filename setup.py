"""Only the C extension lives here; all other metadata is declarative, in setup.cfg.

``markd.store._lookup`` (the store's lookup in C, see ``daemon/markd/store/fastpath.py``) is
optional: a machine without a C compiler still installs markd and uses the Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "markd.store._lookup",
            sources=["daemon/markd/store/_lookup.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
