"""The PostgreSQL store stopped under load, and replaced under a running daemon (issue 14).

  OUTBOX_BIN=.build/debug/outbox python3 -m unittest -v Tests/RelayClients/test_store_outage.py

The test runs its OWN PostgreSQL cluster (scripts/postgres-testbed.sh with PGCI_DIR and
PGCI_PORT of its own: the default cluster is shared by everyone's tests), and delivers to the
testbed Postfix (PFCI_DIR, see durability_support.py).

Outage: four clients submit over HTTP without pause; PostgreSQL is stopped with
`pg_ctl stop -m fast` (its data kept) for 30 seconds, then started again. A client whose
submission is refused retries it with the same Idempotency-Key until it is taken. What must hold:
- every request is answered within 10 seconds (store-unavailable-wait is 5 s);
- every refusal is a 503 with Retry-After and the code store_unavailable, and no answer carries
  a library's text (PSQLError...);
- every message taken (202) is delivered exactly once (counted in the maildir by subject);
- the daemon logs fewer than 50 lines from the stop to 5 s after the restart;
- a message is delivered within 5 s of the restart;
- no tight loop: the daemon uses less than half a core during the outage (CPU time);
- the SMTP listener answers 451 4.3.0 at the end of DATA during the outage, within 10 s.

Replaced database: the tables are dropped under a running daemon. /readyz answers 503 with the
reason, a submission 503 with the code store_schema_missing, and the log holds one line that
says so, not a loop of generic errors.
"""

import json
import os
import re
import smtplib
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from durability_support import REPO_ROOT, Maildir, OutboxDaemon, PostfixTestbed, log, wait_until  # noqa: E402

POSTFIX = PostfixTestbed()
PG_SCRIPT = os.path.join(REPO_ROOT, "scripts", "postgres-testbed.sh")
PG_ENV = dict(os.environ, PGCI_DIR=os.environ.get("OUTBOX_OUTAGE_PGCI_DIR", "/tmp/outbox-pgci-outage"),
              PGCI_PORT=os.environ.get("OUTBOX_OUTAGE_PGCI_PORT", "55433"))
OUTAGE_SECONDS = 30
CLIENTS = 4
LIBRARY_TEXT = re.compile(r"PSQLError|Generic description|PostgresDecodingError|ConnectionPoolError")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)([+-]\d{4})")


