"""Choosing a backend: argument, then FASTRNN_BACKEND, then Numba where it imports."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from helpers import make_problem


def test_both_backends_are_available():
    assert fastrnn.available_backends() == ("numba", "numpy")


def _backend_used(**kwargs):
    x, a0, _, params = make_problem(2, 3, 2, 1, 2, seed=50)
    return fastrnn.rnn_forward(x, a0, params, **kwargs)[2].backend


def test_default_is_numba(monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    assert _backend_used() == "numba"


@pytest.mark.parametrize(
    "value, expected", [("numpy", "numpy"), ("numba", "numba"), (" NumPy ", "numpy"), ("", "numba")]
)
def test_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv("FASTRNN_BACKEND", value)
    assert _backend_used() == expected


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "numba")
    assert _backend_used(backend="numpy") == "numpy"


def test_unknown_backend_argument():
    with pytest.raises(ValueError, match=r"backend='cuda'.*'numba', 'numpy'"):
        _backend_used(backend="cuda")


def test_backend_of_wrong_type():
    with pytest.raises(TypeError, match="backend must be a str"):
        _backend_used(backend=1)


def test_unknown_backend_in_environment(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "torch")
    with pytest.raises(ValueError, match=r"FASTRNN_BACKEND='torch'.*'numba', 'numpy'"):
        _backend_used()
    with pytest.raises(ValueError, match="FASTRNN_BACKEND"):
        fastrnn.loss_and_grads(
            np.zeros((2, 1, 2)), np.zeros((3, 1)), np.zeros((1, 2), int), fastrnn.init_params(2, 3, 2)
        )


def test_without_numba():
    # A fresh interpreter in which `import numba` fails, as on a machine without it.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        import numpy as np
        import fastrnn
        assert fastrnn.available_backends() == ("numpy",), fastrnn.available_backends()
        params = fastrnn.init_params(3, 4, 2, seed=0)
        x, a0, y = np.ones((3, 2, 5)), np.zeros((4, 2)), np.zeros((2, 5), int)
        loss, grads = fastrnn.loss_and_grads(x, a0, y, params)
        assert np.isfinite(loss) and set(grads) >= {"dW_aa", "dx"}
        assert fastrnn.rnn_forward(x, a0, params)[2].backend == "numpy"
        try:
            fastrnn.loss_and_grads(x, a0, y, params, backend="numba")
        except ImportError as error:
            assert "backend='numba'" in str(error) and "numpy" in str(error), error
        else:
            raise AssertionError("backend='numba' without numba did not raise")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "numba" not in result.stderr.lower()
