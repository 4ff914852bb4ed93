"""Target files: read, validate and describe the edge devices a student is built for.

A target file is data (targets/NAME.toml), validated here so that a typo in a file becomes one
line naming the file, the key and the problem instead of a wrong latency prediction later.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import EdgekdError
from edgekd.settings import Settings

# key -> (type, rule). Rules: "pos" (> 0), "enum:a|b", "str", "list[str]".
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "": {"name": (str, "str"), "description": (str, "str"), "sources": (list, "list[str]")},
    "cpu": {
        "cores": (int, "pos"), "big_cores": (int, "pos"), "clock_ghz": ((int, float), "pos"),
        "arch": (str, "enum:arm64|x86_64"), "simd_width_bits": (int, "enum:64|128|256|512"),
        "peak_gflops_fp32": ((int, float), "pos"), "peak_gops_int8": ((int, float), "pos"),
    },
    "memory": {"bandwidth_gbs": ((int, float), "pos"), "ram_mb": ((int, float), "pos"),
               "cache_mb": ((int, float), "pos")},
    "runtime": {
        "preferred_format": (str, "enum:tflite|onnx"), "runtime": (str, "enum:litert|onnxruntime"),
        "default_threads": (int, "pos"),
        "generative_format": (str, "enum:litert-lm|onnx-genai"),
    },
    "budget": {"latency_ms": ((int, float), "pos"), "max_model_mb": ((int, float), "pos"),
               "decode_tok_s": ((int, float), "pos"), "ttft_ms": ((int, float), "pos"),
               "prompt_len": (int, "pos"), "decode_len": (int, "pos")},
    "access": {"method": (str, "enum:adb|ssh|local")},
}
# The plausible range of each number (a datasheet's value for any edge board or host CPU lies inside; a value
# outside is a typo, e.g. `cores = 1000000000000`, and would be shown and predicted with).
RANGES: dict[str, tuple[float, float]] = {
    "cpu.cores": (1, 1024), "cpu.big_cores": (1, 1024), "cpu.clock_ghz": (0.1, 10),
    "cpu.peak_gflops_fp32": (0.1, 1e6), "cpu.peak_gops_int8": (0.1, 1e7),
    "memory.bandwidth_gbs": (0.1, 10_000), "memory.ram_mb": (16, 1 << 24), "memory.cache_mb": (0.01, 4096),
    "runtime.default_threads": (1, 1024),
    "budget.latency_ms": (0.001, 1e6), "budget.max_model_mb": (0.01, 1e6), "budget.decode_tok_s": (0.001, 1e7),
    "budget.ttft_ms": (0.001, 1e7), "budget.prompt_len": (1, 1 << 20), "budget.decode_len": (1, 1 << 20),
}
OPTIONAL_TABLES = {"gpu"}  # described for later, not validated beyond being a table
# Keys a target file may leave out (files written before LLM generation budgets; the last-level cache where
# no datasheet states it); every shipped file has the generation keys.
# A generation budget (decode_tok_s, ttft_ms) is stated at a prompt and decode length, so it needs both.
OPTIONAL_KEYS = {"memory.cache_mb", "runtime.generative_format", "budget.decode_tok_s", "budget.ttft_ms", "budget.prompt_len",
                 "budget.decode_len"}
GENERATION_BUDGET = ("decode_tok_s", "ttft_ms")
GENERATION_LENGTHS = ("prompt_len", "decode_len")


@dataclass(frozen=True)
class Target:
    """One validated edge target; `data` keeps the whole file (tables as nested dicts)."""

    name: str
    description: str
    path: str
    data: dict = field(repr=False)

    def __getitem__(self, dotted: str) -> Any:
        """`target["cpu.peak_gflops_fp32"]` reads one fact."""
        node: Any = self.data
        for part in dotted.split("."):
            node = node[part]
        return node

    cpu = property(lambda self: self.data["cpu"])
    memory = property(lambda self: self.data["memory"])
    runtime = property(lambda self: self.data["runtime"])
    budget = property(lambda self: self.data["budget"])
    access = property(lambda self: self.data["access"])

    @property
    def generation_budget(self) -> dict | None:
        """{decode_tok_s, ttft_ms, prompt_len, decode_len} as the file states them (a bound it leaves
        out is None), or None for a file with no generation budget."""
        b = self.budget
        if not any(k in b for k in GENERATION_BUDGET):
            return None
        return {k: b.get(k) for k in (*GENERATION_BUDGET, *GENERATION_LENGTHS)}

    @property
    def measured(self) -> list[str]:
        return list(self.data.get("measured", []))

    @property
    def unmeasured(self) -> list[str]:
        """The `measured` keys not filled in yet: `edgekd.targets.measure_target` fills them."""
        return [k for k in self.measured if not _has(self.data, k)]

    @property
    def key(self) -> str:
        """A file-name-safe key for per-device caches (calibration files)."""
        return self.name


# --- locating files ---------------------------------------------------------------------------

def targets_dirs(settings: Settings | None = None) -> list[Path]:
    """Where target files live: $EDGEKD_TARGETS_DIR, the checkout's targets/, the wheel's targets_data/."""
    dirs = []
    env = (settings or Settings.from_env()).targets_dir
    if env:
        dirs.append(env)
    pkg = Path(__file__).resolve().parent.parent  # edgekd/
    if (pkg.parent / "pyproject.toml").is_file():  # running from a checkout, not site-packages
        dirs.append(pkg.parent / "targets")
    dirs.append(pkg / "targets_data")  # installed wheel (CMakeLists installs targets/*.toml here)
    return [d for d in dirs if d.is_dir()]


def known_targets(settings: Settings | None = None) -> list[str]:
    names: list[str] = []
    for d in targets_dirs(settings):
        for p in sorted(d.glob("*.toml")):
            if p.stem not in names:
                names.append(p.stem)
    return sorted(names)


def target_path(name: str, settings: Settings | None = None) -> Path:
    for d in targets_dirs(settings):
        p = d / f"{name}.toml"
        if p.is_file():
            return p
    known = ", ".join(known_targets(settings)) or "(none found)"
    raise EdgekdError(f"unknown target '{name}'; known targets: {known}")


# --- validation --------------------------------------------------------------------------------

def generation_misses(numbers: Any, b: dict) -> list[str]:
    """The generation budget keys that `numbers` (a mapping, or an object with the attributes: a
    prediction, a measurement) misses: decode_tok_s below its minimum, ttft_ms above its maximum."""
    get = numbers.get if isinstance(numbers, dict) else lambda k: getattr(numbers, k)
    return [k for k, bad in (("decode_tok_s", lambda v, lim: v < lim), ("ttft_ms", lambda v, lim: v > lim))
            if b.get(k) is not None and bad(get(k), b[k])]


def generation_budget_words(b: dict | None) -> str:
    """A generation budget in words: 'decode >= 6000 tok/s, TTFT <= 4 ms at prompt 64, decode 128' ('-': none)."""
    if not b:
        return "-"
    parts = ([f"decode >= {b['decode_tok_s']:g} tok/s"] if b.get("decode_tok_s") is not None else []) + \
            ([f"TTFT <= {b['ttft_ms']:g} ms"] if b.get("ttft_ms") is not None else [])
    return f"{', '.join(parts)} at prompt {b['prompt_len']}, decode {b['decode_len']}"


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return "number" if float in t else " or ".join(x.__name__ for x in t)
    return {str: "string", int: "integer", list: "list", float: "number"}.get(t, t.__name__)


def validate(data: dict, where: str, skip: set[str] = frozenset()) -> None:
    """Raise EdgekdError naming `where` (the file), the dotted key and the problem."""
    for table, keys in SCHEMA.items():
        if table:
            node = data.get(table)
            if node is None:
                raise EdgekdError(f"{where}: missing table [{table}]")
            if not isinstance(node, dict):
                raise EdgekdError(f"{where}: key '{table}' must be a table, got {type(node).__name__}")
        else:
            node = data
        for key, (typ, rule) in keys.items():
            dotted = f"{table}.{key}" if table else key
            if dotted in skip:
                continue
            if key not in node:
                if dotted in OPTIONAL_KEYS:
                    continue
                raise EdgekdError(f"{where}: missing key '{dotted}'")
            value = node[key]
            bad_bool = isinstance(value, bool)
            if bad_bool or not isinstance(value, typ):
                what = _type_name(typ)
                raise EdgekdError(f"{where}: key '{dotted}' must be {'an' if what[0] in 'aeiou' else 'a'} {what}, "
                                  f"got {type(value).__name__} {value!r}")
            if rule == "pos" and not (value > 0 and math.isfinite(value)):
                raise EdgekdError(f"{where}: key '{dotted}' must be a finite positive number, got {value!r}")
            if dotted in RANGES and not RANGES[dotted][0] <= value <= RANGES[dotted][1]:
                lo, hi = RANGES[dotted]
                raise EdgekdError(f"{where}: key '{dotted}' is {value!r}, outside the plausible range {lo:g} to {hi:g}: "
                                  f"fix the file (a datasheet's value lies inside)")
            if rule == "str" and not value.strip():
                raise EdgekdError(f"{where}: key '{dotted}' must not be empty")
            if rule == "list[str]" and (not value or not all(isinstance(v, str) for v in value)):
                raise EdgekdError(f"{where}: key '{dotted}' must be a non-empty list of strings")
            if rule.startswith("enum:"):
                allowed = rule[5:].split("|")
                if str(value) not in allowed:
                    raise EdgekdError(f"{where}: key '{dotted}' has unknown value {value!r}; "
                                      f"expected one of {', '.join(allowed)}")
    cpu = data["cpu"]
    if not {"cpu.big_cores", "cpu.cores"} & skip and cpu["big_cores"] > cpu["cores"]:
        raise EdgekdError(f"{where}: key 'cpu.big_cores' ({cpu['big_cores']}) exceeds 'cpu.cores' ({cpu['cores']})")
    budget = data["budget"]
    if any(k in budget for k in GENERATION_BUDGET):
        for k in GENERATION_LENGTHS:
            if k not in budget:
                raise EdgekdError(f"{where}: missing key 'budget.{k}': a generation budget (decode_tok_s, ttft_ms) "
                                  f"is stated at a prompt_len and decode_len")
    for t in OPTIONAL_TABLES:
        if t in data and not isinstance(data[t], dict):
            raise EdgekdError(f"{where}: key '{t}' must be a table")
    measured = data.get("measured", [])
    if not isinstance(measured, list) or not all(isinstance(m, str) for m in measured):
        raise EdgekdError(f"{where}: key 'measured' must be a list of dotted key names")


def _has(data: dict, dotted: str) -> bool:
    table, _, key = dotted.rpartition(".")
    node = data.get(table, {}) if table else data
    return isinstance(node, dict) and key in node


def merge_facts(data: dict, values: dict[str, Any]) -> dict:
    """A copy of a target file's tables with dotted `values` ("cpu.cores": 4) set in them."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in values.items():
        table, _, key = dotted.rpartition(".")
        out.setdefault(table, {})[key] = value
    return out


