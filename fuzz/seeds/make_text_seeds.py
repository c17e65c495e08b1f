#!/usr/bin/env python3
"""Writes the hand-made seeds of the text targets into fuzz/corpus/<target>/.

Usage: python3 fuzz/seeds/make_text_seeds.py   (the SIF seeds: make_sif_seeds.sh)
"""
import json
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent.parent
D64 = "0123456789abcdef" * 4
B3 = "blake3:" + D64
SHA = "sha256:" + D64

SEEDS = {
    "reference": [
        "tool", "lab/tool:1.2", "Lab/Tool:V1", "a/b/c/tool", "localhost/tool",
        "registry.example.org:5000/lab/tool:2", "tool.v2", f"lab/tool:1@{B3}",
        "a1.b2_c3__d4-e5:_x.Y-z", "a---b",
        # invalid
        "", "../../etc/passwd:1", "lab//tool", "tool:-x", "tool@sha256:abcd",
        "oras://host/repo:1", "host:99999/tool", "t\u043eol",
    ],
    "remote_ref": [
        "oras://127.0.0.1:5000/lab/tool:1.2", "oras://ghcr.io/org/repo",
        f"oras://registry.example.org/lab/tool@{SHA}",
        f"oras://[::1]:5000/a/b:v2@{SHA}",
        "https://example.org/Files/My%20Tool.sif?x=1#frag", "http://localhost:8080/a.sif",
        "s3://bucket-1/images/tool.sif", "s3://my.bucket/a/b/c",
        # invalid
        "ftp://x/y", "oras://host", "s3://UP/x", "https:///x", "oras://h/a b",
        "s3://bkt/../x",
    ],
    "www_authenticate": [
        'Basic realm="Registry Realm"',
        "Basic realm=Registry",
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"',
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",'
        'scope="repository:org/repo:pull,push"',
        'Bearer realm="https://r.example.org/token", error="insufficient_scope", '
        'error_description="a \\"quoted\\" word"',
        'Bearer realm="https://r.example.org/t",error="invalid_token"',
        "Negotiate YII=",
        'Bearer realm="unterminated',
        "B@d x=y",
    ],
    "units": [
        "500G", "1.5TiB", "200GB", "1048576", "10 m", "0", "2PB", "1e400", "-1G",
        "90d", "12h", "1d12h", "30m", "2w", "45", "1.5h", "99999999999999999999d",
    ],
}

REF = {"digest": B3, "added": 1700000000}
BLOB = {"size": 4096, "added": 1700000000}
SEEDS["index_record"] = [
    json.dumps(REF),
    json.dumps(dict(REF, source="oras://ghcr.io/lab/tool:1",
                    labels={"org.sregistry.etag": '"abc"', "k": "v\u00e9"})),
    json.dumps(dict(REF, source="/home/u/tool.sif", labels={})),
    json.dumps(BLOB),
    json.dumps(dict(BLOB, media_type="application/vnd.sylabs.sif.layer.v1.sif",
                    remote_digest=SHA)),
    '{"digest":"blake3:ABC","added":1}',
    '{"size":-1,"added":1}',
]


def desc(media_type, data, size, annotations=None):
    d = {"mediaType": media_type, "digest": "sha256:" + data * 64, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


SIF_CONFIG = desc("application/vnd.sylabs.sif.config.v1+json", "4", 2)
SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
TITLE = "org.opencontainers.image.title"
MANIFESTS = {
    "oras-sif": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": SIF_CONFIG,
        "layers": [desc(SIF_LAYER, "a", 2842624, {TITLE: "tool_latest.sif"})],
    },
    "oras-sif-artifact-type": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.sylabs.sif.config.v1+json",
        "config": SIF_CONFIG,
        "layers": [desc(SIF_LAYER, "b", 1024, {TITLE: "x.sif"})],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    },
    "oras-sif-proto": {
        "schemaVersion": 2,
        "config": SIF_CONFIG,
        "layers": [desc("appliciation/vnd.sylabs.sif.layer.tar", "c", 10, {TITLE: "old.sif"})],
    },
    "docker-v2": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": desc("application/vnd.docker.container.image.v1+json", "d", 1469),
        "layers": [
            desc("application/vnd.docker.image.rootfs.diff.tar.gzip", "e", 3623807),
            desc("application/vnd.docker.image.rootfs.diff.tar.gzip", "f", 120),
        ],
    },
    "oci-index": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            dict(desc("application/vnd.oci.image.manifest.v1+json", "1", 528),
                 platform={"architecture": "amd64", "os": "linux"}),
            dict(desc("application/vnd.oci.image.manifest.v1+json", "2", 528),
                 platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
        ],
    },
    "two-sif-layers": {
        "schemaVersion": 2,
        "config": SIF_CONFIG,
        "layers": [desc(SIF_LAYER, "a", 1), desc(SIF_LAYER, "b", 2)],
    },
    "schema1": {"schemaVersion": 1, "name": "lab/tool", "tag": "1", "fsLayers": []},
}
SEEDS["oci_manifest"] = [json.dumps(m, indent=1) for m in MANIFESTS.values()]
NAMES = {"oci_manifest": list(MANIFESTS)}

for target, items in SEEDS.items():
    out = FUZZ / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(items):
        name = NAMES.get(target, [None] * len(items))[i] or f"seed-{i:02d}"
        (out / name).write_text(text, encoding="utf-8")
    print(target, len(items))
