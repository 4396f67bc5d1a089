"""Runs knockout, sever and lre on the shipped tiny fact models and prints the figures (the numbers
behind the paper's plots, for models/mamba-facts and models/neox-facts). Uses the Engine in-process,
through ``engine.experiments.run``: the same call the worker makes for RunExperiment.

    node scripts/engine/tokenize_world.mjs --per 40 > /tmp/facts.json
    bash scripts/engine-python.sh -m engine.experiments.demo.figures /tmp/facts.json [--per 5] [--window 3] [--device cuda]

Prompts: each relation's first template, facts the model recalls (top-1 = the object's first token).
Knockout and sever use the subject swap of romba (another fact of the relation, same token layout,
different object); LRE fits on 5 facts and tests on the rest, prompts without in-context examples
(the tiny models were trained on single sentences), sweeping every layer and β.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import torch

from engine import experiments
from engine.runtime import Engine, SwapSpec

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODELS = {"mamba": "models/mamba-facts", "neox": "models/neox-facts"}
PATHS = {"mamba": ["none", "ssm", "gate", "mixer"], "neox": ["none", "attn", "mlp"]}


def known(eng, name, facts):
    ck = eng._model(name)
    out = []
    with torch.no_grad():
        for f in facts:
            if int(ck.model(torch.tensor([f["ids"]], device=ck.device))[0][0, -1].argmax()) == f["object_id"]:
                out.append(f)
    return out


def swap_partner(f, facts):
    for g in facts:
        if (len(g["ids"]) == len(f["ids"]) and g["subject_start"] == f["subject_start"]
                and g["subject_last"] == f["subject_last"] and g["object_id"] != f["object_id"]
                and g["ids"][g["subject_last"] + 1:] == f["ids"][f["subject_last"] + 1:]):
            return g
    return None


def fmt(xs, w=6):
    return " ".join(f"{x:+.2f}".rjust(w) if x is not None else "   -  " for x in xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("facts")
    ap.add_argument("--per", type=int, default=5, help="prompts per relation for knockout and sever")
    ap.add_argument("--window", type=int, default=3, help="knockout window (layers)")
    ap.add_argument("--lre-test", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    data = json.load(open(a.facts))
    eng = Engine()
    for name, path in MODELS.items():
        info = eng.load_model(name, os.path.join(ROOT, path), device=a.device)
        L = info.num_layers
        print(f"\n=== {name} ({path}): {L} layers, d {info.hidden_size} ===")
        prompts = []
        for rel, r in data["relations"].items():
            facts = known(eng, name, r["facts"])
            picked = 0
            for f in facts:
                g = swap_partner(f, facts)
                if g is None:
                    continue
                key = f"{rel}/{f['subject']}"
                eng.prepare_prompt(name, key, f["ids"], (f["subject_start"], f["subject_last"] + 1), SwapSpec(g["ids"]),
                                   answer_id=f["object_id"])
                prompts.append((rel, key, f))
                picked += 1
                if picked == a.per:
                    break
        print(f"prompts (known, with a swap partner): {len(prompts)} over {len(data['relations'])} relations")

        # -- knockout ------------------------------------------------------------------------
        sets = ["subject", "subject_last", "non_subject", "last"]
        curves = defaultdict(lambda: defaultdict(list))
        for rel, key, f in prompts:
            res = experiments.run(eng, name, "knockout", key, {"layers": list(range(L)), "window": a.window,
                                                               "token_sets": sets, "corpus": data["corpus"]})
            for row in res["rows"]:
                curves[row["token_set"]][row["layer"]].append(row["relative_change"])
        method = res["method"]
        print(f"\nknockout ({method}, window {a.window}): mean relative change (p_knocked − p)/p by window centre")
        print("  set            " + " ".join(f"L{l}".rjust(6) for l in range(L)))
        for s in sets:
            print(f"  {s:<14} " + fmt([sum(curves[s][l]) / len(curves[s][l]) for l in range(L)]))

        # -- sever ---------------------------------------------------------------------------
        rec = defaultdict(lambda: defaultdict(list))  # (where, path) -> layer -> IE
        for rel, key, f in prompts:
            T = len(f["ids"])
            cells = [{"token": t, "layer": l, "path": p} for t in (f["subject_last"], T - 1)
                     for l in range(L) for p in PATHS[name]]
            res = experiments.run(eng, name, "sever", key, {"cells": cells})
            span = res["p_clean"] - res["p_corrupt"]
            if span <= 1e-3:
                continue
            for c, p in zip(cells, res["p"]):
                where = "subject_last" if c["token"] == f["subject_last"] else "last"
                rec[(where, c["path"])][c["layer"]].append((p - res["p_corrupt"]) / span)
        n = len(next(iter(rec.values()))[0]) if rec else 0
        print(f"\nsever (swap): mean recovery (p − p*)/(p − p*) of restoring h at (token, layer), path frozen; {n} prompts")
        print("  token         path   " + " ".join(f"L{l}".rjust(6) for l in range(L)))
        for where in ("subject_last", "last"):
            for p in PATHS[name]:
                xs = rec[(where, p)]
                print(f"  {where:<13} {p:<6} " + fmt([sum(xs[l]) / len(xs[l]) for l in range(L)]))

        # -- lre -----------------------------------------------------------------------------
        betas = [0.5, 1, 2, 3, 4, 6, 8]
        layers = list(range(-1, L))
        print(f"\nlre: faithfulness, 5 train facts, ≤{a.lre_test} test facts per relation, layers {layers}, β {betas}")
        grid_mean = torch.zeros(len(layers), len(betas))
        for rel, r in data["relations"].items():
            facts = [dict(ids=f["ids"], subject_last=f["subject_last"], object_id=f["object_id"]) for f in r["facts"]]
            train, test = facts[:5], facts[5:5 + a.lre_test]
            best = (-1.0, None, None)
            for i, layer in enumerate(layers):
                res = experiments.run(eng, name, "lre", "", {"layer": layer, "betas": betas, "train": train, "test": test})
                for k, fa in enumerate(res["faithfulness"]):
                    fa = fa or 0.0
                    grid_mean[i, k] += fa / len(data["relations"])
                    if fa > best[0]:
                        best = (fa, layer, betas[k])
            print(f"  {rel:<24} best {best[0]:.2f} at layer {best[1]:>2}, β {best[2]} "
                  f"(test facts known: {res['n_test_correct']}/{res['n_test']})")
        print("  mean over relations, layer × β:")
        print("    layer " + " ".join(f"β{b}".rjust(6) for b in betas))
        for i, layer in enumerate(layers):
            print(f"    {('emb' if layer < 0 else layer):>5} " + " ".join(f"{v:.2f}".rjust(6) for v in grid_mean[i].tolist()))


if __name__ == "__main__":
    main()
