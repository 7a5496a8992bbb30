"""Test-suite settings: the hypothesis profile named by HYPOTHESIS_PROFILE.

'ci' (set by .ci/run) derandomizes hypothesis, so a CI run is reproducible: the same
generated programs and values every time. Run locally without it (or with
SPMD_FUZZ_EXAMPLES=2000) to explore new ones.
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
