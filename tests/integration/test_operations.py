"""What Prometheus and Kubernetes see: metrics lint and a real scrape, alert rules, manifests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from metaguide.eval.myntra import listing_event
from metaguide.kafka.broker import free_port
from metaguide.waiting import wait_until_async
from tests.conftest import read_topic, wait_until
from tests.integration.test_click_path import KINDS, _items, _send, click

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"


async def _query(http: aiohttp.ClientSession, port: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        async with http.get(url) as resp:
            body = await resp.json()
    except aiohttp.ClientError:
        return None
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


async def test_a_worker_with_listings_and_clicks_passes_promtool_and_is_scraped(
    broker: Any, worker_settings: Any, start_worker: Any, tmp_path: Path
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    items = _items()
    labelled = [listing_event(x, labelled=True) for k in KINDS[:2] for x in items[k][:5]]
    unlabelled = [listing_event(x, labelled=False) for k in KINDS[:2] for x in items[k][5:7]]
    await _send(broker, settings.topic("listings"), labelled + unlabelled, "item_id")
    await read_topic(broker.bootstrap, settings.topic("classifications"), len(unlabelled))
    clicks = [click(f"u{n % 3}", e["item_id"], n) for n, e in enumerate(labelled + unlabelled)]
    await _send(broker, settings.topic("clicks"), clicks, "user_id")
    await wait_until(
        lambda: worker.metrics.value(worker.metrics.user_updates) >= len(clicks),
        60,
        "clicks applied",
    )
    server = worker.metrics.serve(settings.metrics_port, "127.0.0.1")
    prometheus = None
    try:
        import urllib.request

        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        body = urllib.request.urlopen(url).read()
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        text = body.decode()
        assert 'metaguide_clicks_total{action="click"}' in text
        assert "metaguide_snapshot_swaps_total" in text

        # a real Prometheus server scrapes the worker; its HTTP API returns what we sent
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [" + json.dumps(str(PROMETHEUS / "alerts.yml")) + "]\n"
            "scrape_configs:\n"
            "  - job_name: metaguide-worker\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{settings.metrics_port}']}}]\n"
        )
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        listings = settings.topic("listings")
        wanted = {
            f'sum(metaguide_events_consumed_total{{topic="{listings}"}})': len(labelled)
            + len(unlabelled),
            "sum(metaguide_clicks_total)": len(clicks),
            'up{job="metaguide-worker"}': 1,
            # every listing processed and committed: no lag left on any listings partition
            f'sum(metaguide_consumer_lag_messages{{topic="{listings}"}})': 0,
            "metaguide_tables_recovered": 1,
        }
        async with aiohttp.ClientSession() as http:

            async def scraped() -> bool:
                for expr, value in wanted.items():
                    if await _query(http, port, expr) != value:
                        return False
                return True

            await wait_until_async(scraped, 60, "Prometheus to scrape the sent event counts")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        server.shutdown()  # type: ignore[attr-defined]


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        run = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
    assert shutil.which("promtool")


# --------------------------------------------------------------------------- Kubernetes

K8S = ROOT / "deploy" / "k8s"
TOOLS = ROOT / ".tools"
OVERLAYS = ["cpu", "gpu"]
BUILT_IN_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1")


def _tool(name: str) -> str:
    found = shutil.which(name) or (TOOLS / "bin" / name)
    assert Path(found).exists(), f"{name} missing: run scripts/setup.sh --test"
    return str(found)


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate_strict(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "built-in.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run(
        [str(cli), "--strict", "-k", "1.30.0", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "StatefulSet",
        "CronJob",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "ScaledObject",
        "PodMonitor",
        "KafkaTopic",
    } <= kinds
    assert "Secret" not in kinds  # credentials by reference only
    built_in = [d for d in docs if d["apiVersion"] in BUILT_IN_GROUPS]
    run = validate_strict(built_in, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by_kind[("ConfigMap", "metaguide-config")]["data"]
    scaled = by_kind[("ScaledObject", "metaguide-worker")]["spec"]
    assert scaled["maxReplicaCount"] == int(config["METAGUIDE_PARTITIONS"])
    snapshots = by_kind[("KafkaTopic", "metaguide.snapshots")]["spec"]
    assert snapshots["partitions"] == 1 and snapshots["config"]["cleanup.policy"] == "compact"
    worker = by_kind[("StatefulSet", "metaguide-worker")]["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    limits = container["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
    assert config["METAGUIDE_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    docs = [d for d in render("cpu") if d["kind"] == "StatefulSet"]
    docs[0]["spec"]["replica"] = 3  # a typo of replicas
    run = validate_strict(docs, tmp_path)
    assert run.returncode != 0
    assert "replica" in run.stdout + run.stderr


KEDA_CHECK = """
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { readFileSync } from "node:fs";
const kinds = { ScaledObject, TriggerAuthentication };
const errors = [];
for (const doc of JSON.parse(readFileSync(process.argv[1], "utf8"))) {
  try { new kinds[doc.kind](doc).validate(); }
  catch (e) { errors.push(doc.kind + ": " + e.message); }
}
console.log(JSON.stringify(errors));
"""


def keda_errors(docs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    path = tmp_path / "keda.json"
    path.write_text(json.dumps(docs))
    node_dir = TOOLS / "node"
    assert (node_dir / "node_modules" / "@kubernetes-models" / "keda").is_dir(), (
        "the KEDA schema package is missing: run scripts/setup.sh --test"
    )
    run = subprocess.run(
        ["node", "--input-type=module", "-e", KEDA_CHECK, str(path)],
        cwd=node_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_validate_against_the_crd_schema(overlay: str, tmp_path: Path) -> None:
    docs = [d for d in render(overlay) if d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in docs} == {"ScaledObject", "TriggerAuthentication"}
    assert keda_errors(docs, tmp_path) == []
    broken = json.loads(json.dumps(docs))
    for d in broken:
        if d["kind"] == "ScaledObject":
            d["spec"]["maxReplicaCount"] = "four"
    assert any("maxReplicaCount" in e for e in keda_errors(broken, tmp_path))


def test_yamllint_passes_on_deploy() -> None:
    cli = Path(sys.executable).parent / "yamllint"
    run = subprocess.run(
        [str(cli), "-s", "-c", str(ROOT / ".yamllint.yaml"), str(ROOT / "deploy")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_and_alerts_use_only_metrics_the_worker_exports() -> None:
    import re

    from metaguide.metrics import Metrics

    exported = set()
    for family in Metrics().registry.collect():
        exported.add(family.name)
        if family.type == "counter":  # a labelled counter with no child yet has no sample
            exported.add(family.name + "_total")
        for sample in family.samples:
            exported.add(sample.name)
    exported.add("up")
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "metaguide-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [
        r["expr"]
        for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    ]
    used = {m for e in exprs for m in re.findall(r"\b(metaguide_[a-z_]+|up)\b", e)}
    # a histogram's series: name_bucket / _count / _sum are exported under the family name
    missing = {
        m
        for m in used
        if m not in exported and re.sub(r"_(bucket|count|sum)$", "", m) not in exported
    }
    assert not missing, missing
    assert len(dashboard["panels"]) >= 10


def test_every_topic_a_worker_uses_is_declared_for_the_cluster(worker_settings: Any) -> None:
    from workers.app import create_worker

    class _NoModel:  # topics only: nothing is embedded
        model_id = "none"
        dim = 4
        streams = 1

        def embed_many(self, texts: list[str]) -> Any:
            raise AssertionError("not called")

    settings = worker_settings(topic_prefix="metaguide.")
    worker = create_worker(settings, encoder=_NoModel())
    used = {topic.get_topic_name() for topic in worker.ctx.topics.values()}
    declared = {d["spec"]["topicName"] for d in render("cpu") if d["kind"] == "KafkaTopic"}
    assert used == declared
