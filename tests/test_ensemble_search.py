"""kitlib.ensemble_search: known best weights and subsets, over-fitting shown by held-out folds, memmaps =
in-memory, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from kitlib.ensemble import accuracy_score_fn, blend_score, neg_log_loss_fn
from kitlib.ensemble_search import METHODS, cv_weights, hill_climb, optimize_weights, subset_search
from tests.test_ensemble import LABELS, ORACLE, _binary_probs, memmap_case


def _noise_models(n: int = 300, m: int = 5, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """M classifiers of pure noise and random labels: any gain from fitting weights is over-fitting."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    oofs = [rng.dirichlet(np.ones(3), size=n).astype(np.float32) for _ in range(m)]
    return oofs, labels


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: subset_search([np.zeros((4, 3))] * 2, accuracy_score_fn([0, 1, 2]), names=["x", "x"]),
            ValueError,
            "names must be unique; repeated: x",
        ),
        (
            lambda: optimize_weights([np.zeros((3, 3))] * 2, accuracy_score_fn([0, 1, 2]), method="bfgs"),
            KeyError,
            "unknown method 'bfgs'; options:",
        ),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------------ weights and subsets


# Two classifiers whose best log-loss blend is known: labels 1, 1, 0; A gives the true class 1, 1, 0 and B 0, 0, 1.
# The blend w A + (1 - w) B gives the true class w, w, 1 - w: the mean log is (2 log w + log(1 - w)) / 3, maximal at
# w = 2/3.
TWO_A = _binary_probs([1.0, 1.0, 1.0])
TWO_B = _binary_probs([0.0, 0.0, 0.0])
TWO_LABELS = np.array([1, 1, 0])
TWO_BEST = (2 * math.log(2 / 3) + math.log(1 / 3)) / 3


@pytest.mark.parametrize("method", sorted(METHODS))
def test_optimize_weights_finds_the_known_best_blend(method):
    result = optimize_weights({"A": TWO_A, "B": TWO_B}, neg_log_loss_fn(TWO_LABELS), method=method)
    assert result.names == ("A", "B")
    np.testing.assert_allclose(result.weights, [2 / 3, 1 / 3], atol=2e-3)
    assert result.score == pytest.approx(TWO_BEST, abs=1e-5)
    assert result.equal_score == pytest.approx(math.log(0.5))
    assert result.weights.sum() == pytest.approx(1.0)
    assert result.score == blend_score([TWO_A, TWO_B], neg_log_loss_fn(TWO_LABELS), result.weights)
    assert np.all(np.diff(result.trace) >= 0) and result.trace[-1] == result.score
    assert result.n_evals == len(result.trace)
    saved = json.loads(json.dumps(result.to_json()))
    assert set(saved["weights"]) == {"A", "B"} and saved["method"] == method


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("score", [accuracy_score_fn, neg_log_loss_fn])
def test_optimize_weights_never_below_equal_weights_and_is_deterministic(method, score):
    oofs, labels = _noise_models()
    fn = score(labels)
    result = optimize_weights(oofs, fn, method=method, seed=3, maxiter=20)
    assert result.score >= result.equal_score
    assert result.equal_score == blend_score(oofs, fn)
    assert result.score == blend_score(oofs, fn, result.weights)
    assert np.all(result.weights >= 0) and result.weights.sum() == pytest.approx(1.0)
    again = optimize_weights(oofs, fn, method=method, seed=3, maxiter=20)
    np.testing.assert_array_equal(again.weights, result.weights)


def test_accuracy_optimisation_finds_the_oracle_blend():
    result = optimize_weights(ORACLE, accuracy_score_fn(LABELS), method="differential_evolution", seed=0)
    assert result.score == 1.0
    assert result.weights[2] < min(result.weights[:2])  # C would spoil it


def test_optimize_weights_single_model():
    result = optimize_weights([TWO_A], neg_log_loss_fn(TWO_LABELS))
    np.testing.assert_array_equal(result.weights, [1.0])
    assert result.n_evals == 1


def test_cv_weights_held_out_not_above_in_sample_on_noise():
    oofs, labels = _noise_models(n=300, m=6, seed=1)
    folds = np.arange(300) % 5
    cv = cv_weights(oofs, folds, accuracy_score_fn(labels), method="nelder-mead", maxiter=60)
    table = cv.table
    assert list(table["fold"]) == [0, 1, 2, 3, 4]
    assert list(table.columns[:6]) == [
        "fold", "n_train", "n_held_out", "train_score", "held_out_score", "equal_held_out_score"
    ]  # fmt: skip
    assert list(table.columns[6:]) == [f"w_model{i}" for i in range(6)]
    assert (table["n_train"] == 240).all() and (table["n_held_out"] == 60).all()
    np.testing.assert_allclose(table.filter(like="w_").sum(axis=1), 1.0)
    assert cv.held_out_mean == pytest.approx(table["held_out_score"].mean())
    assert cv.held_out_mean <= cv.in_sample_score
    assert (table["held_out_score"] <= table["train_score"]).mean() >= 0.8  # fitted on noise: the train score lies
    assert cv.optimism == pytest.approx(cv.in_sample_score - cv.held_out_mean)
    assert cv.in_sample.score >= cv.in_sample.equal_score


