"""metaguide: few-shot classification and recommendation from event streams.

The library is importable without Kafka or torch: only ``metaguide.embedding``,
``metaguide.meta`` and ``metaguide.eval`` import torch, and only ``workers/`` imports Faust
(checked by lint-imports).
"""

__version__ = "0.1.0"
