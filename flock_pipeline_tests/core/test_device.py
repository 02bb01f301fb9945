"""`FLOCK_DEVICE=auto` never trains on the CPU without a word on a machine with a GPU it cannot use."""

from __future__ import annotations

import pytest
import torch

from flock_pipeline.core import model
from flock_pipeline.errors import ValidatorFault


def test_auto_refuses_a_gpu_this_torch_build_cannot_use_and_names_both(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(model, "nvidia_driver", lambda: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15")
    with pytest.raises(ValidatorFault) as info:
        model.resolve_device("auto")
    text = str(info.value)
    assert "550.54.15" in text and "a CUDA 13.0 build" in text and "FLOCK_DEVICE=cpu" in text
    assert model.resolve_device("cpu") == torch.device("cpu")  # said on purpose: trained there


@pytest.mark.parametrize("available, driver, device", [(False, None, "cpu"), (True, "550.54.15", "cuda")])
def test_auto_is_cuda_when_usable_and_the_cpu_on_a_machine_without_a_gpu(monkeypatch, available, driver, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(model, "nvidia_driver", lambda: driver)
    assert model.resolve_device("auto").type == device
