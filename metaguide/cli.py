"""The ``metaguide`` command: worker, demo, replay.

Heavy imports (torch, faust) happen inside the commands, so ``metaguide --help`` is instant.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from metaguide.config import Settings
from metaguide.errors import ConfigError, MetaguideError
from metaguide.progress import iterate

__all__ = ["main"]


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.run import run_worker

    run_worker(Settings.from_env())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from metaguide.demo import format_summary, run_demo
    from metaguide.eval.myntra import SAMPLE_FILE

    settings = Settings.from_env()
    data = args.data or SAMPLE_FILE
    # the demo's burst fills Faust's producer buffer on purpose; its warnings would bury the summary
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    logging.getLogger("mode.timers").setLevel(logging.ERROR)
    progress = None if args.json or args.quiet else _stderr
    summary = asyncio.run(
        run_demo(
            settings,
            data_path=data,
            shots=args.shots,
            max_test=args.max_test,
            quick=args.quick,
            progress=progress,
        )
    )
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0 if summary["classification"]["missing"] == 0 else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from metaguide.serve import serve_embedded

    if not args.embedded:
        print(
            "metaguide serve runs the embedded broker (--embedded); against your own broker,"
            " run metaguide worker with METAGUIDE_BROKER_URL set",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env()
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    asyncio.run(
        serve_embedded(
            settings,
            state_dir=args.state_dir or settings.state_dir,
            broker_port=args.broker_port,
            samples=not args.no_samples,
            say=lambda line: print(line, flush=True),
        )
    )
    return 0


TOPIC_KEYS = {
    "listings": "item_id",
    "labels": "item_id",
    "clicks": "user_id",
    "recommendation-requests": "user_id",
}


def _replay_events(args: argparse.Namespace, settings: Settings) -> int:
    """Events of one topic from a JSON-lines file, keyed as the topic expects."""
    from metaguide.kafka.client import kafka_client_options
    from metaguide.kafka.replay import produce_events

    if not args.file or not args.topic:
        raise MetaguideError("replay events needs --file (JSON lines) and --topic")
    path = Path(args.file)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise MetaguideError(f"cannot read {path}: {exc.strerror or exc}") from exc
    events = []
    for n, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise MetaguideError(f"{path}:{n}: not JSON ({exc})") from exc
        if not isinstance(event, dict) or not isinstance(event.get(TOPIC_KEYS[args.topic]), str):
            raise MetaguideError(
                f"{path}:{n}: a {args.topic} event is a JSON object with a string"
                f" {TOPIC_KEYS[args.topic]}"
            )
        events.append(event)
    bootstrap = args.bootstrap or settings.broker_url.removeprefix("kafka://")
    sent = asyncio.run(
        produce_events(
            bootstrap,
            settings.topic(args.topic),
            iterate(events, f"sending {args.topic}", "events"),
            key_field=TOPIC_KEYS[args.topic],
            **kafka_client_options(settings),
        )
    )
    print(f"sent {sent} events to {settings.topic(args.topic)}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from metaguide.eval.myntra import (
        MYNTRA_FILE,
        SAMPLE_FILE,
        few_shot_split,
        listing_event,
        load_myntra,
    )
    from metaguide.kafka.client import kafka_client_options
    from metaguide.kafka.replay import produce_events

    settings = Settings.from_env()
    if args.dataset == "online-retail":
        return _replay_retail(args, settings)
    if args.dataset == "events":
        return _replay_events(args, settings)
    if args.dataset == "myntra-sample":
        path = SAMPLE_FILE
    else:
        path = Path(args.data_dir or settings.data_dir) / MYNTRA_FILE
    listings = load_myntra(path)
    split = few_shot_split(listings, args.shots, seed=args.seed)
    events = [listing_event(x, labelled=True) for x in split.labelled]
    events += [listing_event(x, labelled=False) for x in split.test[: args.max_test]]
    bootstrap = args.bootstrap or settings.broker_url.removeprefix("kafka://")
    sent = asyncio.run(
        produce_events(
            bootstrap,
            settings.topic("listings"),
            iterate(events, "sending listings", "events"),
            key_field="item_id",
            **kafka_client_options(settings),
        )
    )
    print(f"sent {sent} listings ({len(split.labelled)} labelled) to {settings.topic('listings')}")
    return 0


def _replay_retail(args: argparse.Namespace, settings: Settings) -> int:
    """Online Retail: every product as a listing, then the purchases in invoice-date order."""
    from metaguide.eval.retail import RETAIL_FILE, click_events, listing_events, load_online_retail
    from metaguide.kafka.client import kafka_client_options
    from metaguide.kafka.replay import produce_events

    data = load_online_retail(Path(args.data_dir or settings.data_dir) / RETAIL_FILE)
    clicks = click_events(data)[: args.max_clicks]
    bootstrap = args.bootstrap or settings.broker_url.removeprefix("kafka://")
    options = kafka_client_options(settings)
    listings = asyncio.run(
        produce_events(
            bootstrap,
            settings.topic("listings"),
            iterate(listing_events(data), "sending listings", "events"),
            key_field="item_id",
            **options,
        )
    )
    sent = asyncio.run(
        produce_events(
            bootstrap,
            settings.topic("clicks"),
            iterate(clicks, "sending clicks", "events"),
            key_field="user_id",
            **options,
        )
    )
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(data.skipped.items()) if v)
    print(f"sent {listings} listings and {sent} purchase clicks; rows left out: {skipped}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    data_dir = Path(args.data_dir or settings.data_dir)
    if args.what == "recommend":
        from metaguide.eval.recommend import eval_recommend, format_recommend_table
        from metaguide.eval.retail import RETAIL_FILE, load_online_retail

        data = load_online_retail(data_dir / RETAIL_FILE)
        encoder = settings.open_encoder()

        def embed(texts: list[str]) -> Any:
            import numpy as np

            step = 128
            return np.concatenate(
                [encoder.embed_many(texts[i : i + step]) for i in range(0, len(texts), step)]
            )

        report = eval_recommend(
            data, embed, cutoff=args.cutoff, k=args.k, tune=not args.no_tune, log=_stderr
        )
        report["data"] = {"skipped_rows": dict(data.skipped), "purchases": len(data.purchases)}
        print(json.dumps(report, indent=2) if args.json else format_recommend_table(report))
        return 0
    if args.what in ("fewshot", "crossdomain"):
        return _eval_fewshot(args, settings, data_dir)
    if args.what == "feedback":
        return _eval_feedback(args, settings, data_dir)
    if args.what == "transfer":
        return _eval_transfer(args, settings, data_dir)
    if args.what == "languages":
        return _eval_languages(args, settings, data_dir)
    raise AssertionError(args.what)


def _eval_languages(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    from metaguide.embedding.models import BUNDLED
    from metaguide.eval.languages import eval_languages, format_languages_table

    models = args.models.split(",") if args.models else list(BUNDLED)
    encoders = {m.removeprefix("bundled:"): settings.open_encoder(model=m) for m in models}
    report = eval_languages(
        encoders,
        data_dir,
        Path(settings.state_dir) / "embeddings",
        episodes=args.language_episodes,
        seed=args.seed,
        progress=_stderr,
    )
    print(json.dumps(report, indent=2) if args.json else format_languages_table(report))
    return 0


def _myntra_titles(settings: Settings, data_dir: Path, encoder: Any = None) -> Any:
    """Myntra's distinct titles and their embeddings (cached under the state folder)."""
    from metaguide.eval import fewshot
    from metaguide.eval.myntra import MYNTRA_FILE

    encoder = encoder or settings.open_encoder()
    return fewshot.load_title_set(
        data_dir / MYNTRA_FILE,
        encoder.embed_many,
        encoder.model_id,
        Path(settings.state_dir) / "embeddings",
        progress=_stderr,
    )


