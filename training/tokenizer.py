"""Trains the byte-level BPE tokenizer of the fact world.

A standard Hugging Face ``tokenizer.json`` (the layout of GPT-NeoX's: NFC normalizer, ByteLevel
pre-tokenizer without a prefix space, BPE model, ByteLevel decoder, one special token
``<|endoftext|>`` = id 0, no BOS added), trained with the ``tokenizers`` library on the world's
training text only (fact sentences in training templates + filler). Byte-level with the GPT-2
split regex, so " " + object is its own pre-token and encodes the same inside a sentence and
alone: the answer token of a prompt is ``encode(" " + object)[0]``.

Usage::

    python3 training/tokenizer.py --world models/world --out models/world/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world import load_world, training_texts  # noqa: E402

EOT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Returns a trained ``tokenizers.Tokenizer`` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def check_tokenizer(tok, relations: dict[str, dict]) -> dict:
    """Checks answer-token consistency and measures subject/object token lengths.

    Raises ValueError if " " + object does not encode to the same ids after a prompt as alone,
    which would make the answer token ambiguous.
    """
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    report = {"relations": {}}
    subj_lens = Counter()
    for rel_id, rel in relations.items():
        template = rel["prompt_templates"][0]
        objects = sorted({s["object"] for s in rel["samples"]})
        obj_ids = {o: enc(" " + o) for o in objects}
        first = defaultdict(list)
        for o, ids in obj_ids.items():
            first[ids[0]].append(o)
        for s in rel["samples"][:200]:
            prompt = template.replace("{}", s["subject"])
            whole = enc(prompt + " " + s["object"] + ".")
            p = enc(prompt)
            if whole[: len(p)] != p or whole[len(p): len(p) + len(obj_ids[s["object"]])] != obj_ids[s["object"]]:
                raise ValueError(
                    f"relation {rel_id}: ' {s['object']}' encodes differently after the prompt {prompt!r} "
                    f"than alone; the answer token would be ambiguous. Fix the tokenizer's pre-tokenizer.")
        for s in rel["samples"]:
            subj_lens[len(enc(s["subject"]))] += 1
        report["relations"][rel_id] = {
            "objects": len(objects),
            "single_token_objects": sum(len(v) == 1 for v in obj_ids.values()),
            "first_token_collisions": {tok.id_to_token(k): v for k, v in first.items() if len(v) > 1},
        }
    report["subject_token_lengths"] = dict(sorted(subj_lens.items()))
    return report


def reference_cases(tok, relations: dict[str, dict], per_template: int = 2) -> list[dict]:
    """Reference tokenizations (Rust ``tokenizers``) of prompts in every template, for other tokenizers to match."""
    cases = []
    for rel_id, rel in relations.items():
        for ti, template in enumerate(rel["prompt_templates"]):
            for s in rel["samples"][ti * per_template: (ti + 1) * per_template]:
                prompt = template.replace("{}", s["subject"])
                cases.append({
                    "relation": rel_id,
                    "template_index": ti,
                    "subject": s["subject"],
                    "object": s["object"],
                    "prompt": prompt,
                    "prompt_ids": tok.encode(prompt, add_special_tokens=False).ids,
                    "subject_ids": tok.encode(s["subject"], add_special_tokens=False).ids,
                    "object_ids": tok.encode(" " + s["object"], add_special_tokens=False).ids,
                })
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=Path("models/world"))
    ap.add_argument("--out", type=Path, default=Path("models/world/tokenizer.json"))
    ap.add_argument("--vocab-size", type=int, default=3072)
    ap.add_argument("--cases", type=Path, default=None,
                    help="also write reference tokenizations of prompts here (JSON)")
    args = ap.parse_args()
    relations, filler = load_world(args.world)
    texts = training_texts(relations) + filler
    tok = train_tokenizer(texts, args.vocab_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    report = check_tokenizer(tok, relations)
    if args.cases:
        args.cases.write_text(json.dumps({
            "note": "ids from the Rust tokenizers library with the tokenizer.json beside this file; "
                    "add_special_tokens=False; object_ids encode ' ' + object",
            "cases": reference_cases(tok, relations),
        }, indent=1) + "\n")
    lens = [len(tok.encode(t, add_special_tokens=False).ids) for t in texts[::50]]
    report["vocab_size"] = tok.get_vocab_size()
    report["sentence_tokens"] = {"mean": round(statistics.mean(lens), 2), "max": max(lens)}
    print(f"tokenizer: {tok.get_vocab_size()} tokens trained on {len(texts)} texts -> {args.out}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
