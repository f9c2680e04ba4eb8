"""Metrics against ground truth, reports and plots."""
