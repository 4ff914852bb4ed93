"""Image classifiers: the teacher families edgekd distils (Hugging Face ResNet, MobileNetV2, ViT and ConvNeXt
`*ForImageClassification` models, and edgekd's own CNN), how a teacher reads an image (`ImageInput`, from its
`preprocessor_config.json`: the one preprocessing applied in training, parity and profiling), their students
(a smaller config of the teacher's family: fewer stages, blocks and channels; or `--student cnn`), their
parameter counts from a config, and a student initialised from the teacher where tensor shapes agree.

An image classifier is a model of kind `classifier` whose batches carry `pixel_values` [B, C, H, W] instead
of `input_ids` / `attention_mask`: accuracy, macro-F1 and logits distillation are the text classifier's.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

from edgekd.errors import EdgekdError
from edgekd.models.arch import CNN_MODEL_TYPE, IMAGE_FAMILIES, model_type_of

PROCESSOR_FILE = "preprocessor_config.json"
TIMM_HINT = ("timm models are not supported here: timm needs a CPU build of torchvision matching torch (PyPI's "
             "is a CUDA build); use a Hugging Face *ForImageClassification directory (ResNet, MobileNetV2, ViT, ConvNeXt)")


# The CLI's defaults for an image teacher (a sentence or LM teacher's: 8 and 2e-3): small images train in larger
# batches at a higher rate (the built-in digits job's student reaches 0.9 in its 150 steps, not 0.33).
IMAGE_TRAINING = {"batch_size": 32, "lr": 1e-2}


def teacher_is_image(teacher) -> bool:
    """Whether a --teacher (a directory or a built-in name) is an image classifier; False where it cannot be read
    (its errors are said where the teacher is checked)."""
    from edgekd.models.loading import read_config_dict, resolve_model_dir

    try:
        return is_image_classifier(read_config_dict(resolve_model_dir(teacher)))
    except (EdgekdError, OSError):
        return False


def is_image_classifier(cfg: Any) -> bool:
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    return any(str(a).endswith("ForImageClassification") for a in (get("architectures") or []))


def is_timm(d: Path, cfg: Mapping) -> bool:
    """A timm checkpoint folder (timm's config.json has `architecture`, no model_type)."""
    return "architecture" in cfg and "model_type" not in cfg or (d / "pytorch_model.bin").is_file() and \
        "pretrained_cfg" in cfg


def check_image_family(d: Path, cfg: Mapping) -> None:
    mt, archs = model_type_of(cfg), cfg.get("architectures") or []
    if mt not in IMAGE_FAMILIES:
        raise EdgekdError(f"{d}: {archs[0]} ({mt}) is not an image classifier edgekd can distil: use a "
                          f"*ForImageClassification model of {', '.join(IMAGE_FAMILIES[:-1])} (or edgekd's cnn); "
                          f"{TIMM_HINT.split(': ', 1)[0]}")
    if mt == CNN_MODEL_TYPE:
        import edgekd.models.cnn  # noqa: F401  registers it with transformers' Auto classes


@dataclass(frozen=True)
class ImageInput:
    """How a model reads an image: resized to height x width, scaled by `rescale` (1/255: pixels 0..255 ->
    0..1), then normalised per channel by mean and std; `channels` 1 (grey) or 3 (RGB). What the teacher's
    image processor does, held by edgekd so training, export parity and profiling apply the same numbers."""

    height: int
    width: int
    channels: int
    mean: tuple
    std: tuple
    rescale: float = 1 / 255

    def save_pretrained(self, d) -> None:
        """Written beside a student (as its processor), so its exports and profiles read the same input."""
        (Path(d) / PROCESSOR_FILE).write_text(json.dumps(self.processor_config(), indent=2) + "\n")

    def processor_config(self) -> dict:
        return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                "size": {"height": self.height, "width": self.width}, "do_rescale": True,
                "rescale_factor": self.rescale, "do_normalize": True, "image_mean": list(self.mean),
                "image_std": list(self.std), "num_channels": self.channels}

    def normalise(self, pixels):
        """[N, C, H, W] pixels on 0..255 (any float tensor or array of that shape) -> the model's input."""
        import torch

        x = torch.as_tensor(pixels, dtype=torch.float32) * self.rescale
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def record(self) -> dict:
        return asdict(self)


