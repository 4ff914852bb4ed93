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


def init_by_shape(student, teacher) -> dict:
    """Every teacher tensor whose name and shape the student shares, copied (the stem, the blocks a shallower
    stage keeps, the head where the widths agree); the rest stays as built."""
    import torch

    t_state = teacher.state_dict()
    s_state = student.state_dict()
    copied = [k for k, v in s_state.items() if k in t_state and t_state[k].shape == v.shape]
    if not copied:
        return {"method": "random", "why": "no tensor of the teacher has the student's shape"}
    with torch.no_grad():
        student.load_state_dict({**s_state, **{k: t_state[k] for k in copied}})
    return {"method": "teacher", "copied_tensors": len(copied), "of": len(s_state)}


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
