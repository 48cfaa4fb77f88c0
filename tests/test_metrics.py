"""CL metrics against hand-computed values; mask statistics on hand-built masks."""

import json

import numpy as np
import pytest
import torch

from jumplora.errors import JumploraError
from jumplora.metrics import (
    accuracy_matrix_from_json,
    answer_origins,
    accuracy_matrix_to_json,
    backward_transfer,
    forward_transfer,
    jaccard,
    mean_jaccard_with_previous,
    overall_accuracy,
    run_metrics,
    sparsity,
)

NAN = float("nan")
# Three tasks. Row t = accuracies after training task t; NaN = task not seen yet.
A = np.array([
    [80.0, NAN, NAN],
    [70.0, 90.0, NAN],
    [60.0, 84.0, 75.0],
])
SINGLE_TASK = [80.0, 87.0, 72.0]
# By hand:
#   OA  = (60 + 84 + 75) / 3                     = 219 / 3   = 73.0
#   BWT = ((60 - 80) + (84 - 90)) / 2            = -26 / 2   = -13.0
#   FWT = ((80 - 80) + (90 - 87) + (75 - 72)) / 3 = 6 / 3    = 2.0


def test_hand_computed_three_tasks():
    assert overall_accuracy(A) == 73.0
    assert backward_transfer(A) == -13.0
    assert forward_transfer(A, SINGLE_TASK) == 2.0
    assert forward_transfer(A, None) is None


def test_run_metrics_of_finished_stopped_and_joint_runs():
    assert run_metrics(A, 3, SINGLE_TASK) == {"oa": 73.0, "bwt": -13.0, "fwt": 2.0}
    assert run_metrics(A, 3) == {"oa": 73.0, "bwt": -13.0, "fwt": None}
    # Stopped after two tasks: the top-left 2 x 2 block. OA = (70 + 90) / 2, BWT = 70 - 80,
    # FWT = ((80 - 80) + (90 - 87)) / 2.
    assert run_metrics(A, 2, SINGLE_TASK) == {"oa": 80.0, "bwt": -10.0, "fwt": 1.5}
    # Joint training fills only the last row: OA, and no BWT or FWT (no diagonal to compare with).
    joint = np.array([[NAN, NAN, NAN], [NAN, NAN, NAN], [60.0, 84.0, 75.0]])
    assert run_metrics(joint, 3, SINGLE_TASK) == {"oa": 73.0, "bwt": None, "fwt": None}


def test_single_task_stream():
    assert overall_accuracy([[55.0]]) == 55.0
    assert backward_transfer([[55.0]]) is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: overall_accuracy(np.zeros((2, 3))), r"must be square and non-empty .* shape \(2, 3\)"),
        (lambda: overall_accuracy(np.zeros((0, 0))), "must be square and non-empty"),
        (lambda: backward_transfer([[1.0, NAN], [NAN, 2.0]]), "NaN on or below its diagonal"),
        (lambda: forward_transfer(A, [1.0, 2.0]), r"one value per task \(3\), got shape \(2,\)"),
    ],
)
def test_bad_matrices_are_reported(call, match):
    with pytest.raises(JumploraError, match=match):
        call()


def test_accuracy_matrix_json_round_trip():
    rows = accuracy_matrix_to_json(A)
    assert rows == [[80.0, None, None], [70.0, 90.0, None], [60.0, 84.0, 75.0]]
    assert json.loads(json.dumps(rows)) == rows  # valid JSON: no NaN
    np.testing.assert_array_equal(accuracy_matrix_from_json(rows), A)


def test_sparsity_counts_zeros_for_numpy_and_torch():
    assert sparsity(np.array([0.0, 1.5, 0.0, -2.0])) == 0.5
    assert sparsity(torch.tensor([[True, False, False, False]])) == 0.75
    assert sparsity(torch.tensor([0.0, 0.0, 3.0, 0.0], dtype=torch.bfloat16)) == 0.75
    with pytest.raises(JumploraError, match="empty tensor"):
        sparsity(np.array([]))


def test_jaccard_on_hand_built_masks():
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = torch.tensor([False, True, True, False])
    assert jaccard(a, b) == pytest.approx(1 / 3)  # one shared of three used
    assert jaccard(a, a) == 1.0
    assert jaccard(np.zeros(4, bool), np.zeros(4, bool)) == 0.0  # 0/0 defined as 0
    with pytest.raises(JumploraError, match=r"different shapes \(4,\) and \(2,\)"):
        jaccard(a, np.ones(2, bool))


def test_mean_jaccard_with_previous_tasks():
    masks = [torch.tensor(m, dtype=torch.bool) for m in ([1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0])]
    # task 1: J(m1, m0) = 1/3; task 2: (J(m2, m0) + J(m2, m1)) / 2 = (2/3 + 2/3) / 2 = 2/3
    assert mean_jaccard_with_previous(masks) == [None, pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert mean_jaccard_with_previous([]) == []


def test_answer_origins_name_the_task_whose_label_took_over():
    # agnews answers after training on amazon: 2 own labels (one wrong), 2 amazon labels, one
    # label shared by yahoo and amazon (the first task listed owns it), one free text.
    predictions = ["World", " sports ", "negative", "Very Positive", "Health", "I think it is about money"]
    counts = answer_origins(predictions, ("World", "Sports", "Business"),
                            {"yahoo": ("Health", "Sports"), "amazon": ("negative", "very positive", "Health")})
    assert counts == {"own": 2, "yahoo": 1, "amazon": 2, "other": 1}
    assert answer_origins([], ("a",), {"b": ("x",)}) == {"own": 0, "b": 0, "other": 0}
