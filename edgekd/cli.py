"""The `edgekd` command: parses arguments and delegates to the Python API; no logic of its own."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from edgekd.errors import EdgekdError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill a teacher into a student that meets a latency budget on an edge device.")
kernel_app = typer.Typer(no_args_is_help=True, help="The fused distillation kernel.")
targets_app = typer.Typer(no_args_is_help=True, help="Edge targets: the devices a student is built for.")
teacher_app = typer.Typer(no_args_is_help=True, help="Teachers: the built-in one and its recipe.")
app.add_typer(kernel_app, name="kernel")
app.add_typer(targets_app, name="targets")
app.add_typer(teacher_app, name="teacher")

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    _state["debug"] = debug


# --- kernel -------------------------------------------------------------------------------------

@kernel_app.command("bench")
def kernel_bench(
    rows: Optional[int] = typer.Option(None, help="Rows (tokens); default: the issue's sizes."),
    vocab: Optional[int] = typer.Option(None, help="Vocabulary size; default: 32000 and 128256."),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16; default: float32 and bfloat16."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    repeats: int = typer.Option(5, help="Timed repeats per variant (the median is reported)."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Also time torch.compile of the eager loss."),
    out: Optional[str] = typer.Option(None, help="Where to write the JSON (default: benchmarks/kernel_bench.json)."),
) -> None:
    """Time eager PyTorch, torch.compile and the fused kernel on KD+CE forward and backward."""
    from edgekd.kernels import bench

    bench.main(rows=rows, vocab=vocab, dtype=dtype, device=device, repeats=repeats,
               use_compile=compile, out=out)


# --- entry point --------------------------------------------------------------------------------

def main() -> None:
    """Run the app; a user's mistake becomes one line on stderr and exit code 2."""
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except EdgekdError as e:
        if debug:
            raise
        typer.echo(f"edgekd: error: {e}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code if code is not None else 0)
    except typer.Abort:
        typer.echo("edgekd: aborted", err=True)
        sys.exit(130)
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.exceptions.UsageError):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
