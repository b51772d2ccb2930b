#!/usr/bin/env python3
"""Renders every kustomization under deploy/ with `kubectl kustomize` and validates it
offline: built-in kinds against Kubernetes' own schemas (kubernetes-validate, strict),
cert-manager's kinds against deploy/schemas/cert-manager.json, anything else is an error
(never skipped in silence); then checks what the install promises (no CRDs, no
insecureSkipTLSVerify, non-root and read-only, the objects point at the Service), and
validates fixtures/docker-compose.yml against the Compose specification.

Usage: deploy/validate.py [KUBERNETES_VERSION]   (needs kubectl 1.27+, kubernetes-validate,
check-jsonschema and jsonschema; .ci/run installs the Python ones in a virtualenv)
"""

import json
import pathlib
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.32.0"
BUILTIN_GROUPS = {"", "apps", "rbac.authorization.k8s.io", "apiregistration.k8s.io",
                  "admissionregistration.k8s.io", "policy", "autoscaling", "coordination.k8s.io"}
OURS = {"cert-manager.io": ROOT / "deploy/schemas/cert-manager.json"}

failures = []
in_controls = False


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"{'refused (as it must)' if in_controls else 'FAIL'}  {where}: {message}")


def render(kustomization):
    out = subprocess.run(["kubectl", "kustomize", str(kustomization)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        fail(kustomization, f"kubectl kustomize failed: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(where, doc):
    group = doc.get("apiVersion", "").rpartition("/")[0]
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "CustomResourceDefinition":
        fail(where, f"{name}: deploy/ never ships CRDs (KEDA's come from KEDA's release)")
    elif group in BUILTIN_GROUPS:
        try:
            kubernetes_validate.validate(doc, VERSION, strict=True)
            print(f"ok    {where}: {name} (Kubernetes {VERSION}, strict)")
        except kubernetes_validate.ValidationError as e:
            fail(where, f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
    elif group in OURS:
        schema = json.loads(OURS[group].read_text())
        try:
            jsonschema.validate(doc, schema)
            print(f"ok    {where}: {name} ({OURS[group].relative_to(ROOT)})")
        except jsonschema.ValidationError as e:
            fail(where, f"{name}: {e.message}")
    else:
        fail(where, f"{name}: no schema for {doc.get('apiVersion')}")


def promises(where, docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in by_kind.get("Service", [])}

    def points_at_service(what, ref, port):
        svc = services.get((ref.get("namespace"), ref.get("name")))
        if not svc:
            fail(where, f"{what} points at {ref.get('namespace')}/{ref.get('name')}, not a Service of this install")
        elif port not in [p["port"] for p in svc["spec"]["ports"]]:
            fail(where, f"{what} uses port {port}, which the Service does not expose")

    for a in by_kind.get("APIService", []):
        if "insecureSkipTLSVerify" in a["spec"]:
            fail(where, "the APIService must not set insecureSkipTLSVerify")
        points_at_service("the APIService", a["spec"]["service"], a["spec"]["service"].get("port", 443))
    for w in by_kind.get("ValidatingWebhookConfiguration", []):
        for hook in w["webhooks"]:
            svc = hook["clientConfig"]["service"]
            points_at_service(f"webhook {hook['name']}", svc, svc.get("port", 443))
            if not svc.get("path", "").startswith("/validate-keda-sh-v1alpha1-"):
                fail(where, f"webhook {hook['name']}: not one of KEDA's paths")
    for dep in by_kind.get("Deployment", []):
        pod = dep["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            fail(where, "the pod must run as non-root")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                fail(where, f"container {c['name']}: read-only root filesystem, no privilege escalation")
            for probe in ("livenessProbe", "readinessProbe"):
                if c.get(probe, {}).get("httpGet", {}).get("port") != "health":
                    fail(where, f"container {c['name']}: {probe} must use the plain health port")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            for path in ("/certs", "/custom/ca"):
                if path not in mounts:
                    fail(where, f"container {c['name']}: {path} is not mounted")
    for rb in by_kind.get("RoleBinding", []):
        if rb["roleRef"]["name"] == "extension-apiserver-authentication-reader" and rb["metadata"].get("namespace") != "kube-system":
            fail(where, "the request-header reader's RoleBinding must be in kube-system")


def negative_controls():
    """The checks above must be able to fail: broken objects of each kind are refused."""
    global failures, in_controls
    saved, failures, in_controls = failures, [], True
    validate("control", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                         "spec": {"replica": 1, "selector": {}, "template": {}}})
    validate("control", {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                         "metadata": {"name": "x", "namespace": "keda"},
                         "spec": {"secretName": "x", "issuerRef": {"name": "x"}, "dnsName": ["x"]}})
    validate("control", {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}})
    promises("control", [{"kind": "APIService", "metadata": {"name": "x"},
                          "spec": {"insecureSkipTLSVerify": True, "service": {"namespace": "a", "name": "b"}}}])
    promises("control", [
        {"kind": "Service", "metadata": {"name": "s", "namespace": "keda"}, "spec": {"ports": [{"port": 443}]}},
        {"kind": "ValidatingWebhookConfiguration", "metadata": {"name": "w"},
         "webhooks": [{"name": "w1", "clientConfig": {"service": {"namespace": "keda", "name": "s", "port": 9443, "path": "/other"}}}]},
        {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {
            "containers": [{"name": "c", "securityContext": {}, "volumeMounts": []}]}}}},
        {"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "keda"},
         "roleRef": {"name": "extension-apiserver-authentication-reader"}},
    ])
    caught, failures, in_controls = failures, saved, False
    # Each check must have refused: 3 schemas, the APIService's two, the webhook's port and
    # path, the pod's non-root, the container's read-only and probes, the mounts, the
    # RoleBinding's namespace.
    wanted = ["replica", "Issuer", "no schema", "insecureSkipTLSVerify", "not a Service",
              "does not expose", "KEDA's paths", "non-root", "read-only", "livenessProbe",
              "/certs is not mounted", "kube-system"]
    missing = [w for w in wanted if not any(w in c for c in caught)]
    if missing:
        fail("negative controls", f"these checks never refused their broken object: {missing}; refused: {caught}")
    else:
        print(f"ok    negative controls: {len(caught)} broken objects refused")


def main():
    negative_controls()
    kustomizations = sorted(p.parent for p in (ROOT / "deploy").rglob("kustomization.yaml"))
    for k in kustomizations:
        where = str(k.relative_to(ROOT))
        docs = render(k)
        if not docs:
            fail(where, "renders nothing")
        for d in docs:
            validate(where, d)
        promises(where, docs)
    compose = ROOT / "fixtures/docker-compose.yml"
    out = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(compose)],
                         capture_output=True, text=True, check=False)
    if out.returncode == 0:
        print(f"ok    {compose.relative_to(ROOT)} (Compose specification)")
    else:
        fail(compose.relative_to(ROOT), out.stdout + out.stderr)
    print(f"{len(kustomizations)} kustomizations, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
