#!/usr/bin/env python3
"""An independent Avro implementation (fastavro) for cross-checking tributary.

The product encodes and decodes Avro with the Rust crates apache-avro and
schema_registry_converter; the tests check those bytes against fastavro, a
separate implementation, through this tool. It needs `pip install fastavro`.
All subcommands read JSON lines on stdin and write JSON lines on stdout.

  debezium-schema --prefix eu --table customers --columns 'id:int32:key,name:string:optional,...'
      prints {"topic": "eu.public.customers", "key": {...}, "value": {...}}: the key schema and
      the envelope schema Debezium's PostgreSQL connector (3.x) produces through
      Confluent's AvroConverter (no stdin).
  encode --registry URL --subject S --schema FILE_OR_JSON [--debezium]
      registers the schema under S, then each input datum line -> {"hex": "<Confluent framed
      bytes>"}; a `null` line (a Kafka tombstone) -> {"hex": null}.
  decode --registry URL [--with-id]
      each {"hex": "..."} line -> the datum as JSON ({"id": N, "value": datum} with
      --with-id); null or {"hex": null} -> null; {"error": "..."} when it cannot decode.
  write-single-object --schema FILE_OR_JSON
      each datum line -> {"hex": "<Avro single-object encoding>"}.
  read-single-object --schema FILE_OR_JSON
      each {"hex": "..."} line in single-object encoding (C3 01, the schema's 8-byte
      little-endian CRC-64-AVRO fingerprint, body) -> the datum, or {"error": ...} when the
      marker or fingerprint is wrong.

Data in JSON (in and out): records are objects, unions are the bare value
(the first branch that fits the value is taken), decimals are strings with
their exact decimal text ("12.34"; numbers are accepted on input), bytes and
fixed are base64 text, other logical types as fastavro gives them (dates and
times in ISO 8601 on output), NaN/Infinity floats as strings.
"""

import argparse
import base64
import binascii
import datetime
import decimal
import io
import json
import math
import re
import sys
import urllib.error
import urllib.request
import uuid

try:
    import fastavro
    import fastavro.schema

    FASTAVRO_ERROR = None
except ImportError as e:  # reported by the subcommands that need it
    fastavro = None
    FASTAVRO_ERROR = e

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")


def need_fastavro():
    if fastavro is None:
        sys.stderr.write(f"fastavro is not importable ({FASTAVRO_ERROR}): pip install fastavro\n")
        sys.exit(3)


def fail(message):
    sys.stderr.write(f"fastavro_tool: {message}\n")
    sys.exit(2)


def input_lines():
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


def emit(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def load_schema_arg(arg):
    """A schema given as JSON text, or as the path of a file holding it."""
    text = arg
    if not arg.lstrip().startswith(("{", "[", '"')):
        with open(arg, encoding="utf-8") as f:
            text = f.read()
    return json.loads(text)


# --------------------------------------------------------------------------
# Schema registry calls
# --------------------------------------------------------------------------


class Registry:
    def __init__(self, url, basic_auth=None):
        self.url = url.rstrip("/")
        self.auth = "Basic " + base64.b64encode(basic_auth.encode()).decode() if basic_auth else None
        self.by_id = {}

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", CONTENT_TYPE)
        if data is not None:
            req.add_header("Content-Type", CONTENT_TYPE)
        if self.auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path}: HTTP {e.code} {text}") from None

    def register(self, subject, schema):
        body = {"schema": json.dumps(schema), "schemaType": "AVRO"}
        return self.call("POST", f"/subjects/{urllib.request.quote(subject, safe='')}/versions", body)["id"]

    def schema(self, schema_id):
        """The parsed writer schema for an id (cached), with its references resolved."""
        if schema_id not in self.by_id:
            answer = self.call("GET", f"/schemas/ids/{schema_id}")
            named = {}
            self.add_references(answer.get("references") or [], named)
            parsed = fastavro.parse_schema(json.loads(answer["schema"]), named_schemas=named)
            self.by_id[schema_id] = parsed
        return self.by_id[schema_id]

    def add_references(self, references, named):
        for ref in references:
            subject = urllib.request.quote(ref["subject"], safe="")
            answer = self.call("GET", f"/subjects/{subject}/versions/{ref['version']}")
            self.add_references(answer.get("references") or [], named)
            fastavro.parse_schema(json.loads(answer["schema"]), named_schemas=named)


