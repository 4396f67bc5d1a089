"""Mamba-2 against Hugging Face ``transformers``' own ``Mamba2ForCausalLM`` on shapes the shipped golden
(``shared/golden-mamba2``: one group) does not cover: several groups (B and C shared by num_heads / n_groups
heads each), a chunk size that does not divide the prompt, and the gated norm over several groups.

Skipped where ``transformers`` is not installed (this machine and CI); it runs on the GPU machine, which has
transformers 5.x: ``python3 -m pytest -q engine/tests/test_mamba2_transformers.py``. Both models run the
same random weights on the CPU (transformers in float64, ours in float64 but for its float32 residual stream,
``residual_in_fp32``), so a difference above float32 rounding (1e-4 relative) is a wrong formula, not noise."""

import pytest
import torch

from engine.checkpoint import build_checkpoint

transformers = pytest.importorskip("transformers")

# (n_groups, num_heads, head_dim, chunk_size, prompt length)
SHAPES = [(2, 8, 16, 8, 13), (4, 8, 8, 5, 11), (1, 4, 16, 64, 9), (8, 8, 8, 3, 10)]


def _hf_model(n_groups: int, num_heads: int, head_dim: int, chunk: int) -> "transformers.Mamba2ForCausalLM":
    torch.manual_seed(1000 + n_groups * 31 + chunk)
    d_model = num_heads * head_dim // 2
    cfg = transformers.Mamba2Config(
        vocab_size=97, hidden_size=d_model, num_hidden_layers=3, state_size=8, expand=2, num_heads=num_heads,
        head_dim=head_dim, n_groups=n_groups, conv_kernel=4, chunk_size=chunk, use_bias=False, use_conv_bias=True,
        hidden_act="silu", residual_in_fp32=True, rms_norm=True, norm_before_gate=False, tie_word_embeddings=True,
    )
    model = transformers.Mamba2ForCausalLM(cfg).double().eval()
    with torch.no_grad():  # move every parameter off its initial value, so a swapped or skipped term shows
        for name, p in model.named_parameters():
            p.add_(0.2 * torch.randn_like(p) * (p.abs().mean() + 0.1))
    return model


@pytest.mark.parametrize("n_groups,num_heads,head_dim,chunk,T", SHAPES)
def test_logits_and_every_block_output_equal_transformers(n_groups, num_heads, head_dim, chunk, T):
    hf = _hf_model(n_groups, num_heads, head_dim, chunk)
    cfg = hf.config.to_dict()
    cfg["model_type"] = "mamba2"
    tensors = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    ours = build_checkpoint(cfg, tensors, dtype="float32").model.double()
    ids = torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(T))

    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True, use_cache=False)
        rec = {}

        def hook(site, layer, value):
            rec[(site, layer)] = value
            return value

        logits, _ = ours(ids, hook=hook)
    scale = ref.logits.abs().max()
    assert (logits.double() - ref.logits).abs().max() <= 1e-4 * scale, "logits differ from transformers"
    # hidden_states[l + 1] is block l's output (the last one after the final norm in transformers)
    for layer in range(hf.config.num_hidden_layers - 1):
        want = ref.hidden_states[layer + 1]
        got = rec[("residual", layer)].double()
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), f"block {layer}'s output differs"
