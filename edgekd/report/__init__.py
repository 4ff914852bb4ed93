"""Run reports: report.json with the DESIGN.md keys, report.md with a comparison table and plots."""

from edgekd.report.write import build_report, mark_status, render_markdown, status_banner, write_run_report

__all__ = ["build_report", "mark_status", "render_markdown", "status_banner", "write_run_report"]
