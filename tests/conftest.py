"""Test-session settings shared by every test module and the subprocesses they start.

Most tests run small programs once, so XLA's compile time, not their run time, dominates
the suite: ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (set here before JAX is imported, and
inherited by the experiment, notebook and worker subprocesses) compiles with XLA's
cheap passes only; the programs compute the same functions. It cut the 2-core suite from
13.3 to 9.9 minutes. ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest`` tests the optimized
programs instead. The benchmark tests' ``--quick`` runs inherit it too: they check the
scripts' output, never their speed.
"""

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
