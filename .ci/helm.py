"""Lints and renders charts/idc with the real Helm library (helm-sdkpy: Helm v4 through cgo), and
compares the renders with the golden files in tests/golden/chart/ (tests/it/chart.rs checks those
against the Rust side). Run through .ci/helm, which provides the venv; `--update` rewrites them.

helm-sdkpy has no `helm template`: its only rendering path is Install. So we install into a fake
API server on loopback that answers discovery, finds nothing, and accepts every create, with
Helm's release storage in memory (HELM_DRIVER=memory). The manifest Helm returns is what
`helm install` would apply, after the same values-schema check and template rendering.
"""

import asyncio
import difflib
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "idc"
GOLDEN = ROOT / "tests" / "golden" / "chart"
RELEASE = "idc"
NAMESPACE = "idc"

# Renders compared with golden files: name -> values file under GOLDEN (None: the chart's defaults).
RENDERS = {
    "default": None,
    "custom": "custom.values.yaml",
    "existing-secret": "existing-secret.values.yaml",
}

# Values that must fail the install, with a piece of the message the user must see.
FAILURES = [
    ({"s3": {"createSecret": True}}, "s3.createSecret is true but s3.accessKeyId or s3.secretAccessKey is empty"),
    ({"s3": {"accessKeyId": "AKIA", "secretAccessKey": "x"}}, "s3.createSecret is false"),
    ({"s3": {"existingSecret": "mine", "createSecret": True}}, "existingSecret names a Secret you made"),
    ({"worker": {"resources": {"cpu": "8 cores"}}}, "/worker/resources/cpu"),
    ({"worker": {"shm": "1Gi"}}, "additional properties 'shm' not allowed"),
    ({"serviceAccount": {"name": "Not_A_Name"}}, "/serviceAccount/name"),
    ({"kueue": {"queue": "gpu-queue"}}, "kueue.queue is set (gpu-queue) but kueue.enabled is false"),
    ({"kueue": {"enabled": True, "queue": "GPU_Queue"}}, "/kueue/queue"),
]

# Lint severities (helm.sh/helm/v4/pkg/chart/v2/lint/support).
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}

# What the fake API server knows: discovery for the kinds the chart renders. A template with a new
# kind fails the render with "no matches for kind" until the kind is added here.
KINDS = {
    "v1": [("serviceaccounts", "ServiceAccount"), ("secrets", "Secret"), ("configmaps", "ConfigMap")],
    "rbac.authorization.k8s.io/v1": [("roles", "Role"), ("rolebindings", "RoleBinding")],
}


def resource_list(group_version, kinds):
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": verbs}
            for n, k in kinds
        ],
    }


# The minor version of the oldest Kubernetes 1.x the chart supports (Chart.yaml's kubeVersion): the
# fake API server says it runs that one.
OLDEST_MINOR = "29"


class FakeApi(BaseHTTPRequestHandler):
    """An API server with no objects, which accepts every create and records it."""

    created = []
    minor = OLDEST_MINOR

    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        groups = [g for g in KINDS if "/" in g]
        # Legacy discovery: client-go asks for the aggregated form, and takes plain JSON too.
        answers = {
            "/version": {
                "major": "1",
                "minor": FakeApi.minor,
                "gitVersion": f"v1.{FakeApi.minor}.0",
                "platform": "linux/amd64",
            },
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
            "/apis": {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g.split("/")[0],
                        "versions": [{"groupVersion": g, "version": g.split("/")[1]}],
                        "preferredVersion": {"groupVersion": g, "version": g.split("/")[1]},
                    }
                    for g in groups
                ],
            },
            "/api/v1": resource_list("v1", KINDS["v1"]),
            **{f"/apis/{g}": resource_list(g, KINDS[g]) for g in groups},
        }
        if path in answers:
            return self.reply(200, answers[path])
        # Helm looks for objects it would overwrite: there are none.
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        obj = json.loads(body)
        FakeApi.created.append(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}")
        self.reply(201, obj)


def kubeconfig(port):
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
            "current-context": "fake",
        }
    )


def lint(helm, config):
    """helm lint with the default values. The library's result carries each message's severity
    and path but not its text (Go errors marshal as {}); template errors show in full in the
    renders that follow."""
    result = asyncio.run(helm.Lint(config).run(str(CHART)))
    messages = result.get("Messages") or []
    for m in messages:
        print(f"  lint {SEVERITY.get(m['Severity'], m['Severity'])}: {m['Path']} (helm-sdkpy does not pass on the text)")
    if not messages:
        print("  lint: no messages")
    bad = [m for m in messages if m["Severity"] >= 2] or result.get("Errors")
    return not bad


