"""The shipped fact world: reproducible from its generator and in the format the dataset loader reads."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))

import world  # noqa: E402

WORLD = ROOT / "models" / "world"


def test_world_py_regenerates_the_shipped_world_byte_for_byte(tmp_path):
    summary = json.loads((WORLD / "world.json").read_text())
    args = summary["entities"]
    built = world.build_world(summary["seed"], args["person"], args["company"], args["landmark"],
                              summary["filler_sentences"])
    world.write_world(built, tmp_path)
    for rel in sorted((WORLD / "relations").glob("*.json")):
        assert (tmp_path / "relations" / rel.name).read_bytes() == rel.read_bytes(), rel.name
    assert sorted(p.name for p in (tmp_path / "relations").iterdir()) == sorted(
        p.name for p in (WORLD / "relations").glob("*.json"))
    assert (tmp_path / "filler.txt").read_bytes() == (WORLD / "filler.txt").read_bytes()


def test_every_relation_file_has_the_loader_fields_and_a_trained_first_template():
    relations, _ = world.load_world(WORLD)
    assert 6 <= len(relations) <= 10
    for rel_id, rel in relations.items():
        assert {"name", "prompt_templates", "properties", "samples", "held_out_templates"} <= set(rel), rel_id
        assert all(t.count("{}") == 1 for t in rel["prompt_templates"]), rel_id
        assert set(rel["held_out_templates"]) < set(rel["prompt_templates"]), rel_id
        assert rel["prompt_templates"][0] not in rel["held_out_templates"], rel_id
        assert len(rel["prompt_templates"]) >= 5, rel_id
        subjects = [s["subject"] for s in rel["samples"]]
        assert len(subjects) == len(set(subjects)), f"{rel_id}: a subject appears twice"
        assert all(" " not in s["object"] for s in rel["samples"]), f"{rel_id}: objects are single words"


def test_every_fact_has_a_swap_partner_with_a_different_object():
    relations, _ = world.load_world(WORLD)
    for rel_id, rel in relations.items():
        per_object = {}
        for s in rel["samples"]:
            per_object[s["object"]] = per_object.get(s["object"], 0) + 1
        # a fact can be swapped with any subject whose object differs
        assert all(len(rel["samples"]) - n > 0 for n in per_object.values()), rel_id
        assert len(per_object) >= 10, f"{rel_id}: only {len(per_object)} distinct objects"


def test_no_held_out_template_appears_in_the_training_text():
    relations, filler = world.load_world(WORLD)
    train = world.training_texts(relations)
    for rel_id, rel in relations.items():
        for t in rel["held_out_templates"]:
            s = rel["samples"][0]
            prompt = t.replace("{}", s["subject"])
            assert not any(x.startswith(prompt) for x in train), f"{rel_id}: held-out {t!r} is trained"
    for rel in relations.values():
        for t in rel["held_out_templates"]:
            head = t.split("{}")[0]
            assert not any(x.startswith(head) and t.split("{}")[1] in x for x in filler), t
