#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/<name>: small real examples of what
each target parses (wire bytes of v1 connections, protocol messages, legacy documents, HTTP
query strings and command bodies). Run from anywhere; rewrites only the files it names."""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def j(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def preamble(lo=1, hi=1):
    return b"SFCP" + struct.pack(">HH", lo, hi)


REGISTRATION = {
    "group": "billing", "instance_id": "web-1", "service": "billing-api", "hostname": "web-1.local",
    "pid": 4242, "endpoints": [{"name": "http", "host": "10.0.0.5", "port": 8080, "protocol": "http"}],
    "tags": ["eu", "canary"], "metadata": {"commit": "3f72eb8"}, "version": "1.4.2",
    "api": {"kind": "openapi", "url": "http://10.0.0.5:8080/openapi.json"},
}
RECORD = dict(REGISTRATION, id="billing/web-1", status="online", offline_reason=None, health="passing",
              health_note=None, interval_ms=1000, connected_since=1700000000000, last_report_at=1700000001000)
METRICS = {
    "host": {"hostname": "web-1.local", "cpu_count": 2, "load_average": [0.1, 0.2, 0.3], "memory_available_bytes": 1000},
    "process": {"pid": 4242, "resident_bytes": 30000000, "cpu_percent": 1.5},
    "runtime": {"heap_used_bytes": 1200000.0}, "custom": {"queue_depth": 3.0},
}
MESSAGES = {
    "hello-service": {"type": "hello", "id": 1, "role": "service", "codecs": ["json"], "interval_ms": 1000,
                      "registration": REGISTRATION, "client": "sfc-rust/0.1.0"},
    "hello-observer": {"type": "hello", "id": 1, "role": "observer", "client": "sfc-cli/0.1.0"},
    "welcome": {"type": "welcome", "id": 1, "protocol": 1, "codec": "json", "session": 7, "registry": "sfc/0.1.0",
                "interval_ms": 1000, "missed_reports": 3, "liveness_ms": 3000, "max_frame": 1048576,
                "server_time": 1700000000000, "instance": "billing/web-1"},
    "report": {"type": "report", "seq": 3, "sent_at": 1700000000500, "health": "warning",
               "health_note": "disk 91% full", "metrics": METRICS},
    "leave": {"type": "leave", "reason": "deploy"},
    "ping": {"type": "ping", "id": 9},
    "pong": {"type": "pong", "id": 9, "server_time": 1700000000000},
    "query": {"type": "query", "id": 2, "filter": {"group": "billing", "status": "online", "tag": "eu"}},
    "result": {"type": "result", "id": 2, "instances": [RECORD], "cursor": 12},
    "watch": {"type": "watch", "id": 3, "filter": {"service": "billing-api", "health": "critical"}, "reports": True, "after": 10},
    "unwatch": {"type": "unwatch", "id": 4, "watch": 3},
    "event": {"type": "event", "watch": 3, "event": {"seq": 13, "at": 1700000002000, "kind": "offline",
              "id": "billing/web-1", "group": "billing", "service": "billing-api",
              "instance": dict(RECORD, status="offline", offline_reason="missed-reports"),
              "detail": {"session": 7}}},
    "command": {"type": "command", "command_id": 5, "name": "shutdown", "reason": "drain", "payload": {"grace": "5s"},
                "issued_by": "token:admin"},
    "command-result": {"type": "command-result", "command_id": 5, "ok": True, "result": {"drained": 12}},
    "error": {"type": "error", "id": 2, "code": "invalid-field", "message": "group must not be empty", "fatal": False},
}

LEGACY = {"action": "HEALTH", "payload": {"serviceName": "billing", "groupingKey": "billing-eu",
          "time": "2018-02-14T00:28:07.123Z", "metrics": {"rss": 30000000, "heapTotal": 1, "heapUsed": 2,
          "external": 3, "hostname": "web-1", "numCpus": 2, "freemem": 1000, "loadadv": [0.1, 0.2, 0.3],
          "user": "node", "uptime": 99.5, "updateIntervalSeconds": 2}}}

# message_decode: one payload per message type, and the classic bad ones.
for name, msg in MESSAGES.items():
    put("message_decode", name + ".json", j(msg))
put("message_decode", "bad-json", b"{not json")
put("message_decode", "unknown-type.json", b'{"type":"teleport","id":1}')
put("message_decode", "no-type.json", b'{"id":1}')
put("message_decode", "sent-at-huge.json", j({"type": "report", "seq": 1, "sent_at": 18446744073709551615}))

# message_structured: input for `arbitrary`; any bytes are valid, these just start it off.
for name in ("hello-service", "report", "watch", "event"):
    put("message_structured", name, j(MESSAGES[name]))
put("message_structured", "bytes-0", bytes(range(64)))

# frame_decoder: the byte stream after the preamble.
put("frame_decoder", "hello-then-report", frame(j(MESSAGES["hello-service"])) + frame(j(MESSAGES["report"])))
put("frame_decoder", "ping-pong-leave", b"".join(frame(j(MESSAGES[n])) for n in ("ping", "query", "leave")))
put("frame_decoder", "empty-frame", frame(b"") + frame(j(MESSAGES["ping"])))
put("frame_decoder", "over-limit", struct.pack(">I", 5000) + b"{" * 16)
put("frame_decoder", "truncated", frame(j(MESSAGES["report"]))[:40])
put("frame_decoder", "bad-json-frame", frame(b"{\"type\":") + frame(b"\xff\xfe"))

# handshake: a whole inbound connection.
put("handshake", "service", preamble() + frame(j(MESSAGES["hello-service"])))
put("handshake", "observer", preamble(1, 3) + frame(j(MESSAGES["hello-observer"])))
put("handshake", "unsupported-version", preamble(2, 9) + frame(j(MESSAGES["hello-observer"])))
put("handshake", "empty-range", preamble(3, 1))
put("handshake", "http-on-protocol-port", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
put("handshake", "first-frame-ping", preamble() + frame(j(MESSAGES["ping"])))
put("handshake", "no-codec", preamble() + frame(j(dict(MESSAGES["hello-observer"], codecs=["cbor"]))))
put("handshake", "interval-too-short", preamble() + frame(j(dict(MESSAGES["hello-service"], interval_ms=5))))
put("handshake", "observer-with-registration", preamble() + frame(j(dict(MESSAGES["hello-observer"], registration=REGISTRATION))))
put("handshake", "legacy", j(LEGACY))

# legacy_parse: documents as the original Node module sent them.
put("legacy_parse", "health.json", j(LEGACY))
put("legacy_parse", "join.json", j(dict(LEGACY, action="JOIN")))
put("legacy_parse", "leave.json", j(dict(LEGACY, action="LEAVE")))
put("legacy_parse", "minimal.json", b'{"action":"HEALTH","payload":{"serviceName":"a","groupingKey":"g","metrics":{"hostname":"h"}}}')
put("legacy_parse", "pretty.json", b"\n  " + json.dumps(LEGACY, indent=2).encode() + b"\n")
put("legacy_parse", "bad-action.json", b'{"action":"DANCE","payload":{"serviceName":"a","groupingKey":"g","metrics":{"hostname":"h"}}}')
put("legacy_parse", "zero-interval.json", b'{"action":"HEALTH","payload":{"serviceName":"a","groupingKey":"g","metrics":{"hostname":"h","updateIntervalSeconds":0}}}')
put("legacy_parse", "structured-0", b"\x00" + bytes(range(1, 48)))

# http_query: first byte picks the route (i, f, s, e, w), the rest is the query string.
put("http_query", "instances", b"igroup=billing&status=online&health=passing&tag=eu")
put("http_query", "fleet", b"fservice=billing-api")
put("http_query", "samples", b"sgroup=&status=")
put("http_query", "events", b"eafter=10&limit=100")
put("http_query", "events-limit-0", b"elimit=0")
put("http_query", "watch", b"wgroup=billing&reports=true&after=3")
put("http_query", "bad-status", b"istatus=sleeping")
put("http_query", "encoded", b"igroup=bill%C3%A9ng&tag=a%26b")

# http_command: `group/instance_id` and a newline, then the body; or just a body.
put("http_command", "shutdown", j({"command": "shutdown", "reason": "deploy"}))
put("http_command", "payload-timeout", b"fuzz/known\n" + j({"command": "restart", "payload": {"a": 1}, "timeout": "5s"}))
put("http_command", "zero-timeout", j({"command": "x", "timeout": "0s"}))
put("http_command", "unknown-field", j({"command": "x", "extra": 1}))
put("http_command", "empty-name", b"billing/web-1\n" + j({"command": ""}))
put("http_command", "bad-duration", j({"command": "x", "timeout": "soon"}))


# dict/sfc.dict: the libFuzzer dictionary for every target, from the field names and words in
# src/lib.rs, the legacy keys, and JSON and query-string tokens. Non-ASCII bytes as \xNN.
def dictionary():
    import re
    src = open(os.path.join(ROOT, "..", "src", "lib.rs"), encoding="utf-8").read()

    def arr(name):
        body = re.search(r"pub const %s: &\[&str\] = &\[(.*?)\];" % name, src, re.S).group(1)
        rust_escape = re.compile(r"\\u\{([0-9a-fA-F]+)\}")
        return [rust_escape.sub(lambda m: chr(int(m.group(1), 16)), s).encode("latin-1", "backslashreplace").decode("unicode_escape")
                if "\\" in s else s for s in re.findall(r'"((?:[^"\\]|\\.)*)"', body)]

    lines = ["# libFuzzer dictionary (written by scripts/make-seeds.py): the protocol's field names,",
             "# its enum and message-type words, the legacy keys, JSON and query-string tokens."]
    seen = set()

    def add(tok):
        esc = "".join(c if 0x20 <= b < 0x7f and c not in '"\\' else "\\x%02x" % b
                      for b in tok.encode() for c in [chr(b)])
        if esc not in seen:
            seen.add(esc)
            lines.append('"%s"' % esc)

    for f in arr("FIELD_NAMES"):
        add('"%s":' % f)
    for w in arr("WORDS"):
        add(json.dumps(w))
    for k in ["action", "payload", "serviceName", "groupingKey", "time", "metrics", "hostname", "rss", "heapTotal",
              "heapUsed", "external", "numCpus", "freemem", "loadadv", "user", "uptime", "updateIntervalSeconds"]:
        add('"%s":' % k)
    for w in ["HEALTH", "JOIN", "LEAVE", "SFCP", "true", "false", "null", "1e309", "-0", "18446744073709551616",
              "9223372036854775808", "{", "}", "[", "]", ":", ","]:
        add(w)
    for w in ["group=", "service=", "status=", "health=", "tag=", "after=", "limit=", "reports=", "&", "%", "timeout"]:
        add(w)
    os.makedirs(os.path.join(ROOT, "..", "dict"), exist_ok=True)
    with open(os.path.join(ROOT, "..", "dict", "sfc.dict"), "w") as f:
        f.write("\n".join(lines) + "\n")


dictionary()

# Inputs that crashed a target once (crates/sfc/tests/fuzz_regressions.rs feeds them again).
put("message_decode", "regress-sent-at-2pow63.json", b'{"type":"report","sent_at":9223372036854775808}')
put("http_command", "regress-path-not-utf8", b'{""re=ration":"\xe5ploy"\n')
