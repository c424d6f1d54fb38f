"""Caches are arguments like any other: checked against their params before a kernel reads
them (a cache changed or built by hand must not make a kernel read or write outside an
array), and owning what the backward pass reads (changing the inputs or the params in
place after the forward pass does not change the gradients)."""

import numpy as np
import pytest

import fastrnn
from helpers import make_problem


def _forward(backend, dtype=np.float64):
    x, a0, _, params = make_problem(4, 6, 5, 3, 7, dtype=dtype, seed=400)
    a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    return x, a0, params, a, cache


BAD_FORWARD_CACHES = {
    "xs with another n_x": (lambda c: c._replace(xs=np.zeros((7, 3, 9))), ValueError, r"cache\.xs"),
    "xs with another batch": (lambda c: c._replace(xs=np.zeros((7, 30, 4))), ValueError, r"cache\.xs"),
    "xs with another T": (lambda c: c._replace(xs=np.zeros((70, 3, 4))), ValueError, r"cache\.xs"),
    "h with another n_a": (lambda c: c._replace(h=np.zeros((8, 3, 60))), ValueError, r"cache\.h"),
    "h of one step too few": (lambda c: c._replace(h=np.zeros((1, 3, 6))), ValueError, r"cache\.h"),
    "h of rank 2": (lambda c: c._replace(h=np.zeros((8, 18))), ValueError, r"cache\.h"),
    "h with NaN": (
        lambda c: c._replace(h=np.full((8, 3, 6), np.nan)),
        ValueError,
        r"cache\.h must be finite",
    ),
    "h of strings": (lambda c: c._replace(h=np.full((8, 3, 6), "a")), TypeError, r"cache\.h"),
    "params that do not fit each other": (
        lambda c: c._replace(params={**c.params, "W_aa": np.zeros((60, 60))}),
        ValueError,
        r"W_aa",
    ),
    "params of another size than the arrays": (
        lambda c: c._replace(params=fastrnn.init_params(4, 60, 5)),
        ValueError,
        r"cache\.h",
    ),
    "params not a dict": (lambda c: c._replace(params=[1, 2]), TypeError, r"cache\.params"),
    "an unknown backend": (lambda c: c._replace(backend="cuda"), ValueError, r"cache\.backend"),
    "a backend that is not a str": (lambda c: c._replace(backend=None), ValueError, r"cache\.backend"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARD_CACHES))
def test_a_forward_cache_that_does_not_fit_is_refused(backend, case):
    change, error, message = BAD_FORWARD_CACHES[case]
    _, _, _, a, cache = _forward(backend)
    with pytest.raises(error, match=message):
        fastrnn.rnn_backward(np.ones(a.shape), change(cache))


BAD_CELL_CACHES = {
    "a_t with another n_a": (lambda c: c._replace(a_t=np.zeros((60, 3))), r"cache\.a_t"),
    "a_prev with another batch": (lambda c: c._replace(a_prev=np.zeros((6, 30))), r"cache\.a_prev"),
    "x_t with another n_x": (lambda c: c._replace(x_t=np.zeros((40, 3))), r"cache\.x_t"),
    "params of another size": (lambda c: c._replace(params=fastrnn.init_params(4, 60, 5)), r"cache\.a_t"),
    "an unknown backend": (lambda c: c._replace(backend="bogus"), r"cache\.backend"),
}


@pytest.mark.parametrize("case", list(BAD_CELL_CACHES))
def test_a_cell_cache_that_does_not_fit_is_refused(backend, case):
    change, message = BAD_CELL_CACHES[case]
    x, a0, _, params = make_problem(4, 6, 5, 3, 1, seed=401)
    a_t, _, cache = fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, backend=backend)
    with pytest.raises(ValueError, match=message):
        fastrnn.rnn_cell_backward(np.ones(a_t.shape), change(cache))


def test_a_cache_in_another_dtype_or_layout_still_works(backend):
    """Arrays of a cache that fit are converted like any argument: same gradients."""
    _, _, _, a, cache = _forward(backend)
    da = np.random.default_rng(402).standard_normal(a.shape)
    expected = fastrnn.rnn_backward(da, cache)
    converted = cache._replace(xs=np.asfortranarray(cache.xs), h=cache.h.astype(np.float32))
    for key, value in fastrnn.rnn_backward(da, converted).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_cell_cache_in_any_layout_still_works(backend, order):
    """A cell cache rebuilt with its arrays in another memory order gives the same gradients
    (a C-ordered a_t and a_prev once reached the Numba kernel in a layout it was not
    compiled for: a Numba typing error instead of gradients)."""
    x, a0, _, params = make_problem(4, 6, 5, 3, 1, seed=403)
    a_t, _, cache = fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, backend=backend)
    da_t = np.random.default_rng(403).standard_normal(a_t.shape)
    expected = fastrnn.rnn_cell_backward(da_t, cache)
    relaid = cache._replace(
        **{name: np.asarray(getattr(cache, name), order=order) for name in ("a_t", "a_prev", "x_t")}
    )
    for key, value in fastrnn.rnn_cell_backward(da_t, relaid).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_changing_inputs_in_place_after_the_forward_pass_changes_no_gradient(backend):
    for layout in (np.ascontiguousarray, np.asfortranarray):  # Fortran: the layout the kernels use, no copy
        x, a0, _, params = make_problem(4, 6, 5, 3, 7, seed=403)
        x = layout(x)
        a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
        da = np.random.default_rng(403).standard_normal(a.shape)
        expected = {key: value.copy() for key, value in fastrnn.rnn_backward(da, cache).items()}
        for array in (x, a0, *params.values()):
            array *= 3.0  # in place, as an optimizer step would
        for key, value in fastrnn.rnn_backward(da, cache).items():
            np.testing.assert_array_equal(value, expected[key], err_msg=f"{layout.__name__}: {key}")

    x, a0, _, params = make_problem(4, 6, 5, 3, 1, seed=404)
    x_t = np.ascontiguousarray(x[:, :, 0])
    a_t, _, cell = fastrnn.rnn_cell_forward(x_t, a0, params, backend=backend)
    expected = {
        key: value.copy() for key, value in fastrnn.rnn_cell_backward(np.ones(a_t.shape), cell).items()
    }
    for array in (x_t, a0, *params.values()):
        array *= 3.0
    for key, value in fastrnn.rnn_cell_backward(np.ones(a_t.shape), cell).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=f"cell: {key}")


def test_hidden_states_the_cache_reads_are_read_only(backend):
    _, _, _, a, _ = _forward(backend)
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0, 0] = 1.0
    a_copy = a.copy()  # a copy is the caller's own
    a_copy[0, 0, 0] = 1.0


def test_masked_arrays_are_refused_not_read_under_the_mask():
    x, a0, y, params = make_problem(4, 6, 5, 3, 7, seed=405)
    masked = {
        "x": (np.ma.masked_array(x, mask=x > 1), a0, y, params),
        "a0": (x, np.ma.masked_array(a0, mask=a0 > 0), y, params),
        "y": (x, a0, np.ma.masked_array(y, mask=y == 0), params),
        r"params\['W_aa'\]": (x, a0, y, {**params, "W_aa": np.ma.masked_array(params["W_aa"])}),
    }
    for name, args in masked.items():
        with pytest.raises(TypeError, match=rf"{name} is a masked array"):
            fastrnn.loss_and_grads(*args)
    with pytest.raises(TypeError, match="x_index is a masked array"):
        fastrnn.loss_and_grads_onehot(np.ma.masked_array(y), a0, y, params)
