"""Plans measured on this machine (``fastrnn.tune``) and kept in the wisdom file
(``fastrnn.wisdom``): what calls run once a plan is recorded, in this process and in fresh
ones, and what happens with files that are damaged, another machine's, or switched off."""

import json

import numpy as np
import pytest

import fastrnn
from fastrnn import api, parallel, tuning, wisdom
from fastrnn.parallel import Plan
from fastrnn.problems import make_problem
from helpers import digest_in_fresh_process

# A problem whose built-in plan is one shard (too little work for threads), so that a
# recorded plan of two shards is seen in the results' bits.
SIZES = (6, 16, 5, 12, 9)


@pytest.fixture
def wisdom_file(tmp_path, monkeypatch):
    """A wisdom file of this test's own (not yet written), read afresh."""
    file = tmp_path / "cache" / "wisdom.json"
    monkeypatch.setenv(wisdom.WISDOM_VARIABLE, str(file))
    wisdom.reload()
    yield file
    monkeypatch.undo()
    wisdom.reload()


def key_of(inputs, params, call="loss_and_grads", lengths=None, backend=None):
    impl, dims, planned_as, (path, *sizes) = api.planning_key(inputs, params, lengths, backend, call)
    return wisdom.key_text(impl.NAME, dims.dtype.name, planned_as, path, *sizes,
                           parallel.available_cores(), parallel.default_budget())  # fmt: skip


def record(key, plan):
    wisdom.record({key: (plan, {parallel.describe(plan): 1.0})})


def digest(*arrays):
    return [np.ascontiguousarray(a).tobytes() for a in arrays]


def test_without_a_file_calls_run_the_built_in_plans(wisdom_file):
    x, _, _, params = make_problem(65, 128, 65, 32, 64, dtype=np.float32)
    assert not wisdom_file.exists()
    assert wisdom.entries() == {}
    for call in ("loss_and_grads", "rnn_forward", "rnn_backward", "loss", "loss_onehot"):
        assert fastrnn.plan_of(x, params, call=call) == parallel.plan(None, 32, 64, 65, 128, 65)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_recorded_plan_is_what_calls_of_its_key_run(wisdom_file, backend):
    x, a0, y, params = make_problem(*SIZES, seed=3)
    built_in = fastrnn.plan_of(x, params, backend=backend)
    assert built_in.shards == 1
    record(key_of(x, params, backend=backend), Plan(2, 2, 1))
    assert json.loads(wisdom_file.read_text())["format"] == wisdom.FORMAT
    assert fastrnn.plan_of(x, params, backend=backend) == Plan(2, 2, 1)
    # Only that key: other calls, dtypes and backends keep their plans.
    assert fastrnn.plan_of(x, params, backend=backend, call="loss") == built_in
    assert fastrnn.plan_of(x, params, backend=backend, call="rnn_forward") == built_in
    x32, _, _, params32 = make_problem(*SIZES, seed=3, dtype=np.float32)
    assert fastrnn.plan_of(x32, params32, backend=backend) == built_in
    # The step runs it: the same bits as two workers asked for.
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    loss2, grads2 = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=2)
    assert loss == loss2
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads2)


def test_rnn_backward_runs_its_forward_pass_recorded_plan(wisdom_file):
    x, a0, _, params = make_problem(*SIZES, seed=4)
    record(key_of(x, params, call="rnn_forward"), Plan(2, 2, 1))
    assert fastrnn.plan_of(x, params, call="rnn_backward") == Plan(2, 2, 1)
    da = np.random.default_rng(0).standard_normal((16, SIZES[3], SIZES[4]))
    ours = fastrnn.rnn_backward(da, fastrnn.rnn_forward(x, a0, params)[2])
    two = fastrnn.rnn_backward(da, fastrnn.rnn_forward(x, a0, params, workers=2)[2])
    assert all(np.array_equal(ours[k], two[k]) for k in two)


def test_packed_calls_keep_their_own_plans(wisdom_file):
    x, _, _, _ = make_problem(*SIZES, seed=5)
    params = fastrnn.init_params(6, 16, 5, num_layers=2, seed=0)
    lengths = np.arange(1, SIZES[3] + 1) % SIZES[4] + 1
    key = key_of(x, params, lengths=lengths)
    assert " packed " in key
    record(key, Plan(2, 2, 1))
    assert fastrnn.plan_of(x, params, lengths=lengths) == Plan(2, 2, 1)
    assert fastrnn.plan_of(x, params).shards == 1  # full lengths: another key


