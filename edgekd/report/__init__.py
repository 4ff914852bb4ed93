"""Run reports: report.json with the DESIGN.md keys, report.md with a comparison table and plots."""

from edgekd.report.write import build_report, render_markdown, write_run_report

__all__ = ["build_report", "render_markdown", "write_run_report"]
