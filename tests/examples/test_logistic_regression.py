"""The logistic-regression example trains, learns and passes its gradient check."""
import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "logistic_regression.py"


def _load_example():
    # Loaded by path so the test does not depend on the repository root being on sys.path.
    spec = importlib.util.spec_from_file_location("_example_logistic_regression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def default_run(example):
    return example.main([])


def test_default_run_reaches_low_test_error(default_run):
    assert default_run["test_error"] < 0.10
    assert default_run["train_error"] < 0.10


def test_loss_decreases(default_run):
    losses = default_run["losses"]
    assert len(losses) == 100
    assert all(np.isfinite(losses))
    assert losses[0] < default_run["initial_loss"]
    assert losses[-1] < 0.5 * default_run["initial_loss"]
    assert losses[-1] <= losses[0]


def test_params_stay_float32(example, default_run):
    params = default_run["params"]
    assert isinstance(params, example.Params)
    assert params.w.shape == (3, 20) and params.b.shape == (3,)
    assert params.w.dtype == params.b.dtype == np.float32


def test_check_option_passes(example, capsys):
    metrics = example.main(["--check", "--epochs", "2", "--seed", "1"])
    assert metrics["check_passed"] is True
    assert "gradient check passed" in capsys.readouterr().out
    assert len(metrics["losses"]) == 2


def test_gradient_check_catches_a_wrong_gradient(example):
    # The check in --check is not vacuous: a cost whose gradient is cut is rejected.
    import spmdbatch as sb

    (x, y), _ = example.make_data(0, n_train=8, n_test=1)
    params = example.init_params(0)

    def broken(p):
        return example.cost(example.Params(sb.stop_gradient(p.w), p.b), x, y)

    with pytest.raises(AssertionError, match="gradient mismatch"):
        sb.check_gradients(broken, params)
