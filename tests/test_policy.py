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
    # choice, device, fp16_safe, dtype, mixed, warns
    ("auto", AMPERE, True, BF16, False, False),
    ("auto", TURING, True, FP16, False, False),
    ("auto", TURING, False, FP32, False, False),
    ("auto", CPU_AVX2, True, FP32, False, False),
    ("auto", CPU_BF16, True, BF16, False, False),
    ("auto", MPS, True, FP16, False, False),
    ("auto", MPS, False, FP32, False, False),
    ("bf16", AMPERE, True, BF16, False, False),
    ("bf16", CPU_AVX2, True, BF16, False, True),
    ("fp16", CPU_AVX2, True, FP16, False, True),
    ("bf16", TURING, True, BF16, False, True),
    ("fp16", AMPERE, False, FP16, False, False),
    ("fp32", CPU_AVX2, True, FP32, False, False),
    ("mixed", AMPERE, True, BF16, True, False),
    ("mixed", TURING, True, FP16, True, False),
    ("mixed", CPU_AVX2, True, FP32, False, False),
]


@pytest.mark.parametrize("choice,caps,fp16_safe,dtype,mixed,warns", TABLE)
def test_policy_table(choice, caps, fp16_safe, dtype, mixed, warns):
    precision = resolve(choice, caps, fp16_safe)
    assert precision.dtype == dtype
    assert precision.mixed == mixed
    assert bool(precision.warning) == warns


def test_host_default_changes_nothing():
    assert resolve("host default", AMPERE) is None


def test_forced_slow_dtype_warning_is_clear():
    warning = resolve("bf16", CPU_AVX2).warning
    assert "bf16" in warning and "slower" in warning
