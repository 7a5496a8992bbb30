"""The DP-SGD example: per-example gradients by spmd(grad(...)) equal the loop, and it learns."""
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "per_example_gradients.py"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(ROOT))     # (it imports examples.logistic_regression)
    spec = importlib.util.spec_from_file_location("_example_per_example_gradients", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(example):
    return example.main(["--epochs", "4", "--n-train", "600", "--check"])


def test_per_example_norms_and_clipped_gradients_equal_the_loop(run):
    for check in (run["check"], run["check_end"]):
        np.testing.assert_allclose(check["norms"], check["loop_norms"], rtol=1e-5)
        assert check["grad_max_abs_diff"] < 1e-6
    # after training both branches of the clipping `if` ran
    assert 0.0 < run["check_end"]["clipped_fraction"] < 1.0


def test_dp_sgd_learns(run):
    assert run["test_error"] < 0.15
    assert run["mean_norms"][-1] < run["mean_norms"][0]


def test_clipped_gradients_respect_the_bound(example):
    (x, y), _ = example.make_data(0, n_train=50, n_test=1)
    params = example.init_params(0)
    for clip in (0.05, 1.0, 100.0):
        grads, norms = example.per_example(params, x, y, clip)
        clipped = np.sqrt((grads.w.astype(np.float64) ** 2).sum(axis=(1, 2))
                          + (grads.b.astype(np.float64) ** 2).sum(axis=1))
        np.testing.assert_allclose(clipped, np.minimum(norms, clip), rtol=1e-5)


def test_bad_options_are_refused_with_one_line(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["--clip", "0"])
    assert "--clip" in capsys.readouterr().err
