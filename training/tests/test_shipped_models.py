"""The shipped checkpoints (models/mamba-facts, models/mamba2-facts, models/neox-facts) load in the project's own engine
and recall the world's facts: the demo sweep depends on that."""

import json
import struct
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["mamba-facts", "mamba2-facts", "neox-facts"]
CASES = json.loads((ROOT / "models" / "world" / "tokenizer-cases.json").read_text())["cases"]


def relation(rel_id):
    return json.loads((ROOT / "models" / "world" / "relations" / f"{rel_id}.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_a_shipped_model_is_a_float32_hf_folder_under_10_mb_with_the_world_tokenizer(name):
    folder = ROOT / "models" / name
    st = folder / "model.safetensors"
    assert st.stat().st_size <= 10 * 1024 * 1024
    with open(st, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    assert (folder / "tokenizer.json").read_bytes() == (ROOT / "models" / "world" / "tokenizer.json").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    card = (folder / "README.md").read_text()
    scores = json.loads((folder / "eval.json").read_text())["eval"]
    assert scores["first_template"]["recall"] >= 0.95 and scores["held_out_templates"]["recall"] >= 0.80
    assert f"{scores['first_template']['recall']:.4f}" in card


@pytest.mark.parametrize("name", MODELS)
def test_a_shipped_model_recalls_reference_facts_through_the_engine_and_swap_removes_them(name):
    model = load_checkpoint(str(ROOT / "models" / name)).model
    hits = {"trained": [0, 0], "held_out": [0, 0]}
    p_clean, p_swapped = [], []
    first = {}
    with torch.no_grad():
        for c in CASES:
            probs = torch.softmax(model(torch.tensor([c["prompt_ids"]]))[0][0, -1], -1)  # (V,)
            rel = relation(c["relation"])
            kind = "held_out" if rel["prompt_templates"][c["template_index"]] in rel["held_out_templates"] else "trained"
            hits[kind][0] += int(probs.argmax()) == c["object_ids"][0]
            hits[kind][1] += 1
            if c["template_index"] == 0:
                first.setdefault(c["relation"], []).append((c, probs))
    for pair in first.values():
        (a, pa), (b, pb) = pair[:2]
        if a["object"] != b["object"]:
            # swap corruption: b's subject in a's prompt; a's answer should lose its probability
            p_clean.append(float(pa[a["object_ids"][0]]))
            p_swapped.append(float(pb[a["object_ids"][0]]))
    assert hits["trained"][0] == hits["trained"][1], hits
    assert hits["held_out"][0] >= 0.8 * hits["held_out"][1], hits
    assert p_clean and min(p_clean) > 0.5 and max(p_swapped) < 0.1, (p_clean, p_swapped)
