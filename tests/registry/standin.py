#!/usr/bin/env python3
"""A test stand-in for Confluent Schema Registry. It is NOT the real server.

The tests of tributary need a schema registry and the real one (Java, Kafka
backed) cannot be installed on the machines the tests run on. This script
serves the part of Schema Registry's REST API that Avro serializers and
deserializers use, with the real API's paths, JSON shapes, HTTP statuses and
error codes, so that real clients (schema_registry_converter in the product,
fastavro_tool.py in the tests) talk to it as they would to the real one.

Run:  python3 tests/registry/standin.py --port 0 [--basic-auth user:password]
      [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]   (HTTPS, optionally mutual TLS)
It listens on 127.0.0.1, prints exactly one line
`listening on http://127.0.0.1:PORT` to stdout once ready, logs one line per
request to stderr and exits on SIGTERM/SIGINT (and, with --watch-stdin, when
its standard input closes, so it dies with the test process that started it).
Responses have Content-Type application/vnd.schemaregistry.v1+json; request
bodies may be that, application/vnd.schemaregistry+json, application/json or
application/octet-stream.

REST calls served (as the real registry answers them):
  GET    /                                        {}
  GET    /schemas/types                           ["AVRO"]
  GET    /schemas/ids/{id}                        {"schema": "..."} (+ "schemaType" when not AVRO,
                                                  "references" when any, "maxId" with fetchMaxId=true);
                                                  query params deleted, subject, format accepted;
                                                  404 40403 "Schema 7 not found"
  GET    /schemas/ids/{id}/versions               [{"subject": "s", "version": 1}]
  GET    /schemas/ids/{id}/subjects               ["s"]
  GET    /subjects[?deleted=true]                 ["s", ...]
  GET    /subjects/{s}/versions[?deleted=true]    [1, 2]             404 40401 "Subject 's' not found."
  GET    /subjects/{s}/versions/{v|latest|-1}     {"subject","version","id","schema"}
                                                  404 40401 / 40402 "Version 3 not found.", 422 42202
  GET    /subjects/{s}/versions/{v}/schema        the schema itself (raw JSON)
  POST   /subjects/{s}/versions                   body {"schema": "<text>", "schemaType"?, "references"?}
                                                  -> {"id": N}; 422 42201 invalid schema;
                                                  409 (error_code 409) incompatible
  POST   /subjects/{s}[?deleted=true]             lookup -> {"subject","version","id","schema"};
                                                  404 40401 subject / 40403 schema not under subject
  DELETE /subjects/{s}[?permanent=true]           [1, 2] (the versions deleted)
  DELETE /subjects/{s}/versions/{v}[?permanent=true]   1
  GET    /config                                  {"compatibilityLevel": "BACKWARD"}
  PUT    /config                                  body/answer {"compatibility": "NONE"}; 422 42203
  GET    /config/{s}[?defaultToGlobal=true]       {"compatibilityLevel": ...}; 404 40408 when unset
  PUT    /config/{s}, DELETE /config/{s}
  GET    /mode                                    {"mode": "READWRITE"}
  POST   /compatibility/subjects/{s}/versions/{v|latest}[?verbose=true]   {"is_compatible": bool}
  POST   /compatibility/subjects/{s}/versions[?verbose=true]  (against all versions the level names)
Any other path: 404 {"error_code": 404, "message": "HTTP 404 Not Found"}.
With --basic-auth user:password every request of the API above without that
`Authorization: Basic` header gets 401 {"error_code": 401, "message": "Unauthorized"}.

Stand-in control endpoints (no such thing on the real registry; never
authenticated, not recorded):
  POST   /__standin/faults   body {"status": 503, "count": 3, "path_prefix": "/schemas/ids",
                                   "method"?: "GET", "error_code"?: 50003, "message"?: "...",
                                   "delay_ms"?: 0, "drop"?: false}
         the next `count` requests whose path (without query) starts with path_prefix (and
         whose method matches, if given) are answered with that status and
         {"error_code": 50003 (5xx) or the status, "message": ...}, after delay_ms; with
         "drop": true the connection is closed without any answer instead.
  GET    /__standin/faults   the faults still pending;   DELETE clears them
  GET    /__standin/requests ["GET /schemas/ids/1?deleted=true", ...]: every API request
         seen, in order, as "METHOD path-with-query";   DELETE clears the list

Simplifications (differences from the real registry):
  * Only AVRO schemas; a PROTOBUF or JSON schemaType is refused with 42201.
  * State is in memory, one process; no Kafka, no leader election, no modes
    other than READWRITE, no contexts, no metadata/rule sets, no guids.
  * Schemas are stored and returned as compact JSON of the text as registered
    (the real registry returns Avro's own canonical string, which may also
    reorder keys). Two schemas are "the same" when their parsed JSON is equal
    after sorting keys (json.dumps(sort_keys=True, compact)), with the same
    schemaType and references.
  * Soft delete is complete (deleted versions are hidden unless deleted=true,
    ids stay resolvable); permanent delete only drops the versions and ids
    no remaining version uses.
  * Avro validation covers names, namespaces, named-type references (also
    through `references`), unions, enums, fixed, arrays, maps and the
    validity of field defaults (a union's default must match its first
    branch); logical types are not validated (as Java Avro ignores invalid ones).
  * Compatibility follows Avro schema resolution (Java's SchemaCompatibility):
    reader fields missing in the writer need a default; writer fields missing
    in the reader are ignored; primitives must be equal or promotable
    (int->long/float/double, long->float/double, float->double, string<->bytes);
    every branch of a writer union must be readable; a non-union writer needs a
    matching branch in a reader union; records/enums/fixed match by unqualified
    name or reader alias; enum symbols must be kept unless the reader enum has
    a default; fixed sizes must match; arrays, maps and nested records are
    checked recursively (recursive types included). Logical types are ignored.
    Levels: NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE,
    FULL, FULL_TRANSITIVE (default BACKWARD). The 409 details mimic the real
    format but are not byte-for-byte the same.
"""

