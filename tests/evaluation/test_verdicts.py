"""The promotion rule and the skill guard (evaluation/verdicts.py) on synthetic forecast records
whose right answer is known: a random walk, the last close as naive, and forecasters built to be
better, equal in noise, or broken."""

import numpy as np
import pytest

from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS, compare_errors, guarded, should_promote

HORIZON = 10
REQUIRED = REQUIRED_ORIGINS["1m"]


def random_walk(origins: int, seed: int) -> np.ndarray:
    return 20_000 + np.cumsum(np.random.default_rng(seed).normal(0, 20, origins + HORIZON))


def targets(closes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each origin's close [N, 1] and its next HORIZON closes [N, HORIZON]."""
    origins = len(closes) - HORIZON
    rows = np.arange(origins)[:, None] + np.arange(1, HORIZON + 1)
    return closes[:origins, None], closes[rows]


def errors_of(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Each origin's mean absolute error over the steps."""
    return np.abs(predicted - actual).mean(axis=1)


def noisy(origin: np.ndarray, seed: int, scale: float = 5.0) -> np.ndarray:
    """The last close plus noise: a forecaster no better than naive, and a little worse."""
    return origin + np.random.default_rng(seed).normal(0, scale, (len(origin), HORIZON))


def test_a_clearly_better_shadow_is_promoted_once_it_has_enough_matured_origins():
    origin, actual = targets(random_walk(REQUIRED, seed=1))
    champion = errors_of(noisy(origin, seed=2), actual)
    shadow = errors_of(origin + 0.3 * (actual - origin), actual)  # sees 30 % of every move coming
    verdict = compare_errors(shadow, champion, HORIZON)
    assert verdict.mae_ratio < 0.8 and verdict.p_value < 1e-6
    assert should_promote(verdict, REQUIRED)
    assert not should_promote(compare_errors(shadow[:REQUIRED - 1], champion[:REQUIRED - 1], HORIZON), REQUIRED)


def test_a_shadow_equal_in_noise_is_promoted_at_most_as_often_as_the_test_allows():
    promoted = 0
    for seed in range(200):
        origin, actual = targets(random_walk(REQUIRED, seed=1000 + seed))
        champion, shadow = (errors_of(noisy(origin, seed=2 * seed + each), actual) for each in (0, 1))
        promoted += should_promote(compare_errors(shadow, champion, HORIZON), REQUIRED)
    # One side of a two-sided 5 % test: 2.5 % expected; 10 of 200 is far in its tail.
    assert promoted <= 10


def test_the_guard_takes_a_broken_champion_off_within_the_window_and_back_when_it_recovers():
    origins = 3 * REQUIRED
    origin, actual = targets(random_walk(origins, seed=7))
    naive = errors_of(np.repeat(origin, HORIZON, axis=1), actual)
    good = errors_of(origin + 0.2 * (actual - origin), actual)
    broken = errors_of(origin * 1.002 + np.zeros(HORIZON), actual)  # 0.2 % too high: about 40 USDT off
    breaks, heals = REQUIRED, 2 * REQUIRED
    champion = np.concatenate([good[:breaks], broken[breaks:heals], good[heals:]])
    state, history = False, []
    for end in range(REQUIRED // 2, origins + 1, 50):
        window = slice(max(0, end - REQUIRED), end)
        state = guarded(compare_errors(champion[window], naive[window], HORIZON), REQUIRED, state)
        history.append((end, state))
    on = [end for end, state in history if state]
    assert on, "the broken champion was never guarded"
    assert breaks < on[0] <= breaks + REQUIRED, "guarded only after it broke, and within one window"
    assert on[-1] < origins, "the guard came off once the champion recovered"
    assert all(state for end, state in history if on[0] <= end <= heals), "no flapping while it is broken"


def test_too_few_origins_change_nothing():
    origin, actual = targets(random_walk(100, seed=3))
    verdict = compare_errors(errors_of(origin * 1.01 + np.zeros(HORIZON), actual), errors_of(np.repeat(origin, HORIZON, axis=1), actual),
                             HORIZON)
    assert verdict.worse()
    assert guarded(verdict, REQUIRED, guarded_now=False) is False and guarded(verdict, REQUIRED, guarded_now=True) is True


def test_errors_on_different_origins_are_refused():
    with pytest.raises(ValueError, match="same origins"):
        compare_errors(np.ones(5), np.ones(6), HORIZON)
