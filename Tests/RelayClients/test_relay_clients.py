"""Acceptance tests of `outbox serve`'s SMTP submission listener ([relay]), driven by SMTP
clients nobody here wrote: Python's smtplib, swaks, curl, msmtp and Postfix, plus raw sockets
for the refusals, the STARTTLS-injection and SMTP-smuggling cases.

Run with scripts/relay-clients-test.sh (installs the clients, makes the testbed TLS files), or:
  RELAY_TEST_TLS_DIR=/tmp/outbox-relay-pfci/tls OUTBOX_BIN=.build/debug/outbox \
    python3 -m unittest discover -v -s Tests/RelayClients -p test_relay_clients.py [-k NAME]
Each test class starts its own daemon (temporary folder, free ports) and stops it at the end:
ClientsTest (every client, what is stored), RefusalsTest (replies, STARTTLS injection),
SmugglingTest, AuthLockoutTest, NoAllowedNetworksTest, TimeoutsTest (2 s / 3 s timeouts),
NoCertificateTest, PostfixClientTest (a private testbed Postfix relaying through the listener).
The client helpers (relay_clients.py) are pure functions of host, port, TLS mode, user,
password, CA, sender, recipients and message, checked against the testbed Postfix too.
A missing client program fails the test; nothing is skipped.
RELAY_TEST_KEEP=1 keeps the daemons' folders (config, data/sent/*.eml, stderr.log).
"""

import email.utils
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from outbox_daemon import Client, OutboxDaemon, free_port  # noqa: E402
import relay_clients as rc  # noqa: E402

HOSTNAME = "relay.example.test"
SCANNER = Client("scanner", "scanner@example.test", "Scanner-Pass-42", "*@example.test, printer@other.test")
PRINTER = Client("printer", "printer@other.test", "Printer-Pass-7", "printer@other.test")
POSTFIX_CLIENT = Client("postfix", "postfix-relay@example.test", "Postfix-Pass-9", "*@example.test")

BASE_RELAY = {
    "allowed-networks": "127.0.0.0/8 ::1",
    "require-tls-for-auth": True,
    "max-message-size": 26214400,
    "max-recipients": 100,
    "command-timeout": "00:05:00",
    "data-timeout": "00:10:00",
    "session-timeout": "01:00:00",
    "hostname": HOSTNAME,
}


