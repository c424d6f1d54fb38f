"""Generation in one compiled call (``RNN.generate``, ``text.sample``): the compiled and the
reference generators agree, the filters and the stop symbol do what they say, and bad
arguments are errors naming the argument."""

import numpy as np
import pytest

import fastrnn
from fastrnn import text
from fastrnn.backends import numba_kernels, numpy_backend
from fastrnn.model import RNN
from fastrnn.validation import NonFiniteResultError

VOCAB = "abcdefghijklmnopqrst"  # 20 symbols


def char_model(num_layers=1, nonlinearity="tanh", dtype=np.float64, n_a=16, seed=1, backend=None):
    model = RNN(len(VOCAB), n_a, len(VOCAB), num_layers=num_layers, dtype=dtype, seed=seed,
                nonlinearity=nonlinearity, backend=backend)  # fmt: skip
    for key in model.params:  # weights large enough that the outputs are far from uniform
        model.params[key] *= 3
    model.vocab = VOCAB
    return model


def cycle_model(n=5, num_layers=1, dtype=np.float64, backend=None):
    """A model whose every output is, to 1e-20, the symbol after its input: s -> s + 1 mod n."""
    model = RNN(n, n, n, num_layers=num_layers, dtype=dtype, seed=0, backend=backend)
    for key in model.params:
        model.params[key][...] = 0
    for layer in range(num_layers):
        suffix = f"_l{layer}" if layer else ""
        model.params["W_ax" + suffix][...] = 20 * np.eye(n)  # a<t> = tanh(20 e_s) = e_s
    model.params["W_ya"][...] = 60 * np.roll(np.eye(n), 1, axis=0)  # logit of s + 1: 60, others 0
    model.vocab = "vwxyz"[:n]
    return model


def both_backends(model, function):
    results = {}
    for backend in ("numpy", "numba"):
        model.backend = backend
        results[backend] = function(model)
    return results["numpy"], results["numba"]


OPTIONS = [
    dict(),
    dict(prime="hello", temperature=0.7),
    dict(prime="q", top_k=4),
    dict(top_p=0.6, temperature=1.3, n_samples=3),
    dict(prime="abc", top_k=6, top_p=0.8, n_samples=2),
    dict(stop="e", n_samples=5),
    dict(prime="tea", n_samples=40, top_p=0.9, stop="a"),  # 40 streams: two shards
]


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_compiled_and_reference_generators_draw_the_same_symbols(num_layers, nonlinearity, options):
    model = char_model(num_layers, nonlinearity)
    reference, compiled = both_backends(model, lambda m: text.sample(m, 60, seed=5, **options))
    assert compiled == reference
    samples = compiled if isinstance(compiled, list) else [compiled]
    assert all(set(s) <= set(VOCAB) for s in samples)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_a_model_that_is_sure_generates_its_cycle_exactly(dtype, num_layers, backend):
    model = cycle_model(num_layers=num_layers, dtype=dtype, backend=backend)
    assert text.sample(model, 12, prime="x", seed=0) == "x" + "yzvwxyzvwxyz"
    for sample in text.sample(model, 7, seed=3, n_samples=6):  # each from its own first symbol
        start = "vwxyz".index(sample[0])
        assert sample == "".join("vwxyz"[(start + k) % 5] for k in range(7))


def test_a_trained_cycle_is_generated_exactly():
    run = text.train_char_rnn("abcde" * 60, hidden=16, seq_length=10, batch=4, steps=300, seed=0, lr=0.02)
    assert text.sample(run.model, 20, prime="c", seed=0, top_k=1) == "c" + "deabc" * 4
    assert text.sample(run.model, 20, prime="c", seed=0, temperature=0.2) == "c" + "deabc" * 4


@pytest.mark.parametrize("num_layers", [1, 2])
def test_top_k_1_is_greedy(num_layers, backend):
    model = char_model(num_layers, backend=backend)
    generated = text.sample(model, 30, prime="fast", seed=0, top_k=1)
    symbols = text.CharVocab(VOCAB).encode(generated)
    x = np.eye(len(VOCAB))[symbols[:-1]].T[:, None, :]  # (n_x, 1, T)
    _, y_hat = model.forward(x)
    np.testing.assert_array_equal(symbols[4:], y_hat[:, 0, 3:].argmax(axis=0))
    # a tiny temperature is greedy too, and no seed changes a greedy text
    assert text.sample(model, 30, prime="fast", seed=1, temperature=1e-6) == generated
    assert text.sample(model, 30, prime="fast", seed=2, top_k=1, temperature=50.0) == generated


