"""Traces of a delivery to the real Postfix (STARTTLS, AUTH PLAIN), exported by `outbox serve`
with OTLP/HTTP to a small receiver (otlp_receiver.py): one span per attempt with the submitting
request's trace id and parent (its `traceparent` header, stored with the message), child spans
for the connection, TLS, AUTH and the transaction, semantic-convention attributes, and no secret
in any byte the receiver got.

Needs the peers of scripts/test.sh (OUTBOX_TEST_* variables) and the built binary (OUTBOX_BIN,
else .build/debug/outbox). Run by scripts/test.sh: python3 -m unittest -v Tests/Traces/test_traces.py
"""

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from otlp_receiver import Receiver, attributes  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def env(name):
    value = os.environ.get(name)
    if not value:
        raise AssertionError(f"{name} is not set: start the peers with scripts/test.sh --start-peers")
    return value


def outbox_bin():
    path = os.environ.get("OUTBOX_BIN") or os.path.join(REPO_ROOT, ".build/debug/outbox")
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} is not an executable: build it (swift build) or set OUTBOX_BIN")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class TracesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.password = env("OUTBOX_TEST_PASSWORD")
        cls.user = env("OUTBOX_TEST_USER")
        cls.host = env("OUTBOX_TEST_SMTP_HOST")
        cls.submission = int(env("OUTBOX_TEST_SUBMISSION_PORT"))
        cls.receiver = Receiver()
        cls.dir = tempfile.mkdtemp(prefix="outbox-traces-")
        cls.port = free_port()
        overrides = [
            f"server={cls.host}", f"port={cls.submission}", "smtp-connection-security=start-tls-required",
            f"outbox.tls-ca-file={env('OUTBOX_TEST_CA_FILE')}", "enable-authentication=true", f"user={cls.user}",
            f"password={cls.password}", "mail.smtp.auth.mechanisms=PLAIN", f"outbox.data-directory={cls.dir}/data",
            f"outbox.http-listen=127.0.0.1:{cls.port}", f"outbox.otel-endpoint={cls.receiver.endpoint}",
            # No reuse: each delivery opens its connection, so its set-up spans belong to it.
            "cnx-max-idle-time=00:00:00",
        ]
        argv = [outbox_bin(), "serve"] + [a for o in overrides for a in ("-o", o)]
        cls.log = open(os.path.join(cls.dir, "daemon.log"), "wb")
        # The batch span processor exports every 200 ms (OpenTelemetry's OTEL_BSP_SCHEDULE_DELAY).
        cls.daemon = subprocess.Popen(argv, stdout=cls.log, stderr=subprocess.STDOUT, env=dict(os.environ, OTEL_BSP_SCHEDULE_DELAY="200"))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if api(cls.port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("the daemon did not start:\n" + cls.daemon_log())

    @classmethod
    def daemon_log(cls):
        cls.log.flush()
        with open(os.path.join(cls.dir, "daemon.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    @classmethod
    def tearDownClass(cls):
        if cls.daemon.poll() is None:
            cls.daemon.send_signal(signal.SIGTERM)
            cls.daemon.wait(timeout=30)
        cls.receiver.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def submit(self, subject, traceparent=None):
        headers = {"traceparent": traceparent} if traceparent else {}
        status, answer = api(self.port, "POST", "/v1/messages",
                             {"from": self.user, "to": "rcpt@elsewhere.example", "subject": subject, "text": "traced"}, headers)
        self.assertEqual(status, 202, answer)
        message_id = answer["id"]
        for _ in range(300):
            message = api(self.port, "GET", f"/v1/messages/{message_id}")[1]
            if message.get("status") == "delivered":
                return message_id
            time.sleep(0.1)
        self.fail(f"message {message_id} was not delivered: {message}\n{self.daemon_log()[-3000:]}")

    def spans_of(self, trace_id, names, timeout=20):
        """The spans of `trace_id`, once every name in `names` has arrived."""
        deadline = time.time() + timeout
        while True:
            spans = [s for _, s in self.receiver.snapshot()[0] if s.trace_id.hex() == trace_id]
            if names <= {s.name for s in spans} or time.time() > deadline:
                return spans
            time.sleep(0.2)

    def test_delivery_spans_have_the_submitting_trace_and_no_secret(self):
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        message_id = self.submit("traced-1", traceparent=f"00-{trace_id}-{parent_id}-01")
        spans = self.spans_of(trace_id, {"outbox.delivery", "smtp.transaction", "smtp.connect", "smtp.starttls", "smtp.auth"})
        by_name = {s.name: s for s in spans}
        self.assertIn("outbox.delivery", by_name, f"spans of the trace: {sorted(by_name)}; all: "
                      f"{sorted({s.name for _, s in self.receiver.snapshot()[0]})}\n{self.daemon_log()[-2000:]}")
        delivery = by_name["outbox.delivery"]
        self.assertEqual(delivery.parent_span_id.hex(), parent_id, "the delivery's parent is the submitting request's span")
        a = attributes(delivery)
        self.assertEqual(a.get("outbox.message.id"), message_id)
        self.assertEqual(a.get("outbox.route"), "default")
        self.assertEqual(a.get("outbox.recipient.count"), 1)
        self.assertEqual(a.get("outbox.result"), "delivered")
        self.assertEqual(a.get("server.address"), self.host)
        self.assertEqual(a.get("server.port"), self.submission)
        self.assertEqual(a.get("smtp.reply.code"), 250)
        transaction = by_name.get("smtp.transaction")
        self.assertIsNotNone(transaction, sorted(by_name))
        self.assertEqual(transaction.parent_span_id, delivery.span_id)
        self.assertEqual(attributes(transaction).get("smtp.reply.code"), 250)
        # The connection was opened for this delivery: its steps are children of the attempt.
        for name in ("smtp.connect", "smtp.starttls", "smtp.auth"):
            self.assertIn(name, by_name, sorted(by_name))
            self.assertEqual(by_name[name].parent_span_id, delivery.span_id, name)
        self.assertTrue(attributes(by_name["smtp.starttls"]).get("tls.protocol.version", "").startswith("1."))
        self.assertEqual(attributes(by_name["smtp.auth"]).get("smtp.auth.mechanism"), "PLAIN")
        for s in spans:
            self.assertGreaterEqual(s.end_time_unix_nano, s.start_time_unix_nano, s.name)
        # The delivery log's line names the trace.
        lines = [l for l in self.daemon_log().splitlines() if "event=delivery" in l and f"id={message_id}" in l]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"trace_id={trace_id}", lines[0])
        self.assert_no_secret()

    def test_a_message_without_traceparent_gets_a_trace_of_its_own(self):
        before = {s.span_id for _, s in self.receiver.snapshot()[0]}
        message_id = self.submit("traced-2")
        deadline = time.time() + 20
        delivery = None
        while time.time() < deadline and delivery is None:
            for _, s in self.receiver.snapshot()[0]:
                if s.name == "outbox.delivery" and s.span_id not in before and attributes(s).get("outbox.message.id") == message_id:
                    delivery = s
            time.sleep(0.2)
        self.assertIsNotNone(delivery, "no delivery span for the message")
        self.assertEqual(delivery.parent_span_id, b"", "a root span")
        self.assert_no_secret()

    def assert_no_secret(self):
        _, bodies, paths = self.receiver.snapshot()
        self.assertTrue(bodies)
        self.assertTrue(all(p == "/v1/traces" for p in paths), paths)
        plain = base64.b64encode(f"\0{self.user}\0{self.password}".encode())
        for body in bodies:
            self.assertNotIn(self.password.encode(), body, "the password reached a span")
            self.assertNotIn(plain, body, "the AUTH PLAIN payload reached a span")


if __name__ == "__main__":
    unittest.main()
