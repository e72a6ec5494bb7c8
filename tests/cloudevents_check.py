#!/usr/bin/env python3
"""Validates AMQP messages as CloudEvents with the CloudEvents Python SDK.

Reads a JSON list on stdin, one object per message as consumed from RabbitMQ:
{"content_type": str, "headers": {name: value}, "body_b64": str}. Each is
parsed with the SDK's AMQP protocol binding (cloudevents.core.bindings.amqp,
which takes `cloudEvents:`-prefixed application properties in binary mode and
an application/cloudevents+json body in structured mode) into a CloudEvent,
which the SDK validates (required attributes, their types, extension names).

Prints a JSON list of the parsed attributes (time as RFC 3339) and the data;
exits 1 naming every message the SDK rejected.
"""
import base64
import json
import sys

from cloudevents.core.bindings import amqp


def main() -> int:
    messages = json.load(sys.stdin)
    parsed, failures = [], []
    for i, m in enumerate(messages):
        ct = m["content_type"]
        message = amqp.AMQPMessage(
            properties={"content-type": ct} if ct is not None else {},
            application_properties=m["headers"],
            application_data=base64.b64decode(m["body_b64"]),
        )
        try:
            event = amqp.from_amqp_event(message)
        except Exception as e:  # the SDK's validation errors, and any other
            failures.append(f"message {i} ({m['headers'].get('cloudEvents:id')}): {type(e).__name__}: {e}")
            continue
        attrs = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in event.get_attributes().items()}
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = {"bytes_b64": base64.b64encode(data).decode()}
        parsed.append({"attributes": attrs, "data": data})
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    json.dump(parsed, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
