"""Distillation schemes: where the teacher's outputs come from, and what changes after each step.

    scheme = build_scheme(name, teachers=[...], student=student, **cfg)
    teacher_out = scheme.teacher_outputs(batch, student_out)   # batch: input_ids, attention_mask, labels
    scheme.after_step(student, step)                           # after each optimizer step
    scheme.extra_parameters()                                  # the trainer optimises these too
    scheme.state_dict() / load_state_dict()                    # checkpointed beside the trainer's state
    scheme.teacher_config                                      # build the loss against this (the EMA for "self")

The teacher is run with whatever the student output carries (hidden states, attentions, or the
fused-linear fields of `forward_for_loss`), unless `loss_fn=` is given, whose needs_* then rule.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.io import atomic_dir
from edgekd.losses import (LossInputs, Needs, TeacherMixture, TopKLogits, forward_for_loss, get_field,
                           hard_label_loss, is_causal, mixture_logits, unwrap)

SCHEMES: dict[str, type] = {}


def register_scheme(name: str):
    def deco(cls):
        cls.name = name
        SCHEMES[name] = cls
        return cls
    return deco


def build_scheme(name: str, *, teachers: Sequence[nn.Module] = (), student: nn.Module, **cfg) -> "Scheme":
    """The scheme `name` with its options; an unknown name or option is an EdgekdError naming it."""
    if name not in SCHEMES:
        raise EdgekdError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    cls = SCHEMES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "teachers", "student")]
    for key in cfg:
        if key not in allowed:
            raise EdgekdError(f"scheme {name!r}: unknown option {key!r}; it takes {', '.join(allowed) or 'none'}")
    return cls(teachers=list(teachers), student=student, **cfg)


def _needs(student_out: Any, loss_fn: Any) -> Needs:
    """What the teacher must produce: the loss's needs if known, else whatever the student output has."""
    if loss_fn is not None:
        return Needs.of(loss_fn)
    nonempty = lambda f: bool(get_field(student_out, f))  # noqa: E731
    return Needs(needs_logits=get_field(student_out, "logits") is not None,
                 needs_hidden_states=nonempty("hidden_states"), needs_attentions=nonempty("attentions"),
                 needs_last_hidden=get_field(student_out, "lm_head_weight") is not None)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients: a teacher that only answers."""
    model.eval()
    model.requires_grad_(False)
    return model


class Scheme:
    """Base: a frozen single teacher run live. Subclasses change where outputs come from."""

    name = ""

    def __init__(self, *, teachers: list, student: nn.Module, loss_fn: Any = None):
        self.teachers, self.loss_fn = teachers, loss_fn

    @property
    def teacher(self) -> nn.Module:
        return self.teachers[0]

    @property
    def teacher_config(self):
        """Config of the model whose outputs teacher_outputs returns: build the loss against it."""
        return getattr(unwrap(self.teacher), "config", None) if self.teachers else None

    def _one_teacher(self) -> None:
        if len(self.teachers) != 1:
            raise EdgekdError(f"scheme {self.name!r} takes exactly one teacher, got {len(self.teachers)}")

    def _run(self, model: nn.Module, batch: dict, needs: Needs) -> LossInputs:
        with torch.no_grad():
            return forward_for_loss(model, batch, needs)

    def teacher_outputs(self, batch: dict, student_out: Any):
        return self._run(self.teacher, batch, _needs(student_out, self.loss_fn))

    def after_step(self, student: nn.Module, step: int) -> None:
        pass

    def extra_parameters(self) -> list:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ---- offline, with the optional top-k cache --------------------------------------------------------

def _examples(data) -> list[torch.Tensor]:
    """A data set as a list of 1-D int64 token tensors (the real tokens only).

    Accepts a [N,L] tensor of blocks, {"input_ids": [N,L], "attention_mask": [N,L]} (padded rows),
    or a sequence of tensors, lists, or dicts with input_ids (and optionally attention_mask); the
    engine's streams (edgekd.data.batching BlockStream / ClassificationStream) are taken as their examples.
    """
    if isinstance(getattr(data, "blocks", None), torch.Tensor):  # BlockStream
        data = data.blocks
    elif isinstance(getattr(data, "ids", None), torch.Tensor) and isinstance(getattr(data, "mask", None), torch.Tensor):
        data = {"input_ids": data.ids, "attention_mask": data.mask}  # ClassificationStream
    if isinstance(data, dict):
        ids = torch.as_tensor(data["input_ids"], dtype=torch.long)
        mask = data.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
        return [row[m] for row, m in zip(ids, mask)]
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise EdgekdError(f"cache data must be [N, L] token blocks, got shape {tuple(data.shape)}")
        return list(data.long().unbind(0))
    out = []
    for item in data:
        ids = torch.as_tensor(item["input_ids"] if isinstance(item, dict) else item, dtype=torch.long).reshape(-1)
        if isinstance(item, dict) and item.get("attention_mask") is not None:
            ids = ids[torch.as_tensor(item["attention_mask"]).bool().reshape(-1)]
        out.append(ids)
    return out


def _key(ids: torch.Tensor) -> int:
    """A 63-bit key of one example's token ids, to find it in the cache from a batch row."""
    d = hashlib.blake2b(ids.to(torch.int64).cpu().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


def data_hash(examples: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for ids in examples:
        h.update(len(ids).to_bytes(8, "little"))
        h.update(ids.to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()


def teacher_hash(model: nn.Module) -> str:
    """Config, parameter names and shapes, and a strided sample of every tensor's values."""
    model = unwrap(model)
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        d = {k: v for k, v in cfg.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256]
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """A teacher's top-k logits over a data set, in safetensors shards, so a large teacher runs once.

    Layout: DIR/index.json (format, k, dtype, vocab size, data and teacher hashes, shards with their
    example ranges and tensor shapes) and DIR/shard-NNNNN.safetensors holding, for its examples,
    `values` [tokens, k] (float16 or float32 raw logits), `indices` [tokens, k] int32, `offsets`
    [n+1] int64 (row range per example) and `keys` [n] int64 (a hash of the example's ids). The
    directory is written atomically. A batch row is served by its data position (batch["index"])
    or, without one, by the hash of its real tokens; rows it does not know are an EdgekdError.
    """

    FORMAT = "edgekd-teacher-topk"

    def __init__(self, path: Path, index: dict):
        self.path, self.index = Path(path), index
        self.k = int(index["k"])
        self._firsts = [s["first"] for s in index["shards"]]
        self._handles: dict[int, Any] = {}
        self._keys: Optional[dict[int, int]] = None

    # -- building and opening --
    @classmethod
    def build(cls, teacher: nn.Module, data, path, *, k: int = 32, batch_size: int = 8, dtype: str = "float16",
              shard_examples: int = 4096) -> "TeacherCache":
        """Run the teacher over `data` once (eval, no grad) and write the cache at `path`."""
        from safetensors.torch import save_file

        if dtype not in ("float16", "float32"):
            raise EdgekdError(f"teacher cache dtype must be float16 or float32, got {dtype!r}")
        if not isinstance(k, int) or k < 1:
            raise EdgekdError(f"teacher cache k must be a positive integer, got {k!r}")
        examples = _examples(data)
        if not examples:
            raise EdgekdError("teacher cache: the data set is empty")
        model = unwrap(teacher)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        tdtype = getattr(torch, dtype)
        pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0  # classifiers pool on non-pad
        shards, vocab, token_level = [], None, True
        try:
            with atomic_dir(path) as tmp:
                for first in range(0, len(examples), shard_examples):
                    chunk = examples[first:first + shard_examples]
                    vals, idxs, offsets = [], [], [0]
                    for b in range(0, len(chunk), batch_size):
                        rows = chunk[b:b + batch_size]
                        L = max(len(r) for r in rows)
                        ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
                        mask = torch.zeros(len(rows), L, dtype=torch.long)
                        for i, r in enumerate(rows):
                            ids[i, :len(r)], mask[i, :len(r)] = r, 1
                        with torch.no_grad():
                            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                        vocab = logits.shape[-1]
                        kk = min(k, vocab)
                        top_v, top_i = logits.float().topk(kk, dim=-1)
                        token_level = logits.dim() == 3
                        for i, r in enumerate(rows):
                            v, ix = (top_v[i, :len(r)], top_i[i, :len(r)]) if token_level else (top_v[i:i + 1], top_i[i:i + 1])
                            vals.append(v.to(tdtype).cpu())
                            idxs.append(ix.to(torch.int32).cpu())
                            offsets.append(offsets[-1] + v.shape[0])
                    tensors = {"values": torch.cat(vals).contiguous(), "indices": torch.cat(idxs).contiguous(),
                               "offsets": torch.tensor(offsets, dtype=torch.int64),
                               "keys": torch.tensor([_key(r) for r in chunk], dtype=torch.int64)}
                    fname = f"shard-{len(shards):05d}.safetensors"
                    save_file(tensors, str(tmp / fname))
                    shards.append({"file": fname, "first": first, "count": len(chunk), "tokens": offsets[-1],
                                   "shapes": {n: list(t.shape) for n, t in tensors.items()}})
                index = {"format": cls.FORMAT, "version": 1, "k": min(k, vocab), "dtype": dtype, "vocab_size": vocab,
                         "token_level": token_level, "num_examples": len(examples),
                         "data_hash": data_hash(examples), "teacher_hash": teacher_hash(model), "shards": shards}
                (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        finally:
            model.train(was_training)
        return cls(Path(path), index)

    @classmethod
    def open(cls, path, *, data=None, teacher: Optional[nn.Module] = None) -> "TeacherCache":
        """Open a cache; with `data` / `teacher`, reject one built for other data or another teacher."""
        path = Path(path)
        try:
            index = json.loads((path / "index.json").read_text())
        except FileNotFoundError as e:
            raise EdgekdError(f"teacher cache {path} has no index.json: it is missing or was never completed; "
                              f"rebuild it") from e
        except (OSError, json.JSONDecodeError) as e:
            raise EdgekdError(f"teacher cache {path}/index.json is unreadable ({e}): rebuild the cache") from e
        if not isinstance(index, dict) or index.get("format") != cls.FORMAT:
            raise EdgekdError(f"{path} is not an edgekd teacher cache (index.json format)")
        for s in index["shards"]:
            if not (path / s["file"]).is_file():
                raise EdgekdError(f"teacher cache {path} lacks shard {s['file']}: rebuild the cache")
        if data is not None and data_hash(_examples(data)) != index["data_hash"]:
            raise EdgekdError(f"teacher cache {path} was built for other data: rebuild it or point to the right cache")
        if teacher is not None and teacher_hash(teacher) != index["teacher_hash"]:
            raise EdgekdError(f"teacher cache {path} was built by another teacher: rebuild it or point to the right cache")
        return cls(path, index)

    @classmethod
    def build_or_open(cls, teacher: nn.Module, data, path, **kw) -> "TeacherCache":
        """Reuse a complete cache that matches data and teacher; build one where none is."""
        if (Path(path) / "index.json").is_file():
            cache = cls.open(path, data=data, teacher=teacher)
            if "k" in kw and cache.k < min(kw["k"], cache.index["vocab_size"]):
                raise EdgekdError(f"teacher cache {path} keeps k={cache.k} < the {kw['k']} asked for: rebuild it")
            return cache
        return cls.build(teacher, data, path, **kw)

    # -- serving --
    def __len__(self) -> int:
        return int(self.index["num_examples"])

    def _handle(self, j: int):
        if j not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[j] = safe_open(str(self.path / self.index["shards"][j]["file"]), framework="pt")
            except Exception as e:  # noqa: BLE001 - any read failure is a corrupt cache
                raise EdgekdError(f"teacher cache shard {self.index['shards'][j]['file']} is unreadable ({e}): "
                                  f"rebuild the cache") from e
        return self._handles[j]

    def example(self, i: int) -> TopKLogits:
        """The cached rows of example `i`: TopKLogits [L, k] (raw logits as float32, ids as int64)."""
        if not 0 <= i < len(self):
            raise EdgekdError(f"teacher cache has {len(self)} examples; asked for {i}")
        j = bisect.bisect_right(self._firsts, i) - 1
        f = self._handle(j)
        local = i - self._firsts[j]
        start, end = (int(x) for x in f.get_slice("offsets")[local:local + 2])
        return TopKLogits(f.get_slice("values")[start:end].float(), f.get_slice("indices")[start:end].long())

    def _find(self, ids: torch.Tensor) -> int:
        if self._keys is None:
            self._keys = {}
            for j, s in enumerate(self.index["shards"]):
                for n, key in enumerate(self._handle(j).get_tensor("keys").tolist()):
                    self._keys.setdefault(key, s["first"] + n)
        i = self._keys.get(_key(ids))
        if i is None:
            raise EdgekdError(f"a batch row is not in the teacher cache {self.path}: it was built for other data; "
                              f"rebuild it for this data")
        return i

    def lookup(self, batch: dict) -> TopKLogits:
        """TopKLogits for a batch ([B,S,k] for LMs, [B,k] for classifiers), on the batch's device."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        index = batch.get("index")
        B, S = ids.shape
        k = self.k
        token_level = self.index.get("token_level", True)
        shape = (B, S, k) if token_level else (B, k)
        values = torch.zeros(shape, dtype=torch.float32)
        indices = torch.zeros(shape, dtype=torch.long)
        ids_cpu, mask_cpu = ids.cpu(), mask.cpu()
        for b in range(B):
            real = ids_cpu[b][mask_cpu[b]]
            i = int(index[b]) if index is not None else self._find(real)
            ex = self.example(i)
            if token_level:
                if ex.values.shape[0] != real.numel():
                    raise EdgekdError(f"teacher cache example {i} has {ex.values.shape[0]} tokens, the batch row "
                                      f"{real.numel()}: the cache was built for other data")
                values[b][mask_cpu[b]] = ex.values
                indices[b][mask_cpu[b]] = ex.indices
            else:
                values[b], indices[b] = ex.values[0], ex.indices[0]
        return TopKLogits(values.to(ids.device), indices.to(ids.device))


@register_scheme("offline")
class OfflineScheme(Scheme):
    """A frozen teacher (eval, no grad), run live or served from a `TeacherCache`.

    cache: a TeacherCache or the path of one; with `cache_data` (the training examples) the cache
    is built there when missing (k = cache_k, default 32) and checked against data and teacher
    when present.
    """

    def __init__(self, *, teachers, student, cache=None, cache_data=None, cache_k: Optional[int] = None, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        if cache is None or teachers:
            self._one_teacher()
            freeze(self.teacher)
        if cache is not None and not isinstance(cache, TeacherCache):
            teacher = self.teacher if teachers else None
            if cache_data is not None and teacher is not None:
                cache = TeacherCache.build_or_open(teacher, cache_data, cache, **({"k": cache_k} if cache_k else {}))
            else:
                cache = TeacherCache.open(cache, data=cache_data, teacher=teacher)
        self.cache = cache

    def teacher_outputs(self, batch, student_out):
        if self.cache is not None:
            needs = _needs(student_out, self.loss_fn)
            if needs.needs_hidden_states or needs.needs_attentions or needs.needs_last_hidden:
                raise EdgekdError("a top-k teacher cache stores only logits: use response losses ('kd', 'mse_logits') "
                                  "with it, or drop the cache")
            return self.cache.lookup(batch)
        return super().teacher_outputs(batch, student_out)


# ---- online -------------------------------------------------------------------------------------

@register_scheme("online")
class OnlineScheme(Scheme):
    """The teacher trains alongside the student, in the same optimizer step.

    teacher_outputs runs the teacher in train mode WITH gradients (even inside the trainer's
    no_grad) and attaches `teacher_loss` = teacher_weight · CE(teacher, labels) to its output; the
    LossSum adds it to the total (part "teacher_ce"). The distillation terms see the teacher
    detached, so the student's loss never moves the teacher. extra_parameters() returns the
    teacher's parameters: the trainer optimises them with the student's.
    """

    def __init__(self, *, teachers, student, teacher_weight: float = 1.0, causal: Optional[bool] = None, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        self._one_teacher()
        if not (isinstance(teacher_weight, (int, float)) and teacher_weight >= 0 and math.isfinite(teacher_weight)):
            raise EdgekdError(f"scheme 'online': teacher_weight must be a finite number >= 0, got {teacher_weight!r}")
        self.teacher_weight = float(teacher_weight)
        self.causal = is_causal(unwrap(self.teacher).config) if causal is None else bool(causal)
        self.teacher.train()
        self.teacher.requires_grad_(True)

    def teacher_outputs(self, batch, student_out):
        needs = _needs(student_out, self.loss_fn)
        needs = Needs(True, needs.needs_hidden_states, needs.needs_attentions, needs.needs_last_hidden)
        with torch.enable_grad():
            out = forward_for_loss(self.teacher, batch, needs)
            labels = batch.get("labels")
            if labels is not None and self.teacher_weight > 0:
                out.teacher_loss = self.teacher_weight * hard_label_loss(out.logits, labels.to(out.logits.device), self.causal)
        return out

    def extra_parameters(self) -> list:
        return [p for p in self.teacher.parameters() if p.requires_grad]


# ---- self-distillation --------------------------------------------------------------------------

@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model for parameters; buffers are copied."""
    params = dict(model.named_parameters())
    for name, p in ema.named_parameters():
        p.lerp_(params[name].detach().to(p.dtype), 1.0 - decay)
    buffers = dict(model.named_buffers())
    for name, b in ema.named_buffers():
        b.copy_(buffers[name])


@register_scheme("self")
class SelfScheme(Scheme):
    """The student's exponential moving average is its teacher (no grad); any given teachers are unused."""

    def __init__(self, *, teachers, student, decay: float = 0.999, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise EdgekdError(f"scheme 'self': decay must lie in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.ema = freeze(copy.deepcopy(unwrap(student)))

    @property
    def teacher_config(self):
        return getattr(self.ema, "config", None)

    def teacher_outputs(self, batch, student_out):
        return self._run(self.ema, batch, _needs(student_out, self.loss_fn))

    def after_step(self, student, step):
        ema_update(self.ema, unwrap(student), self.decay)

    def state_dict(self) -> dict:
        return {"ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])


# ---- multi-teacher ------------------------------------------------------------------------------

@register_scheme("multi_teacher")
class MultiTeacherScheme(Scheme):
    """Weighted mean of the teachers' distributions at temperature T, as logits T · log Σ w_i p_i.

    weights default to equal and are normalised to sum to 1; T defaults to the loss's temperature
    (`loss_fn`) or 2. A response loss at another T re-mixes at its own T (see TeacherMixture).
    Hidden states and attentions, where asked for, are the first teacher's.
    """

    def __init__(self, *, teachers, student, weights: Optional[list] = None, temperature: Optional[float] = None,
                 loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        if len(teachers) < 1:
            raise EdgekdError("scheme 'multi_teacher' needs at least one teacher")
        weights = [1.0] * len(teachers) if weights is None else list(weights)
        if len(weights) != len(teachers) or any(not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w)
                                                for w in weights) or sum(weights) <= 0:
            raise EdgekdError(f"scheme 'multi_teacher': weights must be {len(teachers)} numbers >= 0 with a positive "
                              f"sum, got {weights!r}")
        self.weights = [w / sum(weights) for w in weights]
        if temperature is None:
            temperature = getattr(loss_fn, "temperature", None) or 2.0
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise EdgekdError(f"scheme 'multi_teacher': temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)
        vocabs = {getattr(getattr(unwrap(t), "config", None), "vocab_size", None) for t in teachers} - {None}
        if len(vocabs) > 1:
            raise EdgekdError(f"scheme 'multi_teacher': the teachers' vocabularies differ ({sorted(vocabs)}); "
                              f"all teachers must share one tokenizer")
        for t in teachers:
            freeze(t)

    def teacher_outputs(self, batch, student_out):
        needs = _needs(student_out, self.loss_fn)
        if needs.needs_last_hidden and not needs.needs_logits:
            raise EdgekdError("scheme 'multi_teacher' mixes teacher logits: use the 'kd' loss, not 'kd_fused_linear'")
        needs = Needs(True, needs.needs_hidden_states, needs.needs_attentions, False)
        outs = [self._run(t, batch, needs if i == 0 else Needs()) for i, t in enumerate(self.teachers)]
        members = [o.logits for o in outs]
        if len({m.shape[-1] for m in members}) > 1:
            raise EdgekdError(f"scheme 'multi_teacher': the teachers' vocabularies differ "
                              f"({sorted({m.shape[-1] for m in members})}); all teachers must share one tokenizer")
        device = members[0].device
        members = [m.to(device) for m in members]
        return TeacherMixture(logits=mixture_logits(members, self.weights, self.temperature),
                              hidden_states=outs[0].hidden_states, attentions=outs[0].attentions,
                              members=members, weights=self.weights, temperature=self.temperature)


# ---- progressive --------------------------------------------------------------------------------

def shrunk_config(config, overrides: dict):
    """`config` with `overrides` (canonical names or the family's own) applied through edgekd.models.arch,
    so per-layer lists shrink with the layers; a derived head_dim is recomputed; unknown keys are an error."""
    from edgekd.models.arch import ARCH_KEYS, config_from

    d = config.to_dict()
    for key in overrides:
        if key not in d and not hasattr(config, key) and key not in ARCH_KEYS:
            raise EdgekdError(f"progressive: unknown config field {key!r} for {type(config).__name__}")
    field = getattr(type(config), "__dataclass_fields__", {}).get("head_dim")
    derived = field is None or field.default is None  # Llama's is hidden / heads; Gemma's, Qwen3's their own
    drop = ("head_dim",) if derived and "head_dim" not in overrides and \
        ("hidden_size" in overrides or "num_attention_heads" in overrides) else ()
    return config_from(config, overrides, drop=drop, what="progressive: ")


def _params_of(model_cls, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_cls(config).parameters())


def progressive_chain(teacher: nn.Module, sizes: list[dict],
                      train_fn: Callable[[nn.Module, Any], nn.Module]) -> list[nn.Module]:
    """Distill a chain of shrinking students, each taught by the previous one (the first by `teacher`).

    sizes: config overrides per stage, applied to the previous model's config; every stage must
    have fewer parameters than its teacher. train_fn(teacher, student_config) -> trained student
    is the engine's. Returns the students in order; the last is the smallest.
    """
    if not sizes:
        raise EdgekdError("progressive: give at least one stage size")
    chain, current = [], teacher
    for n, overrides in enumerate(sizes, 1):
        if not isinstance(overrides, dict):
            raise EdgekdError(f"progressive: stage {n} must be a dict of config overrides, got {overrides!r}")
        inner = unwrap(current)
        cfg = shrunk_config(inner.config, overrides)
        have, want = _params_of(type(inner), inner.config), _params_of(type(inner), cfg)
        if want >= have:
            raise EdgekdError(f"progressive: stage {n} ({want} parameters) is not smaller than its teacher "
                              f"({have}): each stage must shrink")
        freeze(current)
        student = train_fn(current, cfg)
        if not isinstance(student, nn.Module):
            raise EdgekdError(f"progressive: train_fn returned {type(student).__name__}, not a model")
        chain.append(student)
        current = student
    return chain


def halfway_sizes(teacher: nn.Module, student_config) -> list[dict]:
    """The default intermediate stage of a progressive chain: depth (rounded up), heads, FFN and hidden
    size halfway between teacher and student, as config overrides of the teacher's config; [] where
    that model does not lie strictly between the two in parameters."""
    from edgekd.models.arch import arch_of

    t, s = unwrap(teacher).config, student_config
    ta, sa = arch_of(t), arch_of(s)
    mid = lambda a, b: (a + b) // 2  # noqa: E731
    o = {"num_hidden_layers": mid(ta["num_hidden_layers"] + 1, sa["num_hidden_layers"]),
         "intermediate_size": mid(ta["intermediate_size"], sa["intermediate_size"])}
    h = mid(ta["num_attention_heads"], sa["num_attention_heads"])
    o["num_attention_heads"] = h
    kv = max(1, mid(ta["num_key_value_heads"], sa["num_key_value_heads"]))
    while h % kv:
        kv -= 1
    o["num_key_value_heads"] = kv
    if ta["head_dim"] == sa["head_dim"]:  # keep the head size, so heads copy over from the previous stage
        o["hidden_size"], o["head_dim"] = h * ta["head_dim"], ta["head_dim"]
    else:
        o["hidden_size"] = max(h, mid(ta["hidden_size"], sa["hidden_size"]) // h * h)
    cls = type(unwrap(teacher))
    sizes = [_params_of(cls, c) for c in (t, shrunk_config(t, o), s)]
    return [o] if sizes[0] > sizes[1] > sizes[2] else []


@register_scheme("progressive")
class ProgressiveScheme(OfflineScheme):
    """One stage of a progressive chain is an offline distillation; `chain` drives the whole chain."""

    def chain(self, sizes: list[dict], train_fn: Callable) -> list[nn.Module]:
        return progressive_chain(self.teacher, sizes, train_fn)


# ---- sequence-level -----------------------------------------------------------------------------

class SequenceData:
    """Teacher generations as training data: prompt + continuation per example.

    `self[i]` is {"input_ids", "labels"} (labels -100 on the prompt unless loss_on_prompt);
    `tokens(eos)` joins them with EOS into the 1-D stream edgekd.data.batching.BlockStream takes;
    `batches(n, pad)` yields padded {"input_ids", "attention_mask", "labels"} dicts.
    """

    def __init__(self, sequences: list[torch.Tensor], prompt_lengths: list[int], loss_on_prompt: bool = False):
        self.sequences, self.prompt_lengths, self.loss_on_prompt = sequences, prompt_lengths, loss_on_prompt

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict:
        ids = self.sequences[i]
        labels = ids.clone()
        if not self.loss_on_prompt:
            labels[: self.prompt_lengths[i]] = -100
        return {"input_ids": ids, "labels": labels}

    def continuation(self, i: int) -> torch.Tensor:
        return self.sequences[i][self.prompt_lengths[i]:]

    def tokens(self, eos_token_id: int) -> torch.Tensor:
        parts = []
        for s in self.sequences:
            parts.append(s)
            if s.numel() == 0 or int(s[-1]) != eos_token_id:
                parts.append(torch.tensor([eos_token_id]))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def batches(self, batch_size: int, pad_token_id: int = 0):
        for b in range(0, len(self), batch_size):
            items = [self[i] for i in range(b, min(b + batch_size, len(self)))]
            L = max(len(it["input_ids"]) for it in items)
            ids = torch.full((len(items), L), pad_token_id, dtype=torch.long)
            labels = torch.full((len(items), L), -100, dtype=torch.long)
            mask = torch.zeros(len(items), L, dtype=torch.long)
            for i, it in enumerate(items):
                n = len(it["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = it["input_ids"], it["labels"], 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def generate_sequence_data(teacher: nn.Module, prompts: Sequence, *, max_new_tokens: int = 64, do_sample: bool = False,
                           seed: int = 0, temperature: float = 1.0, top_k: Optional[int] = None,
                           top_p: Optional[float] = None, batch_size: int = 8, eos_token_id: Optional[int] = None,
                           pad_token_id: Optional[int] = None, stop_at_eos: bool = True, tokenizer=None,
                           loss_on_prompt: bool = False) -> SequenceData:
    """Sequence-level KD (Kim & Rush, 2016): the teacher's continuations of prompts, as a data set.

    Greedy by default; sampling is seeded (the global RNG is left as it was). Prompts are token-id
    lists/tensors, or strings with `tokenizer`. A continuation stops after the first EOS (the
    config's unless eos_token_id is given), or runs max_new_tokens when stop_at_eos is False.
    """
    from transformers import GenerationConfig

    model = unwrap(teacher)
    cfg = getattr(model, "config", None)
    eos = eos_token_id if eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if not stop_at_eos:
        eos = None
    pad = pad_token_id if pad_token_id is not None else (getattr(cfg, "pad_token_id", None) or (eos if eos is not None else 0))
    encoded = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise EdgekdError("sequence-level KD: text prompts need a tokenizer")
            p = tokenizer(p, add_special_tokens=False)["input_ids"]
        t = torch.as_tensor(p, dtype=torch.long).reshape(-1)
        if t.numel() == 0:
            raise EdgekdError("sequence-level KD: a prompt is empty")
        encoded.append(t)
    if not encoded:
        raise EdgekdError("sequence-level KD: no prompts given")
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos,
                           **({"temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
                              if do_sample else {}))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sequences = []
    saved_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and saved_eos is not None:  # generate() fills an unset EOS from the model's own config
        model.generation_config.eos_token_id = None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for b in range(0, len(encoded), batch_size):
                rows = encoded[b:b + batch_size]
                P = max(len(r) for r in rows)
                ids = torch.full((len(rows), P), pad, dtype=torch.long)
                mask = torch.zeros(len(rows), P, dtype=torch.long)
                for i, r in enumerate(rows):  # left padding: generation continues right after each prompt
                    ids[i, P - len(r):], mask[i, P - len(r):] = r, 1
                with torch.no_grad():
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
                for i, r in enumerate(rows):
                    cont = out[i, P:].cpu()
                    if eos is not None:
                        hit = (cont == eos).nonzero()
                        if len(hit):
                            cont = cont[: int(hit[0]) + 1]
                    sequences.append(torch.cat([r, cont]))
    finally:
        model.train(was_training)
        if saved_eos is not None:
            model.generation_config.eos_token_id = saved_eos
    return SequenceData(sequences, [len(r) for r in encoded], loss_on_prompt)


@register_scheme("sequence")
class SequenceScheme(OfflineScheme):
    """Train on the teacher's generations (`generate`), with word-level KD from the same frozen teacher."""

    def generate(self, prompts: Sequence, **kw) -> SequenceData:
        return generate_sequence_data(self.teacher, prompts, **kw)
