"""Held-out evaluation of teacher, distilled student and the baselines in one pass over the data.

The teacher's logits are computed once per batch and shared by every model's top-1 agreement.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from edgekd.losses.outputs import model_inputs


@torch.no_grad()
def evaluate(models: dict, teacher, batches: list[dict], kind: str = "causal-lm", device=None,
             teacher_top1: Optional[list] = None) -> dict:
    """{name: {eval_loss, perplexity and next_token_accuracy | accuracy and macro_f1, top1_agreement}} for each
    model in `models` and the teacher (None: no teacher, and no top-1 agreement).

    `teacher_top1`: a list that receives, batch by batch, the teacher's argmax at every position ([b, S - 1],
    int32, on the CPU; row i of a causal LM's batch predicts token i + 1), for what is measured after the
    teacher has gone (the exported files' top-1 agreement with it)."""
    names = (["teacher"] if teacher is not None else []) + list(models)
    mods = ({"teacher": teacher} if teacher is not None else {}) | models
    acc = {n: {"loss": 0.0, "agree": 0, "correct": 0, "pred": [], "true": []} for n in names}
    count = 0
    was = {n: m.training for n, m in mods.items()}
    for m in mods.values():
        m.eval()
    try:
        for b in _rows_bounded(batches, mods, kind):
            if device is not None:
                b = {k: v.to(device) for k, v in b.items()}
            kw = model_inputs(b)
            t_logits = None
            for n in names:
                logits = mods[n](**kw).logits.float()
                labels = b["labels"]
                if kind == "causal-lm":
                    logits, labels = logits[:, :-1], labels[:, 1:]
                    keep = (labels != -100)
                    if b.get("attention_mask") is not None:
                        keep = keep & b["attention_mask"][:, 1:].bool()
                elif kind == "seq2seq":  # the decoder's logits at t predict labels at t (teacher-forced)
                    keep = labels != -100
                else:
                    keep = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
                flat = logits.reshape(-1, logits.shape[-1])
                lab = labels.reshape(-1)
                k = keep.reshape(-1)
                acc[n]["loss"] += F.cross_entropy(flat[k], lab[k], reduction="sum").item()
                pred = flat.argmax(-1)
                acc[n]["correct"] += int((pred[k] == lab[k]).sum())
                if kind == "classifier":
                    acc[n]["pred"].append(pred[k].cpu())
                    acc[n]["true"].append(lab[k].cpu())
                if n == "teacher":
                    t_logits = pred
                    if teacher_top1 is not None:
                        teacher_top1.append(pred.reshape(labels.shape).to(torch.int32).cpu())
                if t_logits is not None:
                    acc[n]["agree"] += int((pred[k] == t_logits[k]).sum())
                if n == names[0]:
                    count += int(k.sum())
    finally:
        for n, m in mods.items():
            m.train(was[n])
    out = {}
    for n in names:
        loss = acc[n]["loss"] / max(1, count)
        r = {"eval_loss": loss, "top1_agreement": acc[n]["agree"] / max(1, count) if teacher is not None else None}
        if kind != "classifier":  # token-level: an LM's next token, a seq2seq decoder's target token
            r["perplexity"] = math.exp(min(loss, 80.0))
            r["next_token_accuracy"] = acc[n]["correct"] / max(1, count)
        else:
            r["accuracy"] = acc[n]["correct"] / max(1, count)
            r["macro_f1"] = macro_f1(torch.cat(acc[n]["pred"]), torch.cat(acc[n]["true"])) if acc[n]["pred"] else None
            r["confusion"] = confusion(torch.cat(acc[n]["pred"]), torch.cat(acc[n]["true"])) if acc[n]["pred"] else None
        r["eval_examples" if kind == "classifier" else "eval_tokens"] = count
        out[n] = r
    return out


def _rows_bounded(batches: list[dict], mods: dict, kind: str):
    """The batches, each split into as many rows per forward as keep its token logits within
    memory.FORWARD_BYTES (a 151,936-token vocabulary: one 256-token row's logits are 150 MB a copy)."""
    from edgekd.distill.memory import EVAL_LOGIT_COPIES, F32, rows_per_forward

    if kind == "classifier":
        yield from batches
        return
    vocab = max((getattr(getattr(m, "config", None), "vocab_size", 0) or 0) for m in mods.values())
    for b in batches:
        n, t = b["input_ids"].shape[:2]
        step = rows_per_forward(n, t * vocab * F32 * EVAL_LOGIT_COPIES)
        for i in range(0, n, step):
            yield {k: v[i:i + step] for k, v in b.items()} if step < n else b


@torch.no_grad()
def teacher_on_own_tokens(teacher, cross, batches: list[dict], device=None) -> dict:
    """A teacher with another tokenizer on the same held-out text, re-tokenised for it: its total loss in
    nats over that text divided by the student's scored tokens (`eval_loss`, so it compares with the
    students' per-token loss: the same text's information per student token), and per its own tokens.
    Top-1 agreement has no meaning across vocabularies (None)."""
    was = teacher.training
    teacher.eval()
    nats, own, student_tokens, correct = 0.0, 0, 0, 0
    try:
        for b in batches:
            mask = b.get("attention_mask")
            keep_s = b["labels"][:, 1:] != -100
            if mask is not None:
                keep_s = keep_s & mask[:, 1:].bool()
            student_tokens += int(keep_s.sum())
            al = cross.align(b["input_ids"].cpu(), None if mask is None else mask.cpu())
            ids, tm = al.teacher_ids.to(device), al.teacher_mask.to(device)
            logits = teacher(input_ids=ids, attention_mask=tm).logits.float()[:, :-1]
            lab, keep = ids[:, 1:], tm[:, 1:].bool()
            nats += F.cross_entropy(logits[keep], lab[keep], reduction="sum").item()
            correct += int((logits[keep].argmax(-1) == lab[keep]).sum())
            own += int(keep.sum())
    finally:
        teacher.train(was)
    loss = nats / max(1, student_tokens)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 80.0)), "eval_tokens": student_tokens,
            "top1_agreement": None, "eval_loss_own_tokens": nats / max(1, own), "eval_tokens_own": own,
            "next_token_accuracy": correct / max(1, own)}


