"""Recommendation: per-user preference prototypes and candidate scoring."""
