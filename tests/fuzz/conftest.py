"""Hypothesis profiles of the fuzz suite: a small fixed-seed run in the default suite, >= 1,000 cases per test
under `-m fuzz` (or LINESIDE_FUZZ_PROFILE=fuzz|quick, which wins)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# derandomize: the same cases every run, so the default suite never fails by chance
settings.register_profile("quick", max_examples=40, derandomize=True, deadline=None, print_blob=True)
settings.register_profile(
    "fuzz",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def pytest_configure(config) -> None:
    chosen = os.environ.get("LINESIDE_FUZZ_PROFILE")
    if not chosen:
        markexpr = config.getoption("markexpr") or ""
        chosen = "fuzz" if "fuzz" in markexpr and "not fuzz" not in markexpr else "quick"
    settings.load_profile(chosen)
