"""Labelled images for an image classifier: the built-in 8x8 digits (scikit-learn's bundled `load_digits`),
a folder of class folders (read with Pillow), a saved Hugging Face data set with an image and a label column,
or an `.npz` with `images` and `labels`. Every image is brought to the teacher's input (`ImageInput`: its
size, channels and normalisation; images of another size are resized to it, as its image processor does),
held out deterministically, and served as a resumable stream with light augmentation (random shifts of a
few pixels; never flips: digits and text are not mirror-symmetric).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edgekd.data.batching import PositionedStream
from edgekd.errors import EdgekdError

HELDOUT_SHARE = 0.2   # of the examples, held out by a seeded permutation (never by listing order)
SPLIT_SEED = 20231
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGE_COLUMNS, LABEL_COLUMNS = ("image", "img", "pixel_values"), ("label", "labels")
DIGITS = "builtin-digits"


@dataclass
class ImageCorpus:
    """Pixels on 0..255 already at the model's size, [N, C, H, W] float32; labels index `label_values`
    (the labels as the data holds them) until `data.remap_to_teacher` makes them the teacher's class ids."""

    train: torch.Tensor
    validation: torch.Tensor
    train_labels: list
    validation_labels: list
    label_values: list
    digest: str
    source: str
    label_names: list = field(default_factory=list)


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a permutation seeded by SPLIT_SEED, its first HELDOUT_SHARE held out."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    k = max(1, round(n * HELDOUT_SHARE))
    return np.sort(order[k:]), np.sort(order[:k])


