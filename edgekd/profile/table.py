"""A readable rendering of one profile for people (the CLI without --json)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def print_profile(stats: dict, console: Console | None = None, top: int = 12) -> None:
    from edgekd import console as _c

    console = console or _c.out()
    t = Table(title=f"{stats.get('model', '')} on {stats['device']} ({stats['format']}, "
                    f"{stats.get('runtime', '')}, {stats['threads']} threads, {stats['runs']} runs)")
    for col in ("mean", "p50", "p90", "p99", "std", "min", "max", "init"):
        t.add_column(col, justify="right")
    t.add_column("RSS MB", justify="right")
    t.add_column("file MB", justify="right")
    t.add_row(*[_fmt(stats.get(f"{c}_ms")) for c in ("mean", "p50", "p90", "p99", "std", "min", "max", "init")],
              _fmt(stats.get("peak_rss_mb")), _fmt(stats.get("size_mb")))
    console.print(t)
    if stats.get("ops"):
        o = Table(title="per-op breakdown (per inference)")
        for col in ("op", "nodes", "avg ms", "%"):
            o.add_column(col, justify="left" if col == "op" else "right")
        for row in stats["ops"][:top]:
            o.add_row(row["op"], _fmt(row.get("count")), _fmt(row.get("avg_ms")), _fmt(row.get("percent")))
        console.print(o)
    else:
        console.print("no per-op breakdown from this runtime")
    p = stats.get("parity")
    if p and p.get("checked"):
        console.print(f"parity on {p.get('machine') or 'the device'}{' (emulated)' if p.get('emulated') else ''}: "
                      f"{p['rows']} rows, top-1 agreement {p['top1_agreement']:.3f}, max abs diff "
                      f"{p['max_abs_diff']:.3g}: {'passed' if p['passed'] else 'FAILED'} (the bar it passed here)")
    elif p:
        console.print(f"parity not checked on the device: {p.get('why')}")


def print_generation(stats: dict, console: Console | None = None) -> None:
    """One row per measured number: median and spread over the runs (what llama-bench users read)."""
    from edgekd import console as _c
    from edgekd.profile.generation_profile import median_of

    console = console or _c.out()
    t = Table(title=f"{stats.get('model', '')} on {stats['device']} ({stats['format']}, {stats.get('runtime', '')}, "
                    f"{stats.get('precision') or '?'}, {stats['threads']} threads, {stats['runs']} runs, "
                    f"prompt {stats['prompt_len']}, decode {stats['decode_len']})")
    for col in ("", "median", "min", "max"):
        t.add_column(col, justify="left" if not col else "right")
    for key, label in (("ttft_ms", "time to first token (ms)"), ("prefill_tok_s", "prefill (tokens/s)"),
                       ("decode_tok_s", "decode (tokens/s)")):
        v = stats.get(key)
        spread = v if isinstance(v, dict) else {}
        t.add_row(label, _fmt(median_of(v)), _fmt(spread.get("min")), _fmt(spread.get("max")))
    console.print(t)
    console.print(f"init {_fmt(stats.get('init_ms'))} ms, peak RSS {_fmt(stats.get('peak_rss_mb'))} MB, "
                  f"size {_fmt(stats.get('size_mb'))} MB")
    if stats.get("emulated"):
        console.print(f"machine {stats.get('machine')}, EMULATED ({stats.get('emulated_by')}): these times mean nothing "
                      f"for the real device; its tokens do")
    p = stats.get("parity")
    if p and p.get("checked", True):
        console.print(f"generation parity on {stats.get('machine') or 'the device'}: {p['prompts_matched']} of "
                      f"{p['prompts']} prompts continue as PyTorch's greedy tokens (first divergences "
                      f"{p['first_divergence']}); {'passed' if p['passed'] else 'FAILED'}")
    elif p:
        console.print(f"generation parity not checked on the device: {p.get('why')}")
