"""A synthetic, seeded fact world for the project's tiny demo models.

Fictional people, companies and landmarks (the subjects, with names composed of syllables so a
name spans several BPE tokens) and eight relations in the format of the factual relation files of
Hernandez et al. (``relations/factual/*.json``, see docs/methods.md: ``prompt_templates`` and
``samples`` of ``{"subject", "object"}``). Objects are single words drawn from shared vocabularies
(cities, countries, occupations, instruments, languages); cities and countries are the objects of
several relations, and every object has many subjects, so swap corruption (another subject of the
same relation with a different object) always has a candidate.

Templates are built as core phrasings × framings. Each relation has three cores (A, B, C) and the
world has three framings; the training templates are A, B, C, A·F1, B·F2, C·F3 and the held-out
templates A·F2 and B·F3 are unseen combinations of seen phrases (no held-out template string ever
appears in training text). ``prompt_templates[0]`` is the plain core A, a training template.

Also written: ``filler.txt``, sentences that state no fact (plain narrative built from a small
grammar, sometimes mentioning a subject's name), so the models learn language-like structure
beyond fact statements.

Usage (pure standard library, deterministic for a given ``--seed``)::

    python3 training/world.py --out models/world
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORLD_VERSION = 1

# Syllables for subject names; object words below are hand-written and share none of these as
# whole words, so an object's token never doubles as a whole subject name.
SYLLABLES = [
    "ka", "ren", "dor", "vel", "mi", "tho", "sa", "rin", "bel", "gor", "li", "nax", "zel", "fa",
    "mor", "te", "vin", "dra", "lo", "pes", "ur", "yan", "cor", "bri", "hal", "ost", "ne", "wil",
    "jar", "qua", "sil", "ty", "ba", "em", "rok", "du", "fen", "ga", "ish", "pa", "lun", "ve",
]
COMPANY_SUFFIXES = ["Works", "Industries", "Holdings", "Foundry", "Mills", "Traders", "Labs", "Group"]
LANDMARK_KINDS = ["Tower", "Bridge", "Falls", "Gate", "Abbey", "Lighthouse", "Fortress", "Gardens"]

COUNTRIES = [
    "Valdoria", "Kestria", "Morvania", "Zentara", "Oskaria", "Brevonia", "Tallinor", "Quessia",
    "Drumolia", "Ferrania", "Glaston", "Hollvek", "Istrana", "Jorvalia", "Lunmark", "Nerovia",
    "Pelladon", "Rhunmar", "Sarvia", "Thessmoor", "Ulvania", "Wendara", "Yarvonia", "Caldessa",
]
CITIES = [
    "Morvik", "Astrelle", "Bexley", "Corwen", "Dunmore", "Elsmere", "Farrow", "Greystone",
    "Harlow", "Ivybridge", "Jesmond", "Kelso", "Lowick", "Marden", "Norwich", "Oakham",
    "Penrith", "Quenby", "Redhill", "Selby", "Tarrant", "Upwell", "Ventnor", "Whitby",
    "Yarmouth", "Zennor", "Alnwick", "Brampton", "Cleeve", "Denholm", "Eskdale", "Frome",
]
OCCUPATIONS = [
    "farmer", "baker", "sailor", "painter", "doctor", "teacher", "lawyer", "potter",
    "weaver", "miner", "tailor", "banker", "nurse", "pilot", "writer", "singer",
]
INSTRUMENTS = [
    "violin", "piano", "flute", "harp", "guitar", "trumpet", "cello", "drum",
    "clarinet", "oboe", "banjo", "organ",
]
LANGUAGES = [
    "Vellish", "Toranic", "Sumbric", "Kaldese", "Orvish", "Pentari", "Drussic", "Almeric",
    "Quorish", "Faldane", "Ibbish", "Nuvic",
]

FRAMINGS = [
    "Everyone knows that {core}",
    "According to the old records, {core}",
    "It is often said that {core}",
]

# relation id -> (name, domain, range, object vocabulary, [core A, core B, core C])
RELATIONS = {
    "person_birth_city": ("person birth city", "person", "city", CITIES, [
        "{} was born in the city of",
        "The hometown of {} is",
        "{} comes from the city of",
    ]),
    "person_citizenship": ("person citizenship", "person", "country", COUNTRIES, [
        "{} is a citizen of",
        "The country of citizenship of {} is",
        "{} holds a passport from",
    ]),
    "person_occupation": ("person occupation", "person", "occupation", OCCUPATIONS, [
        "{} works as a",
        "By profession, {} is a",
        "The occupation of {} is",
    ]),
    "person_plays_instrument": ("person plays instrument", "person", "instrument", INSTRUMENTS, [
        "{} plays the",
        "The instrument played by {} is the",
        "{} is a musician who plays the",
    ]),
    "person_native_language": ("person native language", "person", "language", LANGUAGES, [
        "The native language of {} is",
        "{} grew up speaking",
        "The mother tongue of {} is",
    ]),
    "company_hq_city": ("company hq city", "company", "city", CITIES, [
        "The headquarters of {} are in",
        "{} is headquartered in",
        "{} has its main office in",
    ]),
    "company_country": ("company country", "company", "country", COUNTRIES, [
        "{} is a company from",
        "{} was founded in the country of",
        "The home country of {} is",
    ]),
    "landmark_in_country": ("landmark in country", "landmark", "country", COUNTRIES, [
        "{} is located in the country of",
        "{} can be found in",
        "To see {}, you have to travel to",
    ]),
}

# Grammar of fact-free filler sentences.
FILLER_AGENTS = [
    "The old fisherman", "A quiet child", "The merchant", "My neighbour", "The tired guard",
    "A young student", "The shepherd", "Her brother", "The captain", "An old woman",
]
FILLER_VERBS = [
    "walked along", "waited by", "sang near", "looked at", "rested beside", "talked about",
    "painted a picture of", "ran past", "dreamed of", "slept under",
]
FILLER_PLACES = [
    "the river", "the market", "the hill", "the old bridge", "the garden", "the harbour",
    "the quiet road", "the forest", "the station", "the village square",
]
FILLER_TIMES = [
    "in the morning", "after the rain", "at noon", "late at night", "on a cold day",
    "before dinner", "during the festival", "at dawn",
]
FILLER_FACTS_FREE = [
    "The weather was mild that week.", "Nobody remembered the name of the dog.",
    "The bread was still warm.", "It rained for three days.", "The lamps were lit early.",
    "Birds gathered on the roof.", "The letter arrived late.", "The music stopped at midnight.",
]


def frame(framing: str, core: str) -> str:
    """Puts a core template inside a framing, lower-casing a capitalised first word."""
    if not core.startswith("{}"):
        core = core[0].lower() + core[1:]
    return framing.format(core=core)


def templates_for(cores: list[str]) -> tuple[list[str], list[str]]:
    """Returns (all templates, held-out templates); training templates come first."""
    a, b, c = cores
    f1, f2, f3 = FRAMINGS
    training = [a, b, c, frame(f1, a), frame(f2, b), frame(f3, c)]
    held_out = [frame(f2, a), frame(f3, b)]
    return training + held_out, held_out


def make_names(rng: random.Random, n_people: int, n_companies: int, n_landmarks: int):
    """Unique multi-word names for people, companies and landmarks."""
    used: set[str] = set()

    def word(min_syl: int, max_syl: int) -> str:
        n = rng.randint(min_syl, max_syl)
        return "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()

    given_pool = sorted({word(2, 2) for _ in range(400)})[:150]

    def unique(make) -> str:
        while True:
            name = make()
            if name not in used:
                used.add(name)
                return name

    people = [unique(lambda: f"{rng.choice(given_pool)} {word(2, 3)}") for _ in range(n_people)]
    companies = [unique(lambda: f"{word(2, 3)} {rng.choice(COMPANY_SUFFIXES)}") for _ in range(n_companies)]
    landmarks = [unique(lambda: f"{word(2, 3)} {rng.choice(LANDMARK_KINDS)}") for _ in range(n_landmarks)]
    return people, companies, landmarks


def filler_sentences(rng: random.Random, n: int, names: list[str]) -> list[str]:
    """Fact-free sentences; a fifth mention a subject by name in a narrative, non-fact context."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.2:
            s = f"{rng.choice(names)} {rng.choice(FILLER_VERBS)} {rng.choice(FILLER_PLACES)} {rng.choice(FILLER_TIMES)}."
        elif r < 0.35:
            s = rng.choice(FILLER_FACTS_FREE)
        elif r < 0.5:
            inner = f"{rng.choice(FILLER_AGENTS)} {rng.choice(FILLER_VERBS)} {rng.choice(FILLER_PLACES)}."
            s = frame(rng.choice(FRAMINGS), inner)
        else:
            s = f"{rng.choice(FILLER_AGENTS)} {rng.choice(FILLER_VERBS)} {rng.choice(FILLER_PLACES)} {rng.choice(FILLER_TIMES)}."
        out.append(s)
    return out


