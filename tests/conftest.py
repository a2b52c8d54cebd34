"""Test-wide settings: no compilation cache from an earlier session (a cache in the home folder
would make one test's compilation depend on it), but one cache per test session, in a fresh
temporary folder shared by the xdist workers: tests that build the same program (the same small
configurations recur across files) compile it once. A test that sets its own cache folder
(``jaxbyz.cache.enable``) still starts from an empty one."""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import jax

os.environ["JAXBYZ_CACHE_DIR"] = "none"  # the library's default folder: never in tests
SESSION = os.environ.setdefault("JAXBYZ_TEST_SESSION", uuid.uuid4().hex)  # workers inherit it
SESSION_CACHE = Path(tempfile.gettempdir()) / f"jaxbyz-test-cache-{SESSION}"
jax.config.update("jax_compilation_cache_dir", str(SESSION_CACHE))


def pytest_unconfigure(config):
    """The controller (or a run without xdist) removes the session's cache at the end."""
    if not hasattr(config, "workerinput"):
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)
