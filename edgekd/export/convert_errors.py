"""Turns a converter's failure into one line naming the op it could not lower and the module it came from."""

from __future__ import annotations

import re

import torch

from edgekd.errors import EdgekdError

_OP = re.compile(r"aten(?:\.|::)([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?")


def _module_of(op_name: str, module: torch.nn.Module, args: tuple) -> str:
    """Find the node calling `op_name` in a fresh torch.export graph and read its nn_module_stack.

    Converters name the op after decomposition (eigvals -> linalg_eig), so the decomposed graph is
    searched too; decomposed nodes keep their module stack.
    """
    try:
        ep = torch.export.export(module, args, strict=False)
    except Exception:
        return ""
    for attempt in range(2):
        for node in ep.graph.nodes:
            if node.op == "call_function" and f"{node.target}.".startswith(f"aten.{op_name}."):
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    path, cls = list(stack.values())[-1]
                    cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
                    return f" in module {path or '<root>'} ({cls_name.rsplit('.', 1)[-1]})"
        if attempt == 0:
            try:
                ep = ep.run_decompositions()
            except Exception:
                return ""
    return ""


def conversion_error(exc: BaseException, converter: str, module: torch.nn.Module, args: tuple) -> EdgekdError:
    text = str(exc)
    m = _OP.search(text)
    if m:
        op = f"aten.{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "")
        where = _module_of(m.group(1), module, args)
        return EdgekdError(f"{converter} cannot lower op {op}{where}: replace that op in the model or export "
                           f"the other format")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return EdgekdError(f"{converter} failed: {(lines[0] if lines else type(exc).__name__)[:300]}")
