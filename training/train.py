"""Trains one tiny fact-recall model (Mamba, Mamba-2 or GPT-NeoX) on the synthetic fact world.

Hugging Face ``transformers`` models (``MambaForCausalLM``, ``Mamba2ForCausalLM``, ``GPTNeoXForCausalLM``) trained from
scratch with next-token cross-entropy on every token of the world's sentences: each fact in each
training template ("<template with subject> <object>.") plus fact-free filler, one sentence per row
(so a prompt starts at position 0 with no BOS, as the sweep feeds it), an ``<|endoftext|>`` after
each sentence, right padding that the loss ignores. Then it measures recall (top-1 next token after
the prompt == first token of " " + object) with the first template and with the held-out templates
over every fact, prints both, and saves a float32 safetensors checkpoint with the tokenizer,
``eval.json`` and a model card.

Runs on a GPU or, slowly, on a CPU (needs ``torch``, ``transformers`` ≥ 4.40 and ``tokenizers``)::

    python3 training/train.py --arch mamba --world models/world --tokenizer models/world/tokenizer.json \
        --out models/mamba-facts --steps 2000

Seeded (model init, data order); on a GPU, kernels with atomics can make reruns differ in the
last digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world import load_world, training_texts  # noqa: E402

PAD_ID = 0  # <|endoftext|>: also the end-of-sentence token

# Shapes of the shipped models. Mamba gets more, thinner blocks than NeoX, as mamba-2.8b (64
# blocks) against pythia-2.8b (32 layers): a Mamba block holds about half a transformer layer's
# weights.
ARCH_DEFAULTS = {
    "mamba": {"layers": 8, "d_model": 128, "lr": 3e-3, "steps": 2000},
    # chunk 16: the facts are ~20 tokens; transformers' PyTorch SSD pads each row to a whole chunk and
    # builds (chunk x chunk) tensors per head, so its default 256 (or 64) spends most of a step on padding
    "mamba2": {"layers": 8, "d_model": 128, "lr": 3e-3, "steps": 2000, "chunk": 16},
    "neox": {"layers": 6, "d_model": 128, "lr": 2e-3, "steps": 4000},
}


def build_model(arch: str, vocab_size: int, layers: int, d_model: int, chunk: int = 64):
    """A freshly initialised HF causal LM with the project's shapes (float32)."""
    import transformers

    if arch == "mamba":
        cfg = transformers.MambaConfig(
            vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=layers, state_size=16,
            expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, hidden_act="silu",
            residual_in_fp32=True, rescale_prenorm_residual=False, tie_word_embeddings=True,
            pad_token_id=PAD_ID, bos_token_id=PAD_ID, eos_token_id=PAD_ID,
        )
        return transformers.MambaForCausalLM(cfg)
    if arch == "mamba2":  # 8 heads of 32 (d_inner 256), one group, state 16: Mamba-1's widths
        cfg = transformers.Mamba2Config(
            vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=layers, state_size=16,
            expand=2, num_heads=2 * d_model // 32, head_dim=32, n_groups=1, conv_kernel=4, chunk_size=chunk,
            use_bias=False, use_conv_bias=True, hidden_act="silu", residual_in_fp32=True, rms_norm=True,
            norm_before_gate=False, rescale_prenorm_residual=False, tie_word_embeddings=True,
            pad_token_id=PAD_ID, bos_token_id=PAD_ID, eos_token_id=PAD_ID,
        )
        return transformers.Mamba2ForCausalLM(cfg)
    if arch == "neox":
        rope = {}
        if int(transformers.__version__.split(".")[0]) >= 5:
            rope["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
        else:
            rope.update(rotary_pct=0.25, rotary_emb_base=10000)
        cfg = transformers.GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=layers,
            num_attention_heads=max(1, d_model // 32), intermediate_size=4 * d_model, hidden_act="gelu",
            max_position_embeddings=128, layer_norm_eps=1e-5, use_parallel_residual=True,
            attention_bias=True, tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0,
            bos_token_id=PAD_ID, eos_token_id=PAD_ID, **rope,
        )
        return transformers.GPTNeoXForCausalLM(cfg)
    raise ValueError(f"--arch: expected 'mamba', 'mamba2' or 'neox', got {arch!r}")


def encode_rows(tok, texts: list[str], add_eot: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token ids right-padded with PAD_ID, shape (n, max_len), and each row's length."""
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    if add_eot:
        ids = [x + [PAD_ID] for x in ids]
    lens = np.array([len(x) for x in ids], dtype=np.int64)
    out = np.full((len(ids), int(lens.max())), PAD_ID, dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
    return out, lens


def sortish_batches(lens: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches of similar lengths (less padding; Mamba's scan loops over length)."""
    perm = rng.permutation(len(lens))
    chunk = batch * 32
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start: start + chunk]
        part = part[np.argsort(lens[part], kind="stable")]
        batches += [part[i: i + batch] for i in range(0, len(part), batch) if len(part[i: i + batch]) == batch]
    rng.shuffle(batches)
    return batches


def fact_prompts(tok, relations: dict, which: str, limit: int | None = None):
    """(relation id, prompt ids, answer id) for each fact under the first or the held-out templates."""
    rows = []
    for rel_id, rel in relations.items():
        templates = rel["prompt_templates"][:1] if which == "first" else rel["held_out_templates"]
        samples = rel["samples"] if limit is None else rel["samples"][:limit]
        answers = {o: tok.encode(" " + o, add_special_tokens=False).ids[0] for o in {s["object"] for s in samples}}
        for t in templates:
            for s in samples:
                rows.append((rel_id, t.replace("{}", s["subject"]), answers[s["object"]], s["subject"]))
    enc = tok.encode_batch([r[1] for r in rows], add_special_tokens=False)
    return [(r[0], e.ids, r[2], r[3]) for r, e in zip(rows, enc)]


@torch.no_grad()
def recall(model, prompts, device, batch: int = 2048) -> dict:
    """Top-1 recall: share of prompts whose next-token argmax is the answer's first token."""
    model.eval()
    hits: dict[str, list[int]] = {}
    missed: list[dict] = []
    for start in range(0, len(prompts), batch):
        part = prompts[start: start + batch]
        width = max(len(p[1]) for p in part)
        x = torch.full((len(part), width), PAD_ID, dtype=torch.long)
        for i, (_, ids, _, _) in enumerate(part):
            x[i, : len(ids)] = torch.tensor(ids)
        last = torch.tensor([len(p[1]) - 1 for p in part])
        logits = model(input_ids=x.to(device), use_cache=False).logits  # (b, t, v); causal, so right padding is inert
        pred = logits[torch.arange(len(part)), last.to(device)].argmax(-1).cpu()
        for (rel_id, _, ans, subject), p in zip(part, pred.tolist()):
            hits.setdefault(rel_id, [0, 0])
            hits[rel_id][0] += int(p == ans)
            hits[rel_id][1] += 1
            if p != ans:
                missed.append({"relation": rel_id, "subject": subject})
    model.train()
    total = sum(h[0] for h in hits.values()), sum(h[1] for h in hits.values())
    return {
        "recall": total[0] / total[1],
        "prompts": total[1],
        "by_relation": {k: round(v[0] / v[1], 4) for k, v in sorted(hits.items())},
        "missed": missed,
    }


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def model_card(arch: str, args, info: dict) -> str:
    """The model card (README.md) written beside the checkpoint."""
    name = args.out.name
    first, held = info["eval"]["first_template"], info["eval"]["held_out_templates"]
    rel_rows = "\n".join(
        f"| `{k}` | {first['by_relation'][k]:.4f} | {held['by_relation'][k]:.4f} |" for k in first["by_relation"])
    held_rows = "\n".join(f"- `{k}`: " + "; ".join(f"`{t}`" for t in v) for k, v in info["held_out_templates"].items())
    kind = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}.get(
        arch, "GPTNeoXForCausalLM (parallel residual, rotary on 25% of each head)")
    return f"""# {name}

A tiny {kind} trained from scratch by this project on its synthetic fact world
(`models/world/`), so that the causal-tracing sweep has a model that really knows facts. Not a
language model for any other use: it knows only the fictional world.

## Scores (printed by `training/train.py` at the end of training)

Top-1 recall: the next-token argmax after the prompt equals the first token of `" " + object`,
over every fact of the world ({info['facts']} facts).

| templates | recall | prompts |
| --- | --- | --- |
| first template (`prompt_templates[0]`, seen in training) | **{first['recall']:.4f}** | {first['prompts']} |
| held-out templates (never in training text) | **{held['recall']:.4f}** | {held['prompts']} |

| relation | first template | held-out templates |
| --- | --- | --- |
{rel_rows}

Final training loss {info['final_loss']:.4f} (mean over the last 50 steps).

## Model

{info['params']:,} parameters, float32 safetensors ({info['checkpoint_bytes']:,} bytes): {info['shape']}.
Vocabulary {info['vocab_size']} (byte-level BPE, `tokenizer.json`, trained on the world's training
text; `<|endoftext|>` = 0 is end of sentence and padding; no BOS is added: feed the prompt as is).

## How it was made

Command (from the repository root):

```
{info['command']}
```

- seed {args.seed}; {info['steps']} steps of batch {args.batch} sentences (one sentence per row, right-padded, loss on every token incl. the closing `<|endoftext|>`);
  AdamW (betas 0.9/0.98, no weight decay), peak lr {args.lr}, {args.warmup} warm-up steps, cosine to a tenth; gradient clipping 1.0.
- data: {info['train_fact_sentences']} fact sentences ({info['facts']} facts × the {'/'.join(map(str, info['train_templates_per_relation']))} training templates of each relation) and
  {info['filler_sentences']} fact-free filler sentences (`models/world/filler.txt`), sampled in length-sorted shuffled batches;
  {info['epochs']:.1f} passes over that data.
- hardware: {info['hardware']}; torch {info['torch']}, transformers {info['transformers']}; training took {info['train_seconds']:.0f} s
  ({info['step_ms']:.1f} ms a step), evaluation {info['eval_seconds']:.1f} s.
- `eval.json` beside this card holds the same figures as JSON, and under `eval.first_template.missed` the facts
  (relation, subject) this model does not recall with the first template, to leave out of a sweep of known facts.
- `bash training/run_all.sh` runs this for each of the three shipped models (Mamba, Mamba-2, GPT-NeoX), after training the tokenizer (see `training/README.md`).

Held-out templates (new combinations of phrasings seen in training with other partners; listed in
each relation file's `held_out_templates` field):

{held_rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True, choices=["mamba", "mamba2", "neox"])
    ap.add_argument("--world", type=Path, default=Path("models/world"))
    ap.add_argument("--tokenizer", type=Path, default=Path("models/world/tokenizer.json"))
    ap.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default per arch: the shipped run's)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default per arch)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--chunk-size", type=int, default=None, help="Mamba-2's SSD chunk (default per arch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop training early (and say so) once this much wall time has passed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    d = ARCH_DEFAULTS[args.arch]
    args.layers = args.layers or d["layers"]
    args.d_model = args.d_model or d["d_model"]
    args.lr = args.lr or d["lr"]
    args.steps = args.steps or d["steps"]
    args.chunk_size = args.chunk_size or d.get("chunk", 64)
    tag = f"[{args.arch}]"

    import transformers
    from tokenizers import Tokenizer

    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    relations, filler = load_world(args.world)
    tok = Tokenizer.from_file(str(args.tokenizer))
    fact_texts = training_texts(relations)
    data, lens = encode_rows(tok, fact_texts + filler, add_eot=True)
    data_t = torch.from_numpy(data).to(device)
    n_facts = sum(len(r["samples"]) for r in relations.values())
    print(f"{tag} {len(fact_texts)} fact sentences + {len(filler)} filler, max {data.shape[1]} tokens, "
          f"mean {lens.mean():.1f}; {n_facts} facts", flush=True)

    model = build_model(args.arch, tok.get_vocab_size(), args.layers, args.d_model, args.chunk_size).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{tag} {n_params:,} parameters; config: {model.config.to_json_string(use_diff=True)}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)

    probe_first = fact_prompts(tok, relations, "first", limit=100)
    probe_held = fact_prompts(tok, relations, "held_out", limit=50)

    model.train()
    batches: list[np.ndarray] = []
    epochs = 0.0
    losses: list[float] = []  # mean loss of each 50-step window
    loss_acc = torch.zeros((), device=device)
    t0 = time.time()
    step = 0
    stopped_early = False
    for step in range(args.steps):
        if not batches:
            batches = sortish_batches(lens, args.batch, np_rng)
        idx = batches.pop()
        epochs += len(idx) / len(lens)
        width = int(lens[idx].max())
        x = data_t[torch.from_numpy(idx).to(device), :width]  # (b, t)
        pos = torch.arange(width, device=device)[None, :]
        labels = torch.where(pos < torch.from_numpy(lens[idx]).to(device)[:, None], x, -100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        logits = model(input_ids=x, use_cache=False).logits  # (b, t, v)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_acc += loss.detach()
        if (step + 1) % 50 == 0:
            losses.append(loss_acc.item() / 50)  # one host sync per window, not per step
            loss_acc.zero_()
        if (step + 1) % args.eval_every == 0 or step == 0:
            el = time.time() - t0
            pf, ph = recall(model, probe_first, device), recall(model, probe_held, device)
            print(f"{tag} step {step + 1}/{args.steps} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"epochs {epochs:.1f} probe recall first {pf['recall']:.3f} held-out {ph['recall']:.3f} "
                  f"{el:.1f}s ({1000 * el / (step + 1):.1f} ms/step)", flush=True)
        if args.max_minutes and time.time() - t0 > 60 * args.max_minutes:
            stopped_early = True
            print(f"{tag} --max-minutes {args.max_minutes} reached: stopping at step {step + 1} of {args.steps}",
                  flush=True)
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t0
    steps_done = step + 1

    t1 = time.time()
    first = recall(model, fact_prompts(tok, relations, "first"), device)
    held = recall(model, fact_prompts(tok, relations, "held_out"), device)
    eval_s = time.time() - t1
    print(f"{tag} RECALL first template: {first['recall']:.4f} ({first['prompts']} prompts); "
          f"held-out templates: {held['recall']:.4f} ({held['prompts']} prompts)", flush=True)
    del held["missed"]  # per-template misses would bloat eval.json; the first template's are kept
    print(f"{tag} by relation, first: {first['by_relation']}", flush=True)
    print(f"{tag} by relation, held-out: {held['by_relation']}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float()
    model.save_pretrained(str(args.out), safe_serialization=True)
    tok.save(str(args.out / "tokenizer.json"))
    ckpt_bytes = (args.out / "model.safetensors").stat().st_size
    if args.arch == "mamba":
        shape = f"{args.layers} Mamba blocks, d_model {args.d_model}, d_inner {2 * args.d_model}, state 16, conv 4, tied embeddings"
    elif args.arch == "mamba2":
        shape = (f"{args.layers} Mamba-2 blocks, d_model {args.d_model}, d_inner {2 * args.d_model} = {2 * args.d_model // 32} "
                 "heads of 32, 1 group, state 16, conv 4, tied embeddings")
    else:
        shape = (f"{args.layers} layers, d_model {args.d_model}, {max(1, args.d_model // 32)} heads, MLP {4 * args.d_model}, "
                 f"rotary on 25% of each head, untied embeddings")
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    info = {
        "arch": args.arch,
        "eval": {"first_template": first, "held_out_templates": held},
        "facts": n_facts,
        "params": n_params,
        "checkpoint_bytes": ckpt_bytes,
        "shape": shape,
        "vocab_size": tok.get_vocab_size(),
        "seed": args.seed,
        "steps": steps_done,
        "steps_planned": args.steps,
        "stopped_early": stopped_early,
        "batch": args.batch,
        "lr": args.lr,
        "epochs": epochs,
        "final_loss": losses[-1] if losses else float(loss.item()),
        "train_fact_sentences": len(fact_texts),
        "train_templates_per_relation": sorted({len(r["prompt_templates"]) - len(r["held_out_templates"]) for r in relations.values()}),
        "filler_sentences": len(filler),
        "train_seconds": train_s,
        "step_ms": 1000 * train_s / steps_done,
        "eval_seconds": eval_s,
        "hardware": hardware,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": "python3 training/train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "held_out_templates": {k: r["held_out_templates"] for k, r in relations.items()},
    }
    (args.out / "eval.json").write_text(json.dumps(info, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(args.arch, args, info))
    print(f"{tag} saved {args.out} ({ckpt_bytes:,} bytes model.safetensors); train {train_s:.1f}s, eval {eval_s:.1f}s",
          flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
