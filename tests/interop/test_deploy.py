"""deploy/: the files operators copy, checked by tools that know their formats.

- nginx: `nginx -t` on the scale-out config (deploy/nginx/splitserve.conf, placeholders filled).
- Kubernetes: yamllint, then every document deserialized into the typed models of Debian's
  python3-kubernetes client (the API schema: unknown or misspelled fields and wrong types are
  errors here), plus the operational rules: gRPC probes on the serving port, a preStop hook, a
  grace period longer than the drain, CPU limit = 1 + workers x intra-op threads.
- Envoy: yamllint and the structure the README promises (ring_hash on x-session-id and
  x-forward-id, HTTP/2 upstreams, gRPC health checks). No envoy binary exists in Debian 12, so the
  config is not loaded by Envoy itself.
"""
import os
import re
import shutil
import subprocess
import tempfile

import yaml

import sslib

DEPLOY = os.path.join(sslib.REPO, "deploy")
# Fields newer than the Debian client's schema (Kubernetes 1.22), known to be valid since 1.24.
NEWER_FIELDS = {("V1Probe", "grpc")}


def _yamllint(path):
    exe = shutil.which("yamllint")
    assert exe, "yamllint is not installed (scripts/deps.sh installs it)"
    p = subprocess.run([exe, "-d", "{extends: relaxed, rules: {line-length: {max: 160}}}", path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert p.returncode == 0, p.stdout.decode()


def test_nginx_config_is_valid():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), "nginx is not installed (scripts/deps.sh installs it)"
    tmp = tempfile.mkdtemp(prefix="ss-nginx-t-")
    try:
        text = open(os.path.join(DEPLOY, "nginx", "splitserve.conf")).read()
        for k, v in {"@DIR@": tmp, "@PORT1@": "50061", "@PORT2@": "50062", "@PORT3@": "50063",
                     "@LISTEN@": "50060"}.items():
            text = text.replace(k, v)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text)
        p = subprocess.run([nginx, "-t", "-p", tmp, "-c", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        out = p.stdout.decode()
        assert p.returncode == 0 and "syntax is ok" in out, out
        assert "hash $affinity_key consistent" in text and "grpc_pass grpc://" in text
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_schema(client, data, type_name, where, errors):
    """Walk data against the client's model for type_name; collect unknown fields/wrong types."""
    import kubernetes.client as kc
    if type_name.startswith("list["):
        inner = type_name[5:-1]
        if not isinstance(data, list):
            errors.append("%s: expected a list, got %r" % (where, type(data).__name__))
            return
        for i, x in enumerate(data):
            _check_schema(client, x, inner, "%s[%d]" % (where, i), errors)
        return
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            errors.append("%s: expected a mapping" % where)
        return
    cls = getattr(kc, type_name, None)
    if cls is None:  # a primitive
        prim = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
        t = prim.get(type_name)
        if t and not isinstance(data, t) and not (type_name == "str" and isinstance(data, (int, float))):
            errors.append("%s: expected %s, got %r" % (where, type_name, data))
        return
    if not isinstance(data, dict):
        errors.append("%s: expected a %s mapping" % (where, type_name))
        return
    rev = {v: k for k, v in cls.attribute_map.items()}
    for key, val in data.items():
        if (type_name, key) in NEWER_FIELDS:
            continue
        attr = rev.get(key)
        if attr is None:
            errors.append("%s: unknown field '%s' for %s" % (where, key, type_name))
            continue
        _check_schema(client, val, cls.openapi_types[attr], where + "." + key, errors)


def test_kubernetes_manifests():
    path = os.path.join(DEPLOY, "kubernetes", "splitserve.yaml")
    _yamllint(path)
    from kubernetes.client import ApiClient
    client = ApiClient()
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {"Service", "StatefulSet"}, kinds.keys()
    errors = []
    for d in docs:
        _check_schema(client, d, "V1" + d["kind"], d["kind"], errors)
        obj = client._ApiClient__deserialize(d, "V1" + d["kind"])  # required fields, types
        assert obj.metadata.name
    assert not errors, "\n".join(errors)
    assert kinds["Service"]["spec"]["clusterIP"] == "None"  # headless
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = " ".join(c["args"])
    w = int(re.search(r"--workers[= ](\d+)", args).group(1))
    t = int(re.search(r"--intra-op-threads[= ](\d+)", args).group(1))
    drain = float(re.search(r"--drain-timeout[= ]([\d.]+)", args).group(1))
    assert float(c["resources"]["limits"]["cpu"]) == 1 + w * t, c["resources"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 50051, c[probe]
    assert "preStop" in c["lifecycle"]
    assert pod["terminationGracePeriodSeconds"] > drain


def test_envoy_config():
    path = os.path.join(DEPLOY, "envoy", "envoy.yaml")
    _yamllint(path)
    cfg = yaml.safe_load(open(path))
    cluster = cfg["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "RING_HASH"
    assert "grpc_health_check" in cluster["health_checks"][0]
    opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    headers = [h["header"]["header_name"] for h in route["hash_policy"]]
    assert headers == ["x-session-id", "x-forward-id"], headers


if __name__ == "__main__":
    sslib.main(globals())