def render(helm, port, values):
    """The manifest and NOTES that `helm install` would apply with these values."""
    FakeApi.created.clear()
    # A fresh configuration is a fresh in-memory release store: the name is free again.
    config = helm.Configuration(namespace=NAMESPACE, kubeconfig=kubeconfig(port))
    rel = asyncio.run(
        helm.Install(config).run(RELEASE, str(CHART), values=values, wait=False, timeout=60)
    )
    manifest = rel["manifest"]
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    # Sanity: Helm applied exactly what it returned.
    want = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    if sorted(FakeApi.created) != want:
        raise SystemExit(f"the fake API server saw {sorted(FakeApi.created)}, the manifest has {want}")
    notes = rel.get("info", {}).get("notes", "")
    return manifest, notes


def golden_text(name, values_file, manifest, notes):
    head = (
        f"# Golden render of charts/idc ({'default values' if values_file is None else 'values ' + values_file}),\n"
        f"# release {RELEASE} in namespace {NAMESPACE}. Written by .ci/helm --update; checked by .ci/helm\n"
        f"# and tests/it/chart.rs.\n"
    )
    tail = "# NOTES.txt as rendered:\n" + "".join(f"#   {l}".rstrip() + "\n" for l in notes.strip("\n").splitlines())
    return head + manifest.rstrip("\n") + "\n\n" + tail


def main():
    update = "--update" in sys.argv[1:]
    import helm_sdkpy as helm

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    print(f"  helm-sdkpy {helm.__version__}")
    ok = lint(helm, helm.Configuration(namespace=NAMESPACE, kubeconfig=kubeconfig(port)))

    for name, values_file in RENDERS.items():
        values = None if values_file is None else yaml.safe_load((GOLDEN / values_file).read_text())
        try:
            manifest, notes = render(helm, port, values)
        except helm.HelmError as e:
            print(f"  render {name}: FAILED\n{e}")
            ok = False
            continue
        text = golden_text(name, values_file, manifest, notes)
        path = GOLDEN / f"{name}.yaml"
        old = path.read_text() if path.exists() else ""
        if text == old:
            print(f"  render {name}: matches {path.relative_to(ROOT)}")
        elif update:
            path.write_text(text)
            print(f"  render {name}: wrote {path.relative_to(ROOT)}")
        else:
            diff = difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), str(path.relative_to(ROOT)), "rendered"
            )
            print(f"  render {name}: differs from {path.relative_to(ROOT)} (.ci/helm --update rewrites it)")
            sys.stdout.writelines(diff)
            ok = False

    # The oldest Kubernetes the chart supports renders (above); the release before it is refused,
    # with the reason in Chart.yaml's comment on kubeVersion.
    FakeApi.minor = str(int(FakeApi.minor) - 1)
    try:
        render(helm, port, None)
        print(f"  Kubernetes 1.{FakeApi.minor}: rendered, but the chart's kubeVersion must refuse it")
        ok = False
    except helm.HelmError as e:
        if "incompatible with Kubernetes" in str(e):
            print(f"  Kubernetes 1.{FakeApi.minor}: refused as it should")
        else:
            print(f"  Kubernetes 1.{FakeApi.minor}: fails, but not on kubeVersion:\n{e}")
            ok = False
    FakeApi.minor = OLDEST_MINOR

    for values, expected in FAILURES:
        try:
            render(helm, port, values)
            print(f"  values {json.dumps(values)}: rendered, but must fail with {expected!r}")
            ok = False
        except helm.HelmError as e:
            if expected in str(e):
                print(f"  values {json.dumps(values)}: fails as it should")
            else:
                print(f"  values {json.dumps(values)}: fails, but without {expected!r}:\n{e}")
                ok = False

    server.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    if os.environ.get("HELM_DRIVER") != "memory":
        # The Go runtime reads the environment once, when the library loads: set it up first, in a
        # child, with Helm's cache/config/data in a temporary folder rather than in ~.
        with tempfile.TemporaryDirectory(prefix="idc-helm-") as home:
            env = dict(os.environ, HELM_DRIVER="memory", NO_PROXY="127.0.0.1,localhost")
            for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
                env[var] = os.path.join(home, var.lower())
            env.pop("KUBECONFIG", None)
            sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env))
    sys.exit(main())