def _per_channel(v, channels: int, key: str, where) -> tuple:
    vals = [v] * channels if isinstance(v, (int, float)) else list(v or [])
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
        raise EdgekdError(f"{where}: {key} must be {channels} numbers (one per channel), got {v!r}: fix it or "
                          f"re-save the image processor with save_pretrained")
    if key == "image_std" and any(x <= 0 for x in vals):
        raise EdgekdError(f"{where}: image_std holds a non-positive value {v!r}: fix it")
    return tuple(float(x) for x in vals)


def image_input(d: Path, cfg: Mapping) -> ImageInput:
    """The teacher's image processor (d/preprocessor_config.json: size, rescale_factor, image_mean, image_std)
    and its config's num_channels; one line when it is missing or malformed."""
    from edgekd.limits import read_bytes

    p = Path(d) / PROCESSOR_FILE
    if not p.is_file():
        raise EdgekdError(f"{d} has no {PROCESSOR_FILE} (the image processor's size and normalisation): save it "
                          f"there with AutoImageProcessor...save_pretrained(DIR)")
    try:
        pc = json.loads(read_bytes(p, "the image processor's config"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekdError(f"{p} is corrupt ({type(e).__name__}): re-save the image processor with save_pretrained") from e
    if not isinstance(pc, dict):
        raise EdgekdError(f"{p} is not a JSON object: re-save the image processor with save_pretrained")
    channels = int(cfg.get("num_channels") or pc.get("num_channels") or 3)
    size = pc.get("size", cfg.get("image_size"))
    if isinstance(size, dict):
        side = size.get("shortest_edge")
        h, w = size.get("height", side), size.get("width", side)
    else:
        h = w = size
    crop = pc.get("crop_size")
    if pc.get("do_center_crop") and isinstance(crop, dict):  # the model sees the crop's size
        h, w = crop.get("height", h), crop.get("width", w)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4096 for x in (h, w)):
        raise EdgekdError(f"{p}: size {size!r} is not an image size edgekd reads (height/width or shortest_edge, "
                          f"1..4096): fix it")
    if channels not in (1, 3):
        raise EdgekdError(f"{d}: num_channels is {channels}: edgekd reads grey (1) or RGB (3) images")
    default_mean = [0.5] * channels
    mean = _per_channel(pc.get("image_mean", default_mean) if pc.get("do_normalize", True) else [0.0] * channels,
                        channels, "image_mean", p)
    std = _per_channel(pc.get("image_std", default_mean) if pc.get("do_normalize", True) else [1.0] * channels,
                       channels, "image_std", p)
    rescale = float(pc.get("rescale_factor", 1 / 255)) if pc.get("do_rescale", True) else 1.0
    return ImageInput(int(h), int(w), channels, mean, std, rescale)


def image_input_of(model_dir) -> Optional[ImageInput]:
    """A model directory's ImageInput where it is an image classifier, else None."""
    from edgekd.models.loading import read_config_dict, resolve_model_dir

    d = resolve_model_dir(model_dir)
    cfg = read_config_dict(d)
    return image_input(d, cfg) if is_image_classifier(cfg) else None


# --- students ------------------------------------------------------------------------------------------


def _half(n: int, least: int = 1) -> int:
    return max(least, int(n) // 2)


def default_image_student(teacher_config):
    """About half the teacher: ResNet, ConvNeXt and the CNN half the channels (and ResNet and ConvNeXt half the
    blocks of each stage); MobileNetV2 half the width multiplier; ViT half the layers and heads at the teacher's head size."""
    mt = teacher_config.model_type
    if mt == "resnet":
        over = {"depths": [_half(d) for d in teacher_config.depths],
                "hidden_sizes": [_half(h, 8) for h in teacher_config.hidden_sizes],
                "embedding_size": _half(teacher_config.embedding_size, 8)}
    elif mt == "convnext":
        over = {"depths": [_half(d) for d in teacher_config.depths],
                "hidden_sizes": [_half(h, 8) for h in teacher_config.hidden_sizes]}
    elif mt == "mobilenet_v2":
        over = {"depth_multiplier": max(0.25, teacher_config.depth_multiplier / 2)}
    elif mt == "vit":
        heads = _half(teacher_config.num_attention_heads)
        head_dim = teacher_config.hidden_size // teacher_config.num_attention_heads
        over = {"num_hidden_layers": _half(teacher_config.num_hidden_layers), "num_attention_heads": heads,
                "hidden_size": heads * head_dim, "intermediate_size": _half(teacher_config.intermediate_size, 8)}
    else:  # edgekd's CNN
        over = {"hidden_sizes": [_half(h, 4) for h in teacher_config.hidden_sizes]}
    return config_with(teacher_config, over)


def config_with(config, overrides: Mapping) -> Any:
    """A config of the same class with `overrides` (the family's own field names) applied and checked."""
    d = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version",)}
    d.update(copy.deepcopy(dict(overrides)))
    d.pop("model_type", None)
    try:
        return type(config)(**d)
    except (TypeError, ValueError) as e:
        raise EdgekdError(f"the student overrides {dict(overrides)} give an invalid {type(config).__name__} "
                          f"({str(e).splitlines()[0][:200]})") from e


def image_student_config(spec_overrides: Optional[dict], teacher_config, image_size: int):
    """The student of an image teacher: the default (`default_image_student`), `--student cnn` (edgekd's CNN),
    or the teacher's family with the fields a --student names."""
    if spec_overrides is None:
        return default_image_student(teacher_config)
    if spec_overrides.get("model_type") == CNN_MODEL_TYPE:
        from edgekd.models.cnn import cnn_config

        return cnn_config(teacher_config, image_size, spec_overrides)
    mt = spec_overrides.get("model_type")
    if mt and mt != teacher_config.model_type:
        raise EdgekdError(f"the student of a {teacher_config.model_type} image teacher is of its family or "
                          f"'cnn', not {mt}: drop model_type or use --student cnn")
    return config_with(teacher_config, {k: v for k, v in spec_overrides.items() if k != "architectures"})


@lru_cache(maxsize=512)
def _count(config_json: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    d = json.loads(config_json)
    if d.get("model_type") == CNN_MODEL_TYPE:
        import edgekd.models.cnn  # noqa: F401
    cfg = AutoConfig.for_model(**d)
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def image_param_count(config: Any) -> int:
    """Parameters of the image classifier a config (object or dict) describes: built on the meta device
    (no memory), cached by config."""
    d = dict(config) if isinstance(config, Mapping) else config.to_dict()
    d = {k: v for k, v in d.items() if k not in ("transformers_version", "_name_or_path")}
    return _count(json.dumps(d, sort_keys=True, default=str))


# --- the searched students of a family: fewer blocks and channels -------------------------------------------

DEPTHS = (1.0, 0.75, 0.5, 0.25)             # share of each stage's blocks (ViT: of its layers) a candidate keeps
WIDTHS = (1.0, 0.75, 0.5, 0.375, 0.25)      # share of each stage's channels (ViT: of its heads; MobileNetV2: its
#                                             width multiplier) a candidate keeps


def _scaled(n: int, share: float, step: int = 1, least: int = 1) -> int:
    """n scaled by share, a multiple of `step`, at least `least` and at most n."""
    return min(int(n), max(least, int(round(n * share / step)) * step))


def image_student_shape(teacher_config, depth: float, width: float) -> Optional[dict]:
    """The family fields of the student keeping `depth` of the teacher's blocks and `width` of its channels (the
    stage, embedding and FFN widths multiples of 8 where the teacher's are; ViT keeps its head size and drops
    heads); None where the family has no such depth (MobileNetV2's stages are fixed: it scales width only)."""
    get = teacher_config.get if isinstance(teacher_config, Mapping) else (lambda k, d=None: getattr(teacher_config, k, d))
    mt = get("model_type")
    step = 8 if all(int(h) % 8 == 0 for h in get("hidden_sizes") or [8]) else 1
    if mt in ("resnet", "convnext"):
        over = {"depths": [_scaled(d, depth) for d in get("depths")],
                "hidden_sizes": [_scaled(h, width, step, step) for h in get("hidden_sizes")]}
        if mt == "resnet":
            over["embedding_size"] = _scaled(get("embedding_size"), width, step, step)
        return over
    if mt == "mobilenet_v2":
        return None if depth != 1.0 else {"depth_multiplier": round(float(get("depth_multiplier")) * width, 4)}
    if mt == "vit":
        heads, hidden = int(get("num_attention_heads")), int(get("hidden_size"))
        nh = _scaled(heads, width)
        return {"num_hidden_layers": _scaled(get("num_hidden_layers"), depth), "num_attention_heads": nh,
                "hidden_size": nh * (hidden // heads),
                "intermediate_size": _scaled(get("intermediate_size"), nh / heads, 8 if hidden % 8 == 0 else 1, 8)}
    if mt == CNN_MODEL_TYPE:  # edgekd's CNN: fewer stages (the first ones), narrower
        sizes = list(get("hidden_sizes"))
        return {"hidden_sizes": [_scaled(h, width, 1, 4) for h in sizes[:_scaled(len(sizes), depth)]]}
    return None


def image_candidates(teacher_config) -> list[dict]:
    """Every (depth, width) student of the teacher's family the search weighs, the teacher's own shape left out
    (shares that round back to it too): {"depth", "width", "overrides"}, each distinct shape once (the first share
    pair that gives it)."""
    out, seen = [], {json.dumps(image_student_shape(teacher_config, 1.0, 1.0), sort_keys=True)}  # the teacher's
    for depth in DEPTHS:
        for width in WIDTHS:
            over = image_student_shape(teacher_config, depth, width)
            key = None if over is None else json.dumps(over, sort_keys=True)
            if over is None or key in seen:
                continue
            seen.add(key)
            out.append({"depth": depth, "width": width, "overrides": over})
    return out


def image_narrowing(teacher_config: Mapping, student_config: Mapping) -> Optional[str]:
    """Why a student config is not a narrowing of the image teacher's (a field holding more blocks or channels
    than the teacher's, or another family), or None when every field it changes is at most the teacher's."""
    if student_config.get("model_type") != teacher_config.get("model_type"):
        return f"another family ({student_config.get('model_type')}) than the teacher's"
    for k in ("depths", "hidden_sizes", "embedding_size", "depth_multiplier", "num_hidden_layers",
              "num_attention_heads", "hidden_size", "intermediate_size"):
        s, t = student_config.get(k), teacher_config.get(k)
        if s is None or t is None:
            continue
        s, t = (list(s), list(t)) if isinstance(s, (list, tuple)) else ([s], [t])
        if len(s) > len(t) or any(a > b for a, b in zip(s, t)):
            return f"{k} {s if len(s) > 1 else s[0]} exceeds the teacher's {t if len(t) > 1 else t[0]}"
    return None


# --- a student initialised from its teacher: kept blocks and the strongest channels --------------------------


def _channel_axis(mod) -> Optional[int]:
    """The channel axis of a producing module's output: a convolution's or 2-d norm's is 1 ([N, C, H, W]); a
    linear layer's or LayerNorm's the last; None for any other module."""
    from torch import nn

    if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm)):
        return 1
    if isinstance(mod, (nn.Linear, nn.LayerNorm)):
        return -1
    return None


def _is_activation(mod) -> bool:
    """A pointwise nonlinearity: torch's (ReLU, ReLU6, GELU, SiLU, ...) or transformers' own activation classes."""
    from torch import nn

    return isinstance(mod, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh)) or \
        type(mod).__module__.startswith("transformers.activations")


def measure_channel_importance(teacher, batches) -> dict:
    """Mean activation magnitude per channel on calibration batches, {channels: scores}, summed over every place
    the teacher has a tensor of that many channels: each nonlinearity's output (along the axis of the convolution
    or linear layer that fed it) and each norm's output. A student keeps, of each width the teacher has, the
    channels that fire most (Minitron's criterion, as for LMs); a convolution's raw output is not read, since
    what a ReLU zeroes does not reach the next layer."""
    import torch
    from torch import nn

    from edgekd.losses.outputs import model_inputs

    scores: dict[int, torch.Tensor] = {}
    last: dict = {}  # the latest producer's output shape and channel axis: where an activation's channels lie

    def add(y, axis):
        y = y.detach().float().abs().movedim(axis, -1)
        c = y.shape[-1]
        scores[c] = scores.get(c, torch.zeros(c)) + y.reshape(-1, c).mean(0)

    def producer(axis, measured):
        def f(mod, args, out):
            y = out[0] if isinstance(out, tuple) else out
            if isinstance(y, torch.Tensor) and y.dim() >= 2:
                last.update(shape=y.shape, axis=axis)
                if measured:
                    add(y, axis)
        return f

    def activation(mod, args, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            add(out, last["axis"] if last.get("shape") == out.shape else (1 if out.dim() == 4 else -1))

    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    handles = []
    for m in teacher.modules():
        if (axis := _channel_axis(m)) is not None:
            handles.append(m.register_forward_hook(producer(axis, isinstance(m, norms))))
        elif _is_activation(m):
            handles.append(m.register_forward_hook(activation))
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            for b in batches:
                teacher(**model_inputs(b))
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    return scores


def init_from_image_teacher(student, teacher, importance: Optional[dict] = None) -> dict:
    """Every teacher tensor the student has by name, cut to the student's shape: a stage keeps its first blocks
    (their names are the teacher's), and each axis the student has narrower keeps the teacher's channels of that
    width that fire most (`measure_channel_importance`; the first ones without calibration data). One index per
    (teacher width, student width) pair, the same for every tensor, so residual additions and the convolutions
    on both sides of a channel agree. Tensors the teacher lacks (or holds smaller) stay as built, and so does the
    classifier of an edgekd CNN student with fewer stages (its input is another stage's channels)."""
    import torch

    t_state, s_state = teacher.state_dict(), student.state_dict()
    importance = importance or {}
    index: dict[tuple[int, int], torch.Tensor] = {}

    def keep(t: int, s: int) -> torch.Tensor:
        if (t, s) not in index:
            score = importance.get(t, torch.arange(t, 0, -1).float())
            index[(t, s)] = torch.sort(torch.topk(score, s).indices).values
        return index[(t, s)]

    stages = [len(getattr(m.config, "hidden_sizes", None) or []) for m in (student, teacher)]
    head = getattr(student, "base_model_prefix", None) != "cnn" or stages[0] == stages[1]
    new, cut = {}, 0
    for name, s_t in s_state.items():
        t_t = t_state.get(name)
        if not head and name.startswith("classifier."):  # edgekd's CNN without its last stages: another input
            continue
        if t_t is None or t_t.dim() != s_t.dim() or any(s > t for s, t in zip(s_t.shape, t_t.shape)):
            continue
        val = t_t
        for axis, (t, s) in enumerate(zip(t_t.shape, s_t.shape)):
            if t != s:
                val = val.index_select(axis, keep(t, s))
        new[name] = val.to(s_t.dtype)
        cut += val.shape != t_t.shape
    if not new:
        return {"method": "random", "why": "no tensor of the teacher has a name the student shares"}
    with torch.no_grad():
        student.load_state_dict({**s_state, **new})
    return {"method": "teacher", "copied_tensors": len(new), "of": len(s_state), "narrowed_tensors": cut,
            "channels": "mean |activation|" if importance else "first"}


def image_layers(config: Any) -> list[dict]:
    """The layers of one forward of the image classifier a config (object or dict) describes, batch 1 at its
    input size (config image_size, else 224): {"name", "kind": conv | linear | norm | pool | act | attention,
    and its sizes (a conv/linear: m rows, k inputs, n outputs, depthwise; others: in/out elements, taps)}.
    Traced on the meta device (no memory, no arithmetic), cached by config: what the latency model counts."""
    d = dict(config) if isinstance(config, Mapping) else config.to_dict()
    d = {k: v for k, v in d.items() if k not in ("transformers_version", "_name_or_path")}
    return _layers(json.dumps(d, sort_keys=True, default=str))


@lru_cache(maxsize=256)
def _layers(config_json: str) -> list[dict]:
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForImageClassification

    d = json.loads(config_json)
    if d.get("model_type") == CNN_MODEL_TYPE:
        import edgekd.models.cnn  # noqa: F401
    cfg = AutoConfig.for_model(**d)
    size = int(d.get("image_size") or 224)
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(cfg).eval()
    rows: list[dict] = []

    def hook(name):
        def f(mod, args, out):
            x = args[0] if args else None
            y = out[0] if isinstance(out, tuple) else out
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                return
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                k = mod.in_channels // mod.groups * kh * kw
                depthwise = mod.groups > 1 and mod.groups == mod.in_channels
                rows.append({"name": name, "kind": "conv", "m": y.shape[-1] * y.shape[-2], "k": k, "n": mod.out_channels,
                             "depthwise": depthwise, "in": x.numel(), "out": y.numel(), "taps": kh * kw,
                             "weights": mod.weight.numel()})
            elif isinstance(mod, nn.Linear):
                rows.append({"name": name, "kind": "linear", "m": x.numel() // mod.in_features, "k": mod.in_features,
                             "n": mod.out_features, "in": x.numel(), "out": y.numel()})
            elif isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                rows.append({"name": name, "kind": "norm", "in": x.numel(), "out": y.numel()})
            elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                rows.append({"name": name, "kind": "pool", "in": x.numel(), "out": y.numel(),
                             "taps": max(1, x.numel() // max(1, y.numel()))})
            elif isinstance(mod, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish)):
                rows.append({"name": name, "kind": "act", "in": x.numel(), "out": y.numel()})
            elif type(mod).__name__.endswith("SelfAttention") and hasattr(cfg, "num_attention_heads"):
                heads = cfg.num_attention_heads
                rows.append({"name": name, "kind": "attention", "heads": heads, "tokens": x.shape[-2],
                             "head_dim": cfg.hidden_size // heads})
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, int(d.get("num_channels") or 3), size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return rows
