"""`outbox probe` and `outbox send` with server-type = EWS against a real NTLM acceptor.

The server is Tests/NTLM/ntlm_ews_server.py (pyspnego's NTLM acceptor behind a small HTTPS EWS
endpoint), one per test, with a TLS certificate this suite makes with openssl. Run by
scripts/ntlm-ews-test.sh (which installs pyspnego and builds outbox when OUTBOX_BIN is unset).
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "ntlm_ews_server.py")
PASSWORD = "S3cret-" + uuid.uuid4().hex[:8]


def outbox_bin():
    path = os.environ.get("OUTBOX_BIN")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("OUTBOX_BIN must name the outbox binary (scripts/ntlm-ews-test.sh sets it)")
    return path


class NTLMServer:
    def __init__(self, tls_dir, schemes="NTLM,Negotiate", plain=False):
        self.dir = tempfile.mkdtemp(prefix="outbox-ntlm-py-")
        self.users = os.path.join(self.dir, "users")
        with open(self.users, "w") as f:
            f.write(f"TESTDOM:ntlmuser:{PASSWORD}\n:ntlmuser@testdom.test:{PASSWORD}\n")
        self.events_path = os.path.join(self.dir, "events.jsonl")
        args = [sys.executable, SERVER, "--users", self.users, "--events", self.events_path, "--schemes", schemes]
        args += ["--plain"] if plain else ["--cert", os.path.join(tls_dir, "server.pem"), "--key", os.path.join(tls_dir, "server.key")]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the NTLM server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"{'http' if plain else 'https'}://127.0.0.1:{self.port}/EWS/Exchange.asmx"

    def events(self):
        if not os.path.exists(self.events_path):
            return []
        with open(self.events_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class NTLMEWSTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tls = tempfile.mkdtemp(prefix="outbox-ntlm-tls-")
        ca_key, ca, key, csr, cert = (os.path.join(cls.tls, n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
        ext = os.path.join(cls.tls, "ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca_key,
            "-out", ca, "-days", "2", "-subj", "/CN=Outbox NTLM test CA")
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=localhost")
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
            "-extfile", ext)
        cls.ca = ca

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tls, ignore_errors=True)

    def server(self, **kw):
        s = NTLMServer(self.tls, **kw)
        self.addCleanup(s.stop)
        return s

    def outbox(self, server, *args, user="TESTDOM\\ntlmuser", password=PASSWORD, url=None, extra=()):
        work = tempfile.mkdtemp(prefix="outbox-ntlm-cli-")
        self.addCleanup(shutil.rmtree, work, True)
        config = os.path.join(work, "outbox.cfg")
        with open(config, "w") as f:
            f.write("\n".join([
                "[smtp-client]", "server-type = EWS", f"server = {url or server.url}", "enable-authentication = true",
                f"user = {user}", f"password = {password}", "connect-timeout = 00:00:05", "protocol-timeout = 00:00:10", *extra,
                "", "[outbox]", f"tls-ca-file = {self.ca}", f"data-directory = {work}/data", "",
            ]))
        r = subprocess.run([outbox_bin(), *args, "--config", config], capture_output=True, text=True, timeout=60, cwd=work)
        # The password never shows, whatever happened.
        self.assertNotIn(password, r.stdout + r.stderr)
        return r

    def test_probe_reports_offered_and_used_schemes(self):
        s = self.server()
        r = self.outbox(s, "probe")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("offered:      NTLM, Negotiate (HTTP 401 without credentials)", r.stdout)
        self.assertIn("auth:         NTLM: authenticated (GetFolder NoError) (1 NTLM handshake)", r.stdout)
        events = s.events()
        # The probe learned the schemes without credentials and never sent the password in Basic.
        self.assertEqual([e["event"] for e in events], ["unauthenticated", "negotiate", "authenticated", "served"])
        self.assertIsNone(events[0]["scheme"])
        self.assertEqual(events[2]["user"], "TESTDOM\\ntlmuser")
        self.assertEqual(events[3]["op"], "GetFolder")

    def test_probe_json_negotiate_only_with_a_upn(self):
        s = self.server(schemes="Negotiate")
        r = self.outbox(s, "probe", "--json", user="ntlmuser@testdom.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["offeredSchemes"], ["Negotiate"])
        self.assertEqual(report["authScheme"], "Negotiate")
        self.assertEqual(report["ntlmHandshakes"], 1)
        self.assertEqual([e.get("user") for e in s.events() if e["event"] == "authenticated"], ["ntlmuser@testdom.test"])

    def test_send_delivers_through_ntlm(self):
        s = self.server()
        subject = "ntlm " + uuid.uuid4().hex[:8]
        r = self.outbox(s, "send", "--from", "ntlmuser@testdom.test", "--to", "rcpt@example.test", "--subject", subject,
                        "--text", "sent over NTLM")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        served = [e for e in s.events() if e["event"] == "served"]
        self.assertEqual(len(served), 1)
        mime = base64.b64decode(served[0]["mime"]).decode()
        self.assertIn(f"Subject: {subject}", mime)
        self.assertIn("sent over NTLM", mime)

    def test_wrong_password_fails_permanently(self):
        s = self.server()
        wrong = "Wrong-" + uuid.uuid4().hex[:8]
        r = self.outbox(s, "probe", password=wrong)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("refused the NTLM credentials", r.stdout)
        self.assertIn("auth_failed", [e["event"] for e in s.events()])
        self.assertNotIn("served", [e["event"] for e in s.events()])

    def test_ntlm_over_plain_http_is_refused(self):
        s = self.server(plain=True)
        r = self.outbox(s, "probe")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("https", r.stdout)
        self.assertNotIn("negotiate", [e["event"] for e in s.events()])
        # Asked for explicitly, it is a configuration error (exit 2) before any request.
        r = self.outbox(s, "probe", extra=["mail.ews.auth.mechanisms = NTLM"])
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("https", r.stderr)


if __name__ == "__main__":
    unittest.main()
