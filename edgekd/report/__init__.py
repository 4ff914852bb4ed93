"""Run reports: report.json (its keys in schema.py), report.md with a comparison table, and plots.

report.md is made of sections the parts register (sections.py): the engine's are write.py's, the job's
(built from the job's facts, rendered, summarised on the console) job.py's, and each scheme's its own.
"""

from edgekd.report.job import JobFacts, build_job_report, failure_message, print_summary, write_job_report
from edgekd.report.schema import CLASSIFIER_KEYS, ENGINE_KEYS, JOB_KEYS, SCHEMA_VERSION, missing_keys
from edgekd.report.sections import register_section, render_markdown, status_banner
from edgekd.report.write import build_report, mark_status, write_run_report

__all__ = ["CLASSIFIER_KEYS", "ENGINE_KEYS", "JOB_KEYS", "JobFacts", "SCHEMA_VERSION", "build_job_report", "build_report",
           "failure_message", "mark_status", "missing_keys", "print_summary", "register_section", "render_markdown",
           "status_banner", "write_job_report", "write_run_report"]
