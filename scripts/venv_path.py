"""Put the venv's bin first on PATH, as activation does, in every process the venv runs.

`make` copies this file into the venv's site-packages as `_lrsched_venv_path.py`, with a
`lrsched-venv-path.pth` that imports it: the venv's interpreter then runs it at every start
(site.py). So `.venv/bin/dvc repro`, from a shell that was never activated, finds the stages'
`lrsched ...` commands (dvc.yaml; the images run the same commands with lrsched installed
system-wide). It acts in each process of the venv on its own, whatever environment started it:
`dvc exp run` in its temp workspace, the detached `dvc queue start` workers, a spawned
multiprocessing child, `python -I` (which drops PYTHON* variables and the user site, not
site-packages); only `python -S` (no site at all) goes without.

Not chosen: a sitecustomize.py in the venv (only the first on sys.path is imported: a PYTHONPATH
one, as tests/conftest.py's import tracer, silently replaces it); rewriting the console scripts
(pip regenerates them).
"""

import os
import sys


def _venv_bin_first() -> None:
    venv_bin = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if venv_bin and path.split(os.pathsep)[0] != venv_bin:
        os.environ["PATH"] = os.pathsep.join(filter(None, (venv_bin, path)))


_venv_bin_first()
