"""The memory a run will need, estimated from its configs and checked against what the machine has,
before the first batch is built: `--batch-size 100000` is one line naming the estimate and what to
lower, not an allocator's crash minutes later.

The estimate is deliberately a floor (float32 weights, AdamW's two moments and the gradients, the
logits the loss holds and the student's saved activations), so a run it refuses could not have fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgekd.errors import EdgekdError
from edgekd.limits import human_bytes

F32 = 4
# Per student parameter: the weights, their gradient and AdamW's two moments.
TRAIN_BYTES_PER_PARAM = 4 * F32
# Logit-sized float32 buffers one micro-batch holds: the teacher's, the student's and its gradient.
LOGIT_BUFFERS = 3
# Hidden-sized activations a decoder layer saves per token for the backward pass (norms, q/k/v, attention
# output, residuals), plus two intermediate-sized ones (the MLP's gate and up projections).
HIDDEN_ACTIVATIONS, FFN_ACTIVATIONS = 8, 2


# The bytes of activations and logits one forward may hold where the run does not set --micro-batch-size: a
# large vocabulary (Qwen's 151,936 tokens) makes the logits of a whole batch gigabytes, several times over in
# the loss's temporaries. Training splits each batch into micro-batches (gradient accumulation: the same
# update), evaluation into fewer rows per forward (the same sums). The built-in runs stay whole batches.
FORWARD_BYTES = 1 << 30
# The most micro-batches a step is split into without --micro-batch-size: a batch that needs more is too
# large for this machine, and the memory check says so (a batch of 100,000 is a mistake, not a plan).
MAX_ACCUMULATION = 8
# What a whole job's training phase held above that floor, measured (benchmarks/RESULTS.md, issue 25): the distill
# phase's peak, all processes, was 1.26-1.42 times training_bytes at the published shapes on raspberry-pi-5
# (Qwen2.5-0.5B 12.2 GB against 9.2, Llama-3.2-1B 14.5 against 10.2, Qwen2.5-1.5B 15.0 against 11.9): the Python
# and torch runtime, the checkpoint writes, the student's initialisation from the teacher, allocator slack. The
# search's bound on the student (trainable_params) keeps the floor within free memory / JOB_OVERHEAD, so the job it
# plans fits; the run's own check (check_fits) stays the floor, refusing only what cannot fit.
JOB_OVERHEAD = 1.45
# Logit-sized float32 copies an evaluation forward holds: the logits, their float copy, the shifted rows and
# the log-softmax.
EVAL_LOGIT_COPIES = 4


def rows_per_forward(batch: int, bytes_per_row: int, divisor: bool = False) -> int:
    """The most rows of `batch` (a divisor of it where `divisor`) whose `bytes_per_row` fit FORWARD_BYTES; 1 at least."""
    fits = [d for d in range(1, batch + 1) if d * bytes_per_row <= FORWARD_BYTES and (not divisor or batch % d == 0)]
    return max(fits, default=1)


def micro_batch(batch: int, seq_len: int, cfg, outputs: int, per_token: bool = True) -> int:
    """The micro-batch a run trains with where it does not say: the largest divisor of `batch` whose activations
    and logit buffers (training_bytes, for a model shaped `cfg`) fit FORWARD_BYTES, and never a share smaller
    than 1/MAX_ACCUMULATION of the batch."""
    per_row = training_bytes(0, 0, cfg, 1, seq_len, outputs, per_token)["activations"]
    fits = rows_per_forward(batch, per_row, divisor=True)
    least = min(d for d in range(1, batch + 1) if batch % d == 0 and d * MAX_ACCUMULATION >= batch)
    return max(fits, least)


def needs_checkpointing(requested: Optional[bool], student_cfg, seq_len: int, per_token: bool = True) -> bool:
    """Whether the students train with gradient checkpointing: as `requested`, else on where one row's saved
    activations alone exceed FORWARD_BYTES (long sequences of a deep, wide student: no micro-batch is small
    enough), so each layer keeps only its input."""
    if requested is not None:
        return bool(requested)
    return training_bytes(0, 0, student_cfg, 1, seq_len, 0, per_token)["activations"] > FORWARD_BYTES


def _size(cfg, *names, default: int = 0) -> int:
    for n in names:
        v = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


def training_bytes(teacher_params: int, student_params: int, student_cfg, batch: int, seq_len: int,
                   outputs: int, per_token: bool = True, teacher_bytes: int = F32, checkpointed: bool = False) -> dict:
    """The parts of the estimate in bytes: 'teacher', 'student' (with AdamW), 'activations', 'total'.
    `outputs`: logits per token (the vocabulary), or per sequence where not `per_token` (a classifier's classes);
    `teacher_bytes`: per teacher parameter (2 where the frozen teacher is held in bf16); `checkpointed`: the
    student trains with gradient checkpointing (each layer keeps its input only, and one layer's activations
    are rebuilt at a time in the backward pass)."""
    hidden = _size(student_cfg, "hidden_size", "d_model", "dim")
    ffn = _size(student_cfg, "intermediate_size", "hidden_dim", "decoder_ffn_dim", default=4 * hidden)
    layers = _size(student_cfg, "num_hidden_layers", "n_layers", "decoder_layers", default=1)
    tokens = batch * seq_len
    per_layer = (HIDDEN_ACTIVATIONS * hidden + FFN_ACTIVATIONS * ffn) * F32
    act = tokens * (layers * hidden * F32 + per_layer if checkpointed else layers * per_layer)
    act += LOGIT_BUFFERS * (tokens if per_token else batch) * outputs * F32
    parts = {"teacher": teacher_params * teacher_bytes, "student": student_params * TRAIN_BYTES_PER_PARAM, "activations": act}
    parts["total"] = sum(parts.values())
    return parts


def trainable_params(teacher_cfg: dict, batch: int, seq_len: int, device, per_token: bool = True,
                     micro: Optional[int] = None) -> Optional[int]:
    """The most student parameters whose training fits what `device` has free now, the teacher not yet
    loaded: the estimate above with the teacher's own shape as the bound on the student's activations (a
    narrowing is no wider nor deeper), at the micro-batch given or the one the run would choose (micro_batch),
    times JOB_OVERHEAD (what a job holds above the floor). None where the free memory cannot be read."""
    from edgekd.models.arch import param_count

    avail = available_bytes(device)
    if avail is None:
        return None
    outputs = _size(teacher_cfg, "vocab_size") if per_token else _size(teacher_cfg, "num_labels", default=2)
    micro = micro or micro_batch(batch, seq_len, teacher_cfg, outputs, per_token)
    fixed = training_bytes(param_count(teacher_cfg), 0, teacher_cfg, micro, seq_len, outputs, per_token)["total"]
    return max((int(avail / JOB_OVERHEAD) - fixed) // TRAIN_BYTES_PER_PARAM, 0)


def available_bytes(device) -> Optional[int]:
    """Memory a run may still allocate on `device` (a torch.device): the GPU's free memory, else the lower of
    the kernel's MemAvailable, the cgroup's remaining limit and the address space RLIMIT_AS leaves. None where
    none can be read."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    found.extend(_address_space_left())
    return min(found) if found else None


def _address_space_left() -> list[int]:
    """What RLIMIT_AS (ulimit -v, prlimit --as) still lets this process map, where one is set."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return []
    try:
        vm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        return []
    return [max(soft - vm, 0)]


def check_fits(parts: dict, device, batch: int, seq_len: int, already_loaded: int = 0) -> None:
    """Refuse a run whose estimate exceeds the memory available, in one line naming both and what to lower.
    `already_loaded`: bytes of the estimate already resident (the loaded teacher) and so not in `available`."""
    avail = available_bytes(device)
    if avail is None:
        return
    need = parts["total"] - already_loaded
    if need <= avail:
        return
    where = "GPU" if getattr(device, "type", "") == "cuda" else "machine"
    raise EdgekdError(
        f"this run needs about {human_bytes(parts['total'])} of memory (teacher {human_bytes(parts['teacher'])}, "
        f"student with AdamW state {human_bytes(parts['student'])}, activations for batch {batch} x {seq_len} tokens "
        f"{human_bytes(parts['activations'])}), more than the {human_bytes(avail + already_loaded)} the {where} has "
        f"free: lower --batch-size or --seq-len, or choose a smaller --student")


def check_seq_len(requested: int, default: int, window: Optional[int], teacher: str) -> int:
    """The sequence length a run trains at: `requested`, refused where it is beyond the teacher's window
    (max_position_embeddings) unless it is the default, which is then capped and the cap said."""
    if not window or requested <= window:
        return requested
    if requested != default:
        raise EdgekdError(f"--seq-len {requested} is beyond the teacher's window: {teacher} reads at most {window} "
                          f"positions (max_position_embeddings): pass --seq-len {window} or less")
    from edgekd import console

    console.note(f"sequences are {window} tokens, the teacher's window (max_position_embeddings), not the default "
                 f"{default}")
    return window


class Parked:
    """A trained model whose weights wait on disk while the run trains the next one: written with safetensors
    (atomically), then each parameter's storage released, until `restore()` reads them back into the same
    Parameter objects (tied weights stay tied, an optimiser's references stay valid). The job keeps the
    teacher and one model in training in memory, not every model trained so far with it."""

    def __init__(self, model, folder: Path, name: str):
        import torch
        from safetensors.torch import save_file

        from edgekd.io import atomic_path

        self.model, self.path = model, folder / f"{name}.safetensors"
        with atomic_path(self.path) as tmp:
            save_file({k: p.detach().contiguous() for k, p in model.named_parameters()}, str(tmp))
        for p in model.parameters():
            p.grad = None
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def restore(self):
        """The model with its weights back (the file removed, and its folder once empty)."""
        from safetensors.torch import load_file

        params = dict(self.model.named_parameters())
        device = next(iter(params.values())).device if params else "cpu"
        for name, t in load_file(str(self.path), device=str(device)).items():
            params[name].data = t
        self.path.unlink()
        try:
            self.path.parent.rmdir()
        except OSError:  # other models still parked there
            pass
        return self.model

    def copy(self):
        """A new model with the parked weights (the parked one stays parked): what a later phase trains on."""
        import copy

        from safetensors.torch import load_file

        model = copy.deepcopy(self.model)  # the released parameters copy as empty tensors
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device if params else "cpu"
        for name, t in load_file(str(self.path), device=str(device)).items():
            params[name].data = t
        return model
