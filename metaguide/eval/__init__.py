"""Offline evaluation: data sets, few-shot and recommendation evaluations, baselines."""
