"""Operator benchmark: memory with many Secrets in the cluster, and failover time.

Run with ``make bench-operator`` (or ``.venv/bin/python -m bench.operator``). Everything
runs on this machine: kmock's Kubernetes emulator in this process (127.0.0.1, a random
port), ``runlog-relay operator`` as real processes logged into it. Targets from the
production-Kubernetes issue:

* memory: an operator serving every namespace, with N Secrets of S bytes in other
  namespaces (10,000 x 20 KB in the issue), uses about what it uses with none: its
  steady and peak RSS are printed side by side, as ratios to the no-Secret run. With
  ``--before DIR`` (a checkout of older code, e.g. ``git archive main daemon | tar -x -C
  /tmp/before``) the same runs are made with that code too;
* failover: two operators with identical arguments and kopf peering elect one active
  replica; the active one is SIGKILLed; the time until the standby has reconciled a new
  store must stay under 60 s (with the default 30 s peering lifetime).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.kube import DEFAULT_RESOURCES, RUNLOGSTORE, KubeHarness, wait_for
from tests.integration.kube.processes import (
    OperatorProcess,
    operator_requests,
    settled_leader,
)

from runlog_relay.config.crd import crd_manifest

RLS = "runlog-relay.dev/v1alpha1/runlogstores"
STORE_NS = "team-a"
PEERING_CRDS = Path(__file__).resolve().parents[1] / "charts/runlog-relay/crds/kopf-peering.yaml"


def seed_secrets(kube: KubeHarness, count: int, size: int, namespaces: int) -> None:
    """``count`` Secrets of ``size`` bytes of data, spread over ``namespaces`` namespaces
    that hold no store."""
    payload = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    kube.bulk_create(
        "v1/secrets",
        (
            (
                f"other-{i % namespaces}",
                {"metadata": {"name": f"app-{i}"}, "data": {"blob": payload}},
            )
            for i in range(count)
        ),
    )


def a_store(kube: KubeHarness, name: str) -> None:
    """A store whose bucket check fails at once (nothing listens on port 9): reconciling
    it is the operator's whole job here, no S3 server needed."""
    kube.create(
        RLS,
        {
            "apiVersion": "runlog-relay.dev/v1alpha1",
            "kind": "RunLogStore",
            "metadata": {"name": name, "namespace": STORE_NS},
            "spec": {"endpoint": "http://127.0.0.1:9", "credentialsSecretRef": {"name": "creds"}},
        },
        STORE_NS,
    )


def reconciled(kube: KubeHarness, name: str) -> bool:
    return bool((kube.get(RLS, name, STORE_NS).get("status") or {}).get("conditions"))


def fresh_cluster() -> KubeHarness:
    kube = KubeHarness.start(resources=[s for s in DEFAULT_RESOURCES if s != RUNLOGSTORE])
    kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd_manifest())
    kube.ensure_namespace(STORE_NS)
    kube.create(
        "v1/secrets",
        {
            "metadata": {"name": "creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
        },
        STORE_NS,
    )
    return kube


def measure_memory(
    kube: KubeHarness, workdir: Path, label: str, settle: float, before: Path | None
) -> dict[str, Any]:
    start = len(kube.call(lambda: list(kube.emulator)))
    store = f"store-{label}"
    process = OperatorProcess(
        kube, ["--all-namespaces", "--webhook-port=0"], workdir, name=label, python_path=before
    )
    try:
        a_store(kube, store)
        wait_for(lambda: reconciled(kube, store), 120, checks=[process.check], message=store)
        time.sleep(settle)
        steady, peak = process.rss_kib(), process.peak_rss_kib()
    finally:
        process.stop()
    secret_calls: dict[str, int] = {}
    for request in operator_requests(kube, start):
        path = str(request.url.path)
        if "/secrets" in path:
            verb = "watch" if request.params.get("watch") else ("get" if request.name else "list")
            secret_calls[verb] = secret_calls.get(verb, 0) + 1
    return {"label": label, "steady": steady / 1024, "peak": peak / 1024, "secrets": secret_calls}


def memory(args: argparse.Namespace, workdir: Path) -> None:
    versions: list[tuple[str, Path | None]] = [("current", None)]
    if args.before:
        versions.insert(0, ("before", args.before.resolve() / "daemon"))
    kube = fresh_cluster()
    try:
        rows = [measure_memory(kube, workdir, f"{v}-0", args.settle, p) for v, p in versions]
        print(
            f"seeding {args.secrets} Secrets of {args.size} bytes in {args.namespaces} namespaces"
        )
        seeded = time.monotonic()
        seed_secrets(kube, args.secrets, args.size, args.namespaces)
        print(f"  seeded in {time.monotonic() - seeded:.0f}s")
        rows += [
            measure_memory(kube, workdir, f"{v}-{args.secrets}", args.settle, p)
            for v, p in versions
        ]
    finally:
        kube.stop()
    baseline = {row["label"].split("-")[0]: row for row in rows if row["label"].endswith("-0")}
    header = f"{'operator, Secrets':<22} {'steady MiB':>11} {'peak MiB':>9} {'ratio':>12}"
    print(f"\n{header}  Secret requests")
    for row in rows:
        base = baseline[row["label"].split("-")[0]]
        ratio = f"{row['steady'] / base['steady']:.2f}/{row['peak'] / base['peak']:.2f}"
        print(
            f"{row['label']:<22} {row['steady']:>11.0f} {row['peak']:>9.0f} {ratio:>12}"
            f"  {row['secrets'] or '-'}"
        )


def failover(args: argparse.Namespace, workdir: Path) -> None:
    kube = fresh_cluster()
    processes: list[OperatorProcess] = []
    try:
        for crd in yaml_documents(PEERING_CRDS):
            kube.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        kube.create(
            "kopf.dev/v1/clusterkopfpeerings",
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "relay"},
            },
        )
        same = ["--all-namespaces", "--webhook-port=0", "--peering=relay"]
        processes = [OperatorProcess(kube, same, workdir, name=f"replica-{i}") for i in (1, 2)]
        a_store(kube, "before")
        wait_for(lambda: reconciled(kube, "before"), 120, message="the first store reconciled")
        active = wait_for(
            lambda: settled_leader(kube, processes, "relay"), 120, message="one active replica"
        )
        assert active is not None  # wait_for returns once the condition holds
        time.sleep(args.settle)
        active.kill()
        killed = time.monotonic()
        a_store(kube, "after")
        wait_for(lambda: reconciled(kube, "after"), 180, interval=0.2, message="failover")
        print(f"failover after SIGKILL of the active replica: {time.monotonic() - killed:.1f}s")
    finally:
        for process in processes:
            if process.alive:
                process.stop()
        kube.stop()


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--secrets", type=int, default=10000, help="Secrets to seed (default 10000)"
    )
    parser.add_argument(
        "--size", type=int, default=20000, help="bytes of data each (default 20000)"
    )
    parser.add_argument("--namespaces", type=int, default=20, help="spread over (default 20)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before sampling")
    parser.add_argument("--before", type=Path, help="also measure the code of this checkout")
    parser.add_argument("--only", choices=["memory", "failover"], help="run one part")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        if args.only in (None, "memory"):
            memory(args, Path(tmp))
        if args.only in (None, "failover"):
            failover(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
