"""A teacher's top-k logits over a data set, stored once in safetensors shards (see TeacherCache):
the storage format the offline scheme serves a large teacher from."""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.io import replace_dir
from edgekd.losses import TopKLogits, unwrap


def examples_of(data) -> list[torch.Tensor]:
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


def example_key(ids: torch.Tensor) -> int:
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
    example ranges and tensor shapes) and DIR/shard-*.safetensors (see build) holding, for its examples,
    `values` [tokens, k] (float16 or float32 raw logits), `indices` [tokens, k] int32, `offsets`
    [n+1] int64 (row range per example) and `keys` [n] int64 (a hash of the example's ids). The
    directory is written atomically, by one process or by all ranks. A batch row is served by its
    data position (batch["index"]) or, without one, by the hash of its real tokens; rows it does not
    know are an EdgekdError.
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
        """Run the teacher over `data` once (eval, no grad) and write the cache at `path`.

        Under torch.distributed every rank calls this: rank r of W computes a contiguous share of the
        batches and writes its shards, shard-RRRRR-of-WWWWW.PPPPP.safetensors (one process keeps the
        names shard-PPPPP.safetensors). Shards go atomically into DIR's staging directory .DIR.building/
        beside a manifest (build.json: data, teacher and settings); a rerun after a crash keeps the
        complete shards of a matching manifest and computes only the rest. Rank 0 then writes
        index.json and moves the directory into place. The index maps global example positions to
        shards, so any number of ranks reads the cache back.
        """
        from safetensors.torch import save_file

        from edgekd import faults
        from edgekd.io import atomic_path, write_json

        if dtype not in ("float16", "float32"):
            raise EdgekdError(f"teacher cache dtype must be float16 or float32, got {dtype!r}")
        if not isinstance(k, int) or k < 1:
            raise EdgekdError(f"teacher cache k must be a positive integer, got {k!r}")
        examples = examples_of(data)
        if not examples:
            raise EdgekdError("teacher cache: the data set is empty")
        rank, world = _dist_info()
        path = Path(path)
        stage = path.with_name(f".{path.name}.building")
        model = unwrap(teacher)
        manifest = {"format": cls.FORMAT, "k": k, "dtype": dtype, "batch_size": batch_size,
                    "shard_examples": shard_examples, "world_size": world,
                    "data_hash": data_hash(examples), "teacher_hash": teacher_hash(model)}
        if rank == 0:
            try:
                same = json.loads((stage / "build.json").read_text()) == manifest
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:  # another build's leftovers (other data, teacher or world size): start afresh
                shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True, exist_ok=True)
            write_json(stage / "build.json", manifest)
        _barrier(world)
        plan = _shard_plan(len(examples), batch_size, shard_examples, world)
        was_training = model.training
        model.eval()
        try:
            for fname, first, count in plan[rank]:
                if (stage / fname).is_file():  # complete (written atomically) by an earlier attempt
                    continue
                tensors, meta = _teacher_topk(model, examples[first:first + count], k, batch_size, getattr(torch, dtype))
                with atomic_path(stage / fname) as tmp:
                    save_file(tensors, str(tmp), metadata=meta)
                faults.point("teacher_cache")
        finally:
            model.train(was_training)
        _barrier(world)
        if rank == 0:
            from safetensors import safe_open

            shards, meta = [], {}
            for fname, first, count in (s for share in plan for s in share):
                with safe_open(str(stage / fname), framework="pt") as f:
                    meta = f.metadata()
                    shapes = {n: list(f.get_slice(n).get_shape()) for n in ("values", "indices", "offsets", "keys")}
                    tokens = int(f.get_slice("offsets")[-1:][0])
                shards.append({"file": fname, "first": first, "count": count, "tokens": tokens, "shapes": shapes})
            vocab = int(meta["vocab_size"])
            index = {"format": cls.FORMAT, "version": 1, "k": min(k, vocab), "dtype": dtype, "vocab_size": vocab,
                     "token_level": meta["token_level"] == "1", "num_examples": len(examples),
                     "data_hash": manifest["data_hash"], "teacher_hash": manifest["teacher_hash"], "shards": shards}
            if world > 1:
                index["written_by"] = {"world_size": world, "batch_size": batch_size}
            write_json(stage / "index.json", index)
            (stage / "build.json").unlink()
            replace_dir(stage, path)
        _barrier(world)
        return cls.open(path)

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
        if data is not None and data_hash(examples_of(data)) != index["data_hash"]:
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
        i = self._keys.get(example_key(ids))
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


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _shard_plan(n: int, batch_size: int, shard_examples: int, world: int) -> list[list[tuple[str, int, int]]]:
    """Per rank, its shards as (file name, first example, count): rank r takes a contiguous share of the
    teacher's batches, so every batch is the one a single process would run; shards cut that share."""
    batches = -(-n // batch_size)
    plan = []
    for r in range(world):
        lo, hi = min(n, r * batches // world * batch_size), min(n, (r + 1) * batches // world * batch_size)
        shards = []
        for p, first in enumerate(range(lo, hi, shard_examples)):
            name = f"shard-{p:05d}" if world == 1 else f"shard-{r:05d}-of-{world:05d}.{p:05d}"
            shards.append((f"{name}.safetensors", first, min(shard_examples, hi - first)))
        plan.append(shards)
    return plan


def _teacher_topk(model: nn.Module, chunk: list[torch.Tensor], k: int, batch_size: int, tdtype: torch.dtype):
    """One shard's tensors (values, indices, offsets, keys) and metadata: the teacher's top-k over `chunk`."""
    device = next(model.parameters()).device
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0  # classifiers pool on non-pad
    vals, idxs, offsets, vocab, token_level = [], [], [0], None, True
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
        top_v, top_i = logits.float().topk(min(k, vocab), dim=-1)
        token_level = logits.dim() == 3
        for i, r in enumerate(rows):
            v, ix = (top_v[i, :len(r)], top_i[i, :len(r)]) if token_level else (top_v[i:i + 1], top_i[i:i + 1])
            vals.append(v.to(tdtype).cpu())
            idxs.append(ix.to(torch.int32).cpu())
            offsets.append(offsets[-1] + v.shape[0])
    tensors = {"values": torch.cat(vals).contiguous(), "indices": torch.cat(idxs).contiguous(),
               "offsets": torch.tensor(offsets, dtype=torch.int64),
               "keys": torch.tensor([example_key(r) for r in chunk], dtype=torch.int64)}
    return tensors, {"vocab_size": str(vocab), "token_level": "1" if token_level else "0"}