def _eval_feedback(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    from metaguide.eval.feedback import eval_feedback, format_feedback_table
    from metaguide.meta.maml import torch_threads

    titles = _myntra_titles(settings, data_dir)
    with torch_threads(1):  # episodes: small matrices
        report = eval_feedback(
            titles, seeds=args.seeds, temperature=settings.temperature, log=_stderr
        )
    print(json.dumps(report, indent=2) if args.json else format_feedback_table(report))
    return 0


def _eval_transfer(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    from metaguide.eval import fewshot
    from metaguide.eval.myntra import FLIPKART_FILE, load_flipkart
    from metaguide.eval.transfer import eval_transfer, format_transfer_table
    from metaguide.meta.maml import torch_threads

    encoder = settings.open_encoder()
    myntra = _myntra_titles(settings, data_dir, encoder)
    flipkart = fewshot.title_set(
        fewshot.unique_titles(load_flipkart(data_dir / FLIPKART_FILE)),
        encoder.embed_many,
        encoder.model_id,
        Path(settings.state_dir) / "embeddings",
        progress=_stderr,
    )
    with torch_threads(1):  # episodes: small matrices
        report = eval_transfer(
            myntra,
            flipkart,
            episodes=args.transfer_episodes,
            seed=args.seed,
            log=_stderr,
        )
    print(json.dumps(report, indent=2) if args.json else format_transfer_table(report))
    return 0


def _eval_fewshot(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    from metaguide.meta.maml import MetaConfig, torch_threads

    titles = _myntra_titles(settings, data_dir)
    config = MetaConfig(seed=args.seed, second_order=args.second_order)
    with torch_threads(1):  # episodes: small matrices
        return _print_fewshot(args, titles, config)


def _print_fewshot(args: argparse.Namespace, titles: Any, config: Any) -> int:
    from metaguide.eval import fewshot

    if args.what == "fewshot":
        report = fewshot.eval_fewshot(
            titles, config, episodes=args.episodes, seed=args.seed, log=_stderr
        )
        print(json.dumps(report, indent=2) if args.json else fewshot.format_fewshot_table(report))
    else:
        report = fewshot.eval_crossdomain(
            titles,
            config,
            target=args.target,
            episodes=args.episodes // 6,
            seed=args.seed,
            log=_stderr,
        )
        print(
            json.dumps(report, indent=2) if args.json else fewshot.format_crossdomain_table(report)
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from metaguide.meta.heads import HeadConfig
    from metaguide.meta.trainer import Labelled, format_gate, train_once

    settings = Settings.from_env()
    encoder_id = settings.model
    data = None
    if args.dataset == "myntra":
        from metaguide.eval import fewshot
        from metaguide.eval.myntra import MYNTRA_FILE

        encoder = settings.open_encoder()
        encoder_id = encoder.model_id
        titles = fewshot.load_title_set(
            Path(args.data_dir or settings.data_dir) / MYNTRA_FILE,
            encoder.embed_many,
            encoder.model_id,
            Path(settings.state_dir) / "embeddings",
            progress=_stderr,
        )
        data = Labelled.from_rows(
            [
                (x.item_id, "myntra", x.category, v)
                for x, v in zip(titles.listings, titles.x, strict=True)
            ],
            {"source": str(MYNTRA_FILE)},
        )
    config = HeadConfig(seed=args.seed, episodes=settings.train_episodes)
    result = asyncio.run(
        train_once(
            settings,
            encoder_id=encoder_id,
            data=data,
            config=config,
            publish=not args.no_publish,
            progress=_stderr,
        )
    )
    if "platforms" in result.evaluation:
        print(format_gate(result.evaluation["platforms"]), file=sys.stderr)
    print(
        json.dumps(
            {
                "published": result.published,
                "reason": result.reason,
                "evaluation": result.evaluation,
                "announcement": result.announcement,
            },
            indent=2,
        )
    )
    return 0


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from metaguide.meta.snapshots import MODEL_NAME
    from metaguide.meta.trainer import latest_announcement, rollback, snapshot_store

    settings = Settings.from_env()
    if args.action == "rollback":
        value = asyncio.run(rollback(settings, to=args.to))
        print(f"announced version {value['version']} ({value['uri']})")
        return 0
    serving = asyncio.run(latest_announcement(settings))
    print(f"serving: {serving['version'] if serving else 'base (no snapshot)'}")
    print("in the store:", ", ".join(map(str, snapshot_store(settings).versions(MODEL_NAME))))
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    """Build (or rebuild) a bundled model's folder from the installed packages, offline, and
    check it against the package's own runtime; print where it is."""
    from metaguide.embedding.e5 import build_e5, e5_folder, verify_e5
    from metaguide.embedding.encoder import TransformerEncoder
    from metaguide.embedding.models import E5_MODEL, default_models_dir

    settings = Settings.from_env()
    if args.name != E5_MODEL:
        raise ConfigError(f"only {E5_MODEL} is built; the other bundled models need nothing")
    folder = e5_folder(Path(settings.models_dir or default_models_dir()))
    if args.rebuild:
        build_e5(folder)
    encoder = TransformerEncoder(E5_MODEL, path=str(folder), device="cpu")
    cosine = verify_e5(encoder)
    print(f"{E5_MODEL}: {folder} (lowest cosine to the package's runtime {cosine:.5f})")
    print(f"use it: METAGUIDE_MODEL={E5_MODEL}")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaguide", description=__doc__)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (they show on a terminal only)"
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="overrides METAGUIDE_LOG_LEVEL (default: warning)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "worker", help="run a worker against the configured broker (METAGUIDE_* env)"
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("demo", help="embedded broker + worker + replay of real Myntra listings")
    p.add_argument("--data", help="a Myntra styles.csv.gz (default: the carried sample)")
    p.add_argument("--shots", type=int, default=5, help="labelled titles per article type")
    p.add_argument("--max-test", type=int, default=None, help="cap on unlabelled listings")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quick", action="store_true", help="classification and feedback only")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "serve", help="--embedded: the embedded broker and one worker, until Ctrl-C or SIGTERM"
    )
    p.add_argument("--embedded", action="store_true", help="start the embedded broker too")
    p.add_argument(
        "--state-dir", help="where the state is saved and loaded (default: METAGUIDE_STATE_DIR)"
    )
    p.add_argument("--broker-port", type=int, default=9092, help="the broker's port (9092)")
    p.add_argument("--no-samples", action="store_true", help="start empty: no Myntra sample")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("replay", help="produce a data set's or a file's events to a broker")
    p.add_argument("dataset", choices=["myntra", "myntra-sample", "online-retail", "events"])
    p.add_argument("--file", help="events: a JSON-lines file, one event per line")
    p.add_argument("--topic", choices=sorted(TOPIC_KEYS), help="events: the topic to send to")
    p.add_argument("--bootstrap", help="host:port (default: METAGUIDE_BROKER_URL)")
    p.add_argument("--data-dir", help="folder of the data sets (default: METAGUIDE_DATA_DIR)")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-clicks", type=int, default=None, help="online-retail: first N")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("eval", help="offline evaluations on the real data sets")
    p.add_argument(
        "what",
        choices=["recommend", "fewshot", "crossdomain", "feedback", "transfer", "languages"],
    )
    p.add_argument("--data-dir", help="folder of the data sets (default: METAGUIDE_DATA_DIR)")
    p.add_argument("--cutoff", default="2011-11-01", help="temporal split date (recommend)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--no-tune", action="store_true", help="skip the validation-month tuning")
    p.add_argument("--episodes", type=int, default=600, help="fewshot: test episodes per kind")
    p.add_argument("--seed", type=int, default=0, help="fewshot: split and sampling seed")
    p.add_argument("--second-order", action="store_true", help="fewshot: second-order MAML")
    p.add_argument(
        "--transfer-episodes", type=int, default=30, help="transfer: episodes per target and shots"
    )
    p.add_argument("--seeds", type=int, default=5, help="feedback: seeds (splits) to average")
    p.add_argument(
        "--models", help="languages: encoders to compare, comma-separated (default: the bundled)"
    )
    p.add_argument(
        "--language-episodes", type=int, default=100, help="languages: episodes per measure"
    )
    p.add_argument(
        "--target", default="Women", help="crossdomain: the held-out platform (a Myntra gender)"
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="meta-train the adapter, gate it, publish a snapshot")
    p.add_argument(
        "--dataset",
        choices=["topics", "myntra"],
        default="topics",
        help="labelled listings from the category-updates topic (default) or a data set",
    )
    p.add_argument("--data-dir", help="folder of the data sets (default: METAGUIDE_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-publish", action="store_true", help="train and gate only")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("model", help="build a bundled multilingual model's folder (offline)")
    p.add_argument("action", choices=["prepare"])
    p.add_argument("name", nargs="?", default="bundled:multilingual-e5-small")
    p.add_argument("--rebuild", action="store_true", help="build it again even if it is there")
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("snapshot", help="list model snapshots, or roll back to an earlier one")
    p.add_argument("action", choices=["list", "rollback"])
    p.add_argument("--to", type=int, help="rollback: this version (default: the previous one)")
    p.set_defaults(func=_cmd_snapshot)
    return parser


def explain(exc: BaseException) -> str | None:
    """One line a person can act on for an error of theirs (a setting, a file, a broker, a
    port); None for anything else, which is a bug and keeps its traceback."""
    if isinstance(exc, MetaguideError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return (
            f"no such file: {exc.filename}. Data sets are read from METAGUIDE_DATA_DIR (or"
            " --data-dir): point it at the folder that holds them"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"a port is in use ({exc.strerror}): stop what holds it, or choose other ports"
            " (METAGUIDE_WEB_PORT, METAGUIDE_METRICS_PORT)"
        )
    if type(exc).__module__.startswith("aiokafka") and "Connection" in type(exc).__name__:
        return (
            f"cannot reach the Kafka broker ({exc}): is it running? Check METAGUIDE_BROKER_URL"
            " (or --bootstrap)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from metaguide import progress

        progress.quiet()
    try:
        if args.log_level:
            os.environ["METAGUIDE_LOG_LEVEL"] = args.log_level  # the worker reads its settings
        level = Settings.from_env().log_level
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return int(args.func(args))
    except Exception as exc:
        message = explain(exc)
        if message is None or logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"metaguide: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
