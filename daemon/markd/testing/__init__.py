"""Test machinery: what markd's tests (and an integrator's) use to drive markd against
emulated devices and services. Production code never imports it (``tests/unit/test_layers.py``
fails if it does); it may import anything of markd.
"""
