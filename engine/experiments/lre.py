"""Linear relation embeddings (paper §4, §9.6; Hernandez et al. 2023, ``JacobianIclMeanEstimator``).

For each training prompt (an in-context prompt that ends with the query; the coordinator builds and
tokenizes it): s = the residual state h at layer ℓ at the subject's last token (ℓ = −1: the token
embedding; else the output of block ℓ), z = the last block's output at the last token, before the
final norm. J = ∂z/∂s (by batched backward passes: each batch row carries one output coordinate, so
it needs only plain autograd and runs alike on PyTorch 1.13 and 2.x) and b = z − J·s. The LRE is
W̄ = mean J, b̄ = mean b. For a test prompt, the prediction is β·W̄·s + b̄ (β scales only W̄·s),
decoded through the final norm and unembedding. Faithfulness at β = the share of the test facts
the model gets right (its top-1 = ``object_id``) whose LRE top-1 equals the model's top-1.

The blocks after ℓ run only on tokens from the subject's last token on, resumed from the clean
run's cached per-layer state there (the tokens before it do not depend on s).

``prompt_key`` is not used (prompts arrive as ids in the params).

Params (JSON object)::

    layer: int, −1..L−1 (−1 = embedding)
    betas: [float], default [1.0]
    train: [{ ids: [int], subject_last: int (position in ids), object_id?: int }]   non-empty
    test:  [{ ids: [int], subject_last: int, object_id: int }]   (may be empty)
    jacobian_rows: int ≥ 1, output coordinates per backward batch (default min(64, the engine's max
                   batch rows); each row keeps the autograd graph of the blocks after ℓ on the tokens
                   from the subject's last on, so lower it for large models and long prompts)

Result (JSON object)::

    layer: int;  betas: [float];  n_train: int;  n_test: int
    n_test_correct: int             test facts whose model top-1 is object_id
    faithfulness: [float | null]    per beta; null when n_test_correct is 0
    train_correct: int | null       train facts whose model top-1 is object_id (null if none gave one)
    tests: [{ model_top1: int, correct: bool, lre_top1: [int] (per beta) }]
"""

from __future__ import annotations

import torch

from ..errors import NumericError
from . import register
from ._common import as_float, as_ids, as_int, as_list, bad, check_keys, embed

PARAMS = ("layer", "betas", "train", "test", "jacobian_rows")


def _facts(value, field: str, model, need_object: bool, nonempty: bool) -> list:
    c = model.config
    out = []
    for i, f in enumerate(as_list(value, field, nonempty=nonempty)):
        where = f"{field}[{i}]"
        if not isinstance(f, dict):
            raise bad(where, "an object {ids, subject_last, object_id}", f)
        check_keys(f, ("ids", "subject_last", "object_id"), where)
        if "ids" not in f or "subject_last" not in f:
            raise bad(where, "an object with ids and subject_last", f)
        ids = as_ids(f["ids"], f"{where}.ids", c.vocab_size, c.max_positions)
        s = as_int(f["subject_last"], f"{where}.subject_last", 0, len(ids) - 1)
        obj = None
        if need_object or f.get("object_id") is not None:
            if "object_id" not in f:
                raise bad(f"{where}.object_id", "the answer's first token id", None)
            obj = as_int(f["object_id"], f"{where}.object_id", 0, c.vocab_size - 1)
        out.append((ids, s, obj))
    return out


def _parse(params: dict, engine, model):
    check_keys(params, PARAMS)
    L = model.config.num_layers
    if "layer" not in params:
        raise bad("layer", "an integer -1..%d (-1 = embedding)" % (L - 1), None)
    layer = as_int(params["layer"], "layer", -1, L - 1)
    betas = [as_float(b, f"betas[{i}]") for i, b in enumerate(as_list(params.get("betas", [1.0]), "betas"))]
    if "train" not in params:
        raise bad("train", "a non-empty array of {ids, subject_last, object_id?}", None)
    train = _facts(params["train"], "train", model, need_object=False, nonempty=True)
    test = _facts(params.get("test", []), "test", model, need_object=True, nonempty=False)
    rows = as_int(params.get("jacobian_rows", min(64, engine.max_batch_rows)), "jacobian_rows", 1)
    return layer, betas, train, test, rows


