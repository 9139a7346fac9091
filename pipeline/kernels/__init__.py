"""Compiled kernels of the CPU engine: many runs of one model as one computation.

Every array holds the runs on its last, contiguous axis, so that each loop over the runs
compiles to SIMD lanes, one run per lane, each run's arithmetic in one fixed order. Nothing
here reassociates a sum or contracts a multiply and an add into one fused operation (numba
compiles without fast-math, and LLVM contracts only under it), and the elementary functions
are built from IEEE arithmetic (:mod:`pipeline.kernels.elementary`) rather than taken from
the C library, whose code glibc picks by CPU. SSE2, AVX2 and AVX-512 code therefore give the
same bits (``tests/test_portability.py`` and ``tests/test_kernels.py``).
"""

import hashlib
import os
import tempfile
from pathlib import Path

import numba


def _cache_folder() -> Path:
    """Where numba keeps the compiled kernels: a folder per content of this package.

    numba checks a cached kernel against its own file's timestamp only, not against the files
    of the functions it inlines (``elementary.exp`` into ``loss.cross_entropy``, say): after an
    edit of one of those, it would load the old machine code. A folder named by the hash of
    every source file here makes any edit compile afresh. numba's index inside it tells CPUs
    and numba versions apart.
    """
    sources = sorted(Path(__file__).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources))
    folder = Path("lrsched") / "kernels" / digest.hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        (base / folder).mkdir(parents=True, exist_ok=True)
        return base / folder
    except OSError:  # a read-only home: this machine's temporary folder, per user
        return Path(tempfile.gettempdir()) / f"lrsched-{os.getuid()}" / folder


numba.config.CACHE_DIR = str(_cache_folder())  # type: ignore[attr-defined]
