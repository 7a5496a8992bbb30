"""allreduce, broadcast, the sharder and the data-parallel step, on ranks run as threads
(thread_comm.py): every multi-rank code path without MPI. Oracles: numpy sums over the
ranks' trees, and one process stepping on the whole global minibatch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from spmdbatch import distributed as dist
from spmdbatch import nn
from spmdbatch.ad.sparse import SparseRows
from spmdbatch.distributed import comm as comm_module
from thread_comm import RankErrors, new_group, run_ranks


def _tree(r):
    """Rank r's tree: arrays of several dtypes, numpy scalars, Python numbers, a 0-d array."""
    rng = np.random.default_rng(r)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5),
            "h": rng.normal(size=2).astype(np.float16), "c": np.complex128(1 + r * 1j),
            "n": [np.int64(r + 1), r + 2], "x": float(r) + 0.25, "z": np.array(r * 1.5),
            "s": np.float32(r)}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_dense_allreduce_matches_numpy(n, op):
    trees = [_tree(r) for r in range(n)]
    if op == "mean":
        for t in trees:
            del t["n"]
    results = run_ranks(n, lambda c: dist.allreduce(trees[c.rank], op, comm=c))
    ref_leaves, treedef = sb.runtime.pytree.flatten(trees[0])
    all_leaves = [sb.runtime.pytree.flatten(t)[0] for t in trees]
    for res in results:
        leaves, d = sb.runtime.pytree.flatten(res)
        assert d == treedef
        for k, (got, first) in enumerate(zip(leaves, ref_leaves)):
            parts = [np.asarray(lv[k], dtype=np.float64 if np.asarray(first).dtype != np.complex128
                                else np.complex128) for lv in all_leaves]
            want = sum(parts[1:], parts[0]) / (n if op == "mean" else 1)
            assert type(got) is type(first), (k, type(got), type(first))
            assert np.asarray(got).dtype == np.asarray(first).dtype
            tol = 1e-3 if np.asarray(first).dtype == np.float16 else 1e-6
            np.testing.assert_allclose(np.asarray(got, dtype=want.dtype), want, rtol=tol, atol=tol)
    for res in results[1:]:     # every rank holds the same bits
        for a, b in zip(sb.runtime.pytree.leaves(res), sb.runtime.pytree.leaves(results[0])):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def _sparse(shape, rows, rng, dtype=np.float32, parts=2):
    """A SparseRows of several parts (rows may repeat within and between parts)."""
    rows = np.asarray(rows, dtype=np.int64)
    pieces = np.array_split(rows, parts) if len(rows) else [rows]
    return SparseRows(shape, np.dtype(dtype),
                      [(p, rng.normal(size=(len(p),) + shape[1:]).astype(dtype), False) for p in pieces])


@settings(max_examples=40)
@given(n=st.integers(2, 4), table=st.integers(1, 40), data=st.data(), op=st.sampled_from(["sum", "mean"]))
def test_sparse_allreduce_matches_dense_sum(n, table, data, op):
    """Row-sparse gradients stay row-sparse (rows: the union of the ranks' rows) and their
    dense form is the sum of the ranks' dense forms, whether rows are gathered (few) or the
    table is reduced densely (many)."""
    shape = (table, 3)
    rows = [data.draw(st.lists(st.integers(0, table - 1), max_size=3 * table), label=f"rows{r}")
            for r in range(n)]
    grads = [_sparse(shape, rows[r], np.random.default_rng(r)) for r in range(n)]
    group = new_group(n)
    results = run_ranks(n, lambda c: dist.allreduce({"e": grads[c.rank]}, op, comm=c), group=group)
    want = sum(g.dense().astype(np.float64) for g in grads) / (n if op == "mean" else 1)
    union = np.unique(np.concatenate([np.asarray(r, np.int64) for r in rows]))
    for res in results:
        got = res["e"]
        assert type(got) is SparseRows and got.dtype == np.float32 and got.shape == shape
        got_rows, _ = got.coalesce()
        assert np.array_equal(np.sort(got_rows), union)
        np.testing.assert_allclose(got.dense(), want, rtol=1e-5, atol=1e-5)
        assert np.array_equal(got.dense(), results[0]["e"].dense())
    gathered = any(name == "allgatherv" for _, name in group.calls)
    total = sum(len(np.unique(r)) for r in rows)
    # rows gathered unless that moves more bytes than a dense all-reduce of the table
    assert gathered == (total * (3 * 4 + 8) <= 2 * table * 3 * 4 + table)


