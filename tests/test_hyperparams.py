"""One default per hyperparameter: the CLI, DistillConfig, every registered loss, the multi-teacher scheme and
the kernels' Python face read edgekd.hyperparams, and the Python API's KDLoss(setup) is the CLI's loss."""

import inspect

import pytest
import torch
import typer
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd import hyperparams as hp, kernels
from edgekd.checks import distill_numbers
from edgekd.cli import app
from edgekd.distill import DistillConfig
from edgekd.distill.objective import build_response_loss
from edgekd.errors import EdgekdError
from edgekd.losses import DEFAULT_SPEC, LOSSES, LossView, Setup, build_loss, response_loss_names
from edgekd.losses.combine import check_spec
from edgekd.losses.response import KDLoss

DEFAULTS = {"temperature": hp.DEFAULT_TEMPERATURE, "alpha": hp.DEFAULT_ALPHA, "divergence": hp.DEFAULT_DIVERGENCE,
            "beta": hp.DEFAULT_BETA, "skew": hp.DEFAULT_SKEW}


def _defaults(fn) -> dict:
    params = inspect.signature(fn).parameters.items()
    return {k: p.default for k, p in params if p.default is not inspect.Parameter.empty}


def _cli_distill_defaults() -> dict:
    command = typer.main.get_command(app).commands["distill"]
    return {p.name: p.default for p in command.params}


def test_the_cli_and_distill_config_default_to_the_one_value():
    cli = _cli_distill_defaults()
    assert float(cli["temperature"]) == hp.DEFAULT_TEMPERATURE and cli["alpha"] == hp.DEFAULT_ALPHA
    assert DistillConfig().temperature == hp.DEFAULT_TEMPERATURE and DistillConfig().alpha == hp.DEFAULT_ALPHA
    assert (hp.DEFAULT_TEMPERATURE, hp.DEFAULT_ALPHA) == (1.0, 0.7)  # the README's job (benchmarks/kd_sweep.py)


def test_every_response_loss_defaults_to_the_one_value():
    names = response_loss_names()
    assert {"kd", "kd_fused_linear", "mse_logits", "uld", "token_align"} <= set(names)
    for name in names:
        given = _defaults(LOSSES[name].__init__)
        for key in set(given) & set(DEFAULTS):
            assert given[key] == DEFAULTS[key], (name, key)
        assert {"temperature", "alpha"} <= set(given), name
    for entry in DEFAULT_SPEC:
        assert {k: entry[k] for k in set(entry) & set(DEFAULTS)} == {k: DEFAULTS[k] for k in set(entry) & set(DEFAULTS)}


def test_the_kernels_default_to_the_one_temperature_and_mixtures():
    for fn in (kernels.kd_loss, kernels.fused_linear_kd_loss, kernels.kd_loss_reference):
        d = _defaults(fn)
        assert d["temperature"] == hp.DEFAULT_TEMPERATURE, fn.__name__
        assert (d["divergence"], d["beta"], d["skew"]) == (hp.DEFAULT_DIVERGENCE, hp.DEFAULT_BETA, hp.DEFAULT_SKEW)
        assert d["alpha"] == 1.0  # the kernel's documented default: distillation alone (DESIGN.md)


def _pair():
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    s = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, **cfg))
    t = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, **cfg))
    return s, t


def test_kdloss_from_the_python_api_is_the_clis_loss():
    s, t = _pair()
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    so, to = s(ids), t(ids)
    view = LossView(so, to, ids, None, True)
    direct = KDLoss(Setup(s.config, t.config, True))(view)
    run = DistillConfig()
    cli = build_response_loss(None, s.config, t.config, temperature=run.temperature, alpha=run.alpha)
    assert (cli.temperature, cli.alpha) == (hp.DEFAULT_TEMPERATURE, hp.DEFAULT_ALPHA)
    assert torch.equal(cli(so, to, ids)[0], direct)
    assert torch.equal(build_loss(None, s.config, t.config)(so, to, ids)[0], direct)
    want = kernels.kd_loss_reference(so.logits[:, :-1], to.logits[:, :-1], ids[:, 1:], temperature=1.0, alpha=0.7)
    assert direct.item() == pytest.approx(want.item(), rel=1e-5)


def test_auto_is_resolved_and_values_checked_in_one_place():
    assert hp.resolve_temperature("auto", lambda: (8000, 1000)) == pytest.approx(4.0)
    assert hp.resolve_temperature(2, lambda: pytest.fail("counts are read only for 'auto'")) == 2.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "hot"):
        with pytest.raises(EdgekdError, match="--temperature must be a number > 0 or 'auto'"):
            hp.check_temperature("--temperature", bad)
    with pytest.raises(EdgekdError, match=r"loss 'kd': alpha must be a number in \[0, 1\]"):
        check_spec([{"name": "kd", "alpha": 2}])
    with pytest.raises(EdgekdError, match="--alpha must be a number in"):
        distill_numbers(alpha=1.5)
