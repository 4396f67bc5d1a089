"""Check the engine against reference outputs: ``python -m engine.golden_check --golden DIR``.

DIR is laid out like ``shared/golden``: for each model a checkpoint folder ``DIR/<model>/`` and a
``DIR/<model>.golden.safetensors`` of reference tensors (``golden.json`` documents them; its ``cases``
are used for the subject spans and p_clean/p_corrupt when present). Everything is discovered from the
file names and shapes: models, prompts ``p<N>.*``, layers ``p<N>.layer_out.<l>``, block outputs
``p<N>.<site>.<l>`` for the architecture's sites, trace grids ``p<N>.trace.<noise|swap>.<site|layer>.w<W>``
of shape (L, T) (``layer`` is the residual stream; noise rows are ``p<N>.noise[1:]``, swap ids
``p<N>.swap.input_ids``).

Tolerances (float32): activations (logits, layer outputs, block outputs) relative error
``max|Δ| / max|ref| ≤ 1e-4``; probabilities (every trace cell, p_clean, p_corrupt) absolute error
``≤ 1e-5``. Activations are judged relative to their scale because Mamba's residual stream reaches
hundreds, where one float32 ulp is already 3e-5. Prints the largest error per quantity; exits 1 on a
mismatch, 2 when the folder cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

from .checkpoint_files import read_safetensors
from .errors import EngineError
from .runtime import CellSpec, Engine, NoiseSpec, SwapSpec

REL_TOL = 1e-4
ABS_TOL = 1e-5


class Table:
    """Largest error per (model, quantity), with where it occurred."""

    def __init__(self):
        self.rows: dict = {}

    def add(self, model: str, quantity: str, err: float, tol: float, kind: str, where: str):
        key = (model, quantity)
        old = self.rows.get(key)
        if old is None or not (err <= old[0]):  # NaN counts as the worst
            self.rows[key] = (err, tol, kind, where)

    @property
    def ok(self) -> bool:
        return all(err <= tol for err, tol, _, _ in self.rows.values())

    def print(self, out=None):
        out = out or sys.stdout
        print(f"{'model':<14} {'quantity':<26} {'max error':>11} {'tolerance':>10}  {'kind':<9} {'worst at':<22} ok", file=out)
        for (model, q), (err, tol, kind, where) in self.rows.items():
            print(f"{model:<14} {q:<26} {err:>11.3e} {tol:>10.0e}  {kind:<9} {where:<22} {'yes' if err <= tol else 'NO'}", file=out)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def abs_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).abs().max())


def discover(golden: str) -> list:
    """(name, checkpoint folder, golden file) for every model of the folder."""
    found = []
    for f in sorted(os.listdir(golden)):
        m = re.fullmatch(r"(.+)\.golden\.safetensors", f)
        if m and os.path.isfile(os.path.join(golden, m.group(1), "config.json")):
            found.append((m.group(1), os.path.join(golden, m.group(1)), os.path.join(golden, f)))
    return found


def subject_span(case: dict, ref: dict, p: int, T: int) -> tuple:
    """The subject span: golden.json's case, else the tokens the noise touches, else the whole prompt."""
    if case and "subject" in case:
        return tuple(case["subject"])
    noise = ref.get(f"p{p}.noise")
    if noise is not None:
        touched = (noise[1:].abs().sum(dim=(0, 2)) > 0).nonzero().flatten().tolist()
        if touched:
            return touched[0], touched[-1] + 1
    return 0, T


