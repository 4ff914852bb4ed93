"""What `edgekd targets list|show` print: display code, used only by the CLI (cli.py stays a parser)."""

from __future__ import annotations

from rich.table import Table

from edgekd.console import out as wide_console
from edgekd.settings import Settings
from edgekd.targets.hostbench import measure_target
from edgekd.targets.spec import generation_budget_words, list_targets, load_target


def print_targets(settings: Settings | None = None) -> None:
    tab = Table(title="edgekd targets")
    for c in ("name", "cores (big)", "GHz", "fp32 GFLOP/s", "int8 GOP/s", "GB/s", "RAM MB", "format", "threads",
              "budget ms", "generation budget", "access"):
        tab.add_column(c, justify="left" if c in ("name", "format", "access") else "right")
    for t in list_targets(settings):
        t = measure_target(t, settings=settings)  # the host's numbers: measured (once, cached) for the table
        cpu, mem, rt = t.cpu, t.memory, t.runtime
        name = t.name + (" (measured)" if t.measured else "")
        tab.add_row(name, f"{cpu['cores']} ({cpu['big_cores']})", f"{cpu['clock_ghz']:g}",
                    f"{cpu['peak_gflops_fp32']:g}", f"{cpu['peak_gops_int8']:g}", f"{mem['bandwidth_gbs']:g}",
                    str(mem["ram_mb"]), f"{rt['preferred_format']}/{rt['runtime']}", str(rt["default_threads"]),
                    f"{t.budget['latency_ms']:g}", generation_budget_words(t.generation_budget), t.access["method"])
    wide_console().print(tab)


def print_target(name: str, settings: Settings | None = None) -> None:
    t = measure_target(load_target(name, settings), settings=settings)  # `targets show host` measures this machine (once, cached)
    console = wide_console()
    console.print(f"[bold]{t.name}[/bold]: {t.description}")
    console.print(f"file: {t.path}")
    measured = set(t.measured)
    for table, values in t.data.items():
        if not isinstance(values, dict):
            continue
        tab = Table(title=f"\\[{table}]", show_header=False, title_justify="left")
        tab.add_column("key")
        tab.add_column("value")
        for k, v in values.items():
            tag = "  (measured on this machine)" if f"{table}.{k}" in measured else ""
            tab.add_row(k, f"{v}{tag}")
        console.print(tab)
    console.print("sources:")
    for s in t.data.get("sources", []):
        console.print(f"  - {s}")


def print_generation(pred: dict) -> None:
    """`edgekd predict`'s table: the generation keys, predicted."""
    tab = Table(title=f"predicted generation on {pred['device']} ({pred['format']}, {pred['precision']}, "
                      f"{pred['threads']} threads{', calibrated' if pred['calibrated'] else ', uncalibrated'})",
                show_header=False, title_justify="left")
    tab.add_column("key")
    tab.add_column("value", justify="right")
    rows = [("prompt / decode tokens", f"{pred['prompt_len']} / {pred['decode_len']}"),
            ("time to first token", f"{pred['ttft_ms']:.2f} ms"), ("prefill", f"{pred['prefill_tok_s']:,.0f} tok/s"),
            ("decode", f"{pred['decode_tok_s']:,.1f} tok/s ({pred['bound']}-bound)"),
            ("init", f"{pred['init_ms']:.1f} ms"), ("peak RSS", f"{pred['peak_rss_mb']:.1f} MB"),
            ("size", f"{pred['size_mb']:.2f} MB"), ("KV cache at prompt+decode", f"{pred['kv_cache_mb']:.2f} MB")]
    for k, v in rows:
        tab.add_row(k, v)
    wide_console().print(tab)
