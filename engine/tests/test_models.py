"""The model code: every site of the table is readable and writable at every layer, and gradients
flow through the site hooks (what ROME and LRE need)."""

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.testing import write_random_checkpoint

IDS = torch.tensor([[5, 17, 33, 2, 41, 9, 60]])


@pytest.fixture(scope="module", params=["mamba", "gpt_neox"])
def model(request, tmp_path_factory):
    return load_checkpoint(write_random_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=2)).model


def test_every_site_of_the_table_is_read_at_every_layer_with_its_width(model):
    seen = {}

    def hook(site, layer, value):
        seen[(site, layer)] = tuple(value.shape)
        return value

    with torch.no_grad():
        model(IDS, hook=hook)
    c, L = model.config, model.config.num_layers
    expected = {}
    for name, site in model.SITES.items():
        for layer in ([0] if site.where == "input" else range(L)):
            expected[(name, layer)] = (1, IDS.shape[1], getattr(c, site.width))
    assert seen == expected


@pytest.mark.parametrize("position", ["first", "last"])
def test_overwriting_any_site_changes_the_logits_from_that_token_on(model, position):
    L, T = model.config.num_layers, IDS.shape[1]
    layer, token = (0, 0) if position == "first" else (L - 1, T - 1)
    with torch.no_grad():
        base = model(IDS)[0]
        for name, site in model.SITES.items():
            def hook(s, l, value, name=name):
                if s == name and l == (0 if site.where == "input" else layer):
                    value = value.clone()
                    value[:, token] += torch.linspace(-1, 1, value.shape[-1])  # not constant: LayerNorm erases that
                return value

            out = model(IDS, hook=hook)[0]
            changed = (out - base).abs().amax(dim=-1)[0]  # (T,)
            assert changed[token] > 1e-4, f"{name}: writing token {token} did not change its logits"
            assert torch.all(changed[:token] == 0), f"{name}: writing token {token} changed earlier tokens"


def test_gradients_flow_through_site_hooks_to_the_value_and_the_weights(model):
    model.zero_grad()
    delta = torch.zeros(model.config.hidden_size, requires_grad=True)

    def hook(site, layer, value):
        return value + delta if (site, layer) == ("residual", 0) else value

    logits, _ = model(IDS, hook=hook)
    torch.log_softmax(logits[0, -1], -1)[7].backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.layers[-1].parameters())
    model.zero_grad()
