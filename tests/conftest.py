"""Test-session settings shared by every test module and the subprocesses they start.

Most tests run small programs once, so JAX's tracing and lowering and XLA's compile time,
not their run time, dominate the suite:

- ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (set here before JAX is imported, and inherited by
  the experiment, notebook and worker subprocesses) compiles with XLA's cheap passes only;
  the programs compute the same functions. It cut the 2-core suite from 13.3 to 9.9
  minutes. ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest`` tests the optimized programs
  instead. The benchmark tests' ``--quick`` runs inherit it too: they check the scripts'
  output, never their speed.
- JAX's persistent compilation cache in a fresh temporary folder, made by the first
  process (pytest's controller), shared by the xdist workers and every subprocess, and
  removed when that process exits: nothing is reused across sessions. Resumed runs, the
  experiments' subprocesses and rebuilt closures load the executables compiled before
  (the whole suite 9:22 -> 8:47 minutes on 2 cores; the killed-run resume test alone 26
  -> 20 s). No size limit: a limit makes JAX lock and rescan the folder on every entry,
  which made the suite 2.5x slower. Unlocked, an entry read while half written fails to
  load, which JAX reports as a warning and compiles instead. Set
  ``JAX_COMPILATION_CACHE_DIR`` yourself to keep the cache, or to an empty string to turn
  it off.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="dmeta-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # the small programs too
    )
