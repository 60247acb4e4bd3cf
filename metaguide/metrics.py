"""Prometheus metrics, one registry per worker (so tests can run several in one process).

Names follow ``metaguide_<what>_<unit>``; counters end in ``_total``; no user or item ids
appear as labels (their number is unbounded).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

__all__ = ["Metrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """All of a worker's metrics, registered on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "metaguide_events_consumed_total",
            "Events read from an input topic.",
            ["topic"],
            registry=r,
        )
        self.events_failed = Counter(
            "metaguide_events_failed_total",
            "Events that could not be processed (each also goes to the dead-letter topic).",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "metaguide_dead_letters_total",
            "Events sent to the dead-letter topic, by reason code.",
            ["topic", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "metaguide_encoder_batch_size_items",
            "Texts per encoder micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_fill_seconds = Histogram(
            "metaguide_encoder_batch_fill_seconds",
            "Time the oldest text of a micro-batch waited before the batch was cut.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.encoder_seconds = Histogram(
            "metaguide_encoder_batch_seconds",
            "Model time per micro-batch.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.classifications = Counter(
            "metaguide_classifications_emitted_total",
            "Classifications written to the output topic.",
            ["platform"],
            registry=r,
        )
        self.prototype_updates = Counter(
            "metaguide_prototype_updates_total",
            "Labelled listings folded into a category prototype.",
            registry=r,
        )
        self.duplicates_skipped = Counter(
            "metaguide_duplicate_events_skipped_total",
            "Redelivered events recognised by their event id and not applied again.",
            ["topic"],
            registry=r,
        )
        self.prototypes = Gauge(
            "metaguide_category_prototypes", "Category prototypes known to this worker.", registry=r
        )
        self.items = Gauge(
            "metaguide_item_embeddings",
            "Item embeddings held by this worker's partitions.",
            registry=r,
        )
        self.labels_applied = Counter(
            "metaguide_labels_applied_total",
            "Label events applied to an item (a listing's own category not included), by source.",
            ["source"],
            registry=r,
        )
        self.label_corrections = Counter(
            "metaguide_label_corrections_total",
            "Labels that moved an item from one category to another.",
            registry=r,
        )
        self.labels_waiting = Gauge(
            "metaguide_labels_waiting",
            "Labels waiting for their item's listing (bounded by METAGUIDE_LABEL_WAIT_S).",
            registry=r,
        )
        self.review_requests = Counter(
            "metaguide_review_requests_total",
            "Listings sent to the review topic for a label, by platform.",
            ["platform"],
            registry=r,
        )
        self.reviews_answered = Counter(
            "metaguide_reviews_answered_total",
            "Label events that answer a review request.",
            registry=r,
        )
        self.novel_listings = Counter(
            "metaguide_novel_listings_total",
            "Classified listings farther from every prototype than the novelty threshold.",
            ["platform"],
            registry=r,
        )
        self.candidate_categories = Gauge(
            "metaguide_candidate_categories_open",
            "Candidate new categories (clusters of novel listings) held by this worker.",
            registry=r,
        )
        self.event_latency = Histogram(
            "metaguide_event_latency_seconds",
            "From an event's timestamp to its output being sent.",
            ["topic"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )

        self.clicks = Counter(
            "metaguide_clicks_total",
            "Valid click events read, by action.",
            ["action"],
            registry=r,
        )
        self.router_restarts = Counter(
            "metaguide_click_router_restarts_total",
            "Times the click router process exited on its own and was started again.",
            registry=r,
        )
        self.clicks_joined = Counter(
            "metaguide_clicks_joined_total",
            "Clicks joined with their item's embedding and sent to the user's owner.",
            registry=r,
        )
        self.user_updates = Counter(
            "metaguide_user_updates_total",
            "Clicks folded into a user's preference prototypes.",
            registry=r,
        )
        self.joins_waiting = Gauge(
            "metaguide_click_joins_waiting",
            "Clicks waiting for their item's listing (bounded by METAGUIDE_CLICK_WAIT_S).",
            registry=r,
        )
        self.users = Gauge(
            "metaguide_users_tracked",
            "User profiles held by this worker's partitions.",
            registry=r,
        )
        self.recommendation_requests = Counter(
            "metaguide_recommendation_requests_total",
            "Recommendation requests answered here, by channel (http, topic) and outcome.",
            ["channel", "outcome"],
            registry=r,
        )
        self.recommendation_seconds = Histogram(
            "metaguide_recommendation_seconds",
            "Time to score one recommendation request on the owning worker.",
            ["channel"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )

        self.snapshot_swaps = Counter(
            "metaguide_snapshot_swaps_total",
            "Model snapshots verified, loaded and swapped in.",
            registry=r,
        )
        self.snapshot_refused = Counter(
            "metaguide_snapshot_refused_total",
            "Announced snapshots refused (checksum, encoder, shape...); the previous one serves.",
            ["reason"],
            registry=r,
        )
        self.model_version = Gauge(
            "metaguide_model_version_info",
            "1 for the snapshot version this worker serves with.",
            ["version"],
            registry=r,
        )
        self.model_version.labels("base").set(1)
        self.snapshot_swap_seconds = Histogram(
            "metaguide_snapshot_swap_seconds",
            "Time from reading an announcement to serving its snapshot (read, verify, load).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.snapshot_created = Gauge(
            "metaguide_snapshot_created_timestamp_seconds",
            "When the snapshot in service was written (Unix time); 0 while serving base.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "metaguide_consumer_lag_messages",
            "End offset minus committed offset, per input partition assigned to this worker.",
            ["topic", "partition"],
            registry=r,
        )
        self.tables_recovered = Gauge(
            "metaguide_tables_recovered",
            "1 once this worker's tables are recovered from their changelogs, else 0.",
            registry=r,
        )
        self.ready = Gauge(
            "metaguide_ready",
            "1 when the worker is ready (partitions assigned, tables recovered, model loaded).",
            registry=r,
        )
        self.fetch_wait = Gauge(
            "metaguide_fetch_wait_seconds",
            "The consumers' fetch wait (embedded broker: longer while the encoder is saturated).",
            registry=r,
        )
        self.fetch_waits_lengthened = Counter(
            "metaguide_fetch_waits_lengthened_total",
            "Times the fetch wait went long because the encoder was saturated (embedded broker).",
            registry=r,
        )
        self.trainings = Counter(
            "metaguide_trainings_total",
            "Training rounds run in this process, by outcome (published, kept, skipped, failed).",
            ["outcome"],
            registry=r,
        )

    def serving(self, old: str, new: str) -> None:
        """Point the model-version gauge at ``new``."""
        self.model_version.remove(old)
        self.model_version.labels(new).set(1)

    def on_batch(self, size: int, fill_s: float, model_s: float) -> None:
        """Hook for :class:`metaguide.batching.MicroBatcher`."""
        self.batch_size.observe(size)
        self.batch_fill_seconds.observe(fill_s)
        self.encoder_seconds.observe(model_s)

    def dead_letter(self, topic: str, reason: str, n: int = 1) -> None:
        self.events_failed.labels(topic).inc(n)
        self.dead_letters.labels(topic, reason).inc(n)

    @staticmethod
    def value(metric: Any, **labels: str) -> float:
        """A counter's or gauge's current value for these labels (0 when never set)."""
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels == labels and not sample.name.endswith("_created"):
                    return float(sample.value)
        return 0.0

    @staticmethod
    def total(metric: Any) -> float:
        """A counter's value summed over all its label values."""
        return float(
            sum(
                sample.value
                for family in metric.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            )
        )

    def exposition(self) -> bytes:
        """The text exposition format, as a scrape sees it."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> object:
        """Serve /metrics on its own port; returns the server (``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
