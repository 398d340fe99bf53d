"""Losses: the seed's "fake loss" trap is caught for each activation; sane values otherwise."""

from __future__ import annotations

import pytest
import torch

from defectscan.errors import TargetShapeError
from defectscan.training.losses import SegmentationLoss, check_target


def _logits(c: int) -> torch.Tensor:
    return torch.randn(2, c, 8, 8)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), r"\[B, 1, H, W\] mask"),  # the seed's trap
        (torch.zeros(2, 1, 8, 8), r"\[B, H, W\]"),
        (torch.zeros(2, 8, 8), "integer class indices"),  # float indices
        (torch.full((2, 8, 8), 3, dtype=torch.long), r"\[0, 2\]"),  # index >= C
        (torch.zeros(2, 3, 8, 8), r"\[B, H, W\]"),  # one-hot meant for sigmoid
    ],
)
def test_softmax_loss_refuses_wrong_targets(target: torch.Tensor, why: str) -> None:
    loss = SegmentationLoss("softmax", 3)
    with pytest.raises(TargetShapeError, match=why) as info:
        loss(_logits(3), target)
    assert "fake loss" in str(info.value)
    assert "(2, 3, 8, 8)" in str(info.value)  # names the logits' shape too


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (torch.zeros(2, 8, 8), "same|logits' shape"),  # class-index-shaped target
        (torch.zeros(2, 1, 8, 8), "logits' shape"),  # one channel for a 2-class model
        (torch.zeros(2, 2, 8, 8, dtype=torch.long), "float"),  # indices, not probabilities
    ],
)
def test_sigmoid_loss_refuses_wrong_targets(target: torch.Tensor, why: str) -> None:
    loss = SegmentationLoss("sigmoid", 2)
    with pytest.raises(TargetShapeError, match=why) as info:
        loss(_logits(2), target)
    assert "fake loss" in str(info.value)


def test_check_target_accepts_the_right_shapes() -> None:
    check_target(_logits(2), torch.zeros(2, 2, 8, 8), "sigmoid")
    check_target(_logits(3), torch.zeros(2, 8, 8, dtype=torch.long), "softmax")


@pytest.mark.parametrize("focal", [None, 2.0])
def test_confident_right_prediction_costs_less_than_a_wrong_one(focal: float | None) -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 2
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    right, wrong = onehot * 20 - 10, onehot.roll(1, dims=1) * 20 - 10
    soft = SegmentationLoss("softmax", 3, focal_gamma=focal, class_weights=[0.5, 2.0, 2.0])
    assert float(soft(right, target)) < 0.05 < float(soft(wrong, target))
    sig_target = onehot[:, 1:]
    sig = SegmentationLoss("sigmoid", 2, focal_gamma=focal)
    assert float(sig(sig_target * 20 - 10, sig_target)) < 0.05
    assert float(sig(-(sig_target * 20 - 10), sig_target)) > 1.0


def test_loss_is_float32_and_differentiable_under_bf16_logits() -> None:
    logits = _logits(2).to(torch.bfloat16).requires_grad_()
    loss = SegmentationLoss("sigmoid", 2)(logits, torch.zeros(2, 2, 8, 8))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None
