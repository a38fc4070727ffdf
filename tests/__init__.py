"""autotune tests.

A package, so that `tests.*` imports resolve here rather than to the `tests` package that verl and
OpenRLHF install into site-packages.
"""