def _stream(model, ids: list, keep: bool):
    """One clean forward: (residual stream entering each block and the final norm, (L+1) × (1, T, d);
    kept per-layer states or None; last-token logits (V,))."""
    ids_t = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    if keep:
        logits, (kept, stream) = model(ids_t, keep=True)
        return stream, kept, logits[0, -1]
    x = embed(model, ids_t)  # as the model's forward, without keeping states
    stream = [x]
    for layer in model.layers:
        x = layer(x)[0]
        stream.append(x)
    return stream, None, model.head(x[0, -1])


def jacobian_and_bias(model, ids: list, s: int, layer: int, rows: int):
    """J = ∂z/∂h (d, d) and b = z − J·h (d,) in float32 for one prompt; also the model's top-1.
    h: residual entering block layer + 1 at token s; z: last block's output at the last token."""
    with torch.no_grad():
        stream, kept, logits = _stream(model, ids, keep=True)
    start = layer + 1
    base = stream[start][:, s:].detach()  # (1, T-s, d): block start's input from token s on
    h = base[0, 0]
    z = stream[-1][0, -1].detach().float()
    d = h.shape[0]
    L = len(model.layers)
    J = torch.empty(d, d, dtype=torch.float32, device=h.device)
    with torch.enable_grad():
        for k in range(0, d, rows):
            n = min(rows, d - k)
            hv = h.detach().expand(n, d).clone().requires_grad_(True)  # (n, d): one row per output coordinate
            x = torch.cat([hv[:, None], base[:, 1:].expand(n, -1, -1)], dim=1)  # (n, T-s, d)
            idx = torch.zeros(n, dtype=torch.long, device=h.device)
            for j in range(start, L):
                blk = model.layers[j]
                x = blk(x, None, blk.resume_state(kept[j], s, idx), s)[0]
            zs = x[:, -1]  # (n, d)
            pick = torch.zeros(n, d, dtype=zs.dtype, device=zs.device)
            pick[torch.arange(n), torch.arange(k, k + n)] = 1
            (g,) = torch.autograd.grad((zs * pick).sum(), hv)  # row i: ∂z[k+i]/∂h
            J[k:k + n] = g.float()
    b = z - J @ h.float()
    return J, b, int(logits.argmax())


@register("lre")
def lre(engine, model_id: str, prompt_key: str, params: dict) -> dict:
    """Fits the LRE on the train prompts and scores its faithfulness on the test prompts; see the module doc."""
    ck = engine.checkpoint(model_id)
    model = ck.model
    layer, betas, train, test, rows = _parse(params, engine, model)
    Js, bs, train_ok = [], [], []
    for ids, s, obj in train:
        J, b, top1 = jacobian_and_bias(model, ids, s, layer, rows)
        Js.append(J)
        bs.append(b)
        if obj is not None:
            train_ok.append(top1 == obj)
    W, b = torch.stack(Js).mean(0), torch.stack(bs).mean(0)  # (d, d), (d,)
    if not (bool(torch.isfinite(W).all()) and bool(torch.isfinite(b).all())):
        raise NumericError("NaN or inf in the Jacobian or bias; the model overflows the run dtype", field="params.train")
    beta_t = torch.tensor(betas, dtype=torch.float32, device=W.device)
    tests = []
    with torch.no_grad():
        for ids, s, obj in test:
            stream, _, logits = _stream(model, ids, keep=False)
            h = stream[layer + 1][0, s].float()
            z = beta_t[:, None] * (W @ h)[None] + b[None]  # (betas, d)
            lre_top1 = model.head(z.to(model.residual_dtype())).argmax(-1).tolist()
            top1 = int(logits.argmax())
            tests.append({"model_top1": top1, "correct": top1 == obj, "lre_top1": lre_top1})
    correct = [t for t in tests if t["correct"]]
    faith = [
        (sum(t["lre_top1"][i] == t["model_top1"] for t in correct) / len(correct)) if correct else None
        for i in range(len(betas))
    ]
    return {
        "layer": layer, "betas": betas, "n_train": len(train), "n_test": len(test),
        "n_test_correct": len(correct), "faithfulness": faith,
        "train_correct": sum(train_ok) if train_ok else None, "tests": tests,
    }
