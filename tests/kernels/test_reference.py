"""The unfused eager loss (the benchmarks' baseline, loss_impl="eager") is the same loss as the oracle."""

import pytest
import torch

from edgekd.kernels import eager_kd_loss, kd_loss_reference

from ._kdtest import rel_err, run


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_eager_matches_reference(divergence, with_labels):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 50, generator=g) * 3, torch.randn(2, 6, 50, generator=g) * 3
    lab = torch.randint(0, 50, (2, 6), generator=g) if with_labels else None
    if lab is not None:
        lab[0, :2] = -100
    kw = dict(temperature=1.7, alpha=0.4, divergence=divergence, beta=0.3)
    ref_l, ref_g = run(kd_loss_reference, s, t, lab, 1.0, **kw)
    got_l, got_g = run(eager_kd_loss, s, t, lab, 1.0, **kw)
    assert rel_err(got_l, ref_l) < 1e-5 and rel_err(got_g, ref_g) < 1e-5


def test_eager_dtype():
    s = torch.randn(4, 32).bfloat16()
    t = torch.randn(4, 32).bfloat16()
    lab = torch.randint(0, 32, (4,))
    assert eager_kd_loss(s, t, lab, temperature=2.0, alpha=0.5).dtype == torch.float32  # loss_impl="eager"
    assert eager_kd_loss(s, t, lab, temperature=2.0, alpha=0.5, dtype=None).dtype == torch.bfloat16  # benchmarks