def parse_target(path: str | os.PathLike) -> Target:
    """Read and validate one file. Keys listed under `measured` (the host's) are left out until
    `measure_target` fills them: parsing never benchmarks the machine."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise EdgekdError(f"{where}: target file not found (see `edgekd targets list`)")
    from edgekd.checks import text_file

    try:
        data = tomllib.loads(text_file(path, "target file"))
    except tomllib.TOMLDecodeError as e:
        raise EdgekdError(f"{where}: not valid TOML ({e})") from e
    measured = data.get("measured", [])
    validate(data, where, skip={k for k in measured if not _has(data, k)} if isinstance(measured, list) else set())
    if data["name"] != path.stem:
        raise EdgekdError(f"{where}: key 'name' is {data['name']!r} but the file is named {path.stem!r}")
    return Target(name=data["name"], description=data["description"], path=where, data=data)


def load_target(target: "str | Target", settings: Settings | None = None) -> Target:
    """A target by name (or a Target passed through); unknown names list the known ones."""
    if isinstance(target, Target):
        return target
    p = Path(str(target))
    if p.suffix == ".toml" or os.sep in str(target):  # a path, not a name
        return parse_target(p)
    return parse_target(target_path(str(target), settings))


def list_targets(settings: Settings | None = None) -> list[Target]:
    """Every shipped target, validated (the host's measured numbers not filled in: see measure_target)."""
    return [load_target(n, settings) for n in known_targets(settings)]