def tag(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------
# Reading a stored message


def split_message(eml):
    """(header section bytes without the blank line, body bytes)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        if sep in eml:
            head, body = eml.split(sep, 1)
            return head, body
    return eml, b""


def header_fields(eml):
    """[(name, unfolded value)] in order."""
    head, _ = split_message(eml)
    fields = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b" " + line.strip()
        elif line:
            name, _, value = line.partition(b":")
            fields.append([name, value.strip()])
    return [(n.decode("utf-8", "replace").strip(), v.decode("utf-8", "replace")) for n, v in fields]


def header_values(eml, name):
    return [v for n, v in header_fields(eml) if n.lower() == name.lower()]


def bare_line_ends(data):
    """Offsets of a CR not followed by LF or an LF not preceded by CR."""
    out = []
    for i, b in enumerate(data):
        if b == 13 and (i + 1 >= len(data) or data[i + 1] != 10):
            out.append(i)
        elif b == 10 and (i == 0 or data[i - 1] != 13):
            out.append(i)
    return out


def expected_protocol(tls, auth):
    """RFC 3848 / RFC 6531 'with' types: ESMTP, ESMTPS, ESMTPA, ESMTPSA (UTF8SMTP... too)."""
    suffix = ("S" if tls else "") + ("A" if auth else "")
    return {"ESMTP" + suffix, "UTF8SMTP" + suffix}


# --------------------------------------------------------------------------------------------


class RelayTestCase(unittest.TestCase):
    """One daemon for the class; subclasses set the [relay] options and client identities."""

    relay = {}
    clients = [SCANNER]
    plain_listeners = 1
    implicit_tls = True
    tls = True

    @classmethod
    def setUpClass(cls):
        cls.daemon = OutboxDaemon(cls.__name__, dict(BASE_RELAY, **cls.relay), cls.clients,
                                  plain_listeners=cls.plain_listeners, implicit_tls=cls.implicit_tls, tls=cls.tls)
        cls.addClassCleanup(cls._stop_daemon)
        cls.daemon.start()
        cls.ca = cls.daemon.ca

    @classmethod
    def _stop_daemon(cls):
        d = cls.daemon
        complaint = d.stop()
        diagnostics = d.diagnostics() if complaint else ""
        d.cleanup()
        if complaint:
            raise AssertionError(complaint + "\n" + diagnostics)

    def tearDown(self):
        if not self.daemon.alive():
            self.fail(f"outbox serve is no longer running (exit {self.daemon.proc.returncode})\n"
                      + self.daemon.diagnostics())

    # ---- helpers

    def port_for(self, tls):
        return self.daemon.tls_port if tls == "implicit" else self.daemon.port

    def assertReply(self, reply, code, enhanced=None, what=""):
        """code: an int, or "4xx" / "5xx"."""
        desc = f"{what}: expected {code}{' ' + enhanced if enhanced else ''}, got {reply.code} {reply.text!r}"
        if isinstance(code, str):
            self.assertEqual(str(reply.code)[0], code[0], desc)
        else:
            self.assertEqual(reply.code, code, desc)
        if enhanced:
            self.assertEqual(reply.enhanced, enhanced, desc)

    def raw(self, mode="none", user=None, password=None, port=None):
        """A RawSMTP session after the greeting, EHLO, STARTTLS + EHLO (mode "starttls") and AUTH
        PLAIN (when user is set). Returns (session, last EHLO reply)."""
        port = port or self.port_for(mode)
        s = rc.RawSMTP("127.0.0.1", port, implicit_tls=(mode == "implicit"), ca=self.ca)
        self.addCleanup(s.close)
        self.assertReply(s.greeting(), 220, what="greeting")
        ehlo = s.ehlo()
        self.assertReply(ehlo, 250, what="EHLO")
        if mode == "starttls":
            self.assertReply(s.starttls(), 220, what="STARTTLS")
            ehlo = s.ehlo()
            self.assertReply(ehlo, 250, what="EHLO after STARTTLS")
        if user is not None:
            self.assertReply(s.auth_plain(user, password), 235, what=f"AUTH PLAIN as {user}")
        return s, ehlo

    def raw_data(self, s, message, sender, recipients, what="message"):
        """MAIL, RCPTs, DATA, the message (dot-stuffed here) and the final dot; returns the reply
        to the dot."""
        self.assertReply(s.cmd(f"MAIL FROM:<{sender}>"), 250, what=f"{what}: MAIL FROM:<{sender}>")
        for r in recipients:
            self.assertReply(s.cmd(f"RCPT TO:<{r}>"), 250, what=f"{what}: RCPT TO:<{r}>")
        self.assertReply(s.cmd("DATA"), 354, what=f"{what}: DATA")
        stuffed = re.sub(rb"(?m)^\.", b"..", message)
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        s.send(stuffed + b".\r\n")
        return s.read_reply(timeout=60)

    def wait_one_eml(self, marker, context="", timeout=30, settle=0.5):
        found = self.daemon.wait_for_eml(marker, timeout=timeout, settle=settle)
        if not found:
            self.fail(f"no .eml containing {marker!r} appeared in {self.daemon.sent_dir} within {timeout} s\n"
                      f"{context}\n{self.daemon.diagnostics()}")
        self.assertEqual(len(found), 1, f"{len(found)} .eml files contain {marker!r}, expected exactly one: "
                                        f"{[p for p, _ in found]}\n{context}")
        return found[0][1]

    def assert_nothing_written(self, marker, wait=3.0, message_id=None):
        time.sleep(wait)
        found = self.daemon.emls_with(marker)
        self.assertEqual(found, [], f"a refused message was written: {[p for p, _ in found]}")
        if message_id:
            m = self.daemon.api_message_with_id(message_id, timeout=0)
            self.assertIsNone(m, f"a refused message was queued: {m}")

    def check_received(self, eml, tls, auth, context=""):
        received = header_values(eml, "Received")
        self.assertTrue(received, f"the stored message has no Received header\n{eml[:2000]!r}\n{context}")
        top = received[0]
        self.assertIn(HOSTNAME, top, f"the topmost Received header does not name the relay's hostname "
                                     f"({HOSTNAME}): {top!r}")
        m = re.search(r"\bwith\s+([A-Za-z0-9]+)", top)
        self.assertIsNotNone(m, f"the topmost Received header has no 'with PROTOCOL' clause: {top!r}")
        self.assertIn(m.group(1).upper(), expected_protocol(tls, auth),
                      f"the topmost Received header should record TLS={tls} AUTH={auth} as one of "
                      f"{sorted(expected_protocol(tls, auth))} (RFC 3848): {top!r}")
        return top

    def client_send(self, client, tls, user=None, mechanism=None, pipeline=False, recipients=None, sender=None):
        """Sends one message with a client program or smtplib and checks that exactly one .eml
        with its subject was written, with a Received header recording TLS and AUTH."""
        subject = tag(f"{client}-{tls}-{mechanism or ('auth' if user else 'noauth')}")
        sender = sender or (user.user if user else "app@example.test")
        recipients = recipients or ["rcpt@example.test"]
        message = rc.make_message(sender, recipients, subject)
        kwargs = {"mechanism": mechanism}
        if pipeline:
            kwargs["pipeline"] = True
        transcript = rc.SENDERS[client]("127.0.0.1", self.port_for(tls), tls, user.user if user else None,
                                        user.password if user else None, self.ca, sender, recipients, message,
                                        **kwargs)
        eml = self.wait_one_eml(subject, context=f"{client} transcript:\n{transcript}")
        self.assertIn(f"Subject: {subject}".encode(), eml)
        self.check_received(eml, tls != "none", user is not None, context=transcript)
        return eml, transcript


# --------------------------------------------------------------------------------------------


class ClientsTest(RelayTestCase):
    """Real clients deliver through the listener: plain from an allowed network, STARTTLS and
    implicit TLS with AUTH PLAIN and LOGIN."""

    plain_listeners = 2

    # Python's smtplib

    def test_smtplib_plain_from_allowed_network(self):
        self.client_send("smtplib", "none")

    def test_smtplib_starttls_without_auth_from_allowed_network(self):
        self.client_send("smtplib", "starttls")

    def test_smtplib_starttls_auth_plain(self):
        self.client_send("smtplib", "starttls", SCANNER, "PLAIN")

    def test_smtplib_starttls_auth_login(self):
        self.client_send("smtplib", "starttls", SCANNER, "LOGIN")

    def test_smtplib_starttls_login_chooses_mechanism(self):
        self.client_send("smtplib", "starttls", SCANNER)

    def test_smtplib_implicit_tls_auth_plain(self):
        self.client_send("smtplib", "implicit", SCANNER, "PLAIN")

    def test_smtplib_implicit_tls_auth_login(self):
        self.client_send("smtplib", "implicit", SCANNER, "LOGIN")

    def test_second_listen_address(self):
        subject = tag("second-listener")
        rc.smtplib_send("127.0.0.1", self.daemon.plain_ports[1], "none", None, None, None, "app@example.test",
                        ["rcpt@example.test"], rc.make_message("app@example.test", ["rcpt@example.test"], subject))
        self.check_received(self.wait_one_eml(subject), tls=False, auth=False)

    # swaks

    def test_swaks_plain(self):
        self.client_send("swaks", "none")

    def test_swaks_starttls_auth_plain(self):
        self.client_send("swaks", "starttls", SCANNER, "PLAIN")

    def test_swaks_starttls_auth_login(self):
        self.client_send("swaks", "starttls", SCANNER, "LOGIN")

    def test_swaks_implicit_tls_auth_plain_pipelined(self):
        self.client_send("swaks", "implicit", SCANNER, "PLAIN", pipeline=True)

    # curl

    def test_curl_plain(self):
        self.client_send("curl", "none")

    def test_curl_starttls_auth(self):
        self.client_send("curl", "starttls", SCANNER)

    def test_curl_starttls_auth_login(self):
        self.client_send("curl", "starttls", SCANNER, "LOGIN")

    def test_curl_implicit_tls_auth_plain(self):
        self.client_send("curl", "implicit", SCANNER, "PLAIN")

    # msmtp

    def test_msmtp_starttls_auth(self):
        self.client_send("msmtp", "starttls", SCANNER)

    def test_msmtp_starttls_auth_login(self):
        self.client_send("msmtp", "starttls", SCANNER, "LOGIN")

    def test_msmtp_implicit_tls_auth(self):
        self.client_send("msmtp", "implicit", SCANNER)

    def test_msmtp_implicit_tls_auth_plain_two_recipients(self):
        self.client_send("msmtp", "implicit", SCANNER, "PLAIN", recipients=["a@example.test", "b@example.test"])

    # What is stored

    def test_message_kept_unchanged_apart_from_received(self):
        subject = tag("unchanged")
        original = (
            f"From: Scanner <scanner@example.test>\r\n"
            f"To: rcpt@example.test\r\n"
            f"Subject: {subject}\r\n"
            f"Date: Mon, 07 Dec 2026 10:00:00 +0100\r\n"
            f"Message-ID: <{subject}@relay-tests.example.test>\r\n"
            f"X-Folded: first part\r\n\tsecond part\r\n"
            f"x-lower-case: kept as it is\r\n"
            f"X-Twice: 1\r\nX-Twice: 2\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n"
            f"\r\n"
            f".leading dot (dot-stuffed by the client)\r\n"
            f"..two leading dots\r\n"
            f"trailing spaces   \r\n"
            f"\ttab and UTF-8: gr\u00fc\u00dfe, \u65e5\u672c\r\n"
            f"{'x' * 990}\r\n"
            f"\r\n"
            f"last line\r\n"
        ).encode("utf-8")
        rc.smtplib_send("127.0.0.1", self.daemon.port, "starttls", SCANNER.user, SCANNER.password, self.ca,
                        SCANNER.user, ["rcpt@example.test"], original, mechanism="PLAIN", mail_options=["BODY=8BITMIME"])
        eml = self.wait_one_eml(subject)
        self.assertTrue(eml.endswith(original),
                        "the stored message is not the sent one preceded by added header fields:\n"
                        f"sent:\n{original!r}\nstored:\n{eml!r}")
        added = eml[: len(eml) - len(original)]
        added_names = [n for n, _ in header_fields(added + b"\r\n")]
        self.assertEqual([n.lower() for n in added_names], ["received"],
                         f"only a Received header may be added to a message that has Message-ID and Date: {added!r}")
        self.check_received(eml, tls=True, auth=True)

    def test_message_id_and_date_added_when_missing(self):
        subject = tag("no-id-no-date")
        message = rc.make_message("app@example.test", ["rcpt@example.test"], subject, message_id=False, date=False)
        rc.smtplib_send("127.0.0.1", self.daemon.port, "none", None, None, None, "app@example.test",
                        ["rcpt@example.test"], message)
        eml = self.wait_one_eml(subject)
        ids = header_values(eml, "Message-ID")
        dates = header_values(eml, "Date")
        self.assertEqual(len(ids), 1, f"expected one Message-ID header, got {ids}")
        self.assertRegex(ids[0], r"^<[^<>@\s]+@[^<>@\s]+>$")
        self.assertEqual(len(dates), 1, f"expected one Date header, got {dates}")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(dates[0]), dates)
        _, body = split_message(eml)
        _, sent_body = split_message(message)
        self.assertEqual(body, sent_body)

    def test_envelope_recipients_decide(self):
        subject = tag("envelope")
        message_id = f"<{subject}@relay-tests.example.test>"
        message = rc.make_message("app@example.test", ["to@example.test"], subject, message_id=False,
                                  extra_headers=[f"Message-ID: {message_id}", "Cc: header-only@example.test"])
        rc.smtplib_send("127.0.0.1", self.daemon.port, "none", None, None, None, "envelope-sender@example.test",
                        ["to@example.test", "envelope-only@example.test"], message)
        eml = self.wait_one_eml(subject)
        self.assertIn(b"Cc: header-only@example.test", eml)
        record = self.daemon.api_message_with_id(message_id)
        self.assertIsNotNone(record, f"GET /v1/messages has no message with message_id {message_id}: "
                                     f"{[m.get('message_id') for m in self.daemon.api_messages()][-20:]}")
        recipients = sorted(r["address"] if isinstance(r, dict) else r for r in record.get("recipients", []))
        self.assertEqual(recipients, ["envelope-only@example.test", "to@example.test"],
                         f"the envelope's recipients (not the header's) must be the message's recipients: {record}")
        self.assertIn("envelope-sender@example.test", record.get("from", ""), record)

    def test_smtputf8_and_8bitmime(self):
        subject = tag("utf8")
        rcpt = "j\u00f6rg@example.test"
        message = (f"From: app@example.test\r\nTo: {rcpt}\r\nSubject: {subject} gr\u00fc\u00dfe\r\n"
                   f"Message-ID: <{subject}@relay-tests.example.test>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
                   f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   f"Content-Transfer-Encoding: 8bit\r\n\r\n\u00e9t\u00e9 \u2014 \u65e5\u672c\u8a9e\r\n").encode("utf-8")
        rc.smtplib_send("127.0.0.1", self.daemon.port, "none", None, None, None, "app@example.test", [rcpt], message,
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        eml = self.wait_one_eml(subject)
        self.assertTrue(eml.endswith(message), f"the UTF-8 message was changed:\nsent {message!r}\nstored {eml!r}")
        record = self.daemon.api_message_with_id(f"{subject}@relay-tests.example.test")
        self.assertIsNotNone(record, "the SMTPUTF8 message is not in GET /v1/messages")
        recipients = [r["address"] if isinstance(r, dict) else r for r in record.get("recipients", [])]
        self.assertEqual(recipients, [rcpt], record)

    # Raw protocol

    def test_ehlo_before_and_after_starttls(self):
        s = rc.RawSMTP("127.0.0.1", self.daemon.port, ca=self.ca)
        self.addCleanup(s.close)
        greeting = s.greeting()
        self.assertReply(greeting, 220, what="greeting")
        self.assertIn(HOSTNAME, greeting.text, "the greeting should name the configured hostname")
        ehlo = s.ehlo()
        self.assertReply(ehlo, 250, what="EHLO")
        self.assertTrue(ehlo.lines[0].startswith(HOSTNAME), f"EHLO's first line should be the hostname: {ehlo}")
        kw = ehlo.keywords()
        for k in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS"):
            self.assertIn(k, kw, f"EHLO before TLS does not offer {k}: {ehlo}")
        self.assertEqual(kw["SIZE"], ["26214400"], f"SIZE must give max-message-size: {ehlo}")
        self.assertNotIn("AUTH", kw, f"AUTH must not be offered before TLS (require-tls-for-auth): {ehlo}")
        self.assertReply(s.starttls(), 220, what="STARTTLS")
        ehlo = s.ehlo()
        self.assertReply(ehlo, 250, what="EHLO after STARTTLS")
        kw = ehlo.keywords()
        self.assertNotIn("STARTTLS", kw, f"STARTTLS must not be offered after TLS: {ehlo}")
        self.assertIn("AUTH", kw, f"AUTH must be offered after STARTTLS: {ehlo}")
        self.assertTrue({"PLAIN", "LOGIN"} <= {m.upper() for m in kw["AUTH"]}, f"AUTH PLAIN LOGIN expected: {ehlo}")
        for k in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"):
            self.assertIn(k, kw, f"EHLO after STARTTLS does not offer {k}: {ehlo}")

    def test_ehlo_on_implicit_tls(self):
        s, ehlo = self.raw("implicit")
        kw = ehlo.keywords()
        self.assertNotIn("STARTTLS", kw, f"STARTTLS must not be offered on implicit TLS: {ehlo}")
        self.assertIn("AUTH", kw, f"AUTH must be offered on implicit TLS: {ehlo}")
        self.assertTrue({"PLAIN", "LOGIN"} <= {m.upper() for m in kw["AUTH"]}, f"AUTH PLAIN LOGIN expected: {ehlo}")

    def test_pipelined_transaction(self):
        s, _ = self.raw("none")
        subject = tag("pipelined")
        s.send("MAIL FROM:<app@example.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        for code, what in ((250, "MAIL"), (250, "RCPT a"), (250, "RCPT b"), (354, "DATA")):
            self.assertReply(s.read_reply(), code, what=f"pipelined {what}")
        s.send(rc.make_message("app@example.test", ["a@example.test"], subject) + b".\r\nQUIT\r\n")
        self.assertReply(s.read_reply(), 250, what="final dot")
        self.assertReply(s.read_reply(), 221, what="QUIT")
        self.wait_one_eml(subject)

    def test_bdat_chunking(self):
        s, _ = self.raw("none")
        subject = tag("bdat")
        chunk1 = rc.make_message("app@example.test", ["rcpt@example.test"], subject,
                                 body="first chunk\r\n..two dots stay two in BDAT\r\n.\r\nnot the end\r\n")
        chunk2 = b"second chunk, the last\r\n"
        self.assertReply(s.cmd("MAIL FROM:<app@example.test> BODY=8BITMIME"), 250, what="MAIL")
        self.assertReply(s.cmd("RCPT TO:<rcpt@example.test>"), 250, what="RCPT")
        s.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        self.assertReply(s.read_reply(), 250, what="BDAT chunk 1")
        s.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        self.assertReply(s.read_reply(), 250, what="BDAT LAST")
        eml = self.wait_one_eml(subject)
        _, body = split_message(eml)
        _, body1 = split_message(chunk1)
        self.assertEqual(body, body1 + chunk2, "BDAT data must be stored as sent (no dot-unstuffing, nothing ends it early)")

    def test_extension_parameters_accepted(self):
        s, _ = self.raw("none")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=relay-test-1"),
                         250, what="MAIL with SIZE, BODY, RET, ENVID")
        self.assertReply(s.cmd("RCPT TO:<rcpt@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;rcpt@example.test"),
                         250, what="RCPT with NOTIFY, ORCPT")
        self.assertReply(s.cmd("RSET"), 250, what="RSET")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test> SMTPUTF8"), 250, what="MAIL with SMTPUTF8")
        self.assertReply(s.cmd("RSET"), 250, what="RSET")
        self.assertReply(s.cmd("QUIT"), 221, what="QUIT")


# --------------------------------------------------------------------------------------------


class RefusalsTest(RelayTestCase):
    """What the listener refuses, and with which reply."""

    # auth-failure-limit (docs/options.md; default 5 per address or user, then 454 4.7.0) is
    # raised so the wrong-password tests here do not lock each other out: AuthLockoutTest has it.
    relay = {"max-message-size": 1048576, "auth-failure-limit": 1000}
    clients = [SCANNER, PRINTER]

    def test_auth_not_offered_before_tls_and_refused(self):
        s, ehlo = self.raw("none")
        self.assertNotIn("AUTH", ehlo.keywords(), f"AUTH offered before TLS: {ehlo}")
        self.assertReply(s.auth_plain(SCANNER.user, SCANNER.password), "5xx", what="AUTH PLAIN before TLS")
        self.assertReply(s.cmd("AUTH LOGIN"), "5xx", what="AUTH LOGIN before TLS")

    def test_wrong_password_plain_535(self):
        s, _ = self.raw("starttls")
        self.assertReply(s.auth_plain(SCANNER.user, "wrong"), 535, "5.7.8", what="AUTH PLAIN, wrong password")

    def test_wrong_password_login_535(self):
        s, _ = self.raw("starttls")
        self.assertReply(s.auth_login(SCANNER.user, "wrong"), 535, "5.7.8", what="AUTH LOGIN, wrong password")

    def test_wrong_password_implicit_tls_535(self):
        s, _ = self.raw("implicit")
        self.assertReply(s.auth_plain(SCANNER.user, "wrong"), 535, "5.7.8", what="AUTH PLAIN, wrong password")

    def test_unknown_user_535(self):
        s, _ = self.raw("starttls")
        self.assertReply(s.auth_plain("nobody@example.test", SCANNER.password), 535, "5.7.8", what="unknown user")

    def test_wrong_password_with_smtplib(self):
        with self.assertRaises(rc.ClientError) as cm:
            rc.smtplib_send("127.0.0.1", self.daemon.port, "starttls", SCANNER.user, "wrong", self.ca, SCANNER.user,
                            ["rcpt@example.test"], rc.make_message(SCANNER.user, ["rcpt@example.test"], tag("wrongpw")))
        self.assertIn("535", str(cm.exception))

    def test_allowed_senders(self):
        s, _ = self.raw("starttls", SCANNER.user, SCANNER.password)
        for sender in ("scanner@example.test", "anyone@example.test", "printer@other.test"):
            self.assertReply(s.cmd(f"MAIL FROM:<{sender}>"), 250, what=f"MAIL FROM:<{sender}> (allowed)")
            self.assertReply(s.cmd("RSET"), 250, what="RSET")

    def test_sender_not_allowed_553(self):
        s, _ = self.raw("starttls", SCANNER.user, SCANNER.password)
        self.assertReply(s.cmd("MAIL FROM:<someone@other.test>"), 553, "5.7.1", what="MAIL FROM not in allowed-senders")

    def test_other_clients_sender_not_allowed_553(self):
        s, _ = self.raw("starttls", PRINTER.user, PRINTER.password)
        self.assertReply(s.cmd("MAIL FROM:<printer@other.test>"), 250, what="printer's own sender")
        self.assertReply(s.cmd("RSET"), 250, what="RSET")
        self.assertReply(s.cmd("MAIL FROM:<scanner@example.test>"), 553, "5.7.1",
                         what="MAIL FROM allowed for another client only")

    def test_header_from_not_allowed_550_after_dot(self):
        s, _ = self.raw("starttls", SCANNER.user, SCANNER.password)
        subject = tag("bad-header-from")
        message = rc.make_message("Evil <evil@other.test>", ["rcpt@example.test"], subject)
        reply = self.raw_data(s, message, SCANNER.user, ["rcpt@example.test"])
        self.assertReply(reply, 550, "5.7.1", what="message whose From header is not an allowed sender")
        self.assert_nothing_written(subject)

    def test_null_sender_allowed(self):
        s, _ = self.raw("starttls", SCANNER.user, SCANNER.password)
        subject = tag("null-sender")
        reply = self.raw_data(s, rc.make_message(SCANNER.user, ["rcpt@example.test"], subject), "", ["rcpt@example.test"])
        self.assertReply(reply, 250, what="message with MAIL FROM:<>")
        self.check_received(self.wait_one_eml(subject), tls=True, auth=True)

    def test_size_parameter_over_limit_552(self):
        s, ehlo = self.raw("none")
        self.assertEqual(ehlo.keywords().get("SIZE"), ["1048576"], f"SIZE must give max-message-size: {ehlo}")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test> SIZE=1048577"), 552, "5.3.4", what="SIZE over the limit")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test> SIZE=1048576"), 250, what="SIZE at the limit")

    def test_body_over_limit_552_nothing_queued(self):
        s, _ = self.raw("none")
        subject = tag("too-big")
        message_id = f"<{subject}@relay-tests.example.test>"
        line = b"0123456789" * 7 + b"\r\n"
        body = line * (1310720 // len(line))  # 1.25 MiB, over the 1 MiB limit
        message = rc.make_message("app@example.test", ["rcpt@example.test"], subject, body=body, message_id=False,
                                  extra_headers=[f"Message-ID: {message_id}"])
        try:
            reply = self.raw_data(s, message, "app@example.test", ["rcpt@example.test"])
        except (BrokenPipeError, ConnectionResetError) as e:
            self.fail(f"the server closed the connection before the final dot of an oversized message ({e}); "
                      "it must read to the dot and answer 552 5.3.4")
        self.assertReply(reply, 552, "5.3.4", what="message body over max-message-size")
        self.assert_nothing_written(subject, message_id=message_id)

    def test_too_many_recipients_452(self):
        s, _ = self.raw("none")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test>"), 250, what="MAIL")
        for i in range(100):
            self.assertReply(s.cmd(f"RCPT TO:<r{i}@example.test>"), 250, what=f"RCPT {i + 1} of max-recipients 100")
        self.assertReply(s.cmd("RCPT TO:<r100@example.test>"), 452, "4.5.3", what="RCPT 101 (over max-recipients)")
        self.assertReply(s.cmd("RSET"), 250, what="RSET")

    def test_command_line_too_long_500(self):
        s, _ = self.raw("none")
        self.assertReply(s.cmd("NOOP " + "x" * 1000), 500, "5.5.2", what="a 1007-octet command line")

    def test_vrfy_252(self):
        s, _ = self.raw("none")
        self.assertReply(s.cmd("VRFY scanner@example.test"), 252, what="VRFY")

    def _pipelined_starttls(self, injected):
        s = rc.RawSMTP("127.0.0.1", self.daemon.port, ca=self.ca)
        self.addCleanup(s.close)
        self.assertReply(s.greeting(), 220, what="greeting")
        self.assertReply(s.ehlo(), 250, what="EHLO")
        s.send(b"STARTTLS\r\n" + injected)
        self.assertReply(s.read_reply(), 220, what="STARTTLS (with a command in the same packet)")
        self.assertEqual(s.buffer, b"", f"the server answered the injected command in clear: {s.buffer!r}")
        try:
            s._wrap()
        except (ssl.SSLError, OSError) as e:
            self.fail(f"the TLS handshake after a pipelined STARTTLS failed ({e!r}): the server may have "
                      "answered the injected command in clear")
        self.assertTrue(s.nothing_more(2.0),
                        f"after the TLS handshake the server answered the command injected before it: {s.buffer!r}")
        ehlo = s.ehlo()
        self.assertReply(ehlo, 250, what="EHLO after TLS")
        self.assertIn("AUTH", ehlo.keywords(), f"the reply read is not the EHLO's: {ehlo}")
        return s

    def test_starttls_injection_rset_discarded(self):
        self._pipelined_starttls(b"RSET\r\n")

    def test_starttls_injection_mail_discarded(self):
        s = self._pipelined_starttls(b"MAIL FROM:<evil@example.test>\r\n")
        # Had the injected MAIL been kept, this one would be a nested MAIL (503).
        self.assertReply(s.cmd("MAIL FROM:<app@example.test>"), 250, what="MAIL after TLS")
        self.assertReply(s.cmd("RSET"), 250, what="RSET")


# --------------------------------------------------------------------------------------------


class SmugglingTest(RelayTestCase):
    """SMTP smuggling: only <CRLF>.<CRLF> ends DATA; bare CR / LF are stored as CRLF."""

    implicit_tls = False

    def _smuggle(self, payload):
        marker = tag("smuggled")
        evil = f"evil-{marker}@x.test"
        s, _ = self.raw("none")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test>"), 250, what="MAIL")
        self.assertReply(s.cmd("RCPT TO:<rcpt@example.test>"), 250, what="RCPT")
        self.assertReply(s.cmd("DATA"), 354, what="DATA")
        head = rc.make_message("app@example.test", ["rcpt@example.test"], f"carrier {marker}", body=b"")
        smuggled = (f"MAIL FROM:<{evil}>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\n"
                    f"From: {evil}\r\nSubject: SMUGGLED {marker}\r\n\r\n"
                    f"SMUGGLED-MAIL FROM:<evil@x> {marker}\r\n").encode()
        s.send(head + b"first line" + payload + smuggled + b"\r\n.\r\n")
        reply = s.read_reply(timeout=60)
        self.assertReply(reply, 250, what=f"final dot after the payload {payload!r}")
        self.assertTrue(s.nothing_more(2.0),
                        f"more replies after the final dot: the payload {payload!r} ended DATA early: {s.buffer!r}")
        self.assertReply(s.cmd("QUIT"), 221, what="QUIT")
        found = self.daemon.wait_for_eml(marker, timeout=30, settle=2.0)
        self.assertEqual(len(found), 1, f"payload {payload!r}: expected exactly one .eml containing {marker}, "
                                        f"got {[p for p, _ in found]}")
        eml = found[0][1]
        self.assertIn(f"Subject: carrier {marker}".encode(), eml)
        self.assertIn(f"SMUGGLED-MAIL FROM:<evil@x> {marker}".encode(), eml,
                      "the smuggled text must be inside the one message")
        self.assertIn(f"MAIL FROM:<{evil}>".encode(), eml)
        self.assertEqual(bare_line_ends(eml), [], f"bare CR or LF left in the stored message: {eml!r}")
        # The payload's bare CR / LF become CRLF; its dot is kept as a line of its own or (for
        # "\r\n.\r", where it starts a CRLF line) may be taken as a stuffed dot and removed.
        self.assertTrue(b"first line\r\n.\r\nMAIL FROM:" in eml or b"first line\r\n\r\nMAIL FROM:" in eml,
                        f"the payload {payload!r} must be stored as CRLF.CRLF (or CRLF CRLF): {eml!r}")
        self.assertEqual(self.daemon.emls_with(evil.encode()), found[:1], "the smuggled sender got its own message")

    def test_smuggling_lf_dot_lf(self):
        self._smuggle(b"\n.\n")

    def test_smuggling_lf_dot_crlf(self):
        self._smuggle(b"\n.\r\n")

    def test_smuggling_cr_dot_cr(self):
        self._smuggle(b"\r.\r")

    def test_smuggling_crlf_dot_cr(self):
        self._smuggle(b"\r\n.\r")


# --------------------------------------------------------------------------------------------


class AuthLockoutTest(RelayTestCase):
    """Beyond the listener's first brief, from docs/options.md: after auth-failure-limit failed
    AUTH attempts (from one address or for one user) within auth-lockout-time, AUTH is refused
    with 454 4.7.0, even with the right password."""

    relay = {"auth-failure-limit": 2, "auth-lockout-time": "00:05:00"}
    implicit_tls = False

    def test_lockout_after_failures(self):
        for i in range(2):
            s, _ = self.raw("starttls")
            self.assertReply(s.auth_plain(SCANNER.user, f"wrong-{i}"), 535, "5.7.8", what=f"failed AUTH {i + 1}")
            s.close()
        s, _ = self.raw("starttls")
        self.assertReply(s.auth_plain(SCANNER.user, SCANNER.password), 454, "4.7.0",
                         what="AUTH with the right password after auth-failure-limit failures")


# --------------------------------------------------------------------------------------------


class IntakeLimitTest(RelayTestCase):
    """[client-NAME] intake-limit-per-minute: beyond it MAIL gets 452 4.7.0 (try again later);
    another client goes on."""

    clients = [Client("busy", "busy@example.test", "Busy-Pass-3", "*@example.test", intake_limit=3), PRINTER]
    implicit_tls = False

    def test_beyond_the_limit_452_then_other_clients_go_on(self):
        busy = self.clients[0]
        s, _ = self.raw("starttls", busy.user, busy.password)
        markers = []
        for i in range(3):
            marker = tag(f"intake-{i}")
            markers.append(marker)
            message = rc.make_message(busy.user, ["rcpt@example.test"], marker)
            self.assertReply(self.raw_data(s, message, busy.user, ["rcpt@example.test"], what=f"message {i + 1}"), 250)
        self.assertReply(s.cmd(f"MAIL FROM:<{busy.user}>"), 452, "4.7.0", what="MAIL beyond intake-limit-per-minute")
        for marker in markers:
            self.wait_one_eml(marker)
        # Another client is not limited by this one.
        p, _ = self.raw("starttls", PRINTER.user, PRINTER.password)
        marker = tag("intake-other")
        message = rc.make_message(PRINTER.user, ["rcpt@example.test"], marker)
        self.assertReply(self.raw_data(p, message, PRINTER.user, ["rcpt@example.test"], what="the other client"), 250)
        self.wait_one_eml(marker)


# --------------------------------------------------------------------------------------------


class NoAllowedNetworksTest(RelayTestCase):
    """allowed-networks empty: loopback too must AUTH."""

    relay = {"allowed-networks": ""}

    def test_mail_without_auth_530(self):
        s, _ = self.raw("none")
        self.assertReply(s.cmd("MAIL FROM:<scanner@example.test>"), 530, "5.7.0", what="MAIL without AUTH")

    def test_mail_without_auth_after_starttls_530(self):
        s, _ = self.raw("starttls")
        self.assertReply(s.cmd("MAIL FROM:<scanner@example.test>"), 530, "5.7.0", what="MAIL without AUTH over TLS")

    def test_mail_without_auth_implicit_tls_530(self):
        s, _ = self.raw("implicit")
        self.assertReply(s.cmd("MAIL FROM:<scanner@example.test>"), 530, "5.7.0", what="MAIL without AUTH over TLS")

    def test_smtplib_plain_refused(self):
        with self.assertRaises(rc.ClientError) as cm:
            rc.smtplib_send("127.0.0.1", self.daemon.port, "none", None, None, None, "scanner@example.test",
                            ["rcpt@example.test"], rc.make_message("scanner@example.test", ["rcpt@example.test"], tag("x")))
        self.assertIn("530", str(cm.exception))

    def test_smtplib_starttls_auth_delivers(self):
        self.client_send("smtplib", "starttls", SCANNER, "PLAIN")

    def test_swaks_implicit_tls_auth_login_delivers(self):
        self.client_send("swaks", "implicit", SCANNER, "LOGIN")


# --------------------------------------------------------------------------------------------


class TimeoutsTest(RelayTestCase):
    """command-timeout 2 s, data-timeout 3 s."""

    relay = {"command-timeout": "00:00:02", "data-timeout": "00:00:03"}
    implicit_tls = False

    def _expect_421_close(self, s, after, at_least, what):
        started = time.monotonic()
        try:
            reply = s.read_reply(timeout=at_least + 10)
        except (socket.timeout, TimeoutError):
            self.fail(f"{what}: no reply within {at_least + 10:.0f} s of idling (expected 421 after {at_least} s)")
        except ConnectionError as e:
            self.fail(f"{what}: the server closed the connection without a 421 ({e})")
        elapsed = time.monotonic() - after
        self.assertReply(reply, 421, what=what)
        self.assertGreaterEqual(elapsed, at_least - 0.5, f"{what}: the 421 came after {elapsed:.1f} s, too early")
        self.assertTrue(s.wait_closed(5), f"{what}: the connection stayed open after the 421")
        return time.monotonic() - started

    def test_idle_after_ehlo_421_and_close(self):
        s, _ = self.raw("none")
        self._expect_421_close(s, time.monotonic(), 2, "idle after EHLO")

    def test_idle_after_greeting_421_and_close(self):
        s = rc.RawSMTP("127.0.0.1", self.daemon.port)
        self.addCleanup(s.close)
        self.assertReply(s.greeting(), 220, what="greeting")
        self._expect_421_close(s, time.monotonic(), 2, "idle after the greeting")

    def test_idle_in_data_421_and_close_nothing_written(self):
        s, _ = self.raw("none")
        subject = tag("idle-in-data")
        self.assertReply(s.cmd("MAIL FROM:<app@example.test>"), 250, what="MAIL")
        self.assertReply(s.cmd("RCPT TO:<rcpt@example.test>"), 250, what="RCPT")
        self.assertReply(s.cmd("DATA"), 354, what="DATA")
        s.send(rc.make_message("app@example.test", ["rcpt@example.test"], subject))
        self._expect_421_close(s, time.monotonic(), 3, "idle in DATA past data-timeout")
        self.assert_nothing_written(subject, wait=1.0)

    def test_active_client_is_not_cut_off(self):
        s, _ = self.raw("none")
        for i in range(5):
            time.sleep(1.0)
            self.assertReply(s.cmd("NOOP"), 250, what=f"NOOP {i + 1} (one a second, command-timeout 2 s)")
        subject = tag("after-noops")
        self.assertReply(self.raw_data(s, rc.make_message("app@example.test", ["rcpt@example.test"], subject),
                                       "app@example.test", ["rcpt@example.test"]), 250, what="message")
        self.wait_one_eml(subject)


# --------------------------------------------------------------------------------------------


class NoCertificateTest(RelayTestCase):
    """No certificate: no STARTTLS, and (require-tls-for-auth) no AUTH."""

    tls = False
    implicit_tls = False

    def test_no_starttls_no_auth(self):
        s, ehlo = self.raw("none")
        kw = ehlo.keywords()
        self.assertNotIn("STARTTLS", kw, f"STARTTLS offered without a certificate: {ehlo}")
        self.assertNotIn("AUTH", kw, f"AUTH offered without TLS: {ehlo}")
        r = s.cmd("STARTTLS")
        self.assertIn(r.code // 100, (4, 5), f"STARTTLS without a certificate must be refused: {r}")

    def test_plain_delivery_still_works(self):
        self.client_send("smtplib", "none")


# --------------------------------------------------------------------------------------------


class PostfixClientTest(RelayTestCase):
    """Postfix (a private testbed instance) relays to the listener with TLS required and SASL;
    allowed-networks is empty so AUTH is needed."""

    relay = {"allowed-networks": ""}
    clients = [SCANNER, POSTFIX_CLIENT]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        rc.find_program("postfix")
        rc.find_program("smtp-source")
        cls.pfci = tempfile.mkdtemp(prefix="outbox-relay-pfci-client-", dir="/tmp")
        cls.pf_ports = [free_port(), free_port(), free_port()]  # submission, smtps, plain
        cls.addClassCleanup(cls._stop_postfix)
        rc.postfix_start(cls.pfci, *cls.pf_ports)

    @classmethod
    def _stop_postfix(cls):
        rc.postfix_stop(cls.pfci)
        if not os.environ.get("RELAY_TEST_KEEP"):
            shutil.rmtree(cls.pfci, ignore_errors=True)

    def _relay_through_postfix(self, implicit):
        port = self.daemon.tls_port if implicit else self.daemon.port
        rc.postfix_configure(self.pfci, rc.postfix_relay_settings(self.pfci, "127.0.0.1", port, POSTFIX_CLIENT.user,
                                                                  POSTFIX_CLIENT.password, self.ca, implicit_tls=implicit))
        subject = tag("postfix-implicit" if implicit else "postfix-starttls")
        out = rc.smtp_source_send("127.0.0.1", self.pf_ports[2], "app@example.test", "someone@example.test", subject)
        deadline = time.monotonic() + 60
        found = []
        while time.monotonic() < deadline and not found:
            found = self.daemon.wait_for_eml(subject, timeout=10, settle=1.0)
            if not found:
                rc.postfix_flush(self.pfci)
        if not found:
            self.fail(f"Postfix did not deliver {subject} to the listener within 60 s\nsmtp-source: {out}\n"
                      f"{rc.postfix_diagnostics(self.pfci)}\n{self.daemon.diagnostics()}")
        self.assertEqual(len(found), 1, f"{len(found)} .eml files for {subject}")
        eml = found[0][1]
        self.check_received(eml, tls=True, auth=True)
        received = header_values(eml, "Received")
        self.assertGreaterEqual(len(received), 2, f"Postfix's own Received header should follow Outbox's: {received}")
        self.assertNotIn(HOSTNAME, received[1], "Outbox's Received header must be the topmost")
        self.assertIn(b"app@example.test", eml)

    def test_postfix_relays_over_starttls_with_sasl(self):
        self._relay_through_postfix(implicit=False)

    def test_postfix_relays_over_implicit_tls_with_sasl(self):
        self._relay_through_postfix(implicit=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
