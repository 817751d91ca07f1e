"""Durability and bounces of `outbox serve`'s SMTP listener ([relay]), against the real testbed
Postfix (scripts/postfix-testbed.sh: clear-text port 2588, catch-all maildir).

  OUTBOX_BIN=.build/debug/outbox python3 -m unittest -v Tests/RelayClients/test_relay_durability.py

CrashTest: 2,000 messages over SMTP while the daemon is killed with -9 twice (and restarted on
the same config and data directory). The client never resends a message that got no 250. Every
message that got 250 must reach Postfix's maildir; a message that arrived more than once must be
flagged possible_duplicate by the daemon.

BounceTest: a relayed message that Postfix refuses for good comes back to its envelope sender as
one RFC 3464 delivery status notification (multipart/report, null envelope sender) through the
same transport; a message from the null sender, and one whose RCPT says NOTIFY=NEVER, get none.

The Postfix testbed is started when its port is closed (and stopped again at the end); the
recipient_access map of scripts/test.sh (reject@example.test refused, tempfail@example.test 450)
is installed when missing. A missing peer or binary is a failure, never a skip.

Environment: OUTBOX_BIN, PFCI_DIR (default /tmp/outbox-pfci), PFCI_PLAIN_PORT (2588),
DURABILITY_MESSAGES (2000), DURABILITY_THREADS (4), DURABILITY_KEEP=1 (keep the daemons' folders).
"""

import email.utils
import os
import random
import smtplib
import socket
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from durability_support import (  # noqa: E402
    QUEUED_RE, REJECT_RCPT, Maildir, OutboxDaemon, PostfixTestbed, finish_daemon, log, started_daemon, wait_until)

TOTAL = int(os.environ.get("DURABILITY_MESSAGES") or 2000)
THREADS = int(os.environ.get("DURABILITY_THREADS") or 4)
SEND_DEADLINE = 180        # s for the whole sending phase, kills and restarts included
DELIVERY_DEADLINE = 180    # s for every acknowledged message to reach the maildir
SETTLE_DEADLINE = 60       # s for the daemon's queue to empty afterwards (late duplicates show)

POSTFIX = PostfixTestbed()


def setUpModule():
    POSTFIX.ensure()


def tearDownModule():
    POSTFIX.stop_if_started()


def crash_message(tag, n):
    return (f"From: Durability <sender-{tag}@example.test>\r\n"
            f"To: <rcpt-{tag}@example.test>\r\n"
            f"Subject: durability {tag} #{n}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{n}.{tag}@durability.example.test>\r\n"
            f"X-Test-Run: {tag}\r\n"
            f"X-Test-Seq: {n}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
            f"Message {n} of run {tag}.\r\n"
            + "".join(f"line {i} of message {n}: the quick brown fox jumps over the lazy dog\r\n" for i in range(8))
            ).encode("ascii")


