"""The golden check discovers models, prompts, layers and grids from any folder of the golden layout,
passes when the references agree and exits non-zero when one value is off."""

import torch

from engine import golden_check
from engine.checkpoint_files import save_safetensors
from engine.runtime import CellSpec, Engine, NoiseSpec, SwapSpec
from engine.testing import write_random_checkpoint


def make_golden(folder, seed=5):
    """A golden folder for a 3-layer sequential NeoX (a shape the shared goldens do not have); its
    references come from the engine's slow path, so this tests the checker, not the model."""
    ckpt = write_random_checkpoint(folder / "neox-seq", "gpt_neox", seed=seed, num_hidden_layers=3,
                                   use_parallel_residual=False)
    eng = Engine()
    eng.load_model("m", ckpt)
    model = eng.models["m"].model
    ref = {}
    for p, ids in enumerate([[3, 9, 27, 19, 57, 43], [8, 16, 32, 1, 2, 4, 60, 61]]):
        T = len(ids)
        rec = {}

        def hook(site, layer, value):
            rec[(site, layer)] = value[0].detach().clone()
            return value

        with torch.no_grad():
            logits, _ = model(torch.tensor([ids]), hook=hook)
        ref[f"p{p}.input_ids"] = torch.tensor(ids)
        ref[f"p{p}.logits"] = logits[0]
        for l in range(3):
            ref[f"p{p}.layer_out.{l}"] = rec[("residual", l)]
            ref[f"p{p}.attn.{l}"] = rec[("attn", l)]
            ref[f"p{p}.mlp.{l}"] = rec[("mlp", l)]
        noise = torch.zeros(4, T, 16)
        noise[1:, 1:3] = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(p)) * 0.5
        ref[f"p{p}.noise"] = noise
        swap = [ids[0], 50, 51] + ids[3:]
        ref[f"p{p}.swap.input_ids"] = torch.tensor(swap)
        for kind, spec, mod, w in [("noise", NoiseSpec(explicit=noise[1:]), "layer", 1), ("noise", NoiseSpec(explicit=noise[1:]), "mlp", 3),
                                   ("swap", SwapSpec(swap), "attn", 10)]:
            eng.prepare_prompt("m", f"{p}{kind}", ids, (1, 3), spec)
            site = "residual" if mod == "layer" else mod
            cells = [CellSpec(site, l, t, w) for l in range(3) for t in range(T)]
            grid = torch.tensor(eng.run_cells("m", f"{p}{kind}", cells, slow_path=True))[:, 0].view(3, T)
            ref[f"p{p}.trace.{kind}.{mod}.w{w}"] = grid.float()
    save_safetensors(folder / "neox-seq.golden.safetensors", ref)
    return ref


def test_a_folder_of_the_golden_layout_with_other_shapes_passes(tmp_path, capsys):
    make_golden(tmp_path)
    assert golden_check.main(["--golden", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for quantity in ("logits", "layer_out", "block attn", "block mlp", "trace noise layer w1", "trace noise mlp w3",
                     "trace swap attn w10"):
        assert quantity in out
    assert "all within tolerance" in out


def test_one_trace_cell_off_by_more_than_the_tolerance_fails_the_check(tmp_path, capsys):
    ref = make_golden(tmp_path)
    ref["p1.trace.swap.attn.w10"][2, 5] += 3e-5
    save_safetensors(tmp_path / "neox-seq.golden.safetensors", ref)
    assert golden_check.main(["--golden", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out
    line = next(l for l in out.splitlines() if "trace swap attn w10" in l)
    assert "p1 layer 2 token 5" in line and line.rstrip().endswith("NO")


def test_a_folder_without_goldens_is_a_usage_error(tmp_path, capsys):
    assert golden_check.main(["--golden", str(tmp_path / "missing")]) == 2
    assert golden_check.main(["--golden", str(tmp_path)]) == 2
