"""Run reports: report.json (its keys in schema.py), report.md with a comparison table, and plots.

The engine's part is write.py's; the job's part (built from the job's facts, rendered, summarised on
the console) is job.py's.
"""

from edgekd.report.job import JobFacts, build_job_report, failure_message, print_summary, write_job_report
from edgekd.report.schema import CLASSIFIER_KEYS, ENGINE_KEYS, JOB_KEYS, SCHEMA_VERSION, missing_keys
from edgekd.report.write import build_report, mark_status, render_markdown, status_banner, write_run_report

__all__ = ["CLASSIFIER_KEYS", "ENGINE_KEYS", "JOB_KEYS", "JobFacts", "SCHEMA_VERSION", "build_job_report", "build_report",
           "failure_message", "mark_status", "missing_keys", "print_summary", "render_markdown", "status_banner",
           "write_job_report", "write_run_report"]
