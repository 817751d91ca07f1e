"""A small OTLP/HTTP receiver (protobuf, POST /v1/traces) for the trace tests: it keeps every
request body as received (to grep for secrets) and every span, decoded with opentelemetry-proto."""

import gzip
import http.server
import threading

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Receiver:
    """Listens on 127.0.0.1 (an ephemeral port) in a thread until `close()`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = []  # raw request bodies, decompressed
        self.spans = []  # (resource attributes, span) pairs
        self.paths = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.paths.append(self.path)
                    receiver.bodies.append(body)
                    for rs in request.resource_spans:
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                receiver.spans.append((rs.resource, span))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self):
        with self.lock:
            return list(self.spans), list(self.bodies), list(self.paths)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attributes(span):
    """A span's attributes as a dict of Python values."""
    out = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind else None
    return out
