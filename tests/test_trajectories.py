"""tokcal.core.trajectories on a constructed sequence with a known answer, and against a
brute-force reading of the definitions (one Python list of observations per sample)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokcal.core.trajectories import (
    TURN_BITS,
    TrajectoryState,
    correct_from_probs,
    decision_keys,
    trajectories,
)
from tokcal.errors import TokcalError


def test_constructed_sequence_known_answer():
    # Five evaluations. Sample "d" is absent at the third, "e" joins at the fourth.
    #          step:  0  1  2  3  4
    #   a             1  1  1  1  1    learned at 0, never forgotten
    #   b             0  1  0  1  1    forgotten once (at 2), learned at 3
    #   c             1  0  0  0  1    forgotten at 1 (and "forgotten" at 1, 2, 3), learned at 4
    #   d             1  0  -  0  1    d's previous at 3 is step 1 (wrong): no flip at 3; learned at 4
    #   e             -  -  -  0  0    never learned
    #   f             0  1  1  1  0    learned at 1, forgotten at 4: not learned by the end
    evals = [
        (["a", "b", "c", "d", "f"], [1, 0, 1, 1, 0]),
        (["a", "b", "c", "d", "f"], [1, 1, 0, 0, 1]),
        (["a", "b", "c", "f"], [1, 0, 0, 1]),
        (["f", "e", "d", "c", "b", "a"], [1, 0, 0, 0, 1, 1]),  # any order
        (["a", "b", "c", "d", "e", "f"], [1, 1, 1, 1, 0, 0]),
    ]
    t = trajectories([e[0] for e in evals], [e[1] for e in evals], steps=[0, 100, 200, 300, 400])
    assert t.steps.tolist() == [0, 100, 200, 300, 400]
    assert t.flips_to_wrong.tolist() == [0, 2, 1, 0, 1]  # c,d at 1; b at 2; f at 4
    assert t.flips_to_right.tolist() == [0, 2, 0, 1, 2]  # b,f at 1; b at 3; c,d at 4
    assert t.forgotten.tolist() == [0, 2, 2, 2, 1]  # {c,d}; {b,c}; {c,d}; {f}
    assert t.compared.tolist() == [0, 5, 4, 5, 6]
    s = t.samples
    assert s.ids.tolist() == ["a", "b", "c", "d", "e", "f"]
    assert s.seen.tolist() == [5, 5, 5, 4, 2, 5]
    assert s.n_correct.tolist() == [5, 3, 2, 2, 0, 3]
    assert s.forgetting.tolist() == [0, 1, 1, 1, 0, 1]
    fl = s.first_learned.tolist()
    assert fl[:4] == [0, 300, 400, 400] and math.isnan(fl[4]) and math.isnan(fl[5])
    assert s.never_learned.tolist() == [False, False, False, False, True, False]
    assert t.flips_to_wrong.sum() == s.forgetting.sum()


def brute_force(evals, steps):
    """The module's definitions, read literally over per-sample observation lists."""
    history: dict = {}
    per_step = []
    for (ids, correct), step in zip(evals, steps):
        to_wrong = to_right = forgotten = compared = 0
        for i, ok in zip(ids, correct):
            past = history.get(i, [])
            if past:
                compared += 1
                prev = past[-1][1]
                to_wrong += prev and not ok
                to_right += (not prev) and ok
            forgotten += (not ok) and any(c for _, c in past)
            history.setdefault(i, []).append((step, bool(ok)))
        per_step.append((to_wrong, to_right, forgotten, compared))
    samples = {}
    for i, obs in history.items():
        flags = [c for _, c in obs]
        forgetting = sum(a and not b for a, b in zip(flags, flags[1:]))
        if flags[-1]:
            k = len(flags) - 1
            while k > 0 and flags[k - 1]:
                k -= 1
            learned = obs[k][0]
        else:
            learned = math.nan
        samples[i] = (len(obs), sum(flags), forgetting, learned, not any(flags))
    return per_step, samples


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_evals = int(rng.integers(1, 12))
    pool = np.arange(40) * 7 + 3  # ids need not be 0..N-1
    evals = []
    for t in range(n_evals):
        ids = rng.choice(pool, size=int(rng.integers(1, 41)), replace=False)  # absent samples, new ones
        p = min(0.9, 0.3 + 0.06 * t)  # learning, with noise: flips both ways
        evals.append((ids, rng.uniform(size=len(ids)) < p))
    steps = np.cumsum(rng.integers(0, 5, size=n_evals))  # non-decreasing, repeats allowed
    t = trajectories([e[0] for e in evals], [e[1] for e in evals], steps=steps)
    per_step, samples = brute_force(evals, steps.tolist())
    assert t.flips_to_wrong.tolist() == [r[0] for r in per_step]
    assert t.flips_to_right.tolist() == [r[1] for r in per_step]
    assert t.forgotten.tolist() == [r[2] for r in per_step]
    assert t.compared.tolist() == [r[3] for r in per_step]
    s = t.samples
    assert s.ids.tolist() == sorted(samples)
    for j, i in enumerate(s.ids.tolist()):
        seen, n_correct, forgetting, learned, never = samples[i]
        assert (s.seen[j], s.n_correct[j], s.forgetting[j], bool(s.never_learned[j])) == (
            seen, n_correct, forgetting, never), i
        assert (math.isnan(learned) and math.isnan(s.first_learned[j])) or s.first_learned[j] == learned, i
    assert t.flips_to_wrong.sum() == s.forgetting.sum()