def check_model(eng: Engine, name: str, ckpt: str, golden_file: str, meta: dict, device: str, dtype: str,
                also_slow: bool, table: Table):
    info = eng.load_model(name, ckpt, dtype=dtype, device=device)
    model = eng.models[name].model
    ref = read_safetensors(golden_file)
    L = info.num_layers
    cases = {c["prompt"]: c for c in meta.get("cases", [])}
    prompts = sorted(int(m.group(1)) for k in ref if (m := re.fullmatch(r"p(\d+)\.input_ids", k)))
    block_sites = [s for s, d in model.SITES.items() if d.where == "block"]
    for p in prompts:
        ids = ref[f"p{p}.input_ids"].long()
        T = ids.shape[0]
        with torch.no_grad():
            rec = {}

            def hook(site, layer, value):
                rec[(site, layer)] = value[0]
                return value

            logits, _ = model(ids.to(eng.models[name].device)[None], hook=hook)
        table.add(name, "logits", rel_err(logits[0].cpu(), ref[f"p{p}.logits"]), REL_TOL, "relative", f"p{p}")
        for l in range(L):
            if f"p{p}.layer_out.{l}" in ref:
                table.add(name, "layer_out", rel_err(rec[("residual", l)].cpu(), ref[f"p{p}.layer_out.{l}"]),
                          REL_TOL, "relative", f"p{p} layer {l}")
            for s in block_sites:
                if f"p{p}.{s}.{l}" in ref:
                    table.add(name, f"block {s}", rel_err(rec[(s, l)].cpu(), ref[f"p{p}.{s}.{l}"]),
                              REL_TOL, "relative", f"p{p} layer {l}")
        case = cases.get(p, {})
        subject = subject_span(case, ref, p, T)
        corruptions = {}
        if f"p{p}.noise" in ref:
            corruptions["noise"] = NoiseSpec(explicit=ref[f"p{p}.noise"][1:])
        if f"p{p}.swap.input_ids" in ref:
            corruptions["swap"] = SwapSpec(ref[f"p{p}.swap.input_ids"].tolist())
        for kind, spec in corruptions.items():
            key = f"p{p}/{kind}"
            pi = eng.prepare_prompt(name, key, ids.tolist(), subject, spec)
            if "answer" in case and pi.answer_id != case["answer"]:
                table.add(name, "answer (clean argmax)", float("inf"), 0, "exact", f"p{p}: {pi.answer_id} != {case['answer']}")
            if "p_clean" in case:
                table.add(name, "p_clean", abs(pi.p_clean - case["p_clean"]), ABS_TOL, "absolute", f"p{p}")
            if f"p_corrupt_{kind}" in case:
                table.add(name, f"p_corrupt {kind}", abs(pi.p_corrupt - case[f"p_corrupt_{kind}"]), ABS_TOL, "absolute", f"p{p}")
            for k in sorted(ref):
                m = re.fullmatch(rf"p{p}\.trace\.{kind}\.(\w+)\.w(\d+)", k)
                if not m:
                    continue
                site = "residual" if m.group(1) == "layer" else m.group(1)
                w = int(m.group(2))
                grid = ref[k]
                cells = [CellSpec(site, l, t, w) for l in range(grid.shape[0]) for t in range(grid.shape[1])]
                paths = [("fast", False)] + ([("slow", True)] if also_slow else [])
                for path, slow in paths:
                    got = torch.tensor(eng.run_cells(name, key, cells, slow_path=slow))[:, 0].view(grid.shape)
                    err = (got.double() - grid.double()).abs()
                    l, t = divmod(int(err.argmax()), grid.shape[1])
                    table.add(name, f"trace {kind} {m.group(1)} w{w}" + (" slow" if slow else ""), float(err.max()),
                              ABS_TOL, "absolute", f"p{p} layer {l} token {t}")
    eng.evict(name, all=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.golden_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--golden", required=True, help="folder laid out like shared/golden")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    ap.add_argument("--dtype", default="float32", help="float32 (the tolerances assume it), bfloat16, float16")
    ap.add_argument("--also-slow", action="store_true", help="also check the slow (uncached) path's traces")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.golden):
        print(f"golden_check: --golden {args.golden!r} is not a folder", file=sys.stderr)
        return 2
    models = discover(args.golden)
    if not models:
        print(f"golden_check: no <model>.golden.safetensors with a <model>/config.json folder in {args.golden}", file=sys.stderr)
        return 2
    meta = {}
    meta_path = os.path.join(args.golden, "golden.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f).get("models", {})
    if args.device.startswith("cuda"):
        # float32 must mean float32: no TF32 in matmuls or cuDNN convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    eng = Engine()
    table = Table()
    t0 = time.time()
    for name, ckpt, golden_file in models:
        try:
            check_model(eng, name, ckpt, golden_file, meta.get(name, {}), args.device, args.dtype, args.also_slow, table)
        except EngineError as e:
            print(f"golden_check: {name}: {type(e).__name__} ({e.field}): {e}", file=sys.stderr)
            return 1
    table.print()
    print(f"\n{len(models)} model(s), torch {torch.__version__}, {args.device} {args.dtype}, {time.time() - t0:.1f} s: "
          + ("all within tolerance" if table.ok else "MISMATCH"))
    return 0 if table.ok else 1


if __name__ == "__main__":
    sys.exit(main())
