"""Validates the Prometheus Operator objects in rendered manifests against the operator's CRD schemas.

Usage: .helm-tools/venv/bin/python .ci/validate-crs.py SCHEMA_DIR MANIFEST...

kubernetes-validate knows only built-in kinds and passes a PrometheusRule or ServiceMonitor with
"Couldn't find schema"; .ci/chart-check.sh runs this on the same files instead. SCHEMA_DIR is
.helm-tools/schemas, the CRDs' openAPIV3Schema as extracted by .ci/install-tools.sh. Runs in that
venv for its pinned jsonschema, PyYAML and kubernetes-validate. Every YAML document of every file
is read; those of the monitoring.coreos.com group are validated, and one without a schema here
fails. A missing schema file fails too, whether or not its kind was rendered. Exits 1 on any error.
"""
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

GROUP = "monitoring.coreos.com"
KINDS = ("PrometheusRule", "ServiceMonitor")  # apiVersion monitoring.coreos.com/v1
LEADING_FLAGS = re.compile(r"^\^\((\?[a-zA-Z]+)\)")


def strict(schema):
    """The CRD schema as the API server applies it, plus unknown fields as errors.

    The API server prunes unknown fields of a structural schema silently; like
    `kubectl apply --validate=strict`, an unknown field is an error here: additionalProperties
    false wherever properties are listed and unknown fields are not preserved. Also maps the
    OpenAPI v3 keywords jsonschema's draft 4 lacks: nullable, and x-kubernetes-list-type set.
    """
    if not isinstance(schema, dict):
        return schema
    node = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in node:
            node[key] = {name: strict(sub) for name, sub in node[key].items()}
    for key in ("additionalProperties", "items", "not"):
        if key in node:
            node[key] = [strict(s) for s in node[key]] if isinstance(node[key], list) else strict(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            node[key] = [strict(s) for s in node[key]]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        node["uniqueItems"] = True
    if isinstance(node.get("pattern"), str):
        # Go's RE2 takes flags after the ^ ("^(?i)(abort|warn)?$"); Python only at the start.
        node["pattern"] = LEADING_FLAGS.sub(r"(\1)^", node["pattern"])
    return node


def list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type map: the API server rejects two items with the same keys."""
    if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate item with {', '.join(f'{k}={item.get(k)!r}' for k in keys)}")
            seen.add(key)


Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-map-keys": list_map_keys})


class Loader(yaml.SafeLoader):
    """Like sigs.k8s.io/yaml: a date-like scalar is a string (PyYAML would make it a date), and a
    duplicate key is an error (PyYAML keeps the last one silently; the API server refuses it)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def where(path):
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(root)"


def main(schema_dir, manifests):
    validators, errors = {}, []
    try:
        with open(os.path.join(schema_dir, "SOURCE")) as f:
            source = f.read().strip()
    except FileNotFoundError:
        sys.exit(f"validate-crs: no {schema_dir}/SOURCE: run .ci/install-tools.sh")
    for kind in KINDS:
        path = os.path.join(schema_dir, f"{GROUP}_v1_{kind}.json")
        try:
            with open(path) as f:
                schema = strict(json.load(f))
        except FileNotFoundError:
            sys.exit(f"validate-crs: no {kind} schema at {path}: run .ci/install-tools.sh")
        Validator.check_schema(schema)  # also compiles every pattern
        if "x-kubernetes-validations" in json.dumps(schema):
            print(f"validate-crs: note: the {kind} schema has CEL rules, which are not checked here")
        validators[kind] = Validator(schema)
    kube_version = kubernetes_validate.latest_version()
    counts = dict.fromkeys(KINDS, 0)
    for manifest in manifests:
        with open(manifest) as f:
            try:
                docs = list(yaml.load_all(f, Loader=Loader))
            except yaml.YAMLError as e:
                errors.append(f"{manifest}: {e}")
                continue
        for doc in docs:
            if not isinstance(doc, dict) or not str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
                continue
            kind, meta = doc.get("kind"), doc.get("metadata")
            ident = meta if isinstance(meta, dict) else {}
            name = f"{manifest}: {kind} {ident.get('namespace', '')}/{ident.get('name', '')}"
            if doc["apiVersion"] != GROUP + "/v1" or kind not in validators:
                errors.append(f"{name}: no schema for {doc['apiVersion']} {kind}")
                continue
            counts[kind] += 1
            for e in sorted(validators[kind].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
                errors.append(f"{name}: {where(e.absolute_path)}: {e.message}")
            # The CRD schema says only `metadata: {type: object}`; the API server checks ObjectMeta.
            # kubernetes-validate's strict ObjectMeta, through an otherwise empty ConfigMap.
            try:
                kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta},
                                             kube_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name}: {where(e.absolute_path)}: {e.message}")
    for error in errors:
        print(error, file=sys.stderr)
    summary = " + ".join(f"{n} {kind}" for kind, n in counts.items())
    print(f"validate-crs: {summary} object(s) validated against the {source}: "
          f"{'FAILED, ' + str(len(errors)) + ' error(s)' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
