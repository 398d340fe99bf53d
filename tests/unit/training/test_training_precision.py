"""``DEFECTSCAN_DISABLE_BF16``: ``auto`` precision never picks bf16, in training or inference."""

from __future__ import annotations

import pytest
import torch

from defectscan.model.backends import (
    BF16_DISABLE_ENV,
    autocast_dtype,
    bf16_disabled,
    cpu_supports_bf16,
)


def test_disable_bf16_makes_auto_precision_fp32_on_every_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BF16_DISABLE_ENV, "1")
    assert bf16_disabled()
    assert not cpu_supports_bf16()
    assert autocast_dtype("auto", torch.device("cpu")) is None
    # An explicit request is still honoured: the setting changes what "auto" means.
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("value", ["", "0", "no"])
def test_bf16_stays_available_unless_the_setting_says_so(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(BF16_DISABLE_ENV, value)
    assert not bf16_disabled()