class CrashTest(unittest.TestCase):
    """2,000 messages over SMTP with two kill -9."""

    def setUp(self):
        self.daemon = OutboxDaemon("crash", POSTFIX, outbox_extra={
            # A crash while sending is an unknown outcome; the message is sent again (and flagged
            # possible_duplicate). Allow a few, so that a message caught by both kills still goes.
            "unknown-outcome-retries": 5,
            "delivery-concurrency": 8,
        })
        self.addCleanup(self.daemon.cleanup)
        self.addCleanup(self._stop_daemon)

    def _stop_daemon(self):
        complaint = self.daemon.stop()
        if complaint:
            log(f"crash test daemon: {complaint}")

    def test_two_kill9_every_acknowledged_message_is_delivered(self):
        d = self.daemon
        tag = "dur-" + uuid.uuid4().hex[:10]
        maildir = Maildir(POSTFIX.maildir)
        t_start = time.monotonic()
        d.start()
        log(f"run {tag}: {TOTAL} messages, {THREADS} client threads, relay 127.0.0.1:{d.relay_port}, "
            f"API 127.0.0.1:{d.http_port}, data {d.data_dir}")

        lock = threading.Lock()
        state = {"next": 0, "acked": 0}
        acked = {}       # seq -> queue id from "250 2.0.0 Ok: queued as ID"
        nacked = {}      # seq -> why there was no 250
        stop = threading.Event()
        problems = []    # failures of the killer / restarts
        kills = []       # (acks when killed, attempted when killed, seconds since start, restart seconds)
        send_deadline = time.monotonic() + SEND_DEADLINE
        connect_failures = [0]

        def client(idx):
            conn = None
            while not stop.is_set():
                if conn is None:
                    if time.monotonic() > send_deadline:
                        return
                    try:
                        conn = smtplib.SMTP("127.0.0.1", d.relay_port, local_hostname="client.example.test", timeout=20)
                        code, _ = conn.ehlo()
                        if code != 250:
                            raise smtplib.SMTPException(f"EHLO answered {code}")
                    except (OSError, smtplib.SMTPException):
                        with lock:
                            connect_failures[0] += 1
                        try:
                            if conn is not None:
                                conn.close()
                        except Exception:
                            pass
                        conn = None
                        time.sleep(0.05)
                        continue
                with lock:
                    if state["next"] >= TOTAL:
                        break
                    n = state["next"]
                    state["next"] += 1
                # From here on, message n is sent exactly once, whatever happens.
                try:
                    code, msg = conn.mail(f"sender-{tag}@example.test")
                    if code != 250:
                        raise smtplib.SMTPException(f"MAIL answered {code} {msg!r}")
                    code, msg = conn.rcpt(f"rcpt-{tag}@example.test")
                    if code not in (250, 251):
                        raise smtplib.SMTPException(f"RCPT answered {code} {msg!r}")
                    code, msg = conn.data(crash_message(tag, n))
                    text = msg.decode("utf-8", "replace")
                    m = QUEUED_RE.search(text)
                    if code == 250 and m:
                        with lock:
                            acked[n] = m.group(1)
                            state["acked"] += 1
                        continue
                    if code == 250:
                        raise smtplib.SMTPException(f"250 without 'queued as ID': {text!r}")
                    raise smtplib.SMTPException(f"final dot answered {code} {text!r}")
                except (OSError, smtplib.SMTPException) as e:
                    with lock:
                        nacked[n] = f"{type(e).__name__}: {e}"
                    try:
                        conn.close()
                    except Exception:
                        pass
                    conn = None
            if conn is not None:
                try:
                    conn.quit()
                except Exception:
                    pass

        # Kill after about 500 and about 1,200 acknowledgements (scaled when DURABILITY_MESSAGES is set).
        thresholds = [max(1, random.randint(400, 600) * TOTAL // 2000), max(2, random.randint(1100, 1300) * TOTAL // 2000)]

        def killer():
            try:
                for k in thresholds:
                    while not stop.is_set():
                        with lock:
                            a, attempted = state["acked"], state["next"]
                        # After about k acknowledgements; at the latest shortly before the end.
                        if a >= k or attempted >= TOTAL - max(20, TOTAL // 20):
                            break
                        if time.monotonic() > send_deadline:
                            problems.append(f"the kill after {k} acks never happened: only {a} acks, "
                                            f"{attempted} attempts in {SEND_DEADLINE} s")
                            return
                        time.sleep(0.002)
                    if stop.is_set():
                        return
                    time.sleep(random.uniform(0, 0.05))
                    with lock:
                        a, attempted = state["acked"], state["next"]
                    t_kill = time.monotonic()
                    if not d.kill9():
                        problems.append(f"the daemon had already exited before kill -9 #{len(kills) + 1} "
                                        f"(exit {d.exits[-1][2] if d.exits else '?'})")
                    log(f"kill -9 #{len(kills) + 1} at {a} acks, {attempted} attempts "
                        f"({t_kill - t_start:.1f} s into the run)")
                    t0 = time.monotonic()
                    d.start(timeout=90)
                    kills.append((a, attempted, t_kill - t_start, time.monotonic() - t0))
                    log(f"restarted in {time.monotonic() - t0:.2f} s")
            except AssertionError as e:
                problems.append(f"restart failed: {e}")
                stop.set()
            except Exception as e:  # noqa: BLE001 - reported as a test failure below
                problems.append(f"killer: {type(e).__name__}: {e}")
                stop.set()

        threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True) for i in range(THREADS)]
        kt = threading.Thread(target=killer, name="killer", daemon=True)
        t_send = time.monotonic()
        kt.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1, send_deadline - time.monotonic() + 30))
        stop.set()
        kt.join(120)
        send_seconds = time.monotonic() - t_send
        hung = [t.name for t in threads + [kt] if t.is_alive()]
        self.assertFalse(hung, f"threads still running after the sending phase: {hung}")
        self.assertFalse(problems, "killer / restart problems:\n" + "\n".join(problems) + "\n" + d.diagnostics())
        self.assertEqual(len(kills), 2, f"expected two kill -9 during the run, got {len(kills)}: {kills}")
        attempted = state["next"]
        self.assertEqual(attempted, TOTAL, f"only {attempted} of {TOTAL} messages were attempted within "
                                           f"{SEND_DEADLINE} s ({len(acked)} acked)\n" + d.diagnostics())
        self.assertEqual(len(acked) + len(nacked), TOTAL)
        log(f"sent: {len(acked)} acknowledged, {len(nacked)} without 250, in {send_seconds:.1f} s "
            f"({connect_failures[0]} failed connection attempts while the daemon was down)")

        # ---- every acknowledged message reaches Postfix
        def delivered_counts():
            counts = {}
            for _, h in maildir.scan(lambda h: h.get("X-Test-Run", "").strip() == tag):
                try:
                    n = int(h.get("X-Test-Seq", "").strip())
                except ValueError:
                    continue
                counts[n] = counts.get(n, 0) + 1
            return counts

        t_deliver = time.monotonic()
        def all_acked_delivered():
            c = delivered_counts()
            return c if all(n in c for n in acked) else None

        counts = wait_until(all_acked_delivered, DELIVERY_DEADLINE, interval=1.0) or delivered_counts()
        deliver_seconds = time.monotonic() - t_deliver
        # Let the queue empty, so that a late second copy shows too.
        settled = wait_until(lambda: d.open_count() == 0, SETTLE_DEADLINE, interval=1.0)
        time.sleep(2)
        counts = delivered_counts()
        queue = d.queue_counts()
        total_seconds = time.monotonic() - t_start

        # ---- the daemon's records: by Message-ID, and by the queue id of each 250
        records = d.messages()
        by_mid = {}
        for r in records:
            mid = (r.get("message_id") or "").strip().strip("<>")
            if mid.endswith(f".{tag}@durability.example.test"):
                try:
                    n = int(mid.split(".", 1)[0])
                except ValueError:
                    continue
                by_mid.setdefault(n, []).append(r)
        by_id = {r.get("id"): r for r in records}

        missing = sorted(n for n in acked if n not in counts)
        dups = {n: c for n, c in counts.items() if c > 1}
        stray = sorted(n for n in counts if n not in acked and n not in nacked)
        nacked_delivered = sorted(n for n in nacked if n in counts)
        flagged = {n for n, rs in by_mid.items() if any(r.get("possible_duplicate") for r in rs)}
        unflagged_dups = {}
        for n, c in sorted(dups.items()):
            rec = by_id.get(acked[n]) if n in acked else None
            if rec is None and n in acked:
                rec = d.message(acked[n])
            recs = [rec] if rec is not None else by_mid.get(n, [])
            if not any(r.get("possible_duplicate") for r in recs):
                unflagged_dups[n] = (c, acked.get(n), [(r.get("id"), r.get("status"), r.get("attempt_count"))
                                                       for r in recs])
        not_stored = sorted(n for n, qid in acked.items() if qid not in by_id)
        stored_twice = sorted(n for n, rs in by_mid.items() if len(rs) > 1)
        id_mismatch = sorted(n for n, qid in acked.items()
                             if n in by_mid and qid not in {r.get("id") for r in by_mid[n]})
        statuses = {}
        for n, qid in acked.items():
            s = (by_id.get(qid) or {}).get("status", "absent")
            statuses[s] = statuses.get(s, 0) + 1
        reasons = {}
        for why in nacked.values():
            key = why.split(":", 1)[0]
            reasons[key] = reasons.get(key, 0) + 1
        error_lines = d.stderr_lines(r"\b(error|critical|fatal|Fatal error|panic)\b")
        alive = d.alive()

        summary = [
            f"run {tag}: {TOTAL} attempted, {len(acked)} acknowledged (250), {len(nacked)} not acknowledged {reasons}",
            f"kills (acks, attempts, s into run, restart s): {[(a, b, round(c, 1), round(e, 2)) for a, b, c, e in kills]}",
            f"delivered: {len(counts)} distinct messages, {sum(counts.values())} copies; acknowledged delivered "
            f"{len(acked) - len(missing)}/{len(acked)}; not-acknowledged delivered anyway {len(nacked_delivered)}",
            f"duplicates: {len(dups)} messages ({sum(c - 1 for c in dups.values())} extra copies): "
            f"{dict(list(dups.items())[:20])}",
            f"possible_duplicate flags among this run's records: {len(flagged)}; records stored {len(by_mid)}; "
            f"API statuses of acknowledged: {statuses}; queue at end {queue} (settled: {bool(settled)})",
            f"time: sending {send_seconds:.1f} s, delivery wait {deliver_seconds:.1f} s, whole run {total_seconds:.1f} s",
            f"daemon stderr lines with error/critical/fatal: {len(error_lines)}",
        ]
        for line in summary:
            log(line)
        for line in error_lines[:15]:
            log("  stderr: " + line)

        detail = "\n".join(summary)
        self.assertTrue(alive, "the daemon exited on its own after the last restart\n" + d.diagnostics())
        self.assertFalse(missing, f"{len(missing)} acknowledged messages never reached Postfix: "
                                  + ", ".join(f"#{n} ({acked[n]}: {(by_id.get(acked[n]) or {}).get('status', 'not in the API')})"
                                              for n in missing[:30]) + "\n" + detail + "\n" + d.diagnostics())
        self.assertFalse(unflagged_dups, "messages delivered more than once without possible_duplicate "
                                         f"(seq: (copies, queue id, records)): {unflagged_dups}\n" + detail)
        self.assertFalse(stray, f"messages of this run in the maildir that were never sent: {stray}")
        self.assertFalse(not_stored, "acknowledged messages whose queue id the API does not know: "
                                     f"{[(n, acked[n]) for n in not_stored[:20]]}\n" + detail)
        self.assertFalse(id_mismatch, f"acknowledged messages stored under another id than the 250 named: {id_mismatch[:20]}")
        self.assertFalse(stored_twice, "messages stored more than once (one submission, several queue entries): "
                                       f"{[(n, [r.get('id') for r in by_mid[n]]) for n in stored_twice[:20]]}")
        self.assertEqual(statuses.get("delivered", 0), len(acked),
                         f"not every acknowledged message is 'delivered' in the API: {statuses}\n" + detail)
        self.assertGreater(len(acked), TOTAL * 0.9, "fewer than 90 % of the messages were acknowledged\n" + detail)