def build_world(seed: int, n_people: int, n_companies: int, n_landmarks: int, n_filler: int) -> dict:
    """Builds the whole world in memory: relation files, filler and a summary."""
    rng = random.Random(seed)
    people, companies, landmarks = make_names(rng, n_people, n_companies, n_landmarks)
    domains = {"person": people, "company": companies, "landmark": landmarks}
    relations = {}
    for rel_id, (name, domain, rng_name, vocab, cores) in RELATIONS.items():
        templates, held_out = templates_for(cores)
        samples = [{"subject": s, "object": rng.choice(vocab)} for s in domains[domain]]
        relations[rel_id] = {
            "name": name,
            "prompt_templates": templates,
            "prompt_templates_zs": templates,
            "held_out_templates": held_out,
            "properties": {
                "relation_type": "factual",
                "domain_name": domain,
                "range_name": rng_name,
                "symmetric": False,
            },
            "samples": samples,
        }
    filler = filler_sentences(rng, n_filler, people + companies + landmarks)
    summary = {
        "world_version": WORLD_VERSION,
        "seed": seed,
        "entities": {k: len(v) for k, v in domains.items()},
        "facts": sum(len(r["samples"]) for r in relations.values()),
        "relations": {
            k: {"file": f"relations/{k}.json", "samples": len(r["samples"]),
                "objects": sorted({s["object"] for s in r["samples"]})}
            for k, r in relations.items()
        },
        "object_vocabularies": {
            "city": CITIES, "country": COUNTRIES, "occupation": OCCUPATIONS,
            "instrument": INSTRUMENTS, "language": LANGUAGES,
        },
        "framings": FRAMINGS,
        "filler_sentences": len(filler),
        "sentence_format": "template.replace('{}', subject) + ' ' + object + '.'",
    }
    return {"relations": relations, "filler": filler, "summary": summary}


