"""Checks of what a user hands edgekd, made before anything is loaded, trained or written.

Each failure is one EdgekdError line naming the option (or file) and the problem. Nothing here
imports torch, so the CLI runs these checks in a fraction of a second, before the heavy imports.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Optional

from edgekd.errors import EdgekdError
from edgekd.formats import FORMATS, GENERATIVE, GRAPH, export_format, format_names
from edgekd.hyperparams import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, check_alpha, check_temperature

MIN_FREE_BYTES = 64 << 10  # an output place with less free space than this is full for our purposes
MAX_SEED = 2**32 - 1      # numpy's and torch's common range


def number(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, integer: bool = False, hint: str = "") -> Any:
    """`value` when it is a finite number (an integer if `integer`) within the range, else one line.

    The range is [low, high]; `low_open` / `high_open` make that end exclusive. None is no bound.
    """
    what = "an integer" if integer else "a number"
    g = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"  # noqa: E731
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {g(low)}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {g(high)}")
    if low is not None and high is not None:
        want = f"{what} in {'(' if low_open else '['}{g(low)}, {g(high)}{')' if high_open else ']'}"
    else:
        want = f"{what}{' ' + bounds[0] if bounds else ''}"
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and integer and isinstance(value, float):
        ok = math.isfinite(value) and value == int(value)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and not (
            (low is not None and (v < low or (low_open and v == low))) or
            (high is not None and (v > high or (high_open and v == high))))
    if not ok:
        raise EdgekdError(f"{name} must be {want}, got {value!r}{': ' + hint if hint else ''}")
    return int(value) if integer else value


def optional_number(name: str, value: Any, **kw) -> Any:
    return None if value is None else number(name, value, **kw)


def available_cores() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(name: str, value: Optional[int], cores: Optional[int] = None,
                 where: str = "this machine") -> Optional[int]:
    """A thread count from 1 to the cores available (None: the runtime's default)."""
    if value is None:
        return None
    cores = cores or available_cores()
    return number(name, value, low=1, high=cores, integer=True,
                  hint=f"{where} has {cores} core{'s' if cores != 1 else ''} available")


# --- the options of each command (the CLI calls these before its heavy imports; the API calls them too) ---

def distill_numbers(*, steps=None, temperature=DEFAULT_TEMPERATURE, alpha=DEFAULT_ALPHA, latency_budget_ms=None,
                    batch_size=8, seq_len=256, lr=2e-3, seed=0, micro_batch_size=None, warmup_steps=None,
                    checkpoint_every=None, eval_blocks=48, eval_every=None, init_batches=4, threads=None,
                    **_ignored) -> None:
    optional_number("--steps", steps, low=1, integer=True)
    if isinstance(temperature, str) and temperature != "auto":
        try:
            temperature = float(temperature)
        except ValueError:
            pass
    check_temperature("--temperature", temperature)
    check_alpha("--alpha", alpha)
    optional_number("--latency-budget", latency_budget_ms, low=0, low_open=True, hint="milliseconds")
    number("--batch-size", batch_size, low=1, integer=True)
    number("--seq-len", seq_len, low=2, integer=True)
    number("--lr", lr, low=0, low_open=True, hint="e.g. 2e-3")
    number("--seed", seed, low=0, high=MAX_SEED, integer=True)
    optional_number("micro_batch_size", micro_batch_size, low=1, high=batch_size, integer=True)
    optional_number("warmup_steps", warmup_steps, low=0, integer=True)
    optional_number("checkpoint_every", checkpoint_every, low=1, integer=True)
    number("eval_blocks", eval_blocks, low=1, integer=True)
    optional_number("eval_every", eval_every, low=0, integer=True)
    number("init_batches", init_batches, low=1, integer=True)
    thread_count("threads", threads)


def read_json(path: Path, problem: str):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekdError(f"{path} {problem} ({getattr(e, 'msg', type(e).__name__)})") from e


def parse_loss_spec(loss) -> Optional[list]:
    """--loss: a JSON list, a path to a JSON file, or loss names joined by '+'."""
    if loss is None or isinstance(loss, list):
        return loss
    if isinstance(loss, dict):
        return [loss]
    s = str(loss).strip()
    if s.startswith("[") or s.startswith("{"):
        try:
            v = json.loads(s)
        except json.JSONDecodeError as e:
            raise EdgekdError(f"--loss is not valid JSON ({e.msg}): pass e.g. '[{{\"name\": \"kd\", \"weight\": 1}}]'") from e
        return v if isinstance(v, list) else [v]
    p = Path(s)
    if p.suffix == ".json":
        if not p.is_file():
            raise EdgekdError(f"loss spec file {p} does not exist")
        v = read_json(p, "is not valid JSON: fix the loss spec")
        return v if isinstance(v, list) else [v]
    return [{"name": n.strip(), "weight": 1.0} for n in s.split("+")]


def loss_names(loss) -> list[str]:
    return [i.get("name") if isinstance(i, dict) else i for i in (parse_loss_spec(loss) or [])]


def export_args(fmt: str, quantize: str, seq_len: Any, min_top1: Any, out: Optional[str | os.PathLike] = None) -> None:
    """export's options for a logits-graph format (onnx, tflite); `out` (when given) ends in the format's suffix
    and can be written."""
    f = FORMATS.get(fmt)
    if f is not None and f.kind != GRAPH:
        how = "export_generative" if f.generative else "export_seq2seq"
        raise EdgekdError(f"--format {fmt} is {'a generative' if f.generative else 'an encoder-decoder'} format: "
                          f"export it with {how}")
    if f is None:
        raise EdgekdError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
    if quantize == "int4":
        raise EdgekdError(f"--quantize int4 is for the generative formats ({', '.join(format_names(GENERATIVE))}), "
                          f"not {fmt}: use {', '.join(f.quantize)}")
    if quantize not in f.quantize:
        raise EdgekdError(f"unknown quantisation {quantize!r}: use {', '.join(f.quantize[:-1])} or {f.quantize[-1]}")
    number("--seq-len", seq_len, low=2, integer=True)
    number("--min-top1", min_top1, low=0, high=1, low_open=True)
    if out is not None:
        export_file(out, f.suffix, fmt)


def export_file(out: str | os.PathLike, suffix: str, fmt: str) -> Path:
    """An export's --out file: it ends in the format's suffix and can be written."""
    if Path(out).suffix != suffix:
        raise EdgekdError(f"--out {out} must end in {suffix} for --format {fmt}")
    return output_file(out)


def generative_args(fmt: str, quantize: str, new_tokens: Any, min_top1: Any = None,
                    out: Optional[str | os.PathLike] = None) -> None:
    """The generative export's options: litert-lm writes a .litertlm file, onnx-genai a folder."""
    f = export_format(fmt, GENERATIVE)
    if quantize == "int8-dynamic":
        raise EdgekdError(f"--quantize int8-dynamic is for onnx/tflite: {fmt}'s int8 already quantises activations "
                          f"at run time, use --quantize int8")
    if quantize not in f.quantize:
        raise EdgekdError(f"unknown quantisation {quantize!r} for {fmt}: use {', '.join(f.quantize[:-1])} or "
                          f"{f.quantize[-1]}")
    number("--new-tokens", new_tokens, low=1, high=1024, integer=True)
    if min_top1 is not None:
        number("--min-top1", min_top1, low=0, high=1, low_open=True)
    if out is None:
        return
    if f.folder:
        output_dir(out)
    else:
        export_file(out, f.suffix, fmt)


KERNEL_DTYPES = ("float32", "bfloat16", "float16")


def kernel_bench_args(rows=None, vocab=None, repeats=5, device="cpu", out=None, dtype=None) -> None:
    if dtype is not None and dtype not in KERNEL_DTYPES:
        raise EdgekdError(f"--dtype {dtype!r}: choose one of {', '.join(KERNEL_DTYPES)}")
    optional_number("--rows", rows, low=1, integer=True)
    optional_number("--vocab", vocab, low=2, integer=True)
    number("--repeats", repeats, low=1, integer=True)
    if device not in ("cpu", "cuda"):
        raise EdgekdError(f"--device {device!r}: use cpu or cuda")
    if out is not None:
        output_file(out)


def teacher_train_args(steps=None, seed=None, out=None) -> None:
    optional_number("--steps", steps, low=1, integer=True)
    optional_number("--seed", seed, low=0, high=MAX_SEED, integer=True)
    if out is not None:
        output_dir(out)


# --- paths -----------------------------------------------------------------------------------------

def _existing_ancestor(p: Path) -> Path:
    a = p
    while not os.path.lexists(a) and a != a.parent:
        a = a.parent
    return a


def _writable_place(p: Path, option: str) -> None:
    """The nearest existing folder at or above `p` is a writable folder with some space left."""
    a = _existing_ancestor(p)
    if not a.is_dir():
        raise EdgekdError(f"{option} {p}: {a} is a file, not a folder: choose another path")
    if not os.access(a, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(a) else "permission denied"
        raise EdgekdError(f"{option} {p}: {a} is not writable ({why}): choose a writable place")
    try:
        st = os.statvfs(a)
    except OSError:
        return
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        raise EdgekdError(f"{option} {p}: no space left on the device holding {a} "
                          f"({st.f_bavail * st.f_frsize // 1024} KiB free): free some space or choose another place")


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """A file edgekd will write (replacing one that is there): not a folder, in a writable place."""
    p = Path(path)
    if p.is_dir():
        raise EdgekdError(f"{option} {p} is a folder, not a file: give the path of the file to write")
    _writable_place(p.parent if os.path.lexists(p) else p, option)
    return p


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """A folder edgekd will fill (a run directory): not a file, in a writable place."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise EdgekdError(f"{option} {p} is a file, not a folder: give a folder for the run")
    _writable_place(p, option)
    return p


def text_file(path: Path, what: str) -> str:
    """The UTF-8 text of `path` (a regular file within edgekd.limits' bound; .gz decompressed), or one line
    saying why it cannot be read."""
    from edgekd.limits import read_bytes

    try:
        return read_bytes(path, what).decode("utf-8")
    except FileNotFoundError as e:
        raise EdgekdError(f"{what} {path} does not exist") from e
    except IsADirectoryError as e:
        raise EdgekdError(f"{what} {path} is a folder, not a file") from e
    except UnicodeDecodeError as e:
        raise EdgekdError(f"{what} {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from e
    except OSError as e:
        raise EdgekdError(f"cannot read {what} {path}: {e.strerror}") from e


def json_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object in `path` (UTF-8), or one line naming the file, the problem and `fix`."""
    return parse_json_object(text_file(path, what), f"{what} {path}", fix)


def parse_json_object(text: str, where: str, fix: str) -> dict:
    """`text` as a JSON object, or one line: `where` (a file, a file:line, an option), the problem, `fix`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgekdError(f"{where} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}): {fix}") from e
    if not isinstance(obj, dict):
        raise EdgekdError(f"{where} must be a JSON object, not {type(obj).__name__}: {fix}")
    return obj


def input_file(path: Optional[str | os.PathLike], option: str) -> Optional[Path]:
    """A file the user names that must exist (a key, a known_hosts file, a binary)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise EdgekdError(f"{option} {p} does not exist")
    if not p.is_file():
        raise EdgekdError(f"{option} {p} is not a file")
    if not os.access(p, os.R_OK):
        raise EdgekdError(f"{option} {p} is not readable (permission denied)")
    return p


# --- model files -----------------------------------------------------------------------------------

class _Truncated(Exception):
    pass


def safetensors_file(path: Path) -> None:
    """The header parses and the file holds every byte the header promises (a truncated copy does not)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise _Truncated(f"{size} bytes, the header is cut off")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise _Truncated(f"{size} bytes, the header promises {8 + n + end}")
    except OSError as e:
        raise EdgekdError(f"cannot read {path}: {e.strerror}") from e
    except _Truncated as e:
        raise EdgekdError(f"{path} is truncated ({e}): re-save or re-download the model") from e
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise EdgekdError(f"{path} is corrupt (unreadable header): re-save or re-download the model") from e


def model_dir(path: str | os.PathLike, option: str) -> Path:
    """A Hugging Face model folder: config.json is a JSON object, every .safetensors file is complete."""
    d = Path(path)
    if not d.exists():
        raise EdgekdError(f"{option} {d} does not exist: give a Hugging Face model folder (config.json + "
                          f"model.safetensors)")
    if not d.is_dir():
        raise EdgekdError(f"{option} {d} is not a folder: give a Hugging Face model folder (config.json + "
                          f"model.safetensors)")
    cfg = d / "config.json"
    if not cfg.is_file():
        raise EdgekdError(f"{option} {d} has no config.json: it is not a Hugging Face model folder")
    json_object(cfg, "model config", "re-save the model with save_pretrained")
    weights = sorted(d.glob("*.safetensors"))
    if not weights and not list(d.glob("pytorch_model*.bin")):
        raise EdgekdError(f"{option} {d} has no model weights (model.safetensors): save the model there with "
                          f"save_pretrained")
    for w in weights:
        safetensors_file(w)
    return d
