"""Test-wide settings.

Triton kernels run on the CPU through Triton's interpreter when no GPU is present; the variable must be set before
Triton (and so any kernel module) is imported, which is why it is set here, at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