import argparse
import base64
import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_BODY_TYPES = {
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
}
LEVELS = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
]
MAX_VERSION = 2**31 - 1


class ApiError(Exception):
    """An error answer: HTTP status, Schema Registry error_code and message."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def subject_not_found(subject):
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


# --------------------------------------------------------------------------
# Avro schemas: parsing (validation) into a graph of nodes
# --------------------------------------------------------------------------

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SchemaError(Exception):
    """The text is not a valid Avro schema."""


def full_name(name, namespace):
    if not isinstance(name, str) or not name:
        raise SchemaError(f"invalid name {json.dumps(name)}")
    if namespace is not None and not isinstance(namespace, str):
        raise SchemaError(f"invalid namespace {json.dumps(namespace)}")
    full = name if "." in name or not namespace else f"{namespace}.{name}"
    for part in full.split("."):
        if not NAME_RE.fullmatch(part):
            raise SchemaError(f"invalid name {json.dumps(full)}")
    return full


def space_of(full):
    return full.rsplit(".", 1)[0] if "." in full else None


def parse_avro(value, names, namespace=None):
    """Parses a schema's JSON value into nodes (dicts with a "kind").

    `names` maps full names to the named nodes defined so far (it is filled
    in); a name refers to the same node object, so recursive types make a
    cyclic graph.
    """
    if isinstance(value, str):
        if value in PRIMITIVES:
            return {"kind": value}
        candidates = [value] if "." in value else [f"{namespace}.{value}" if namespace else value, value]
        for c in candidates:
            if c in names:
                return names[c]
        raise SchemaError(f"undefined name: {json.dumps(value)}")
    if isinstance(value, list):
        branches = [parse_avro(v, names, namespace) for v in value]
        seen = set()
        for b in branches:
            if b["kind"] == "union":
                raise SchemaError("unions may not immediately contain other unions")
            key = b.get("name") or b["kind"]
            if key in seen:
                raise SchemaError(f"duplicate in union: {key}")
            seen.add(key)
        return {"kind": "union", "types": branches}
    if not isinstance(value, dict):
        raise SchemaError(f"not a schema: {json.dumps(value)}")
    if "type" not in value:
        raise SchemaError(f"no type: {json.dumps(value)}")
    kind = value["type"]
    if isinstance(kind, (dict, list)):
        # {"type": {...}} wraps another schema (Java Avro accepts it).
        return parse_avro(kind, names, namespace)
    if kind in PRIMITIVES:
        return {"kind": kind}
    if kind in ("record", "error", "enum", "fixed"):
        ns = value.get("namespace", namespace)
        if ns == "":
            ns = None
        name = full_name(value.get("name"), ns)
        if name in names:
            raise SchemaError(f"Can't redefine: {name}")
        aliases = []
        for a in value.get("aliases", []) or []:
            aliases.append(full_name(a, space_of(name)))
        node = {"kind": "record" if kind == "error" else kind, "name": name, "aliases": aliases}
        names[name] = node
        if kind in ("record", "error"):
            fields = value.get("fields")
            if not isinstance(fields, list):
                raise SchemaError(f"record {name} has no fields array")
            node["fields"] = []
            seen = set()
            for f in fields:
                if not isinstance(f, dict) or not isinstance(f.get("name"), str) or "type" not in f:
                    raise SchemaError(f"invalid field in record {name}: {json.dumps(f)}")
                if not NAME_RE.fullmatch(f["name"]):
                    raise SchemaError(f"invalid field name {json.dumps(f['name'])} in record {name}")
                if f["name"] in seen:
                    raise SchemaError(f"duplicate field {f['name']} in record {name}")
                seen.add(f["name"])
                ftype = parse_avro(f["type"], names, space_of(name))
                node["fields"].append(
                    {
                        "name": f["name"],
                        "type": ftype,
                        "has_default": "default" in f,
                        "default": f.get("default"),
                        "aliases": list(f.get("aliases", []) or []),
                    }
                )
            # Defaults are checked once the record is complete (a default may
            # refer to the record itself through a recursive field).
            for f in node["fields"]:
                if f["has_default"] and not valid_default(f["type"], f["default"]):
                    raise SchemaError(
                        f"Invalid default for field {f['name']}: {json.dumps(f['default'])} "
                        f"not a {describe(f['type'])}"
                    )
        elif kind == "enum":
            symbols = value.get("symbols")
            if not isinstance(symbols, list) or not all(
                isinstance(s, str) and NAME_RE.fullmatch(s) for s in symbols
            ):
                raise SchemaError(f"enum {name} has invalid symbols")
            if len(set(symbols)) != len(symbols):
                raise SchemaError(f"enum {name} has duplicate symbols")
            node["symbols"] = symbols
            node["default"] = value.get("default")
            if node["default"] is not None and node["default"] not in symbols:
                raise SchemaError(f"enum {name} default {node['default']} is not a symbol")
        else:
            size = value.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise SchemaError(f"fixed {name} has no valid size")
            node["size"] = size
        return node
    if kind == "array":
        if "items" not in value:
            raise SchemaError("array without items")
        return {"kind": "array", "items": parse_avro(value["items"], names, namespace)}
    if kind == "map":
        if "values" not in value:
            raise SchemaError("map without values")
        return {"kind": "map", "values": parse_avro(value["values"], names, namespace)}
    if isinstance(kind, str):
        # {"type": "SomeName"} refers to a named type.
        return parse_avro(kind, names, namespace)
    raise SchemaError(f"invalid type {json.dumps(kind)}")


def describe(node):
    return node.get("name") or node["kind"]


def valid_default(node, value, depth=0):
    if depth > 64:
        return True
    k = node["kind"]
    if k == "null":
        return value is None
    if k == "boolean":
        return isinstance(value, bool)
    if k in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if k in ("float", "double"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if k in ("bytes", "string"):
        return isinstance(value, str)
    if k == "fixed":
        return isinstance(value, str) and len(value) == node["size"]
    if k == "enum":
        return isinstance(value, str) and value in node["symbols"]
    if k == "array":
        return isinstance(value, list) and all(valid_default(node["items"], v, depth + 1) for v in value)
    if k == "map":
        return isinstance(value, dict) and all(valid_default(node["values"], v, depth + 1) for v in value.values())
    if k == "union":
        return bool(node["types"]) and valid_default(node["types"][0], value, depth + 1)
    if k == "record":
        if not isinstance(value, dict):
            return False
        for f in node["fields"]:
            if f["name"] in value:
                if not valid_default(f["type"], value[f["name"]], depth + 1):
                    return False
            elif not f["has_default"]:
                return False
        return True
    return False


# --------------------------------------------------------------------------
# Compatibility: can a reader schema read what a writer schema wrote?
# --------------------------------------------------------------------------

PROMOTIONS = {
    ("long", "int"),
    ("float", "int"),
    ("float", "long"),
    ("double", "int"),
    ("double", "long"),
    ("double", "float"),
    ("string", "bytes"),
    ("bytes", "string"),
}


def unqualified(name):
    return name.rsplit(".", 1)[-1]


def names_match(reader, writer):
    return unqualified(reader["name"]) == unqualified(writer["name"]) or writer["name"] in reader["aliases"]


class Checker:
    """Avro schema resolution, after Java Avro's SchemaCompatibility.

    Findings are dicts {errorType, path, info}; `reader_is_new` only words
    the descriptions ("new"/"old" schema).
    """

    def __init__(self, reader_is_new):
        self.reader_is_new = reader_is_new
        self.in_progress = set()
        self.done = {}

    def compatible(self, reader, writer):
        return self.check(reader, writer, "")

    def check(self, r, w, path):
        key = (id(r), id(w))
        if key in self.in_progress:
            return []  # recursive types: assume compatible while checking
        if key in self.done:
            if self.done[key]:
                return []
            return [self.finding("TYPE_MISMATCH", path or "/", f"reader type: {describe(r)} not compatible with writer type: {describe(w)}")]
        self.in_progress.add(key)
        try:
            found = self._check(r, w, path)
        finally:
            self.in_progress.discard(key)
        self.done[key] = not found
        return found

    def _check(self, r, w, path):
        rk, wk = r["kind"], w["kind"]
        if wk == "union":
            found = []
            for i, b in enumerate(w["types"]):
                sub = self.check(r, b, path) if rk == "union" else self.check(r, b, f"{path}/{i}")
                found += sub
            return found
        if rk == "union":
            for b in r["types"]:
                if not self.check(b, w, path):
                    return []
            return [
                self.finding(
                    "MISSING_UNION_BRANCH",
                    path or "/",
                    f"reader union lacking writer type: {describe(w).upper()}",
                )
            ]
        if rk != wk:
            if (rk, wk) in PROMOTIONS:
                return []
            return [
                self.finding(
                    "TYPE_MISMATCH",
                    path or "/",
                    f"reader type: {rk.upper()} not compatible with writer type: {wk.upper()}",
                )
            ]
        if rk in PRIMITIVES:
            return []
        if rk in ("record", "enum", "fixed") and not names_match(r, w):
            return [self.finding("NAME_MISMATCH", f"{path}/name", f"expected: {w['name']}")]
        if rk == "fixed":
            if r["size"] != w["size"]:
                return [self.finding("FIXED_SIZE_MISMATCH", f"{path}/size", f"expected: {w['size']}, found: {r['size']}")]
            return []
        if rk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and r.get("default") is None:
                return [self.finding("MISSING_ENUM_SYMBOLS", f"{path}/symbols", "[" + ", ".join(missing) + "]")]
            return []
        if rk == "array":
            return self.check(r["items"], w["items"], f"{path}/items")
        if rk == "map":
            return self.check(r["values"], w["values"], f"{path}/values")
        # records
        found = []
        wfields = {f["name"]: f for f in w["fields"]}
        for i, rf in enumerate(r["fields"]):
            wf = wfields.get(rf["name"])
            if wf is None:
                for alias in rf["aliases"]:
                    if alias in wfields:
                        wf = wfields[alias]
                        break
            if wf is None:
                if not rf["has_default"]:
                    found.append(self.finding("READER_FIELD_MISSING_DEFAULT_VALUE", f"{path}/fields/{i}", rf["name"]))
            else:
                found += self.check(rf["type"], wf["type"], f"{path}/fields/{i}/type")
        return found

    def finding(self, kind, path, info):
        new, old = ("new", "old") if self.reader_is_new else ("old", "new")
        descriptions = {
            "READER_FIELD_MISSING_DEFAULT_VALUE": f"The field '{info}' at path '{path}' in the {new} schema has no default value and is missing in the {old} schema",
            "TYPE_MISMATCH": f"The type (path '{path}') of a field in the {new} schema does not match with the {old} schema",
            "MISSING_UNION_BRANCH": f"The {new} schema is missing a type inside a union field at path '{path}' in the {old} schema",
            "NAME_MISMATCH": f"The name of the schema has changed (path '{path}')",
            "FIXED_SIZE_MISMATCH": f"The size of FIXED type field at path '{path}' in the {new} schema does not match with the {old} schema",
            "MISSING_ENUM_SYMBOLS": f"The {new} schema is missing enum symbols '{info}' at path '{path}' in the {old} schema",
        }
        return {"errorType": kind, "description": descriptions[kind], "additionalInfo": info}


def incompatibilities(new, old, level):
    """What keeps `new` from being registered after `old` under `level` (a list)."""
    found = []
    if level.startswith("BACKWARD") or level.startswith("FULL"):
        found += Checker(reader_is_new=True).compatible(new, old)
    if level.startswith("FORWARD") or level.startswith("FULL"):
        found += Checker(reader_is_new=False).compatible(old, new)
    return found


def render_findings(findings):
    return ", ".join(
        "{errorType:'%s', description:'%s', additionalInfo:'%s'}" % (f["errorType"], f["description"], f["additionalInfo"])
        for f in findings
    )


# --------------------------------------------------------------------------
# The registry's state
# --------------------------------------------------------------------------


class Registry:
    def __init__(self):
        self.lock = threading.RLock()
        self.schemas = {}  # id -> {"id","key","text","type","references","parsed","gone"}
        self.by_key = {}  # canonical key -> id
        self.subjects = {}  # subject -> [{"version","id","deleted"}]
        self.global_level = "BACKWARD"
        self.subject_level = {}
        self.next_id = 1

    # -- schemas --------------------------------------------------------
    def resolve_references(self, references, names, seen=None, depth=0):
        """Fills `names` with the named types the references define (each referenced schema once)."""
        seen = set() if seen is None else seen
        if depth > 32:
            raise SchemaError("references nest too deeply")
        for ref in references:
            if not isinstance(ref, dict) or not isinstance(ref.get("subject"), str):
                raise SchemaError(f"invalid reference {json.dumps(ref)}")
            version = ref.get("version", -1)
            entry = self.version_entry(ref["subject"], version, deleted=True, missing_ok=True)
            if entry is None:
                raise SchemaError(f"reference not found: subject {ref['subject']} version {version}")
            if entry["id"] in seen:
                continue
            seen.add(entry["id"])
            schema = self.schemas[entry["id"]]
            self.resolve_references(schema["references"], names, seen, depth + 1)
            parse_avro(json.loads(schema["text"]), names)

    def parse(self, text, references):
        """Parses a schema text (with its references); returns (json value, node)."""
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as e:
            raise SchemaError(f"not JSON: {e}")
        names = {}
        self.resolve_references(references, names)
        node = parse_avro(value, names)
        return value, node

    def node_of(self, schema_id):
        s = self.schemas[schema_id]
        if s["parsed"] is None:
            s["parsed"] = self.parse(s["text"], s["references"])[1]
        return s["parsed"]

    def request_schema(self, body):
        """The schema a POST body names: (text, type, references, key, node)."""
        if not isinstance(body, dict):
            raise ApiError(422, 42201, "Invalid schema: the body must be a JSON object")
        text = body.get("schema")
        schema_type = body.get("schemaType") or "AVRO"
        references = body.get("references") or []
        if not isinstance(text, str) or not text.strip():
            raise ApiError(422, 42201, "Invalid schema: empty schema")
        if schema_type != "AVRO":
            raise ApiError(422, 42201, f"Invalid schema type {schema_type}: this stand-in only supports AVRO")
        if not isinstance(references, list):
            raise ApiError(422, 42201, "Invalid schema: references must be a list")
        try:
            value, node = self.parse(text, references)
        except SchemaError as e:
            raise ApiError(422, 42201, f"Invalid schema {text}, details: {e}")
        refs = [
            {"name": r.get("name"), "subject": r["subject"], "version": r.get("version", -1)} for r in references
        ]
        key = json.dumps([schema_type, value, refs], sort_keys=True, separators=(",", ":"))
        stored = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return stored, schema_type, refs, key, node

    # -- subjects --------------------------------------------------------
    def versions(self, subject, deleted=False):
        return [v for v in self.subjects.get(subject, []) if deleted or not v["deleted"]]

    def version_entry(self, subject, version, deleted=False, missing_ok=False):
        live = self.versions(subject, deleted)
        if not live:
            if missing_ok:
                return None
            raise subject_not_found(subject)
        if version in ("latest", -1, "-1"):
            return live[-1]
        try:
            n = int(version)
        except (TypeError, ValueError):
            n = 0
        if not 1 <= n <= MAX_VERSION:
            if missing_ok:
                return None
            raise ApiError(
                422,
                42202,
                f"The specified version '{version}' is not a valid version id. Allowed values are "
                'between [1, 2^31-1] and the string "latest"',
            )
        for v in live:
            if v["version"] == n:
                return v
        if missing_ok:
            return None
        raise ApiError(404, 40402, f"Version {n} not found.")

    def level(self, subject):
        return self.subject_level.get(subject, self.global_level)

    def check_against(self, subject, node, entries, level):
        findings = []
        for e in entries:
            found = incompatibilities(node, self.node_of(e["id"]), level)
            if found:
                findings.append((e, found))
        return findings

    def incompatibility_message(self, subject, level, failures):
        e, found = failures[0]
        details = "[%s, {oldSchemaVersion: %d}, {oldSchema: '%s'}, {compatibility: '%s'}]" % (
            render_findings(found),
            e["version"],
            self.schemas[e["id"]]["text"],
            level,
        )
        return f'Schema being registered is incompatible with an earlier schema for subject "{subject}", details: {details}'

    def register(self, subject, body):
        text, schema_type, refs, key, node = self.request_schema(body)
        live = self.versions(subject)
        for v in live:
            if self.schemas[v["id"]]["key"] == key:
                return {"id": v["id"]}
        level = self.level(subject)
        if live and level != "NONE":
            against = live if level.endswith("_TRANSITIVE") else live[-1:]
            failures = self.check_against(subject, node, against, level)
            if failures:
                raise ApiError(409, 409, self.incompatibility_message(subject, level, failures))
        schema_id = self.by_key.get(key)
        if schema_id is None or self.schemas[schema_id]["gone"]:
            schema_id = self.next_id
            self.next_id += 1
            self.schemas[schema_id] = {
                "id": schema_id,
                "key": key,
                "text": text,
                "type": schema_type,
                "references": refs,
                "parsed": node,
                "gone": False,
            }
            self.by_key[key] = schema_id
        all_versions = self.subjects.setdefault(subject, [])
        number = all_versions[-1]["version"] + 1 if all_versions else 1
        all_versions.append({"version": number, "id": schema_id, "deleted": False})
        return {"id": schema_id}

    def lookup(self, subject, body, deleted):
        text, schema_type, refs, key, node = self.request_schema(body)
        entries = self.versions(subject, deleted)
        if not entries:
            raise subject_not_found(subject)
        for v in entries:
            if self.schemas[v["id"]]["key"] == key:
                return self.version_answer(subject, v)
        raise ApiError(404, 40403, "Schema not found")

    def version_answer(self, subject, v):
        s = self.schemas[v["id"]]
        out = {"subject": subject, "version": v["version"], "id": s["id"]}
        if s["type"] != "AVRO":
            out["schemaType"] = s["type"]
        if s["references"]:
            out["references"] = s["references"]
        out["schema"] = s["text"]
        return out

    def schema_answer(self, schema_id, fetch_max_id):
        s = self.schemas.get(schema_id)
        if s is None or s["gone"]:
            raise ApiError(404, 40403, f"Schema {schema_id} not found")
        out = {}
        if s["type"] != "AVRO":
            out["schemaType"] = s["type"]
        if s["references"]:
            out["references"] = s["references"]
        out["schema"] = s["text"]
        if fetch_max_id:
            out["maxId"] = self.next_id - 1
        return out

    def delete_subject(self, subject, permanent):
        entries = self.subjects.get(subject, [])
        if not entries:
            raise subject_not_found(subject)
        if permanent:
            if any(not v["deleted"] for v in entries):
                raise ApiError(
                    404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted"
                )
            gone = [v["version"] for v in entries]
            del self.subjects[subject]
            self.subject_level.pop(subject, None)
            self.forget_unused()
            return gone
        live = [v for v in entries if not v["deleted"]]
        if not live:
            raise subject_not_found(subject)
        for v in live:
            v["deleted"] = True
        return [v["version"] for v in live]

    def delete_version(self, subject, version, permanent):
        if permanent:
            v = self.version_entry(subject, version, deleted=True)
            if not v["deleted"]:
                raise ApiError(
                    404,
                    40407,
                    f"Subject '{subject}' Version {v['version']} was not deleted first before being permanently deleted",
                )
            self.subjects[subject].remove(v)
            if not self.subjects[subject]:
                del self.subjects[subject]
            self.forget_unused()
            return v["version"]
        v = self.version_entry(subject, version)
        v["deleted"] = True
        return v["version"]

    def forget_unused(self):
        used = {v["id"] for vs in self.subjects.values() for v in vs}
        for s in self.schemas.values():
            if s["id"] not in used:
                s["gone"] = True


def parse_level(body):
    level = body.get("compatibility") if isinstance(body, dict) else None
    if not isinstance(level, str) or level.upper() not in LEVELS:
        raise ApiError(
            422,
            42203,
            "Invalid compatibility level. Valid values are none, backward, forward, full, "
            "backward_transitive, forward_transitive, and full_transitive",
        )
    return level.upper()


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


def truthy(query, name):
    return query.get(name, ["false"])[-1].lower() == "true"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "schema-registry-standin/1"
    sys_version = ""

    # The server object carries: registry, auth (bytes header or None),
    # faults (list), requests (list), control_lock.

    def log_message(self, fmt, *args):
        sys.stderr.write("standin: %s %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def handle_any(self, method):
        raw = self.read_body()
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query)
        srv = self.server
        if path.startswith("/__standin/"):
            try:
                status, payload = self.control(method, path, raw)
            except ApiError as e:
                status, payload = e.status, {"error_code": e.code, "message": e.message}
            self.answer(status, payload)
            return
        with srv.control_lock:
            srv.requests.append(f"{method} {self.path}")
        if srv.auth is not None and self.headers.get("Authorization", "") != srv.auth:
            self.answer(401, {"error_code": 401, "message": "Unauthorized"})
            return
        fault = self.take_fault(method, path)
        if fault is not None:
            if fault.get("delay_ms"):
                time.sleep(min(float(fault["delay_ms"]), 60000) / 1000)
            if fault.get("drop"):
                self.close_connection = True
                return
            status = int(fault.get("status", 503))
            code = fault.get("error_code", 50003 if status >= 500 else status)
            message = fault.get("message", f"Injected fault (stand-in): HTTP {status}")
            self.answer(status, {"error_code": code, "message": message})
            return
        try:
            body = None
            if method in ("POST", "PUT"):
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype and ctype not in ACCEPTED_BODY_TYPES:
                    raise ApiError(415, 415, "HTTP 415 Unsupported Media Type")
                try:
                    body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
                except (UnicodeDecodeError, ValueError) as e:
                    raise ApiError(400, 400, f"Unrecognized JSON body: {e}")
            with srv.registry.lock:
                status, payload = self.route(method, path, query, body)
        except ApiError as e:
            status, payload = e.status, {"error_code": e.code, "message": e.message}
        except Exception as e:  # a stand-in bug: answer like the real server's 500
            sys.stderr.write(f"standin: internal error: {e!r}\n")
            status, payload = 500, {"error_code": 50001, "message": f"Error in the backend data store: {e!r}"}
        self.answer(status, payload)

    def take_fault(self, method, path):
        """The first pending fault matching this request (its count taken), or None."""
        with self.server.control_lock:
            fault = None
            for f in self.server.faults:
                if f["count"] > 0 and path.startswith(f.get("path_prefix", "")):
                    if not f.get("method") or f["method"].upper() == method:
                        f["count"] -= 1
                        fault = dict(f)
                        break
            self.server.faults[:] = [f for f in self.server.faults if f["count"] > 0]
            return fault

    def control(self, method, path, raw):
        srv = self.server
        with srv.control_lock:
            if path == "/__standin/faults":
                if method == "POST":
                    try:
                        fault = json.loads(raw or b"{}")
                    except ValueError as e:
                        raise ApiError(400, 400, f"bad fault: {e}")
                    if not isinstance(fault, dict):
                        raise ApiError(400, 400, "a fault is a JSON object")
                    fault.setdefault("status", 503)
                    fault.setdefault("count", 1)
                    fault.setdefault("path_prefix", "/")
                    srv.faults.append(fault)
                    return 200, {"pending": srv.faults}
                if method == "GET":
                    return 200, srv.faults
                if method == "DELETE":
                    srv.faults.clear()
                    return 200, []
            if path == "/__standin/requests":
                if method == "GET":
                    return 200, list(srv.requests)
                if method == "DELETE":
                    srv.requests.clear()
                    return 200, []
        raise ApiError(404, 404, "HTTP 404 Not Found")

    def route(self, method, path, query, body):
        reg = self.server.registry
        segs = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        n = len(segs)
        deleted = truthy(query, "deleted")

        if n == 0 and method == "GET":
            return 200, {}
        if segs[:1] == ["schemas"]:
            if n == 2 and segs[1] == "types" and method == "GET":
                return 200, ["AVRO"]
            if n >= 3 and segs[1] == "ids" and method == "GET":
                try:
                    schema_id = int(segs[2])
                except ValueError:
                    raise ApiError(404, 40403, f"Schema {segs[2]} not found")
                if n == 3:
                    return 200, reg.schema_answer(schema_id, truthy(query, "fetchMaxId"))
                reg.schema_answer(schema_id, False)  # 40403 when unknown
                uses = [
                    (s, v["version"])
                    for s, vs in reg.subjects.items()
                    for v in vs
                    if v["id"] == schema_id and (deleted or not v["deleted"])
                ]
                if n == 4 and segs[3] == "versions":
                    return 200, [{"subject": s, "version": v} for s, v in uses]
                if n == 4 and segs[3] == "subjects":
                    return 200, sorted({s for s, _ in uses})
        if segs[:1] == ["subjects"]:
            if n == 1 and method == "GET":
                return 200, sorted(s for s in reg.subjects if reg.versions(s, deleted))
            if n == 2:
                subject = segs[1]
                if method == "POST":
                    return 200, reg.lookup(subject, body, deleted)
                if method == "DELETE":
                    return 200, reg.delete_subject(subject, truthy(query, "permanent"))
            if n >= 3 and segs[2] == "versions":
                subject = segs[1]
                if n == 3 and method == "GET":
                    live = reg.versions(subject, deleted)
                    if not live:
                        raise subject_not_found(subject)
                    return 200, [v["version"] for v in live]
                if n == 3 and method == "POST":
                    return 200, reg.register(subject, body)
                if n in (4, 5) and method == "GET":
                    entry = reg.version_entry(subject, segs[3], deleted)
                    if n == 4:
                        return 200, reg.version_answer(subject, entry)
                    if segs[4] == "schema":
                        return 200, json.loads(reg.schemas[entry["id"]]["text"])
                if n == 4 and method == "DELETE":
                    return 200, reg.delete_version(subject, segs[3], truthy(query, "permanent"))
        if segs[:1] == ["config"]:
            if n == 1:
                if method == "GET":
                    return 200, {"compatibilityLevel": reg.global_level}
                if method == "PUT":
                    reg.global_level = parse_level(body)
                    return 200, {"compatibility": reg.global_level}
            if n == 2:
                subject = segs[1]
                if method == "GET":
                    if subject in reg.subject_level:
                        return 200, {"compatibilityLevel": reg.subject_level[subject]}
                    if truthy(query, "defaultToGlobal"):
                        return 200, {"compatibilityLevel": reg.global_level}
                    raise ApiError(
                        404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
                    )
                if method == "PUT":
                    reg.subject_level[subject] = parse_level(body)
                    return 200, {"compatibility": reg.subject_level[subject]}
                if method == "DELETE":
                    if subject not in reg.subject_level:
                        raise subject_not_found(subject)
                    return 200, {"compatibilityLevel": reg.subject_level.pop(subject)}
        if segs == ["mode"] and method == "GET":
            return 200, {"mode": "READWRITE"}
        if segs[:2] == ["compatibility", "subjects"] and n in (4, 5) and segs[3] == "versions" and method == "POST":
            subject = segs[2]
            _, _, _, _, node = reg.request_schema(body)
            level = reg.level(subject)
            if n == 5:
                entries = [reg.version_entry(subject, segs[4])]
            else:
                live = reg.versions(subject)
                entries = live if level.endswith("_TRANSITIVE") else live[-1:]
            failures = [] if level == "NONE" else reg.check_against(subject, node, entries, level)
            out = {"is_compatible": not failures}
            if truthy(query, "verbose"):
                out["messages"] = [
                    "%s, {oldSchemaVersion: %d}, {compatibility: '%s'}" % (render_findings(found), e["version"], level)
                    for e, found in failures
                ]
            return 200, out
        raise ApiError(404, 404, "HTTP 404 Not Found")


def main():
    ap = argparse.ArgumentParser(description="Test stand-in for Confluent Schema Registry (not the real server).")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--basic-auth", metavar="USER:PASSWORD", help="require HTTP basic auth on every API call")
    ap.add_argument(
        "--watch-stdin", action="store_true", help="exit when standard input closes (the parent died or let go)"
    )
    ap.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain) ...")
    ap.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    ap.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by these CAs (mutual TLS)")
    args = ap.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    scheme = "http"
    if args.tls_cert:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.tls_client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"

    server.daemon_threads = True
    server.registry = Registry()
    server.auth = None
    if args.basic_auth:
        if ":" not in args.basic_auth:
            ap.error("--basic-auth takes USER:PASSWORD")
        server.auth = "Basic " + base64.b64encode(args.basic_auth.encode()).decode()
    server.faults = []
    server.requests = []
    server.control_lock = threading.Lock()

    def stop(*_):
        sys.stderr.write("standin: stopping\n")
        sys.stderr.flush()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.watch_stdin:

        def watch():
            while sys.stdin.buffer.read(4096):
                pass
            sys.stderr.write("standin: stdin closed, stopping\n")
            sys.stderr.flush()
            import os

            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()

    print(f"listening on {scheme}://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
