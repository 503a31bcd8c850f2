#!/usr/bin/env python3
"""A do-nothing OTLP/gRPC receiver: accepts every export (trace, metrics, logs), counts the
requests and bytes, and prints the totals on Ctrl-C / SIGTERM. For measuring what export costs a
training run (BENCHMARKS.md), not for keeping telemetry: use the OpenTelemetry Collector
(deploy/grafana/) for that. Needs grpcio (in the test venv: /var/tmp/anvil-venv/bin/python).

    python scripts/otlp-sink.py 4317 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 worker train --config configs/quickstart.yaml
"""
import signal
import sys
import threading
from concurrent import futures

import grpc

totals = {"requests": 0, "bytes": 0}
lock = threading.Lock()


def export(request: bytes, context) -> bytes:
    with lock:
        totals["requests"] += 1
        totals["bytes"] += len(request)
    return b""  # an empty Export*ServiceResponse


class AnyExport(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method.endswith("/Export"):
            return grpc.unary_unary_rpc_method_handler(
                export, request_deserializer=None, response_serializer=None
            )
        return None


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4317
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((AnyExport(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"otlp-sink listening on 127.0.0.1:{port}", flush=True)
    done.wait()
    server.stop(0)
    print(f"otlp-sink: {totals['requests']} export requests, {totals['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