def _resize(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    """[N, C, H0, W0] on 0..255 -> [N, C, h, w] (bilinear, as image processors resize), a no-op at the size."""
    if pixels.shape[2:] == (h, w):
        return pixels.astype(np.float32)
    from PIL import Image

    out = np.empty((*pixels.shape[:2], h, w), dtype=np.float32)
    for i, img in enumerate(pixels):
        for c, ch in enumerate(img):
            out[i, c] = np.asarray(Image.fromarray(ch.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    return out


def _channels(pixels: np.ndarray, want: int, where: str) -> np.ndarray:
    """[N, C, H, W] with the teacher's channels: RGB averaged to grey for a grey teacher; a grey image for an
    RGB teacher is refused (its colour is not there to learn from)."""
    have = pixels.shape[1]
    if have == want:
        return pixels
    if have == 3 and want == 1:
        return pixels.mean(axis=1, keepdims=True)
    raise EdgekdError(f"{where} holds {'grey' if have == 1 else f'{have}-channel'} images but the teacher reads "
                      f"{'RGB' if want == 3 else 'grey'} ones: convert them (e.g. Pillow's Image.convert"
                      f"('{'RGB' if want == 3 else 'L'}')) or use a teacher of their kind")


def _nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """[N, H, W] / [N, H, W, C] / [N, C, H, W] (C 1 or 3) as float32 [N, C, H, W] on 0..255."""
    a = np.asarray(arr)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise EdgekdError(f"{where}: the images are not numeric arrays ({a.dtype}): save them as a [N, H, W] or "
                          f"[N, H, W, C] uint8 array")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or 0 in a.shape:
        raise EdgekdError(f"{where}: images of shape {tuple(np.shape(arr))} are not [N, H, W], [N, H, W, C] or "
                          f"[N, C, H, W] with 1 or 3 channels: reshape them")
    a = a.astype(np.float32)
    if np.issubdtype(np.asarray(arr).dtype, np.floating) and a.size and float(a.max()) <= 1.0:
        a = a * 255.0  # floats on 0..1
    if not np.isfinite(a).all():
        raise EdgekdError(f"{where}: the images hold NaN or infinite values: fix the data")
    return a


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as pixels on 0..255 [N, 1, 8, 8], labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:, None].astype(np.float32) * (255.0 / 16.0), d.target.astype(np.int64)


def _read_folder(root: Path) -> tuple[list, list, str]:
    """(images as [C, H, W] arrays on 0..255, their class folder names, a digest) of a folder of class folders."""
    from PIL import Image, UnidentifiedImageError

    from edgekd.limits import folder_files, read_bytes

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EdgekdError(f"--data {root} has no class folders: put each class's images in a folder named after "
                          f"the class (DATA/cat/1.png, DATA/dog/2.png)")
    files = [(c, f) for c in classes for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    if not files:
        raise EdgekdError(f"--data {root}: its class folders hold no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    folder_files(root, [f for _, f in files], "image")
    h = hashlib.sha256()
    images, labels = [], []
    for c, f in files:
        raw = read_bytes(f, "image")
        h.update(f"{c}/{f.name}\0".encode() + hashlib.sha256(raw).digest())
        try:
            with Image.open(io.BytesIO(raw)) as im:
                im.load()
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arr = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise EdgekdError(f"image {f} cannot be read ({type(e).__name__}): replace or remove it") from e
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        labels.append(c)
    return images, labels, h.hexdigest()


def _read_npz(path: Path) -> tuple[np.ndarray, list, str]:
    from edgekd.limits import read_bytes

    raw = read_bytes(path, "--data")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise EdgekdError(f"--data {path} has no {' or '.join(missing)} array (it has {', '.join(z.files) or 'none'}): "
                                  f"save it with np.savez(PATH, images=..., labels=...)")
            images, labels = z["images"], z["labels"]
    except EdgekdError:
        raise
    except Exception as e:
        raise EdgekdError(f"--data {path} is not a readable .npz ({type(e).__name__}): save it with np.savez") from e
    if len(images) != len(labels):
        raise EdgekdError(f"--data {path}: {len(images)} images but {len(labels)} labels: give one label per image")
    return _nchw(images, f"--data {path}"), [v.item() if hasattr(v, "item") else v for v in labels], \
        hashlib.sha256(raw).hexdigest()


def _read_dataset(path: Path, image_column: Optional[str], label_column: Optional[str]):
    """(train, held-out or None) of (images, labels) and a digest, from a data set saved with save_to_disk."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise EdgekdError(f"cannot load the data set saved at {path} ({type(e).__name__}): re-save it with "
                          f"datasets.save_to_disk") from e
    parts = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    held = next((k for k in ("validation", "test") if k in parts), None)
    train_key = "train" if "train" in parts else next(k for k in parts if k != held)

    def read(d, split):
        cols = d.column_names
        ic = image_column or next((c for c in IMAGE_COLUMNS if c in cols), None)
        lc = label_column or next((c for c in LABEL_COLUMNS if c in cols), None)
        if ic not in cols or lc not in cols:
            raise EdgekdError(f"the data set at {path} (split {split}) has columns {', '.join(cols)}: it needs an image "
                              f"column ({', '.join(IMAGE_COLUMNS)}) and a label column ({', '.join(LABEL_COLUMNS)}), "
                              f"or name them with --text-column / --label-column")
        imgs = []
        for i, im in enumerate(d[ic]):
            if hasattr(im, "convert"):  # a PIL image (datasets' Image feature)
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32)
                imgs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            else:
                imgs.append(_nchw(np.asarray(im)[None], f"the data set at {path}, row {i}")[0])
        labels = list(d[lc])
        if d.features.get(lc) is not None and hasattr(d.features[lc], "names"):  # a ClassLabel: by its names
            labels = [d.features[lc].names[v] for v in labels]
        return imgs, labels

    digest = hashlib.sha256(str(getattr(ds, "_fingerprint", "") or sorted(
        getattr(p, "_fingerprint", "") for p in parts.values())).encode()).hexdigest()
    return read(parts[train_key], train_key), (read(parts[held], held) if held else None), digest


def _stack(images: list, reader, where: str) -> np.ndarray:
    """Arrays of one image each, brought to the reader's channels and size, as one [N, C, H, W] array."""
    out = [_resize(_channels(im[None], reader.channels, where), reader.height, reader.width)[0] for im in images]
    return np.stack(out) if out else np.zeros((0, reader.channels, reader.height, reader.width), np.float32)


def load_images(data: str, reader, image_column: Optional[str] = None,
                label_column: Optional[str] = None) -> ImageCorpus:
    """The labelled images of `data` ('builtin' or 'builtin-digits', a folder of class folders, an .npz, a saved
    data set) at `reader`'s size and channels, split into training and held-out examples."""
    p = Path(str(data))
    held = None
    if str(data) in ("builtin", DIGITS):
        pixels, labels = load_digits_arrays()
        images, labels, digest, source = list(pixels), labels.tolist(), "sklearn-digits-1797", DIGITS
    elif p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        (images, labels), held, digest = _read_dataset(p, image_column, label_column)
        source = str(p)
    elif p.is_dir():
        images, labels, digest = _read_folder(p)
        source = str(p)
    elif p.suffix == ".npz":
        arr, labels, digest = _read_npz(p)
        images, source = list(arr), str(p)
    else:
        raise EdgekdError(f"--data {data} is not image data edgekd reads: pass a folder with one folder of images "
                          f"per class, an .npz with images and labels arrays, a saved data set, or builtin-digits")
    where = f"--data {data}"
    if held is None:
        tr, va = _split(len(images))
        held = ([images[i] for i in va], [labels[i] for i in va])
        images, labels = [images[i] for i in tr], [labels[i] for i in tr]
    if not len(images) or not len(held[0]):
        raise EdgekdError(f"{where} holds too few images to hold some out: give at least 2 per class")
    values = sorted(set(labels) | set(held[1]), key=str)
    index = {v: i for i, v in enumerate(values)}
    return ImageCorpus(torch.from_numpy(_stack(images, reader, where)), torch.from_numpy(_stack(held[0], reader, where)),
                       [index[v] for v in labels], [index[v] for v in held[1]], values, digest, source)


def shifted(x: torch.Tensor, max_shift: int, background: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of [B, C, H, W] moved by up to `max_shift` pixels in each direction (what a slightly
    off-centre crop does), the uncovered border filled with the `background` value [C]."""
    b, c, h, w = x.shape
    m = max_shift
    padded = background.view(1, c, 1, 1).expand(b, c, h + 2 * m, w + 2 * m).clone()
    padded[:, :, m:m + h, m:m + w] = x
    dy = torch.randint(0, 2 * m + 1, (b,), generator=g).tolist()
    dx = torch.randint(0, 2 * m + 1, (b,), generator=g).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def max_shift_for(reader) -> int:
    """The augmentation's shift: an eighth of the image side (1 pixel of the 8x8 digits, 28 of 224)."""
    return max(1, min(reader.height, reader.width) // 8)


class ImageStream(PositionedStream):
    """Labelled images (already the model's input) in a seeded order reshuffled each epoch; with `augment`,
    each image randomly shifted (`shifted`), seeded by its global position so a resumed run sees the same."""

    def __init__(self, pixels: torch.Tensor, labels: list, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, position: int = 0, augment: int = 0, background: Optional[torch.Tensor] = None):
        if batch_size % world:
            raise EdgekdError(f"batch size {batch_size} is not divisible by the {world} processes: pick a multiple")
        self.pixels, self.labels = pixels, torch.tensor(labels, dtype=torch.long)
        self.n = len(labels)
        self.batch_size, self.seed, self.rank, self.world, self.position = batch_size, seed, rank, world, position
        self.augment, self.background = augment, background

    def batch_at(self, position: int) -> dict[str, torch.Tensor]:
        idx = self.shuffled(position)
        x = self.pixels[idx]
        if self.augment:
            x = shifted(x, self.augment, self.background, torch.Generator().manual_seed(self.seed * 7919 + position))
        return {"pixel_values": x, "labels": self.labels[idx]}