def test_sparse_gather_path_never_densifies():
    """A few rows of a large table move as rows, never as the table."""
    shape = (100_000, 8)
    grads = [_sparse(shape, [5, 7, 5, 99_999], np.random.default_rng(0)),
             _sparse(shape, [7, 123], np.random.default_rng(1))]
    group = new_group(2)
    results = run_ranks(2, lambda c: dist.allreduce(grads[c.rank], "sum", comm=c), group=group)
    names = {name for _, name in group.calls}
    assert "allgatherv" in names and not any(name.startswith("allreduce_") for name in names)
    rows, values = results[0].coalesce()
    assert rows.tolist() == [5, 7, 123, 99_999]
    np.testing.assert_allclose(values, (grads[0].dense() + grads[1].dense())[[5, 7, 123, 99_999]], rtol=1e-6)


def test_dense_on_one_rank_and_sparse_on_another_gives_dense():
    shape = (6, 2)
    rng = np.random.default_rng(0)
    leaves = [rng.normal(size=shape).astype(np.float32), _sparse(shape, [1, 4, 1], rng)]
    results = run_ranks(2, lambda c: dist.allreduce([leaves[c.rank]], "sum", comm=c))
    for res in results:
        assert type(res[0]) is np.ndarray and res[0].dtype == np.float32
        np.testing.assert_allclose(res[0], leaves[0] + leaves[1].dense(), rtol=1e-6)


def test_rank_without_examples_contributes_nothing():
    shape = (50, 2)
    rng = np.random.default_rng(0)
    g = {"e": _sparse(shape, [3, 9, 3], rng), "w": rng.normal(size=4), "loss": 2.5}
    trees = [g, dist.zeros_like_leaves(g), g]
    results = run_ranks(3, lambda c: dist.allreduce(trees[c.rank], "sum", comm=c))
    for res in results:
        assert type(res["e"]) is SparseRows and type(res["loss"]) is float
        np.testing.assert_allclose(res["e"].dense(), 2 * g["e"].dense(), rtol=1e-6)
        np.testing.assert_allclose(res["w"], 2 * g["w"])
        assert res["loss"] == 5.0
    with pytest.raises(dist.DistributedError, match="no rank"):
        dist.allreduce(dist.zeros_like_leaves(g), "sum", comm=dist.SelfComm())


@pytest.mark.parametrize("trees,error,match", [
    ([{"a": np.zeros(3)}, {"a": np.zeros(4)}], dist.DistributedError, "shape"),
    ([{"a": np.zeros(3)}, {"a": np.zeros(3, np.float32)}], dist.DistributedError, "dtype"),
    ([[np.zeros(3)], [np.zeros(3), np.zeros(3)]], dist.DistributedError, "structure"),
    ([{"a": np.zeros(3)}, {"a": "text"}], TypeError, "str"),
    ([{"a": np.zeros(3)}, {"a": np.zeros(3, bool)}], TypeError, "boolean"),
])
def test_disagreeing_ranks_all_raise_the_same_error(trees, error, match):
    """Every rank raises (none waits for the others), naming the leaf."""
    with pytest.raises(RankErrors) as info:
        run_ranks(2, lambda c: dist.allreduce(trees[c.rank], "sum", comm=c), timeout=10)
    for e in info.value.errors:
        assert isinstance(e, error), info.value.errors
        assert match in str(e)
    assert "'a'" in str(info.value.errors[0]) or "structure" in match


def test_mean_of_integers_is_refused():
    with pytest.raises(TypeError, match="op='sum'"):
        dist.allreduce({"count": np.int64(3)}, "mean", comm=dist.SelfComm())
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        dist.allreduce([1.0], "max", comm=dist.SelfComm())


def test_broadcast_gives_roots_tree():
    def tree(r):
        m = nn.Chain(nn.Linear(3, 4, "relu", rng=r), nn.Linear(4, 2, rng=r + 10))
        return {"m": m, "step": r, "lr": 0.5 * r, "s": np.float32(r)}
    for root in (0, 2):
        results = run_ranks(3, lambda c: dist.broadcast(tree(c.rank), root=root, comm=c))
        want = tree(root)
        for res in results:
            for (name, a), (_, b) in zip(nn.named_leaves(res), nn.named_leaves(want)):
                assert type(a) is type(b), name
                assert np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).dtype == np.asarray(b).dtype
    with pytest.raises(RankErrors) as info:
        run_ranks(2, lambda c: dist.broadcast({"a": np.zeros(2 + c.rank)}, comm=c), timeout=10)
    assert all(isinstance(e, dist.DistributedError) for e in info.value.errors)


