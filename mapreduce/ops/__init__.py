"""Operator tooling: the command line, metrics, progress, advice, reports, plots, prune and inspect."""