def test_incremental_state_equals_the_batch_function():
    rng = np.random.default_rng(3)
    evals = [(np.arange(30), rng.uniform(size=30) < 0.6) for _ in range(6)]
    st = TrajectoryState()
    rows = [st.update(i, c, step=10 * k) for k, (i, c) in enumerate(evals)]
    t = trajectories([e[0] for e in evals], [e[1] for e in evals], steps=[10 * k for k in range(6)])
    assert [r.flips_to_wrong for r in rows] == t.flips_to_wrong.tolist()
    assert [r.forgotten for r in rows] == t.forgotten.tolist()
    assert st.evaluations == 6 and rows[-1].present == 30 and rows[-1].step == 50
    np.testing.assert_array_equal(st.samples().forgetting, t.samples.forgetting)


def test_default_steps_and_empty_evaluations():
    t = trajectories([[1, 2], [], [2]], [[True, False], [], [True]])
    assert t.steps.tolist() == [0, 1, 2]
    assert t.flips_to_right.tolist() == [0, 0, 1] and t.compared.tolist() == [0, 0, 1]
    empty = trajectories([], [])
    assert empty.steps.tolist() == [] and empty.samples.ids.tolist() == []


def test_bad_input_is_a_one_line_error():
    st = TrajectoryState()
    with pytest.raises(TokcalError, match="expected unique sample ids in one evaluation, got 4 twice"):
        st.update([4, 1, 4], [1, 0, 1])
    assert st.evaluations == 0  # nothing half-recorded
    st.update([1, 2], [1, 0], step=5)
    with pytest.raises(TokcalError, match=r"expected a step >= 5.0, got 4"):
        st.update([1, 2], [1, 1], step=4)
    with pytest.raises(TokcalError, match="expected ids and correct of one shape"):
        st.update([1, 2], [1], step=6)
    with pytest.raises(TokcalError, match="expected correct as booleans or 0/1"):
        st.update([1, 2], [0.5, 1], step=6)
    with pytest.raises(TokcalError, match="expected ids of one kind across evaluations"):
        st.update(["x"], [1], step=6)
    with pytest.raises(TokcalError, match="expected as many correct"):
        trajectories([[1]], [[1], [0]])


def test_decision_keys_one_per_answer():
    si = np.array([4, 4, 4, 0, 9, 0])
    keys = decision_keys(si)
    assert (keys >> TURN_BITS).tolist() == si.tolist()
    assert (keys & ((1 << TURN_BITS) - 1)).tolist() == [0, 1, 2, 0, 0, 1]
    assert len(set(keys.tolist())) == len(si)
    assert decision_keys(np.zeros(0, dtype=int)).tolist() == []


def test_correct_from_probs_breaks_ties_to_the_first_label():
    p = np.array([[0.4, 0.4], [0.1, 0.6], [0.3, 0.2]])
    assert correct_from_probs(p, np.array([0, 1, 1])).tolist() == [True, True, False]