@given(n=st.integers(0, 60), size=st.integers(1, 9))
def test_shards_partition_the_minibatch(n, size):
    class Fake:
        pass
    parts = []
    for r in range(size):
        c = Fake()
        c.rank, c.size = r, size
        parts.append(list(range(n))[dist.shard_slice(n, comm=c)])
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_aligns_several_minibatches():
    c = dist.SelfComm()
    xs, ys = dist.shard([1, 2, 3], np.arange(3), comm=c)
    assert xs == [1, 2, 3] and ys.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="different lengths"):
        dist.shard([1, 2], [1], comm=c)


# --- the data-parallel step against one process on the global minibatch --------------------------
def _treelstm_setup():
    from examples.treelstm import data as sst
    from examples.treelstm import model as M
    vocab, trees = sst.synthetic_treebank(40, seed=3, num_classes=5)
    model = M.TreeLSTM(len(vocab), 5, 12, 8, 0.5, rng=1)
    opt = nn.Adagrad(lr=0.05, weight_decay=1e-4, groups={"embed": {"lr": 0.1, "weight_decay": 0.0}})
    return trees, model, opt, sb.value_and_grad(M.minibatch_loss, sparse=True)


@pytest.mark.parametrize("n", [2, 3])
def test_data_parallel_steps_equal_one_process(n):
    """k Adagrad steps of the Tree-LSTM (row-sparse embedding gradient), global minibatches
    split over n ranks (uneven, one rank empty at the last step), equal one process."""
    trees, model, opt, loss_and_grad = _treelstm_setup()
    sizes = [12, 7, 1]
    starts = np.cumsum([0] + sizes)
    batches = [list(range(starts[i], starts[i + 1])) for i in range(len(sizes))]

    ref, state = model, opt.init(model)
    ref_losses = []
    for idx in batches:
        loss, grads = loss_and_grad(ref, [trees[i] for i in idx], np.array(idx))
        assert type(grads.embed.table) is SparseRows
        ref, state = opt.update(ref, grads, state)
        ref_losses.append(float(loss))

    params = [model] * n
    states = [opt.init(model)] * n
    for step, idx in enumerate(batches):
        # gradients outside the threads (autodiff is per process), the step inside them
        local = []
        for r in range(n):
            fake = type("C", (), {"rank": r, "size": n})()
            mine = idx[dist.shard_slice(len(idx), comm=fake)]
            if mine:
                loss, grads = loss_and_grad(params[r], [trees[i] for i in mine], np.array(mine))
                local.append((grads, float(loss)))
            else:
                local.append((None, 0.0))
        out = run_ranks(n, lambda c: dist.data_parallel_step(
            opt, params[c.rank], local[c.rank][0], states[c.rank], metrics=local[c.rank][1], comm=c))
        params, states = [o[0] for o in out], [o[1] for o in out]
        for o in out:
            assert o[2] == pytest.approx(ref_losses[step], rel=1e-5)
    for (name, a), (_, b) in zip(nn.named_leaves(params[0]), nn.named_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    for p in params[1:]:
        for (name, a), (_, b) in zip(nn.named_leaves(p), nn.named_leaves(params[0])):
            assert np.array_equal(a, b), name     # the replicas are identical, bit for bit


# --- init -------------------------------------------------------------------------------------
def test_init_without_mpi4py(monkeypatch):
    """No mpi4py: one process; under a launcher of several processes: a clear error."""
    import sys
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(comm_module, "_COMM", None)
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    c = dist.init()
    assert isinstance(c, dist.SelfComm) and dist.rank() == 0 and dist.size() == 1
    tree = {"a": np.ones(2), "e": _sparse((4, 2), [1], np.random.default_rng(0))}
    assert dist.allreduce(tree) is tree and dist.broadcast({"a": np.ones(2)})["a"].sum() == 2
    monkeypatch.setattr(comm_module, "_COMM", None)
    monkeypatch.setenv("PMI_SIZE", "4")
    with pytest.raises(dist.DistributedError, match=r"4 processes.*pip install -e \"\.\[distributed\]\""):
        dist.init()
    monkeypatch.setattr(comm_module, "_COMM", None)
    assert isinstance(dist.init("self"), dist.SelfComm)
    with pytest.raises(dist.DistributedError, match="single process"):
        dist.init("mpi")
