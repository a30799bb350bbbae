"""Audit of an unlearning prompt: membership inference and robustness probes (`spul audit`)."""

from spul.audit.markdown import to_markdown, write_report
from spul.audit.report import run_audit

__all__ = ["run_audit", "to_markdown", "write_report"]
