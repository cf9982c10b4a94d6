"""Answer positions from labels: spans, padding, packing, anchors, missing answers."""

import numpy as np
import pytest
import torch

from tokcal.core.positions import IGNORE_INDEX as X
from tokcal.core.positions import find_answer_positions
from tokcal.core.spec import DecisionSpec, ResolvedSpec

# Token ids of a made-up vocabulary: 7 = "\\", 8 = "boxed", 9 = "{", 20/21 = Accept/accept,
# 30 = Reject, 99 = "}", 5 = some word.
RESOLVED = ResolvedSpec(DecisionSpec(), token_ids=((20, 21), (30,)), context_ids=(7, 8, 9))


def positions(rows, input_ids=None):
    width = max(len(r) for r in rows)
    labels = np.full((len(rows), width), X)
    for i, r in enumerate(rows):
        labels[i, : len(r)] = r
    return find_answer_positions(labels, RESOLVED, input_ids)


def test_one_decision_per_row_right_padding():
    pos = positions([[X, X, 7, 8, 9, 20, 99], [X, 7, 8, 9, 30, 99]])
    assert pos.rows.tolist() == [0, 1]
    assert pos.cols.tolist() == [5, 4]
    assert pos.gt.tolist() == [0, 1]
    assert pos.missing == 0


def test_left_padding():
    labels = np.array([[X, X, X, 7, 8, 9, 21, 99], [X, X, 5, 7, 8, 9, 30, 99]])
    pos = find_answer_positions(labels, RESOLVED)
    assert pos.cols.tolist() == [6, 6]
    assert pos.gt.tolist() == [0, 1]


def test_last_decision_in_span_wins_and_each_span_counts_once():
    # Two supervised spans (multi-turn); the first mentions Accept then settles on Reject.
    row = [X, 7, 8, 9, 20, 5, 7, 8, 9, 30, 99, X, X, 7, 8, 9, 20, 99]
    pos = positions([row])
    assert pos.cols.tolist() == [9, 16]
    assert pos.gt.tolist() == [1, 0]
    assert pos.spans.tolist() == [2]


def test_packed_rows_and_missing_spans():
    # Packed: three samples in one row; the middle answer has no decision token.
    row = [X, 7, 8, 9, 30, 99, X, 5, 5, 99, X, X, 7, 8, 9, 20, 99]
    pos = positions([row])
    assert pos.cols.tolist() == [4, 15]
    assert pos.missing == 1


def test_decision_token_without_prefix_is_not_an_answer():
    pos = positions([[X, 5, 20, 99]])
    assert len(pos) == 0 and pos.missing == 1


def test_prefix_read_from_input_ids_when_it_is_in_the_prompt():
    labels = np.array([[X, X, X, X, 20, 99]])
    input_ids = np.array([[5, 7, 8, 9, 20, 99]])
    assert len(find_answer_positions(labels, RESOLVED)) == 0
    pos = find_answer_positions(labels, RESOLVED, input_ids)
    assert pos.cols.tolist() == [4]


def test_first_context_token_may_merge_with_text_before_it():
    # "\\" merged into a different token (77), "boxed{" still precedes: accepted.
    pos = positions([[X, 77, 8, 9, 20, 99]])
    assert pos.cols.tolist() == [4]


def test_torch_input_and_nothing_supervised():
    labels = torch.full((2, 4), X)
    pos = find_answer_positions(labels, RESOLVED)
    assert len(pos) == 0 and pos.missing == 0


def test_bad_shape():
    with pytest.raises(ValueError, match="expected labels of shape"):
        find_answer_positions(np.array([1, 2, 3]), RESOLVED)


def test_found_decisions_give_each_decision_s_position_and_answer_start():
    """find_decisions: one example at a time, the same decisions as a batch, with where each
    answer starts (what a generation prompt is cut at), against a walk back over the labels."""
    from tokcal.core.positions import find_decisions

    rows = [[X, 7, 8, 9, 20, 5, 7, 8, 9, 30, 99, X, X, 7, 8, 9, 20, 99],  # two turns
            [X, X, 5, 5, 99],                                           # no decision
            [],                                                         # nothing at all
            [7, 8, 9, 30, 99]]                                          # supervised from the start
    found = find_decisions([(r, r) for r in rows], RESOLVED)
    assert found.sample_index.tolist() == [0, 0, 3] and found.gt.tolist() == [1, 0, 1]
    assert found.cols.tolist() == [9, 16, 3] and found.missing == 1
    for i, col, start in zip(found.sample_index, found.cols, found.answer_starts):
        walk = col
        while walk > 0 and rows[i][walk - 1] != X:
            walk -= 1
        assert start == walk
    assert found.answer_starts.tolist() == [1, 13, 0]
