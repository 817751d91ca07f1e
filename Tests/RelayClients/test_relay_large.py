"""Large messages through `outbox serve`'s SMTP listener ([relay]) to the real testbed Postfix:
streamed to the queue's store in chunks as they arrive and from it as they are sent, never held
whole in memory.

  OUTBOX_BIN=.build/debug/outbox python3 -m unittest -v Tests/RelayClients/test_relay_large.py

The daemon's resident set size (VmRSS in /proc/PID/status) is sampled every 10 ms from before
the client connects until the message is in Postfix's maildir. The issue's bound: while one
25 MiB message is relayed, RSS grows by less than 16 MiB over the idle RSS (measured after one
small message went through, so that the pools and the TLS-free SMTP path are warm). The message
that arrives must be the one sent: its body's SHA-256 is compared.

A missing peer or binary is a failure, never a skip. Environment: OUTBOX_BIN, PFCI_DIR,
LARGE_MESSAGE_BYTES (default 25 MiB less 64 KiB, under max-message-size with the headers),
LARGE_RSS_LIMIT_MIB (16).
"""

import email
import email.policy
import email.utils
import hashlib
import os
import random
import smtplib
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from durability_support import QUEUED_RE, Maildir, PostfixTestbed, finish_daemon, log, started_daemon, wait_until  # noqa: E402

SIZE = int(os.environ.get("LARGE_MESSAGE_BYTES") or (25 * 1024 * 1024 - 64 * 1024))
RSS_LIMIT = int(os.environ.get("LARGE_RSS_LIMIT_MIB") or 16) * 1024 * 1024

POSTFIX = PostfixTestbed()


def setUpModule():
    POSTFIX.ensure()


def tearDownModule():
    POSTFIX.stop_if_started()


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class Sampler(threading.Thread):
    """Samples a process's RSS until stopped; keeps the peak."""

    def __init__(self, pid, interval=0.01):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
                self.samples += 1
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join(5)


def body_lines(size, seed):
    """Text lines (base64-like, 76 characters) up to `size` bytes, reproducible from `seed`."""
    rnd = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    line_len = 76
    table = bytes(rnd.choice(alphabet) for _ in range(1 << 16))
    out = bytearray()
    i = 0
    while len(out) + line_len + 2 <= size:
        start = (i * 7919) % (len(table) - line_len)
        out += table[start:start + line_len] + b"\r\n"
        i += 1
    return bytes(out)


class LargeMessageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = started_daemon("large", POSTFIX)
        cls.maildir = Maildir(POSTFIX.maildir)

    @classmethod
    def tearDownClass(cls):
        finish_daemon(cls.daemon, "large message test")

    def send(self, tag, body, rcpt):
        head = (f"From: <large-{tag}@example.test>\r\n"
                f"To: <{rcpt}>\r\n"
                f"Subject: large message {tag}\r\n"
                f"Date: {email.utils.formatdate()}\r\n"
                f"Message-ID: <{tag}@large.example.test>\r\n"
                f"X-Test-Run: {tag}\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode("ascii")
        with smtplib.SMTP("127.0.0.1", self.daemon.relay_port, local_hostname="client.example.test", timeout=120) as s:
            code, msg = s.ehlo()
            self.assertEqual(code, 250, msg)
            code, msg = s.mail(f"large-{tag}@example.test")
            self.assertEqual(code, 250, f"MAIL answered {code} {msg!r}")
            code, msg = s.rcpt(rcpt)
            self.assertEqual(code, 250, f"RCPT answered {code} {msg!r}")
            code, msg = s.data(head + body)
            text = msg.decode("utf-8", "replace")
            self.assertEqual(code, 250, f"the final dot answered {code} {text!r}")
            m = QUEUED_RE.search(text)
            self.assertIsNotNone(m, f"no 'queued as ID' in {text!r}")
            return m.group(1)

    def delivered(self, tag, timeout):
        found = wait_until(lambda: self.maildir.scan(lambda h: h.get("X-Test-Run", "") == tag), timeout, interval=0.05)
        self.assertTrue(found, f"the message {tag} did not reach Postfix's maildir within {timeout} s\n"
                               + self.daemon.diagnostics())
        return found

    def test_a_25_mib_message_is_relayed_in_bounded_memory(self):
        pid = self.daemon.proc.pid
        # Warm up: one small message through the listener, the queue and the SMTP pool.
        warm = "warm-" + uuid.uuid4().hex[:10]
        self.send(warm, b"warm up\r\n", f"rcpt-{warm}@example.test")
        self.delivered(warm, 60)
        time.sleep(1.0)
        idle = rss(pid)

        tag = "large-" + uuid.uuid4().hex[:10]
        body = body_lines(SIZE, tag)
        digest = hashlib.sha256(body).hexdigest()
        sampler = Sampler(pid)
        sampler.start()
        started = time.monotonic()
        try:
            queue_id = self.send(tag, body, f"rcpt-{tag}@example.test")
            accepted = time.monotonic() - started
            found = self.delivered(tag, 180)
            delivered = time.monotonic() - started
        finally:
            sampler.stop()
        growth = sampler.peak - idle
        log(f"large message: {len(body)} body bytes, idle RSS {idle / 2**20:.1f} MiB, peak {sampler.peak / 2**20:.1f} MiB "
            f"(+{growth / 2**20:.1f} MiB, {sampler.samples} samples); accepted in {accepted:.1f} s, delivered in {delivered:.1f} s")

        self.assertEqual(len(found), 1, f"{len(found)} copies of {tag} arrived")
        path = found[0][0]
        with open(path, "rb") as f:
            raw = f.read()
        # Postfix stores LF line ends in its maildir; the sent body had CRLF.
        sep = raw.find(b"\n\n")
        self.assertGreater(sep, 0, "the delivered file has no header/body separator")
        got = raw[sep + 2:].replace(b"\n", b"\r\n")
        self.assertEqual(len(got), len(body), f"the delivered body has {len(got)} bytes, {len(body)} were sent")
        self.assertEqual(hashlib.sha256(got).hexdigest(), digest, "the delivered body differs from the one sent")

        record = self.daemon.message(queue_id)
        self.assertIsNotNone(record, f"the API does not know message {queue_id}")
        self.assertEqual(record.get("status"), "delivered", record)
        self.assertGreater(record.get("size", 0), len(body), record)

        self.assertLess(growth, RSS_LIMIT,
                        f"RSS grew by {growth / 2**20:.1f} MiB while one {len(body) / 2**20:.1f} MiB message was relayed "
                        f"(idle {idle / 2**20:.1f} MiB, peak {sampler.peak / 2**20:.1f} MiB); the bound is {RSS_LIMIT / 2**20:.0f} MiB")

    def test_an_oversized_message_leaves_no_chunks_and_the_next_one_goes(self):
        # Over max-message-size (25 MiB by default): 552 after the dot, nothing queued; the chunks
        # written while it arrived are removed, and the listener takes the next message at once.
        tag = "over-" + uuid.uuid4().hex[:10]
        body = body_lines(26 * 1024 * 1024 + 4096, tag)
        with smtplib.SMTP("127.0.0.1", self.daemon.relay_port, local_hostname="client.example.test", timeout=120) as s:
            s.ehlo()
            s.mail(f"over-{tag}@example.test")
            s.rcpt(f"rcpt-{tag}@example.test")
            try:
                code, msg = s.data(b"Subject: too big\r\n\r\n" + body)
            except smtplib.SMTPDataError as e:
                code, msg = e.smtp_code, e.smtp_error
            self.assertEqual(code, 552, f"an oversized message answered {code} {msg!r}")
            small = "after-" + uuid.uuid4().hex[:10]
            code, msg = s.mail(f"{small}@example.test")
            self.assertEqual(code, 250, msg)
            s.rcpt(f"rcpt-{small}@example.test")
            code, msg = s.data(f"X-Test-Run: {small}\r\nSubject: after\r\n\r\nsmall\r\n".encode())
            self.assertEqual(code, 250, msg)
        self.delivered(small, 60)
        db = os.path.join(self.daemon.data_dir, "outbox.sqlite")
        import sqlite3
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as c:
                orphans = c.execute(
                    "SELECT COUNT(*) FROM message_chunks WHERE message_id NOT IN (SELECT id FROM messages)").fetchone()[0]
            if orphans == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(orphans, 0, f"{orphans} chunks of the refused message are left in the store")


class ServerSizeTest(unittest.TestCase):
    """The listener advertises the smaller of max-message-size and the SMTP server's SIZE (the
    testbed Postfix: message_size_limit = 26214400), learnt from one connection at start, so an
    oversized message is refused at MAIL and never failed after its 250."""

    POSTFIX_LIMIT = 26214400

    @classmethod
    def setUpClass(cls):
        cls.daemon = started_daemon("size", POSTFIX, relay_extra={"max-message-size": 2 * cls.POSTFIX_LIMIT})

    @classmethod
    def tearDownClass(cls):
        finish_daemon(cls.daemon, "size test")

    def advertised(self):
        with smtplib.SMTP("127.0.0.1", self.daemon.relay_port, local_hostname="client.example.test", timeout=30) as s:
            code, _ = s.ehlo()
            self.assertEqual(code, 250)
            return int(s.esmtp_features.get("size", "0"))

    def test_size_is_the_servers_when_smaller(self):
        size = wait_until(lambda: (n := self.advertised()) == self.POSTFIX_LIMIT and n, 30, interval=0.5)
        self.assertEqual(size or self.advertised(), self.POSTFIX_LIMIT,
                         "the listener does not advertise Postfix's SIZE although max-message-size is twice as large\n"
                         + self.daemon.diagnostics())
        with smtplib.SMTP("127.0.0.1", self.daemon.relay_port, local_hostname="client.example.test", timeout=30) as s:
            s.ehlo()
            code, msg = s.mail("big@example.test", options=[f"SIZE={self.POSTFIX_LIMIT + 1}"])
            self.assertEqual(code, 552, f"MAIL with SIZE over the server's limit answered {code} {msg!r}")
            code, msg = s.mail("fits@example.test", options=[f"SIZE={self.POSTFIX_LIMIT - 1}"])
            self.assertEqual(code, 250, f"MAIL with SIZE under the limit answered {code} {msg!r}")


if __name__ == "__main__":
    unittest.main()