def pg(command, *args, timeout=300):
    p = subprocess.run(["bash", PG_SCRIPT, command, *args], env=PG_ENV, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"postgres-testbed.sh {command} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p.stdout.strip()


def setUpModule():
    POSTFIX.ensure()


def tearDownModule():
    POSTFIX.stop_if_started()


def submit(daemon, subject, key, timeout=15):
    """POST one message; (status, headers, body, seconds)."""
    body = json.dumps({"from": "sender@example.test", "to": "rcpt@elsewhere.example", "subject": subject,
                       "text": f"{subject}\n"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/v1/messages", data=body, method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace"), time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace"), time.monotonic() - started
    except OSError as e:
        return None, {}, f"no answer: {e}", time.monotonic() - started


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_submit(daemon, subject):
    """One message through the SMTP listener; ((code, text) of the end of DATA, seconds)."""
    started = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=20) as smtp:
            smtp.ehlo("client.example.test")
            smtp.sendmail("sender@example.test", ["rcpt@elsewhere.example"],
                          f"From: sender@example.test\r\nTo: rcpt@elsewhere.example\r\nSubject: {subject}\r\n\r\nhi\r\n")
            reply = (250, b"")
    except smtplib.SMTPDataError as e:
        reply = (e.smtp_code, e.smtp_error)
    except (smtplib.SMTPException, OSError) as e:
        reply = (None, str(e).encode())
    return reply, time.monotonic() - started


def log_lines_between(daemon, start, end):
    """The daemon's log lines stamped from `start` to `end` (seconds since 1970)."""
    out = []
    for line in daemon.stderr_text().splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) - time.timezone
        offset = int(m.group(2))
        stamp -= (offset // 100 * 3600 + offset % 100 * 60) if offset >= 0 else -((-offset) // 100 * 3600 + (-offset) % 100 * 60)
        if start - 1 <= stamp <= end + 1:
            out.append(line)
    return out


def delivered_counts(maildir, prefix):
    seen = {}
    for path in maildir.paths():
        headers = maildir.headers(path)
        subject = ((headers.get("Subject") if headers else None) or "").strip()
        if subject.startswith(prefix):
            seen[subject] = seen.get(subject, 0) + 1
    return seen


class StoreOutage(unittest.TestCase):
    def setUp(self):
        self.url = pg("start")
        self.addCleanup(lambda: pg("stop"))
        pg("sql", "DROP TABLE IF EXISTS outbox_messages, outbox_schema, outbox_message_chunks")
        self.daemon = OutboxDaemon(
            "pgfault", POSTFIX,
            outbox_extra={"store": self.url, "delivery-concurrency": 4, "lease-time": "00:01:00"})
        self.addCleanup(self.daemon.cleanup)
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def test_outage_under_load(self):
        d = self.daemon
        run = f"pgout-{uuid.uuid4().hex[:8]}"
        maildir = Maildir(POSTFIX.maildir)
        stop_load = threading.Event()
        lock = threading.Lock()
        answers = []  # (client, subject, status, headers, body, seconds, time)
        taken = set()

        def client(c):
            n = 0
            while not stop_load.is_set():
                subject = f"{run}-{c}-{n}"
                key = f"{subject}-key"
                while not stop_load.is_set():
                    status, headers, body, seconds = submit(d, subject, key)
                    with lock:
                        answers.append((c, subject, status, headers, body, seconds, time.time()))
                    if status == 202:
                        with lock:
                            taken.add(subject)
                        break
                    time.sleep(0.5)  # then the same message again, with the same Idempotency-Key
                n += 1

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            # Load before the outage: deliveries flow.
            flowing = wait_until(lambda: len(delivered_counts(maildir, run)) >= 10, timeout=60)
            self.assertTrue(flowing, f"no deliveries before the outage\n{d.diagnostics()}")
            stopped_at = time.time()
            pg("halt")
            cpu_at_stop = cpu_seconds(d.proc.pid)
            log(f"PostgreSQL stopped; {len(taken)} messages taken so far")
            time.sleep(3)
            relay_reply, relay_seconds = relay_submit(d, f"{run}-relay")
            time.sleep(OUTAGE_SECONDS - 3 - relay_seconds)
            delivered_before = set(delivered_counts(maildir, run))
            outage_cpu = cpu_seconds(d.proc.pid) - cpu_at_stop
            pg("resume")
            resumed_at = time.time()
            log("PostgreSQL started again")
            # Deliveries resume: a message not delivered before the restart arrives.
            first_new = None
            deadline = time.monotonic() + 60
            while first_new is None and time.monotonic() < deadline:
                if set(delivered_counts(maildir, run)) - delivered_before:
                    first_new = time.time()
                    break
                time.sleep(0.1)
            time.sleep(5)
        finally:
            stop_load.set()
            for t in threads:
                t.join(30)
        log(f"{len(answers)} answers, {len(taken)} messages taken; first delivery {first_new and first_new - resumed_at:.1f} s "
            "after the restart" if first_new else f"{len(answers)} answers; no delivery after the restart")

        # No tight loop while the store is away: the daemon (answering four clients meanwhile)
        # uses well under a core.
        log(f"the daemon used {outage_cpu:.1f} s of CPU during the {OUTAGE_SECONDS} s outage")
        self.assertLess(outage_cpu, OUTAGE_SECONDS * 0.5, "a tight loop while the store is away")

        # Every request answered within 10 s; refusals are 503 store_unavailable with Retry-After.
        slow = [(s, st, round(sec, 1)) for _, s, st, _, _, sec, _ in answers if st is None or sec > 10]
        self.assertEqual(slow, [], "requests not answered within 10 seconds")
        wrong = []
        refused = 0
        for _, subject, status, headers, body, _, _ in answers:
            if LIBRARY_TEXT.search(body):
                wrong.append((subject, status, body[:200]))
            if status == 202:
                continue
            refused += 1
            code = ""
            try:
                code = (json.loads(body).get("error") or {}).get("code")
            except ValueError:
                pass
            if status != 503 or code != "store_unavailable" or "Retry-After" not in headers:
                wrong.append((subject, status, code, headers.get("Retry-After"), body[:200]))
        self.assertEqual(wrong, [], "refusals must be 503 store_unavailable with Retry-After, in Outbox's words")
        self.assertGreater(refused, 0, "no request was refused: the outage did not happen under load")

        # The listener answers 451 4.3.0 at the end of DATA, within 10 s.
        self.assertEqual(relay_reply[0], 451, relay_reply)
        self.assertTrue(relay_reply[1].startswith(b"4.3.0"), relay_reply)
        self.assertLessEqual(relay_seconds, 10, "the listener must answer within 10 seconds")

        # Deliveries resumed within 5 s of the restart.
        self.assertIsNotNone(first_new, f"no delivery within 60 s of the restart\n{d.diagnostics()}")
        self.assertLessEqual(first_new - resumed_at, 5.0, "deliveries must resume within 5 s of the restart")

        # Every 202 delivered exactly once.
        drained = wait_until(lambda: d.open_count() == 0, timeout=120)
        self.assertTrue(drained, f"the queue did not drain: {d.queue_counts()}\n{d.diagnostics()}")
        seen = wait_until(lambda: (lambda c: c if taken <= set(c) else None)(delivered_counts(maildir, run)), timeout=60) \
            or delivered_counts(maildir, run)
        missing = sorted(taken - set(seen))
        twice = sorted(s for s, c in seen.items() if c > 1)
        log(f"{len(taken)} taken, {len(seen)} delivered, {len(missing)} missing, {len(twice)} twice")
        self.assertEqual(missing, [], "accepted messages missing from the maildir")
        self.assertEqual(twice, [], "messages delivered more than once")

        # Fewer than 50 log lines for the outage (from the stop to 5 s after the restart), not
        # counting per-message and per-attempt delivery lines.
        lines = [l for l in log_lines_between(d, stopped_at, resumed_at + 5)
                 if "outbox.message_id" not in l and "relay message" not in l]
        log(f"{len(lines)} log lines during the outage:\n  " + "\n  ".join(lines[:20]))
        self.assertLess(len(lines), 50, "the outage must not flood the log:\n" + "\n".join(lines[:60]))
        self.assertTrue(any("is unavailable" in l for l in lines), "the outage's start is logged")
        self.assertTrue(any("answers again" in l for l in lines), "the outage's end is logged")
        self.assertFalse(LIBRARY_TEXT.search(d.stderr_text()), "no library's generic text in the log")

    def test_schema_dropped_under_running_daemon(self):
        d = self.daemon
        status, _, body, _ = submit(d, f"schema-{uuid.uuid4().hex[:8]}", f"k-{uuid.uuid4().hex}")
        self.assertEqual(status, 202, body)
        self.assertEqual(d.http_status("/readyz") in (200, 503), True)
        dropped_at = time.time()
        pg("sql", "DROP TABLE outbox_messages, outbox_schema, outbox_message_chunks")

        def readyz():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/readyz", timeout=15) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        status, text = readyz()
        self.assertEqual(status, 503, text)
        self.assertIn("schema is missing", text)
        for k in range(5):
            status, headers, body, seconds = submit(d, f"schema-after-{k}", f"k-{uuid.uuid4().hex}")
            self.assertEqual(status, 503, body)
            self.assertEqual((json.loads(body).get("error") or {}).get("code"), "store_schema_missing", body)
            self.assertIn("Retry-After", headers)
            self.assertFalse(LIBRARY_TEXT.search(body), body)
        time.sleep(5)  # the dispatcher keeps claiming meanwhile
        lines = log_lines_between(d, dropped_at, time.time())
        schema_lines = [l for l in lines if "schema is missing" in l]
        self.assertEqual(len(schema_lines), 1, "one line says the schema is missing:\n" + "\n".join(lines))
        self.assertLess(len(lines), 10, "not a loop of log lines:\n" + "\n".join(lines))
        self.assertFalse(LIBRARY_TEXT.search(d.stderr_text()), "no library's generic text in the log")


if __name__ == "__main__":
    unittest.main()