def _contains(path, needle):
    try:
        with open(path, "rb") as f:
            return needle in f.read()
    except FileNotFoundError:
        return False


class BounceTest(unittest.TestCase):
    """A permanent refusal by Postfix comes back to the envelope sender as a DSN."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = started_daemon("bounce", POSTFIX)
        cls.maildir = Maildir(POSTFIX.maildir)

    @classmethod
    def tearDownClass(cls):
        finish_daemon(cls.daemon, "bounce test")

    def setUp(self):
        self.assertTrue(self.daemon.alive(), "the bounce test's daemon is not running\n" + self.daemon.diagnostics())

    # ---- helpers

    def relay(self, mail_from, rcpt, subject, tag, rcpt_options=()):
        """Sends one message through the listener; returns the queue id of the 250."""
        body = (f"From: <{mail_from or 'nobody-' + tag + '@example.test'}>\r\n"
                f"To: <{rcpt}>\r\n"
                f"Subject: {subject}\r\n"
                f"Date: {email.utils.formatdate()}\r\n"
                f"Message-ID: <{tag}@bounce.example.test>\r\n"
                f"X-Test-Run: {tag}\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                f"This message ({tag}) is refused by Postfix.\r\n").encode("ascii")
        with smtplib.SMTP("127.0.0.1", self.daemon.relay_port, local_hostname="client.example.test", timeout=30) as s:
            code, msg = s.ehlo()
            self.assertEqual(code, 250, msg)
            code, msg = s.mail(mail_from)
            self.assertEqual(code, 250, f"MAIL FROM:<{mail_from}> answered {code} {msg!r}")
            code, msg = s.rcpt(rcpt, options=list(rcpt_options))
            self.assertEqual(code, 250, f"RCPT TO:<{rcpt}> {' '.join(rcpt_options)} answered {code} {msg!r}")
            code, msg = s.data(body)
            text = msg.decode("utf-8", "replace")
            self.assertEqual(code, 250, f"the final dot answered {code} {text!r}")
            m = QUEUED_RE.search(text)
            self.assertIsNotNone(m, f"no 'queued as ID' in {text!r}")
            return m.group(1)

    def wait_failed(self, queue_id, timeout=60):
        rec = wait_until(lambda: (r := self.daemon.message(queue_id)) and r.get("status") in ("failed", "delivered") and r,
                         timeout, interval=0.5)
        rec = rec or self.daemon.message(queue_id)
        self.assertIsNotNone(rec, f"the API does not know message {queue_id}")
        self.assertEqual(rec.get("status"), "failed",
                         f"message {queue_id} is {rec.get('status')!r} after {timeout} s, expected 'failed' "
                         f"(Postfix refuses {REJECT_RCPT}): {rec}")
        rcpts = rec.get("recipients") or []
        self.assertTrue(any(isinstance(r, dict) and r.get("address", "").lower() == REJECT_RCPT and r.get("status") == "rejected"
                            for r in rcpts), f"recipient {REJECT_RCPT} not recorded as rejected: {rcpts}")
        return rec

    def addressed_to(self, sender):
        """The maildir files addressed to `sender` (To, or Postfix's Delivered-To / X-Original-To)."""
        sender = sender.lower()

        def addressed(h):
            fields = [h.get("To", ""), h.get("Delivered-To", ""), h.get("X-Original-To", "")]
            return any(sender in (f or "").lower() for f in fields)
        return self.maildir.scan(addressed)

    def bounces_to(self, sender):
        return [(p, h) for p, h in self.addressed_to(sender) if (h.get_content_type() or "").lower() == "multipart/report"]

    def files_with(self, needle):
        return [p for p in self.maildir.paths() if _contains(p, needle.encode())]

    # ---- tests

    def test_permanent_failure_returns_one_dsn_to_the_sender(self):
        tag = "bounce-" + uuid.uuid4().hex[:10]
        sender = f"sender-{tag}@example.test"
        subject = f"Refused message {tag}"
        qid = self.relay(sender, REJECT_RCPT, subject, tag)
        log(f"relayed {qid} from {sender} to {REJECT_RCPT}")
        rec = self.wait_failed(qid)
        found = wait_until(lambda: self.addressed_to(sender), 60, interval=0.5)
        self.assertTrue(found, f"no message addressed to {sender} in {POSTFIX.maildir}/new within 60 s of the "
                               f"failure (message {qid}: {rec.get('status')}, last_error {rec.get('last_error')!r})\n"
                               f"Postfix log lines naming {sender}: {POSTFIX.log_lines(sender)[-10:]}\n"
                               + self.daemon.diagnostics(25))
        time.sleep(3)  # a second copy would show now
        found = self.addressed_to(sender)
        self.assertEqual(len(found), 1, f"expected exactly one message (the DSN) to {sender}, got "
                                        f"{[(p, h.get('Content-Type'), h.get('Subject')) for p, h in found]}")
        path = found[0][0]
        dsn = Maildir.full(path)
        log(f"DSN {path}: From {dsn['From']!r}, Return-Path {dsn['Return-Path']!r}, Subject {dsn['Subject']!r}")

        # Null envelope sender (RFC 3464 §2, RFC 5321 §4.5.5): Postfix's virtual delivery records
        # the envelope sender as Return-Path.
        self.assertEqual((dsn.get("Return-Path") or "").strip(), "<>",
                         f"the DSN's envelope sender (Return-Path) is not null: {dsn.get('Return-Path')!r}")
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual((dsn.get_param("report-type") or "").lower(), "delivery-status",
                         f"Content-Type: {dsn.get('Content-Type')}")
        parts = list(dsn.iter_parts())
        self.assertGreaterEqual(len(parts), 2, f"a multipart/report has at least the text and the status: "
                                               f"{[p.get_content_type() for p in parts]}")
        self.assertEqual(parts[0].get_content_type(), "text/plain",
                         f"first part should be the human-readable explanation: {[p.get_content_type() for p in parts]}")
        status_parts = [p for p in parts if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(status_parts), 1, f"parts: {[p.get_content_type() for p in parts]}")
        blocks = status_parts[0].get_payload()
        if not isinstance(blocks, list):
            self.fail(f"the message/delivery-status part did not parse into field blocks: {blocks!r}")
        per_recipient = [b for b in blocks if b.get("Final-Recipient")]
        self.assertTrue(per_recipient, f"no per-recipient block (Final-Recipient) in the delivery-status part: "
                                       f"{[dict(b.items()) for b in blocks]}")
        mine = [b for b in per_recipient if REJECT_RCPT in b.get("Final-Recipient", "").lower()]
        self.assertEqual(len(mine), 1, f"Final-Recipient blocks: {[dict(b.items()) for b in per_recipient]}")
        block = mine[0]
        self.assertEqual(block.get("Final-Recipient", "").split(";", 1)[0].strip().lower(), "rfc822",
                         f"Final-Recipient: {block.get('Final-Recipient')}")
        self.assertEqual(block.get("Action", "").strip().lower(), "failed", f"block: {dict(block.items())}")
        status = block.get("Status", "").strip()
        self.assertRegex(status, r"^5\.\d{1,3}\.\d{1,3}$", f"block: {dict(block.items())}")
        self.assertTrue(any(b.get("Reporting-MTA") for b in blocks),
                        f"no Reporting-MTA in the per-message fields: {[dict(b.items()) for b in blocks]}")
        returned = [p for p in parts[2:] if p.get_content_type() in ("message/rfc822", "text/rfc822-headers",
                                                                        "message/global", "message/global-headers")]
        self.assertTrue(returned, f"no returned message part: {[p.get_content_type() for p in parts]}")
        returned_bytes = returned[0].as_bytes()
        self.assertIn(subject.encode(), returned_bytes,
                      f"the original Subject {subject!r} is not in the returned {returned[0].get_content_type()} part")
        log(f"DSN ok: Status {status}, Action failed, Diagnostic-Code {block.get('Diagnostic-Code')!r}")

    def assert_no_bounce(self, mail_from, tag, subject, rcpt_options=()):
        """Relays a message that Postfix refuses and that must produce no bounce, together with a
        control message (an ordinary sender, same recipient) whose bounce must arrive: without
        it, finding no bounce would prove nothing. No file may name `tag` 15 s after the failure."""
        control_tag = tag + "-control"
        control_sender = f"sender-{control_tag}@example.test"
        qid = self.relay(mail_from, REJECT_RCPT, subject, tag, rcpt_options=rcpt_options)
        cqid = self.relay(control_sender, REJECT_RCPT, f"Control for {tag}", control_tag)
        log(f"relayed {qid} from <{mail_from}> to {REJECT_RCPT} {' '.join(rcpt_options)} (control {cqid} from {control_sender})")
        self.wait_failed(qid)
        failed_at = time.monotonic()
        self.wait_failed(cqid)
        control = wait_until(lambda: self.bounces_to(control_sender), 60, interval=0.5)
        self.assertTrue(control, f"the control message {cqid} from {control_sender} to {REJECT_RCPT} got no bounce "
                                 "within 60 s, so the absence of a bounce for the message under test proves nothing "
                                 "(does the daemon send delivery status notifications at all?)")
        time.sleep(max(0.0, 15 - (time.monotonic() - failed_at)))
        found = self.files_with(tag + "@") + self.files_with(f"{subject}\r\n") + self.files_with(f"{subject}\n")
        found = sorted(set(found))
        self.assertFalse(found, f"message {qid} from <{mail_from}> {' '.join(rcpt_options)} failed and must not produce a "
                                f"bounce, but the maildir has {len(found)} file(s) naming it: {found}")
        return qid

    def test_null_sender_gets_no_bounce(self):
        tag = "nullsender-" + uuid.uuid4().hex[:10]
        self.assert_no_bounce("", tag, f"From the null sender {tag}")

    def test_notify_never_gets_no_bounce(self):
        tag = "notifynever-" + uuid.uuid4().hex[:10]
        sender = f"sender-{tag}@example.test"
        self.assert_no_bounce(sender, tag, f"NOTIFY=NEVER {tag}", rcpt_options=("NOTIFY=NEVER",))
        self.assertFalse(self.bounces_to(sender), f"a DSN reached {sender} despite NOTIFY=NEVER")

if __name__ == "__main__":
    unittest.main(verbosity=2)