def test_recorded_plans_hold_in_every_process_and_workers_still_fixes_them(wisdom_file):
    x, _, _, params = make_problem(*SIZES, seed=3)
    record(key_of(x, params), Plan(2, 2, 1))
    script = (
        "import hashlib, numpy as np, fastrnn\n"
        "from fastrnn.problems import make_problem\n"
        f"x, a0, y, p = make_problem(*{SIZES}, seed=3)\n"
        "loss, grads = fastrnn.loss_and_grads(x, a0, y, p, workers=WORKERS)\n"
        "print(fastrnn.parallel.describe(fastrnn.plan_of(x, p, workers=WORKERS)),"
        " hashlib.sha256(b''.join(np.ascontiguousarray(grads[k]).tobytes() for k in sorted(grads))).hexdigest())\n"
    )
    env = {wisdom.WISDOM_VARIABLE: str(wisdom_file)}
    measured = digest_in_fresh_process(script.replace("WORKERS", "None"), env=env)
    assert measured == digest_in_fresh_process(script.replace("WORKERS", "None"), env=env)
    assert measured == digest_in_fresh_process(script.replace("WORKERS", "2"), env=env)
    assert measured.startswith("2 shards")
    fixed = digest_in_fresh_process(script.replace("WORKERS", "None"), env=dict(env, FASTRNN_WORKERS="1"))
    assert fixed.startswith("1 shard,") or fixed.startswith("1 shard x")


def test_a_damaged_file_is_a_warning_and_the_built_in_plans(wisdom_file):
    x, _, _, params = make_problem(*SIZES)
    wisdom_file.parent.mkdir(parents=True)
    for text in ("{not json", json.dumps({"format": 99, "machines": {}}), json.dumps([1, 2])):
        wisdom_file.write_text(text)
        wisdom.reload()
        with pytest.warns(RuntimeWarning, match="ignoring the wisdom file"):
            assert fastrnn.plan_of(x, params) == parallel.plan(None, *SIZES[3:], *SIZES[:3])
    # forget removes a damaged file; recording over one replaces it with a good one.
    assert wisdom.forget() == 0 and not wisdom_file.exists()
    wisdom_file.write_text("{not json")
    with pytest.warns(RuntimeWarning):
        record(key_of(x, params), Plan(2, 2, 1))
    wisdom.reload()
    assert fastrnn.plan_of(x, params) == Plan(2, 2, 1)


def test_entries_a_call_cannot_run_are_ignored(wisdom_file):
    x, _, _, params = make_problem(*SIZES)
    key = key_of(x, params)
    cores = parallel.available_cores()
    bad = [
        [SIZES[3] + 1, 1, 1],
        [2, cores + 1, 1],
        [1, 1, cores + 1],
        [True, 1, 1],
        [1, 1, 1.5],
        [1, 1],
        "two",
    ]
    for plan in bad:
        wisdom_file.parent.mkdir(parents=True, exist_ok=True)
        plans = {key: {"plan": plan, "seconds": {}}}
        wisdom_file.write_text(json.dumps({"format": 1, "machines": {wisdom.machine(): {"plans": plans}}}))
        wisdom.reload()
        assert wisdom.entries() == {}, plan
        assert fastrnn.plan_of(x, params) == parallel.plan(None, *SIZES[3:], *SIZES[:3])


def test_other_machines_plans_are_kept_apart(wisdom_file):
    x, _, _, params = make_problem(*SIZES)
    key = key_of(x, params)
    theirs = {"plans": {key: {"plan": [2, 2, 1], "seconds": {}}}}
    wisdom_file.parent.mkdir(parents=True)
    wisdom_file.write_text(json.dumps({"format": 1, "machines": {"another machine": theirs}}))
    wisdom.reload()
    assert fastrnn.plan_of(x, params).shards == 1
    record(key, Plan(1, 1, 1))
    assert json.loads(wisdom_file.read_text())["machines"]["another machine"] == theirs
    assert wisdom.forget() == 1
    machines = json.loads(wisdom_file.read_text())["machines"]
    assert list(machines) == ["another machine"] and wisdom.entries() == {}


def test_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(wisdom.WISDOM_VARIABLE, "off")
    wisdom.reload()
    try:
        assert wisdom.path() is None
        with pytest.raises(OSError, match="off"):
            record("k", Plan(1, 1, 1))
        x, _, _, params = make_problem(*SIZES)
        result = fastrnn.tune(x, params, repeat=1, save=False)
        assert result.recorded is None and wisdom.entries() == {}
    finally:
        monkeypatch.undo()
        wisdom.reload()


