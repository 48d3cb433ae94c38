"""`uni_seg.devices`: the device a run asks for (or a refusal naming what there is) and the
precision "auto" picks on it."""

import dataclasses

import pytest
import torch

from uni_seg import config, devices, train
from uni_seg.devices import resolve_precision


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_on_cpu(monkeypatch, native_bf16, expected):
    # "auto" on a CPU is bf16 only where the CPU computes it (emulated bf16 is ~15x slower than fp32)
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"  # an explicit choice stands
    with pytest.raises(ValueError, match="PRECISION"):
        resolve_precision("int8", cpu)


def test_issue21_case5_a_gpu_that_is_not_there_is_named_as_asked():
    from uni_seg.devices import DeviceUnavailable, resolve_device

    missing = f"cuda:{torch.cuda.device_count() + 7}"
    with pytest.raises(DeviceUnavailable, match=f"device='{missing}'"):
        resolve_device(missing)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="device='cuda' was asked for but no GPU is visible"):
            resolve_device("cuda")
    assert issubclass(DeviceUnavailable, ValueError)  # a command reports it in one line


def test_n_gpus_above_the_visible_gpus_and_the_full_profile_on_cpu_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="N_GPUS=4 but 0 GPU"):
        devices.check_training_device("demo", 4, trains=True, backbone="vit_tiny")
    with pytest.raises(ValueError, match="full profile.*N_GPUS=0"):
        devices.check_training_device("full", None, trains=True, backbone="uni")
    devices.check_training_device("full", 0, trains=True, backbone="uni")  # asked for the CPU
    devices.check_training_device("full", None, trains=False, backbone="uni")  # evaluation only
    spec = train.spec_from_config(config.resolve_config("demo"), 1)
    with pytest.raises(ValueError, match="N_GPUS=4 but 0 GPU"):  # no longer four CPU processes
        train.launch_training(dataclasses.replace(spec, device="auto"), 4)