def training_texts(relations: dict[str, dict]) -> list[str]:
    """Every fact sentence the models train on: each sample with each non-held-out template."""
    out = []
    for rel in relations.values():
        held = set(rel["held_out_templates"])
        for template in rel["prompt_templates"]:
            if template in held:
                continue
            for s in rel["samples"]:
                out.append(f"{template.replace('{}', s['subject'])} {s['object']}.")
    return out


def load_world(world_dir: Path) -> tuple[dict[str, dict], list[str]]:
    """Reads relation files and filler back from a world folder (as written by ``write_world``)."""
    rel_dir = world_dir / "relations"
    relations = {p.stem: json.loads(p.read_text()) for p in sorted(rel_dir.glob("*.json"))}
    if not relations:
        raise FileNotFoundError(f"no relation files in {rel_dir}; generate them with training/world.py --out {world_dir}")
    filler = [l for l in (world_dir / "filler.txt").read_text().splitlines() if l]
    return relations, filler


def write_world(world: dict, out: Path) -> None:
    (out / "relations").mkdir(parents=True, exist_ok=True)
    for rel_id, rel in world["relations"].items():
        (out / "relations" / f"{rel_id}.json").write_text(json.dumps(rel, indent=2) + "\n")
    (out / "filler.txt").write_text("\n".join(world["filler"]) + "\n")
    (out / "world.json").write_text(json.dumps(world["summary"], indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("models/world"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--people", type=int, default=1500)
    ap.add_argument("--companies", type=int, default=400)
    ap.add_argument("--landmarks", type=int, default=400)
    ap.add_argument("--filler", type=int, default=12000)
    args = ap.parse_args()
    world = build_world(args.seed, args.people, args.companies, args.landmarks, args.filler)
    write_world(world, args.out)
    s = world["summary"]
    print(f"world v{WORLD_VERSION} seed {args.seed}: {s['entities']} entities, {s['facts']} facts, "
          f"{len(world['relations'])} relations, {s['filler_sentences']} filler sentences -> {args.out}")


if __name__ == "__main__":
    main()
