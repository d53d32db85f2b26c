"""The precision policy is one pure function: every rule is a row of this table."""
import pytest
import torch

from lib_vaeprec.device_caps import DeviceCaps
from lib_vaeprec.policy import resolve

AMPERE = DeviceCaps("cuda", "A100", (8, 0), native_bf16=True, native_fp16=True)
TURING = DeviceCaps("cuda", "T4", (7, 5), native_bf16=False, native_fp16=True)
CPU_AVX2 = DeviceCaps("cpu", "cpu")
CPU_BF16 = DeviceCaps("cpu", "cpu", native_bf16=True)
MPS = DeviceCaps("mps", "mps", native_fp16=True)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

TABLE = [
    # choice, device, fp16_safe, avoid_emulated, dtype, mixed, warns, emulated
    ("auto", AMPERE, True, True, BF16, True, False, ""),       # mixed: fp16 blocks where they fit, else bf16
    ("auto", TURING, True, True, FP16, False, False, ""),
    ("auto", TURING, False, True, FP32, False, False, ""),
    ("auto", CPU_AVX2, True, True, FP32, False, False, ""),
    ("auto", CPU_BF16, True, True, BF16, False, False, ""),
    ("auto", MPS, True, True, FP16, False, False, ""),
    ("auto", MPS, False, True, FP32, False, False, ""),
    ("bf16", AMPERE, True, True, BF16, False, False, ""),
    ("fp16", AMPERE, False, True, FP16, False, False, ""),
    ("fp32", CPU_AVX2, True, True, FP32, False, False, ""),
    # mixed: fp16 blocks where the activations fit, the rest in bf16 (fp32 without bf16); no fp16, no mixing
    ("mixed", AMPERE, True, True, BF16, True, False, ""),
    ("mixed", TURING, True, True, FP32, True, False, ""),
    ("mixed", MPS, False, True, FP32, True, False, ""),
    ("mixed", CPU_BF16, True, True, BF16, False, False, ""),
    ("mixed", CPU_AVX2, True, True, FP32, False, False, ""),
    # a forced dtype the device only emulates runs as fp32, with a warning, unless the protection is off
    ("bf16", CPU_AVX2, True, True, FP32, False, True, "bf16"),
    ("fp16", CPU_AVX2, True, True, FP32, False, True, "fp16"),
    ("fp16", CPU_BF16, True, True, FP32, False, True, "fp16"),
    ("bf16", TURING, True, True, FP32, False, True, "bf16"),
    ("bf16", MPS, True, True, FP32, False, True, "bf16"),
    ("bf16", CPU_BF16, True, True, BF16, False, False, ""),
    ("bf16", CPU_AVX2, True, False, BF16, False, True, ""),
    ("fp16", CPU_AVX2, True, False, FP16, False, True, ""),
    ("bf16", TURING, True, False, BF16, False, True, ""),
    ("auto", CPU_AVX2, True, False, FP32, False, False, ""),
]


@pytest.mark.parametrize("choice,caps,fp16_safe,avoid_emulated,dtype,mixed,warns,emulated", TABLE)
def test_policy_table(choice, caps, fp16_safe, avoid_emulated, dtype, mixed, warns, emulated):
    precision = resolve(choice, caps, fp16_safe, avoid_emulated)
    assert precision.dtype == dtype
    assert precision.mixed == mixed
    assert bool(precision.warning) == warns
    assert precision.emulated == emulated


def test_host_default_changes_nothing():
    assert resolve("host default", AMPERE) is None


def test_forced_slow_dtype_warning_is_clear():
    warning = resolve("bf16", CPU_AVX2, avoid_emulated=False).warning
    assert "bf16" in warning and "slower" in warning


def test_emulated_dtype_warning_says_what_runs_and_how_to_force_it():
    warning = resolve("fp16", CPU_AVX2).warning
    assert "fp16" in warning and "running fp32 instead" in warning and "avoid_emulated" in warning
