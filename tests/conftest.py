"""Test-wide settings: no persistent compilation cache unless a test sets one (a cache in the
home folder would make one test's compilation depend on an earlier session's)."""

import os

os.environ["JAXBYZ_CACHE_DIR"] = "none"