def macro_f1(pred: torch.Tensor, true: torch.Tensor) -> float:
    """The unweighted mean over classes of F1 = 2TP / (2TP + FP + FN), over the classes that occur among the
    labels or the predictions (scikit-learn's f1_score(average="macro") with its default labels)."""
    classes = torch.unique(torch.cat([pred, true]))
    f1 = []
    for c in classes:
        tp = int(((pred == c) & (true == c)).sum())
        fp = int(((pred == c) & (true != c)).sum())
        fn = int(((pred != c) & (true == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1) / len(f1) if f1 else 0.0


def confusion(pred: torch.Tensor, true: torch.Tensor) -> list[list[int]]:
    """The confusion matrix: row i, column j counts the held-out examples of class i predicted as j (classes 0 to
    the largest seen)."""
    n = int(torch.cat([pred, true]).max()) + 1
    m = torch.bincount(true.long() * n + pred.long(), minlength=n * n).reshape(n, n)
    return m.tolist()


@torch.no_grad()
def teacher_right_student_wrong(teacher, student, batches: list[dict], device=None, most: int = 16) -> dict:
    """An image classifier's held-out images the teacher labels right and the student wrong: {"count": how many,
    "examples": up to `most` of them as {"pixels" [C, H, W] (the model's input), "label", "student"}}."""
    found, count = [], 0
    was = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    try:
        for b in batches:
            x, y = b["pixel_values"].to(device), b["labels"].to(device)
            t, s = teacher(pixel_values=x).logits.argmax(-1), student(pixel_values=x).logits.argmax(-1)
            hit = ((t == y) & (s != y)).nonzero().flatten().tolist()
            count += len(hit)
            found += [{"pixels": x[i].cpu(), "label": int(y[i]), "student": int(s[i])} for i in hit][:most - len(found)]
    finally:
        teacher.train(was[0])
        student.train(was[1])
    return {"count": count, "examples": found}


def heldout_loss(model, batches: list[dict], kind: str = "causal-lm", device=None) -> float:
    """The held-out loss of one model (a point of a training curve)."""
    return evaluate({}, model, batches, kind, device)["teacher"]["eval_loss"]


@torch.no_grad()
def temperature_examples(teacher, blocks: torch.Tensor, tokenizer, temperatures=(0.5, 1.0, 2.0, 4.0),
                         n: int = 3, top: int = 12) -> list[dict]:
    """A few real teacher next-token distributions at several temperatures (for the report's plot)."""
    teacher.eval()
    x = blocks[:1]
    logits = teacher(input_ids=x).logits[0].float()
    L = logits.shape[0]
    picks = [L // 4, L // 2, (3 * L) // 4][:n]
    out = []
    for pos in picks:
        row = logits[pos]
        order = row.argsort(descending=True)[:top]
        ctx = tokenizer.decode(x[0, max(0, pos - 12):pos + 1].tolist()) if tokenizer is not None else ""
        out.append({
            "position": int(pos), "context": ctx,
            "tokens": [tokenizer.decode([int(i)]) if tokenizer is not None else str(int(i)) for i in order],
            "probs": {str(T): torch.softmax(row / T, -1)[order].tolist() for T in temperatures},
            "entropy": {str(T): float(-(torch.softmax(row / T, -1) * torch.log_softmax(row / T, -1)).sum())
                        for T in temperatures},
        })
    return out


@torch.no_grad()
def continuations(models: dict, blocks: torch.Tensor, tokenizer, device=None, n: int = 3, prompt_len: int = 48,
                  new_tokens: int = 32) -> list[dict]:
    """Greedy continuations of a few held-out prompts by each model, beside the text that really followed:
    what a reader looks at to see what the losses mean."""
    if blocks is None or not len(blocks) or tokenizer is None:
        return []
    prompt_len = min(prompt_len, blocks.shape[1] // 2)
    new_tokens = min(new_tokens, blocks.shape[1] - prompt_len)
    rows = sorted({int(i) for i in torch.linspace(0, len(blocks) - 1, min(n, len(blocks)))})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for r in rows:
        prompt = blocks[r:r + 1, :prompt_len].to(device)
        ex = {"prompt": tokenizer.decode(prompt[0].tolist()),
              "reference": tokenizer.decode(blocks[r, prompt_len:prompt_len + new_tokens].tolist())}
        for name, m in models.items():
            was = m.training
            m.eval()
            ids = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad)
            m.train(was)
            ex[name] = tokenizer.decode(ids[0, prompt_len:].tolist())
        out.append(ex)
    return out


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (character n-gram F-score, sacrebleu's defaults: n = 6, beta = 2), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


@torch.no_grad()
def translations(models: dict, pairs: list[tuple[str, str]], tokenizer, max_len: int, device=None,
                 shown: int = 3) -> tuple[dict, list[dict]]:
    """Greedy translations (PyTorch `generate`) of held-out sources by each model: ({name: chrF against the
    references}, a few sources with each model's translation beside the reference, for the report)."""
    from edgekd.models.seq2seq import translate

    if not pairs:
        return {}, []
    enc = tokenizer([s for s, _ in pairs], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    refs = [t for _, t in pairs]
    scores, texts = {}, {}
    for name, m in models.items():
        ids = translate(m.to(device) if device is not None else m, enc["input_ids"], enc["attention_mask"], max_len)
        texts[name] = tokenizer.batch_decode(ids, skip_special_tokens=True)
        scores[name] = chrf(texts[name], refs)
    side = [{"source": pairs[i][0], "reference": refs[i], **{n: texts[n][i] for n in models}}
            for i in range(min(shown, len(pairs)))]
    return scores, side
