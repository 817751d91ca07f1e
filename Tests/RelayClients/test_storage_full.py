"""A full disk under load (issue 14): the daemon's data directory on a small tmpfs, the mail
server down at first, 50 KB messages submitted over HTTP until the queue's disk reaches
`queue-min-free`.

  OUTBOX_BIN=.build/debug/outbox python3 -m unittest -v Tests/RelayClients/test_storage_full.py

What must hold:
- every submission is answered 202 or 507 (with Retry-After and the code insufficient_storage),
  never a 500; the SMTP listener answers MAIL with 452 4.3.1 while intake is refused; /readyz
  is 503 then;
- a kill -9 on the full disk loses nothing: every 202 is there after the restart;
- once the server is back (a SIGHUP points `port` at the testbed Postfix: it takes effect at
  once), the queue delivers while intake is still refused, delivered content is purged to make
  room, and intake resumes on its own (/readyz 200, new submissions 202);
- every 202 is delivered exactly once (counted in Postfix's maildir by subject).

The test mounts the tmpfs itself (`mount -t tmpfs`); where mounting is not permitted it is
skipped and says so. Environment: OUTBOX_BIN, PFCI_DIR (see durability_support.py).
"""

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from durability_support import Maildir, OutboxDaemon, PostfixTestbed, free_port, log, wait_until  # noqa: E402

POSTFIX = PostfixTestbed()
TMPFS_MIB = 12
MIN_FREE = "5MiB"
BODY_BYTES = 50_000


def setUpModule():
    POSTFIX.ensure()


def tearDownModule():
    POSTFIX.stop_if_started()


def submit(daemon, subject):
    """POST one 50 KB message; returns (status, headers, body)."""
    body = json.dumps({
        "from": "sender@example.test", "to": "rcpt@elsewhere.example", "subject": subject,
        "text": ("x" * 76 + "\n") * (BODY_BYTES // 77),
    }).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/v1/messages", data=body, method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw[:300].decode("utf-8", "replace")}
        return e.code, dict(e.headers), parsed


class FullDisk(unittest.TestCase):
    def setUp(self):
        self.closed_port = free_port()
        self.daemon = OutboxDaemon(
            "full", POSTFIX, smtp_extra={"port": self.closed_port},
            outbox_extra={"queue-min-free": MIN_FREE, "delivery-concurrency": 4})
        os.makedirs(self.daemon.data_dir, exist_ok=True)
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", self.daemon.data_dir],
            capture_output=True, text=True)
        if mount.returncode != 0:
            self.daemon.cleanup()
            self.skipTest(f"mounting a tmpfs is not permitted here ({mount.stderr.strip()}): the full-disk test cannot run")
        self.addCleanup(self._unmount)

    def _unmount(self):
        self.daemon.stop()
        subprocess.run(["umount", "-l", self.daemon.data_dir], capture_output=True)
        self.daemon.cleanup()

    def test_full_disk(self):
        d = self.daemon
        token = f"full-{uuid.uuid4().hex[:8]}"
        d.start()
        accepted, refused, other = [], 0, []

        # 1. Fill the disk: the server is down, so nothing leaves the queue.
        n = 0
        consecutive = 0
        while consecutive < 5 and n < 600:
            status, headers, body = submit(d, f"{token}-{n}")
            if status == 202:
                accepted.append((n, body["id"]))
                consecutive = 0
            elif status == 507:
                refused += 1
                consecutive += 1
                self.assertEqual((body.get("error") or {}).get("code"), "insufficient_storage", body)
                self.assertIn("Retry-After", headers, headers)
            else:
                other.append((status, body))
            n += 1
        log(f"filled: {len(accepted)} accepted, {refused} refused with 507, others {other[:3]}")
        self.assertEqual(other, [], "every answer is 202 or 507, never a 500")
        self.assertGreater(len(accepted), 10)
        self.assertGreaterEqual(refused, 5, "the disk never reached queue-min-free")
        self.assertEqual(d.http_status("/readyz"), 503, "not ready while intake is refused")

        # 2. The listener refuses at MAIL with 452 4.3.1.
        with smtplib.SMTP("127.0.0.1", d.relay_port, timeout=15) as smtp:
            smtp.ehlo("client.example.test")
            code, text = smtp.mail("sender@example.test")
            self.assertEqual(code, 452, text)
            self.assertTrue(text.startswith(b"4.3.1"), text)

        # 3. kill -9 on the full disk, restart: nothing lost.
        d.kill9()
        d.start()
        for _, queue_id in accepted:
            m = d.message(queue_id)
            self.assertIsNotNone(m, f"{queue_id} was accepted (202) and is gone after kill -9")

        # 4. The server comes back: port takes effect at once on SIGHUP.
        with open(d.config_path) as f:
            text = f.read()
        with open(d.config_path, "w") as f:
            f.write(text.replace(f"port = {self.closed_port}", f"port = {POSTFIX.port}"))
        os.kill(d.proc.pid, signal.SIGHUP)
        delivered = wait_until(lambda: d.open_count() == 0, timeout=180)
        self.assertTrue(delivered, f"the queue did not drain: {d.queue_counts()}\n{d.diagnostics()}")
        ready = wait_until(lambda: d.http_status("/readyz") == 200, timeout=30)
        self.assertTrue(ready, f"intake did not resume after the queue drained\n{d.diagnostics()}")
        purged = d.stderr_lines(r"purged the content of \d+ delivered messages")
        self.assertTrue(purged, "room was made by purging delivered messages' content")

        # 5. Intake is open again.
        for k in range(5):
            status, _, body = submit(d, f"{token}-after-{k}")
            self.assertEqual(status, 202, body)
            accepted.append((f"after-{k}", body["id"]))
        self.assertTrue(wait_until(lambda: d.open_count() == 0, timeout=60))

        # 6. Every 202 delivered exactly once.
        maildir = Maildir(POSTFIX.maildir)
        wanted = {f"{token}-{n}" for n, _ in accepted}

        def counts():
            seen = {}
            for path in maildir.paths():
                headers = maildir.headers(path)
                subject = ((headers.get("Subject") if headers else None) or "").strip()
                if subject in wanted:
                    seen[subject] = seen.get(subject, 0) + 1
            return seen

        seen = wait_until(lambda: (lambda c: c if len(c) == len(wanted) else None)(counts()), timeout=60) or counts()
        missing = sorted(wanted - set(seen))
        twice = sorted(s for s, c in seen.items() if c > 1)
        self.assertEqual(missing, [], "accepted messages missing from the maildir")
        self.assertEqual(twice, [], "messages delivered more than once")
        refusal_lines = d.stderr_lines(r"intake refused")
        self.assertLessEqual(len(refusal_lines), 10, "one log line per change of state, not per request")


if __name__ == "__main__":
    unittest.main()
