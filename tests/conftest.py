"""Fixtures and settings of the test suite (its helpers are ``helpers.py``).

The tests are organised by layer, one folder each: ``kernels`` (the compiled kernels and
the backend interface), ``backends`` (the two backends against each other, against central
differences and against the seed), ``api`` (the contract of the public functions:
arguments, caches, layouts, threads), ``networks`` (layers, directions, lengths),
``training`` (optimizers, the model, checkpoints, character models), ``cli`` and
``distributed``.  The last two run whole programs (the command line, Dask clusters) and are
marked ``end_to_end``: ``.ci/run``'s bounds-checked and plain-Python passes, which are for
the kernels, leave them out; every other test, in a folder old or new, is in those passes.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from helpers import BACKENDS, DTYPES

# In CI (CI=true, as .ci/run is run there) the property tests draw the same examples on every
# run, so that a failure there can be reproduced; elsewhere each run explores new ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

# The suite never reads the wisdom file of whoever runs it (plans measured by `fastrnn tune`
# on their machine): every plan is the built-in one, in this process and the processes it
# starts.  The wisdom tests point FASTRNN_WISDOM at files of their own.
os.environ["FASTRNN_WISDOM"] = "off"

END_TO_END_FOLDERS = ("cli", "distributed")
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(item.fspath).resolve().relative_to(_HERE).parts[0]
        if folder in END_TO_END_FOLDERS:
            item.add_marker(pytest.mark.end_to_end)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param
