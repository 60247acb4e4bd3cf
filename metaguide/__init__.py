"""metaguide: few-shot classification and recommendation from event streams.

The library is importable without Kafka or torch; only ``metaguide.encoder`` (and later
the meta-learning modules) import torch, and only ``workers/`` imports faust.
"""

__version__ = "0.1.0"