def test_cv_weights_bad_folds():
    oofs, labels = _noise_models(n=10)
    fn = accuracy_score_fn(labels)
    with pytest.raises(ValueError, match=r"folds must have shape \(10,\)"):
        cv_weights(oofs, np.zeros(9, int), fn)
    with pytest.raises(ValueError, match="at least 2 folds"):
        cv_weights(oofs, np.zeros(10, int), fn)
    with pytest.raises(TypeError, match="folds must be integers"):
        cv_weights(oofs, np.zeros(10), fn)


def test_subset_search_picks_the_known_best_subset():
    table = subset_search(ORACLE, accuracy_score_fn(LABELS))
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["models", "size", "score"]
    expected = [
        (("A", "B"), 1.0),
        (("A",), 0.6),
        (("B",), 0.4),
        (("C",), 0.0),  # ties: smaller subsets first, then enumeration order
        (("A", "C"), 0.0),
        (("B", "C"), 0.0),
        (("A", "B", "C"), 0.0),
    ]
    assert list(zip(table["models"], table["score"], strict=True)) == [(m, pytest.approx(s)) for m, s in expected]
    sized = subset_search(ORACLE, accuracy_score_fn(LABELS), min_size=2, max_size=2)
    assert sorted(sized["models"]) == [("A", "B"), ("A", "C"), ("B", "C")]


def test_subset_search_refuses_too_many_subsets():
    oofs = [np.full((2, 2), 0.5, np.float32)] * 17
    fn = accuracy_score_fn([0, 1])
    with pytest.raises(ValueError, match="131071 subsets of 17 models .* exceed max_subsets=65536"):
        subset_search(oofs, fn)
    with pytest.raises(ValueError, match="7 subsets of 3 models with sizes 1..3 exceed max_subsets=5"):
        subset_search(ORACLE, accuracy_score_fn(LABELS), max_subsets=5)
    assert len(subset_search(ORACLE, accuracy_score_fn(LABELS), max_subsets=None)) == 7
    with pytest.raises(ValueError, match="need 1 <= min_size <= max_size <= 3"):
        subset_search(ORACLE, accuracy_score_fn(LABELS), min_size=2, max_size=4)


def test_hill_climb_by_hand():
    # start from A (0.6); A+B reaches 1.0; nothing beats 1.0, so it stops
    result = hill_climb(ORACLE, accuracy_score_fn(LABELS), n_iter=10)
    np.testing.assert_array_equal(result.counts, [1, 1, 0])
    np.testing.assert_allclose(result.trace, [0.6, 1.0])
    np.testing.assert_allclose(result.weights, [0.5, 0.5, 0.0])
    assert result.score == 1.0 and result.method == "hill_climb"
    assert result.equal_score == 0.0  # A + B + C


@pytest.mark.parametrize("allow_repeats", [True, False])
@pytest.mark.parametrize("init_size", [1, 3])
def test_hill_climb_never_lowers_the_score(allow_repeats, init_size):
    oofs, labels = _noise_models(n=200, m=6, seed=2)
    fn = neg_log_loss_fn(labels)
    result = hill_climb(oofs, fn, n_iter=15, allow_repeats=allow_repeats, init_size=init_size)
    assert np.all(np.diff(result.trace) > 0)
    assert result.counts.sum() == init_size + len(result.trace) - 1
    if not allow_repeats:
        assert result.counts.max() == 1
    np.testing.assert_allclose(result.weights, result.counts / result.counts.sum())
    assert result.score == result.trace[-1] == blend_score(oofs, fn, result.weights)
    if init_size == 1:
        assert result.score >= max(blend_score([o], fn) for o in oofs)


# --------------------------------------------------------------------------------------------------------- memmaps


def test_memmaps_match_in_memory(tmp_path):
    arrays, memmaps, fn, fn_mem = memmap_case(tmp_path)

    fit_mem = optimize_weights(memmaps, fn_mem, chunk_size=2, maxiter=30)
    fit = optimize_weights(arrays, fn, chunk_size=2, maxiter=30)
    np.testing.assert_array_equal(fit_mem.weights, fit.weights)
    assert fit_mem.score == fit.score >= fit.equal_score

    climb_mem = hill_climb(memmaps, fn_mem, n_iter=5, chunk_size=2)
    climb = hill_climb(arrays, fn, n_iter=5, chunk_size=2)
    np.testing.assert_array_equal(climb_mem.counts, climb.counts)
    np.testing.assert_array_equal(climb_mem.trace, climb.trace)

    pd.testing.assert_frame_equal(subset_search(memmaps, fn_mem, chunk_size=2), subset_search(arrays, fn, chunk_size=2))

    folds = np.arange(9) % 3
    cv_mem = cv_weights(memmaps, folds, fn_mem, chunk_size=2, maxiter=10)
    cv = cv_weights(arrays, folds, fn, chunk_size=2, maxiter=10)
    pd.testing.assert_frame_equal(cv_mem.table, cv.table)
