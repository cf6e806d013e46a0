"""The launcher's key-norm kernel (kernels/key_norms.py) behind the bounded ALiBi forward: each (batch, kv head)'s
largest ||k_j||, after the slopes in one fp32 buffer; anything not a number becomes +inf (the bound's off switch)."""
from __future__ import annotations

import pytest
import torch

from avo_inductor.kernels import launch


@pytest.mark.parametrize("b,h,n,d,dtype", [
    (1, 1, 1, 16, torch.float32),
    (2, 3, 17, 40, torch.bfloat16),
    (1, 2, 1000, 111, torch.float16),
    (2, 1, 2049, 64, torch.float32),   # three programs per head, the last one ragged
])
def test_key_norms_follow_the_slopes(b, h, n, d, dtype):
    slopes = torch.rand(5)
    k = torch.randn(b, h, n, d).to(dtype) * torch.rand(b, h, 1, 1).to(dtype) * 4
    k = k.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, H, D) storage: non-contiguous head stride
    m, strides, code = launch.mask_operand(torch.randn(b, 5, 1, d), slopes, "alibi", n, alibi_keys=k)
    expected = torch.linalg.vector_norm(k.double(), dim=-1).amax(-1).reshape(-1)
    assert code == 3 and strides == (0, 1, 0, 0) and m.dtype == torch.float32 and m.shape == (5 + b * h,)
    assert torch.equal(m[:5], slopes)
    torch.testing.assert_close(m[5:].double(), expected, rtol=1e-6, atol=0)


def test_a_key_norm_that_is_not_a_number_turns_into_inf():
    k = torch.randn(1, 2, 40, 16)
    k[0, 1, 7, 3] = float("nan")
    m, _, _ = launch.mask_operand(torch.randn(1, 2, 1, 16), torch.rand(2), "alibi", 40, alibi_keys=k)
    assert torch.isfinite(m[2]) and m[3] == float("inf")
