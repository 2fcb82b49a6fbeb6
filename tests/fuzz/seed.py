#!/usr/bin/env python3
"""Seeds each fuzz target's corpus from the recorded ESI data.

usage: seed.py ESI_REFERENCE_DIR CORPUS_DIR

The reference data stays where it is (never copied into the repository);
this writes inputs in each target's format into CORPUS_DIR/<target>/,
named by content hash, so running it again adds nothing new.
"""
import glob
import hashlib
import json
import os
import sys

ref, out = sys.argv[1], sys.argv[2]


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def value_bytes(v):
    return v.encode() if isinstance(v, str) else json.dumps(v).encode()


# Scenario steps: lists of {key, value} as etcd held them after each step.
for step in glob.glob(os.path.join(ref, "scenarios", "*", "*", "*.json")):
    kvs = json.load(open(step))
    if not isinstance(kvs, list):
        continue
    put("records", b"\0".join(
        part for kv in kvs for part in (kv["key"].encode(), value_bytes(kv["value"]))))
    for kv in kvs:
        put("keys", kv["key"])
        v = kv["value"]
        if kv["key"].startswith("/config/") and isinstance(v, dict):
            body = v.get("body")
            if isinstance(body, str):
                try:
                    body = json.loads(body)
                except ValueError:
                    body = None
            if isinstance(body, dict):
                put("select", json.dumps(body))

# Heat templates: their Jinja source, and each mapping with a small body.
for path in glob.glob(os.path.join(ref, "heat_templates", "*.json")):
    body = json.load(open(path))["value"]["body"]
    source = body.get("template_file", "")
    put("render", source.encode() + b"\0" + b'{"jinja_fixed_ips": [{"ip_address": "10.0.0.3"}]}')
    put("hot", source)
    for mapping in (body.get("parameter_mappings") or {}).values():
        put("mapping", json.dumps([mapping, {"id": "x", "name": "n", "network_id": "net"}]))