def draws(logits, u_grid, **filters):
    """The symbol each backend's draw gives for each u of ``u_grid``."""
    settings = dict(temperature=1.0, top_k=len(logits), top_p=1.0) | filters
    reference = [numpy_backend.draw_symbol(logits, settings["temperature"], settings["top_k"],
                                           settings["top_p"], u) for u in u_grid]  # fmt: skip
    weights, order, zero_bias = np.empty(len(logits)), np.empty(len(logits), np.intp), np.zeros(len(logits))
    compiled = [numba_kernels.draw_symbol(logits, zero_bias, settings["temperature"], settings["top_k"],
                                          settings["top_p"], u, weights, order) for u in u_grid]  # fmt: skip
    assert compiled == reference
    return np.array(compiled)


PROBABILITIES = np.array([0.05, 0.3, 0.5, 0.15])  # ranked: 2, 1, 3, 0
U_GRID = (np.arange(10_000) + 0.5) / 10_000


def test_the_draw_follows_the_distribution():
    symbols = draws(np.log(PROBABILITIES), U_GRID)
    np.testing.assert_allclose(np.bincount(symbols, minlength=4) / U_GRID.size, PROBABILITIES, atol=2e-4)
    # in index order: u walks the cumulative probabilities 0.05, 0.35, 0.85, 1
    assert draws(np.log(PROBABILITIES), [0.0, 0.04, 0.06, 0.84, 0.86, 1 - 1e-16]).tolist() == [
        0,
        0,
        1,
        2,
        3,
        3,
    ]


