"""Maintenance commands (``python -m scripts.<name>``): gold-answer grading check, format compliance, metric plots."""
