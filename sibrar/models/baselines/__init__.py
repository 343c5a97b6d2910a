"""Baseline recommenders, each in its own module, all on the one Model interface."""