@pytest.mark.parametrize(
    "top_p, kept",
    [(0.4, [2]), (0.5, [2]), (0.75, [2, 1]), (0.9, [2, 1, 3]), (0.99, [2, 1, 3, 0]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_prefix_whose_mass_reaches_p(top_p, kept):
    symbols = draws(np.log(PROBABILITIES), U_GRID, top_p=top_p)
    frequencies = np.bincount(symbols, minlength=4) / U_GRID.size
    expected = np.zeros(4)
    expected[kept] = PROBABILITIES[kept] / PROBABILITIES[kept].sum()
    np.testing.assert_allclose(frequencies, expected, atol=2e-4)


@pytest.mark.parametrize(
    "top_k, kept", [(1, [2]), (2, [2, 1]), (3, [2, 1, 3]), (4, [0, 1, 2, 3]), (9, [0, 1, 2, 3])]
)
def test_top_k_keeps_the_k_likeliest(top_k, kept):
    frequencies = np.bincount(draws(np.log(PROBABILITIES), U_GRID, top_k=top_k), minlength=4) / U_GRID.size
    expected = np.zeros(4)
    expected[kept] = PROBABILITIES[kept] / PROBABILITIES[kept].sum()
    np.testing.assert_allclose(frequencies, expected, atol=2e-4)
    # top_k then top_p: of the 3 likeliest (mass 0.95), 0.75 of it is 0.7125: symbols 2 and 1
    both = np.bincount(draws(np.log(PROBABILITIES), U_GRID, top_k=3, top_p=0.75), minlength=4)
    assert both[[0, 3]].sum() == 0 and both[[1, 2]].all()


def test_ties_rank_the_lower_symbol_first_and_temperature_shapes_the_distribution():
    tied = np.zeros(6)
    assert set(draws(tied, U_GRID, top_k=2).tolist()) == {0, 1}
    assert set(draws(tied, U_GRID).tolist()) == set(range(6))
    logits = np.log(PROBABILITIES)
    assert set(draws(logits, U_GRID, temperature=1e-300).tolist()) == {2}  # greedy, no inf - inf
    flat = np.bincount(draws(logits, U_GRID, temperature=1e12), minlength=4) / U_GRID.size
    np.testing.assert_allclose(flat, 0.25, atol=1e-3)
    sharp = np.bincount(draws(logits, U_GRID, temperature=0.5), minlength=4) / U_GRID.size
    np.testing.assert_allclose(sharp, PROBABILITIES**2 / (PROBABILITIES**2).sum(), atol=2e-4)


def test_draws_of_non_finite_logits_stay_in_range():
    for logits in (np.full(5, np.nan), np.array([np.inf, 0, 1, -np.inf, 2.0])):
        with np.errstate(invalid="ignore"):  # the reference's NaNs (generate reports them)
            assert all(0 <= s < 5 for s in draws(logits, [0.0, 0.5, 0.999]))


def test_stop_ends_each_stream_after_its_own_first_stop_symbol(backend):
    model = char_model(backend=backend)
    samples = text.sample(model, 80, stop="e", seed=4, n_samples=40)
    lengths = {len(s) for s in samples}
    assert len(lengths) > 3  # the streams stopped at different steps
    for sample in samples:
        assert "e" not in sample[:-1]
        assert sample.endswith("e") or len(sample) == 80
    primed = text.sample(model, 80, prime="eee", stop="e", seed=4, n_samples=5)  # the prime's do not count
    assert all(s.startswith("eee") and len(s) > 3 for s in primed)
    no_stop = text.sample(model, 80, seed=4, n_samples=40)
    assert [s for s in no_stop if "e" not in s] == [s for s in samples if "e" not in s]


def test_same_seed_same_text_and_results_by_count(backend):
    model = char_model(backend=backend)
    one = text.sample(model, 50, seed=9)
    assert isinstance(one, str) and len(one) == 50
    assert one == text.sample(model, 50, seed=9) != text.sample(model, 50, seed=10)
    many = text.sample(model, 50, seed=9, n_samples=3)
    assert isinstance(many, list) and len(many) == 3 and many == text.sample(model, 50, seed=9, n_samples=3)
    assert text.sample(model, 50, seed=np.random.default_rng(9)) == one  # a Generator as the seed
    assert text.sample(model, 0) == "" and text.sample(model, 0, prime="ab") == "ab"
    assert text.sample(model, 50, seed=9, top_k=10**30) == one  # beyond the vocabulary: every symbol
    assert text.sample(model, 1, prime="ab", seed=0)[:2] == "ab"


def test_generate_works_on_symbols_and_needs_n_x_equal_n_y(backend):
    model = cycle_model(backend=backend)
    np.testing.assert_array_equal(model.generate(6, prime=[3], seed=0), [3, 4, 0, 1, 2, 3, 4])
    assert model.generate(6, prime=np.array([3], dtype=np.int8), seed=0).dtype == np.intp
    streams = model.generate(4, seed=0, n_samples=2, stop=2)
    assert isinstance(streams, list) and all(s[-1] == 2 or s.size == 4 for s in streams)
    other = RNN(4, 8, 3, seed=0, backend=backend)
    with pytest.raises(ValueError, match="n_x == n_y"):
        other.generate(5)


@pytest.mark.parametrize(
    "arguments, error, match",
    [
        (dict(n_steps=-1), ValueError, "n_steps"),
        (dict(n_steps=2.5), TypeError, "n_steps"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=1.5), TypeError, "top_k"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(stop=20), ValueError, "stop"),
        (dict(stop=-1), ValueError, "stop"),
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(prime=[0, 20]), ValueError, "prime"),
        (dict(prime=[-1]), ValueError, "prime"),
        (dict(prime=[0.5]), TypeError, "prime"),
        (dict(prime=[[1, 2]]), ValueError, "prime"),
        (dict(seed="x"), TypeError, None),  # numpy.random.default_rng's own message
    ],
)
def test_bad_arguments_are_errors_naming_them(arguments, error, match, backend):
    model = char_model(backend=backend)
    arguments = dict(n_steps=5) | arguments
    with pytest.raises(error, match=match):
        model.generate(arguments.pop("n_steps"), **arguments)


def test_bad_text_arguments_and_models_that_cannot_generate():
    model = char_model()
    for bad_stop in ("ab", "", "\u20ac", 3):
        with pytest.raises(ValueError, match="stop|vocabulary"):
            text.sample(model, 5, stop=bad_stop)
    with pytest.raises(TypeError, match="prime"):
        text.sample(model, 5, prime=[1, 2])
    with pytest.raises(ValueError, match="n_chars"):
        text.sample(model, -1)
    bidirectional = RNN(20, 8, 20, bidirectional=True, seed=0)
    bidirectional.vocab = VOCAB
    with pytest.raises(ValueError, match="bidirectional"):
        text.sample(bidirectional, 5)
    with pytest.raises(ValueError, match="bidirectional"):
        bidirectional.generate(5)


def test_outputs_that_overflow_are_reported(backend):
    model = RNN(4, 4, 4, dtype=np.float32, seed=0, nonlinearity="relu", backend=backend)
    model.params["W_ax"][...] = 1e20
    model.params["W_ya"][...] = 1e20
    with pytest.raises(NonFiniteResultError, match="float32"):
        model.generate(5, prime=[1], seed=0)


def test_prime_runs_as_one_forward_pass(monkeypatch):
    calls = []
    real = fastrnn.api.rnn_forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(fastrnn.api, "rnn_forward", counting)
    model = char_model(num_layers=2)
    text.sample(model, 10, prime="abcdefghij" * 5, seed=0)
    assert calls == [(20, 1, 49)]  # every symbol of the prime but the last, which is fed first