# --------------------------------------------------------------------------
# JSON <-> fastavro's Python data
# --------------------------------------------------------------------------


def resolve(schema, named):
    """A schema with a named reference looked up, and {"type": X} wrappers of primitives unwrapped."""
    while True:
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return {"type": schema}
            if schema not in named:
                fail(f"unknown named type {schema}")
            schema = named[schema]
            continue
        if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
            schema = schema["type"]
            continue
        if isinstance(schema, dict) and isinstance(schema.get("type"), str) and schema["type"] not in PRIMITIVES + (
            "record",
            "error",
            "enum",
            "fixed",
            "array",
            "map",
        ):
            schema = schema["type"]
            continue
        return schema


def is_decimal(s):
    return isinstance(s, dict) and s.get("logicalType") == "decimal" and s.get("type") in ("bytes", "fixed")


def fits(schema, value, named):
    """Whether a JSON value is meant for this (union branch) schema."""
    s = resolve(schema, named)
    if isinstance(s, list):
        return any(fits(b, value, named) for b in s)
    t = s["type"]
    if value is None:
        return t == "null"
    if is_decimal(s):
        return isinstance(value, (str, int, float, decimal.Decimal)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if t in ("float", "double"):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in (
            "NaN",
            "Infinity",
            "-Infinity",
        )
    if t in ("string", "bytes", "fixed"):
        return isinstance(value, str)
    if t == "enum":
        return isinstance(value, str) and value in s["symbols"]
    if t in ("record", "error", "map"):
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    return False


def to_datum(schema, value, named):
    """A JSON value -> what fastavro's writer takes for this schema."""
    s = resolve(schema, named)
    if isinstance(s, list):
        if value is None:
            return None
        for branch in s:
            if fits(branch, value, named):
                return to_datum(branch, value, named)
        return value  # fastavro will say what is wrong
    if value is None:
        return None
    t = s["type"]
    if is_decimal(s):
        d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
        scale = int(s.get("scale", 0))
        q = d.quantize(decimal.Decimal(1).scaleb(-scale))
        if q != d:
            fail(f"decimal {value} has more than {scale} digits after the point")
        return q
    if t in ("bytes", "fixed") and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            fail(f"bytes are given as base64 text, not {value!r}")
    if t in ("float", "double") and isinstance(value, str):
        return float(value.replace("Infinity", "inf"))
    if t in ("record", "error") and isinstance(value, dict):
        out = dict(value)
        for f in s["fields"]:
            if f["name"] in value:
                out[f["name"]] = to_datum(f["type"], value[f["name"]], named)
        return out
    if t == "array" and isinstance(value, list):
        return [to_datum(s["items"], v, named) for v in value]
    if t == "map" and isinstance(value, dict):
        return {k: to_datum(s["values"], v, named) for k, v in value.items()}
    return value


def to_json(value):
    """fastavro's Python data -> JSON."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def named_of(schema):
    """Parses a schema with fastavro; returns (parsed, named types by full name)."""
    named = {}
    parsed = fastavro.parse_schema(schema, named_schemas=named)
    return parsed, named


# --------------------------------------------------------------------------
# Debezium
# --------------------------------------------------------------------------

SNAPSHOT_ALLOWED = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"


def connect_type(name, avro_type):
    return {"type": avro_type, "connect.version": 1, "connect.name": name}


def column_type(spec):
    """A Debezium/Connect column type (as in --columns) -> its Avro schema."""
    spec = spec.strip().lower()
    m = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", spec)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2))
        return {
            "type": "bytes",
            "scale": scale,
            "precision": precision,
            "connect.version": 1,
            "connect.parameters": {"scale": str(scale), "connect.decimal.precision": str(precision)},
            "connect.name": "org.apache.kafka.connect.data.Decimal",
            "logicalType": "decimal",
        }
    simple = {
        "int8": {"type": "int", "connect.type": "int8"},
        "int16": {"type": "int", "connect.type": "int16"},
        "int32": "int",
        "int": "int",
        "int64": "long",
        "long": "long",
        "float32": "float",
        "float": "float",
        "float64": "double",
        "double": "double",
        "boolean": "boolean",
        "bool": "boolean",
        "string": "string",
        "text": "string",
        "bytes": "bytes",
        "date": connect_type("io.debezium.time.Date", "int"),
        "timestamp": connect_type("io.debezium.time.Timestamp", "long"),
        "micro_timestamp": connect_type("io.debezium.time.MicroTimestamp", "long"),
        "nano_timestamp": connect_type("io.debezium.time.NanoTimestamp", "long"),
        "zoned_timestamp": connect_type("io.debezium.time.ZonedTimestamp", "string"),
        "time": connect_type("io.debezium.time.MicroTime", "long"),
        "micro_time": connect_type("io.debezium.time.MicroTime", "long"),
        "uuid": connect_type("io.debezium.data.Uuid", "string"),
        "json": connect_type("io.debezium.data.Json", "string"),
    }
    if spec not in simple:
        fail(f"unknown column type {spec!r}; known: decimal(P,S), {', '.join(simple)}")
    return simple[spec]


def parse_columns(text):
    """'id:int32:key,balance:decimal(10,2):optional' -> [(name, avro type, key?, optional?)]."""
    columns = []
    for item in re.split(r",(?![^()]*\))", text):
        if not item.strip():
            continue
        parts = item.strip().split(":")
        if len(parts) < 2:
            fail(f"a column is NAME:TYPE[:key][:optional], not {item!r}")
        flags = {p.strip().lower() for p in parts[2:]}
        unknown = flags - {"key", "optional"}
        if unknown:
            fail(f"unknown column flags {sorted(unknown)} in {item!r}")
        columns.append((parts[0].strip(), column_type(parts[1]), "key" in flags, "optional" in flags))
    return columns


def debezium_schemas(prefix, schema_name, table, columns):
    namespace = f"{prefix}.{schema_name}.{table}"

    def field(name, avro_type, optional):
        if optional:
            return {"name": name, "type": ["null", avro_type], "default": None}
        return {"name": name, "type": avro_type}

    key = {
        "type": "record",
        "name": "Key",
        "namespace": namespace,
        "fields": [field(n, t, False) for n, t, is_key, _ in columns if is_key],
        "connect.name": f"{namespace}.Key",
    }
    value = {
        "type": "record",
        "name": "Value",
        "fields": [field(n, t, opt and not is_key) for n, t, is_key, opt in columns],
        "connect.name": f"{namespace}.Value",
    }
    optional_long = {"type": ["null", "long"], "default": None}
    source = {
        "type": "record",
        "name": "Source",
        "namespace": "io.debezium.connector.postgresql",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {
                "name": "snapshot",
                "type": [
                    {
                        "type": "string",
                        "connect.version": 1,
                        "connect.parameters": {"allowed": SNAPSHOT_ALLOWED},
                        "connect.default": "false",
                        "connect.name": "io.debezium.data.Enum",
                    },
                    "null",
                ],
                "default": "false",
            },
            {"name": "db", "type": "string"},
            {"name": "sequence", "type": ["null", "string"], "default": None},
            dict(name="ts_us", **optional_long),
            dict(name="ts_ns", **optional_long),
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            dict(name="txId", **optional_long),
            dict(name="lsn", **optional_long),
            dict(name="xmin", **optional_long),
        ],
        "connect.name": "io.debezium.connector.postgresql.Source",
    }
    block = {
        "type": "record",
        "name": "block",
        "namespace": "event",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"},
        ],
        "connect.version": 1,
        "connect.name": "event.block",
    }
    envelope = {
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            {"name": "before", "type": ["null", value], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": source},
            {"name": "transaction", "type": ["null", block], "default": None},
            {"name": "op", "type": "string"},
            dict(name="ts_ms", **optional_long),
            dict(name="ts_us", **optional_long),
            dict(name="ts_ns", **optional_long),
        ],
        "connect.version": 2,
        "connect.name": f"{namespace}.Envelope",
    }
    return {"topic": namespace, "key": key, "value": envelope}


def record_fields(schema, named):
    s = resolve(schema, named)
    return [f["name"] for f in s.get("fields", [])]


def field_schema(record, name, named):
    for f in resolve(record, named)["fields"]:
        if f["name"] == name:
            return f["type"]
    return None


def debezium_envelope(event, schema, named):
    """{"op","before","after","ts_ms","lsn",...} -> a full envelope datum for `schema`.

    Optional event keys: txId, snapshot, db, source_ts_ms, xmin, transaction,
    source (an object whose keys override the source block's).
    """
    if "op" not in event:
        fail(f"a Debezium event needs an op: {json.dumps(event)}")
    namespace = schema.get("namespace") or schema["name"].rsplit(".", 1)[0]
    parts = namespace.split(".")
    if len(parts) < 3:
        fail(f"envelope namespace {namespace!r} is not PREFIX.SCHEMA.TABLE")
    server, db_schema, table = ".".join(parts[:-2]), parts[-2], parts[-1]
    ts_ms = int(event.get("ts_ms", 0))
    source_ts_ms = int(event.get("source_ts_ms", ts_ms))
    lsn = event.get("lsn")
    source = {
        "version": "3.0.0.Final",
        "connector": "postgresql",
        "name": server,
        "ts_ms": source_ts_ms,
        "snapshot": event.get("snapshot", "false"),
        "db": event.get("db", "postgres"),
        "sequence": json.dumps([str(lsn), str(lsn)], separators=(",", ":")) if lsn is not None else None,
        "ts_us": source_ts_ms * 1000,
        "ts_ns": source_ts_ms * 1000000,
        "schema": db_schema,
        "table": table,
        "txId": event.get("txId"),
        "lsn": lsn,
        "xmin": event.get("xmin"),
    }
    source.update(event.get("source") or {})
    source_schema = field_schema(schema, "source", named)
    envelope = {
        "before": event.get("before"),
        "after": event.get("after"),
        "source": {k: source[k] for k in record_fields(source_schema, named) if k in source},
        "transaction": event.get("transaction"),
        "op": event["op"],
        "ts_ms": ts_ms,
        "ts_us": ts_ms * 1000,
        "ts_ns": ts_ms * 1000000,
    }
    return {k: envelope[k] for k in record_fields(schema, named) if k in envelope}


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------


def write_body(parsed, datum):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


def read_body(parsed, body):
    buf = io.BytesIO(body)
    datum = fastavro.schemaless_reader(buf, parsed, None)
    if buf.tell() != len(body):
        raise ValueError(f"{len(body) - buf.tell()} bytes left after the datum")
    return datum


def cmd_debezium_schema(args):
    emit(debezium_schemas(args.prefix, args.schema, args.table, parse_columns(args.columns)))


def cmd_encode(args):
    need_fastavro()
    schema = load_schema_arg(args.schema)
    parsed, named = named_of(schema)
    registry = Registry(args.registry, args.basic_auth)
    try:
        schema_id = registry.register(args.subject, schema)
    except RuntimeError as e:
        fail(f"registering the schema under {args.subject}: {e}")
    header = b"\x00" + schema_id.to_bytes(4, "big")
    for line in input_lines():
        if line is None:
            emit({"hex": None})
            continue
        if args.debezium:
            line = debezium_envelope(line, resolve(parsed, named), named)
        try:
            body = write_body(parsed, to_datum(parsed, line, named))
        except Exception as e:
            fail(f"cannot encode {json.dumps(line)}: {e!r}")
        emit({"hex": (header + body).hex()})


def cmd_decode(args):
    need_fastavro()
    registry = Registry(args.registry, args.basic_auth)
    for line in input_lines():
        text = line.get("hex") if isinstance(line, dict) else line
        if text is None:
            emit(None)
            continue
        try:
            data = bytes.fromhex(text)
            if len(data) < 5 or data[0] != 0:
                raise ValueError(f"not Confluent framing (magic byte 0 and a 4-byte id): {text[:20]}")
            schema_id = int.from_bytes(data[1:5], "big")
            try:
                parsed = registry.schema(schema_id)
            except RuntimeError as e:
                raise ValueError(f"schema {schema_id}: {e}")
            value = to_json(read_body(parsed, data[5:]))
            emit({"id": schema_id, "value": value} if args.with_id else value)
        except Exception as e:
            emit({"error": str(e) or repr(e)})


def single_object_parts(args):
    schema = load_schema_arg(args.schema)
    parsed, named = named_of(schema)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    # fastavro gives the fingerprint's bytes in little-endian order, the
    # order single-object encoding writes them in.
    fp = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    return schema, parsed, named, fp


def cmd_write_single_object(args):
    need_fastavro()
    schema, parsed, named, fp = single_object_parts(args)
    for line in input_lines():
        body = write_body(parsed, to_datum(parsed, line, named))
        emit({"hex": (b"\xc3\x01" + fp + body).hex()})


def cmd_read_single_object(args):
    need_fastavro()
    schema, parsed, named, fp = single_object_parts(args)
    for line in input_lines():
        text = line.get("hex") if isinstance(line, dict) else line
        try:
            data = bytes.fromhex(text)
            if data[:2] != b"\xc3\x01" or len(data) < 10:
                raise ValueError(f"no single-object marker C3 01: {text[:20]}")
            if data[2:10] != fp:
                raise ValueError(f"fingerprint mismatch: message has {data[2:10].hex()}, schema has {fp.hex()}")
            emit(to_json(read_body(parsed, data[10:])))
        except Exception as e:
            emit({"error": str(e) or repr(e)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "debezium-schema",
        help="print the key and envelope schemas Debezium (PostgreSQL, 3.x) + AvroConverter produce",
        description="Prints {\"topic\", \"key\", \"value\"}: Debezium's key schema and envelope schema for a table. "
        "Column types: int8 int16 int32 int64 float32 float64 boolean string bytes decimal(P,S) date "
        "timestamp micro_timestamp nano_timestamp zoned_timestamp time uuid json.",
    )
    p.add_argument("--prefix", required=True, help="topic prefix (Debezium's topic.prefix), e.g. eu")
    p.add_argument("--schema", default="public", help="database schema (default public)")
    p.add_argument("--table", required=True, help="table name")
    p.add_argument(
        "--columns", required=True, help="NAME:TYPE[:key][:optional], comma separated, e.g. 'id:int32:key,name:string:optional'"
    )
    p.set_defaults(func=cmd_debezium_schema)

    p = sub.add_parser(
        "encode",
        help="register a schema, then encode datum lines in Confluent framing",
        description="Registers --schema under --subject, then writes {\"hex\": ...} for each datum line "
        "(0x00, the 4-byte big-endian schema id, the Avro body); a null line gives {\"hex\": null}.",
    )
    p.add_argument("--registry", required=True, help="schema registry URL")
    p.add_argument("--subject", required=True, help="subject to register the schema under, e.g. eu.public.customers-value")
    p.add_argument("--schema", required=True, help="the schema: JSON text or a file holding it")
    p.add_argument(
        "--debezium",
        action="store_true",
        help="input lines are {op, before, after, ts_ms, lsn, ...} events to expand into full envelopes",
    )
    p.add_argument("--basic-auth", metavar="USER:PASSWORD", help="registry credentials")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="decode Confluent-framed {\"hex\": ...} lines with the writer schema from the registry",
        description="Each {\"hex\": ...} line -> the datum as JSON; null -> null; {\"error\": ...} when undecodable.",
    )
    p.add_argument("--registry", required=True, help="schema registry URL")
    p.add_argument("--with-id", action="store_true", help="print {\"id\": N, \"value\": datum} instead of the datum")
    p.add_argument("--basic-auth", metavar="USER:PASSWORD", help="registry credentials")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "write-single-object",
        help="encode datum lines in Avro single-object encoding",
        description="Each datum line -> {\"hex\": C3 01 + 8-byte little-endian CRC-64-AVRO fingerprint + body}.",
    )
    p.add_argument("--schema", required=True, help="the schema: JSON text or a file holding it")
    p.set_defaults(func=cmd_write_single_object)

    p = sub.add_parser(
        "read-single-object",
        help="decode {\"hex\": ...} lines in Avro single-object encoding, checking the fingerprint",
        description="Each {\"hex\": ...} line -> the datum, or {\"error\": ...} on a wrong marker or fingerprint.",
    )
    p.add_argument("--schema", required=True, help="the schema: JSON text or a file holding it")
    p.set_defaults(func=cmd_read_single_object)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