def test_default_path_is_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(wisdom.WISDOM_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert wisdom.path() == str(tmp_path / "fastrnn" / "wisdom.json")


@pytest.fixture
def quick_tuning(monkeypatch):
    monkeypatch.setattr(tuning, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(tuning, "MIN_SAMPLE_SECONDS", 0.0)


@pytest.mark.parametrize("call", ["loss_and_grads", "rnn_forward", "loss"])
def test_tune_records_one_of_its_candidates_and_calls_run_it(wisdom_file, quick_tuning, call):
    x, _, _, params = make_problem(*SIZES, seed=2)
    result = fastrnn.tune(x, params, call=call, repeat=2)
    assert result.key == key_of(x, params, call=call)
    assert result.built_in == parallel.plan(None, *SIZES[3:], *SIZES[:3])
    assert result.plan in result.seconds and result.built_in in result.seconds
    assert set(result.seconds) >= set(parallel.candidate_plans(*SIZES[3:], *SIZES[:3], 2, 2)[:1])
    assert all(s > 0 for s in result.seconds.values()) and result.speedup() > 0
    assert result.recorded == str(wisdom_file)
    assert fastrnn.plan_of(x, params, call=call) == result.plan
    stored = json.loads(wisdom_file.read_text())["machines"][wisdom.machine()]["plans"][result.key]
    assert tuple(stored["plan"]) == tuple(result.plan) and len(stored["seconds"]) == len(result.seconds)


def test_tune_onehot_inputs_and_the_numpy_backend(wisdom_file, quick_tuning):
    _, _, y, params = make_problem(*SIZES)
    result = fastrnn.tune(y % SIZES[0], params, backend="numpy", repeat=1, save=False)
    assert result.key.startswith("numpy float64 loss_and_grads dense") and " n_x=0 " in result.key
    assert result.recorded is None and wisdom.entries() == {}


def test_tune_arguments(wisdom_file, quick_tuning, monkeypatch):
    x, _, y, params = make_problem(*SIZES)
    with pytest.raises(ValueError, match="call must be one of"):
        fastrnn.tune(x, params, call="train")
    with pytest.raises(ValueError, match="repeat"):
        fastrnn.tune(x, params, repeat=0)
    with pytest.raises(ValueError, match="takes dense inputs"):
        fastrnn.tune(y % SIZES[0], params, call="rnn_forward")
    with pytest.raises(ValueError, match="call must be one of"):
        fastrnn.plan_of(x, params, call=None)
    monkeypatch.setattr(parallel, "default_workers", lambda: 3)
    with pytest.raises(ValueError, match="FASTRNN_WORKERS=3"):
        fastrnn.tune(x, params)


def test_choice_prefers_fewer_threads_within_the_margin():
    one, blas, shards = Plan(1, 1, 1), Plan(1, 1, 2), Plan(2, 2, 1)
    assert tuning._choose({one: 1.00, blas: 0.99, shards: 0.98}) == one  # within 3%: fewer threads
    assert tuning._choose({one: 1.00, blas: 0.90, shards: 0.80}) == shards
    assert tuning._choose({one: 1.00, blas: 0.79, shards: 0.80}) == blas  # same threads: faster
    assert tuning._choose({Plan(1, 1, None): 1.0}) == Plan(1, 1, None)


def test_candidate_plans():
    assert parallel.candidate_plans(64, 50, 256, 512, 256, 16, 16) == [
        Plan(1, 1, 1), Plan(1, 1, 16), Plan(2, 2, 1), Plan(4, 4, 1), Plan(8, 8, 1), Plan(16, 16, 1)
    ]  # fmt: skip
    assert parallel.candidate_plans(3, 50, 256, 512, 256, 6, 6) == [
        Plan(1, 1, 1),
        Plan(1, 1, 6),
        Plan(2, 2, 1),
    ]
    assert parallel.candidate_plans(64, 50, 256, 512, 256, 6, 1) == [Plan(1, 1, 1)]
    assert parallel.candidate_plans(8, 100, 8, 16, 8, 2, 2) == [Plan(1, 1, None), Plan(2, 2, 1)]
    # Every candidate stays within the cores and the budget.
    for cores, budget in ((2, 2), (16, 4), (12, 12)):
        for plan in parallel.candidate_plans(32, 64, 65, 128, 65, cores, budget):
            assert plan.shards <= 32 and tuning.threads_used(plan) <= budget
