"""The HTTP listener over HTTPS ([outbox] http-tls-certificate-file and http-tls-key-file).

A CA and a server certificate for localhost and 127.0.0.1 are made with openssl for the test. The
dashboard (login form, login, overview) and the API answer over HTTPS, verified against that CA
(and refused by a client that does not trust it); the session cookie is Secure (and HttpOnly,
SameSite=Strict); plain HTTP gets no answer on that port. A key that does not belong to the
certificate, and a certificate without its key, stop the daemon with an error naming the options.

Run by scripts/test.sh: python3 -m unittest -v Tests/Dashboard/test_https.py
"""
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_dashboard import TOKEN, Daemon, Sink, free_port, outbox_bin  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(folder):
    """ca.pem, server.pem (localhost, 127.0.0.1, signed by the CA), server.key, other.key."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Outbox dashboard test CA", cwd=folder)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=folder)
    with open(os.path.join(folder, "san.ext"), "w") as f:
        f.write("subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "other.key", cwd=folder)


class HTTPSListener(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("openssl"):
            raise AssertionError("openssl is missing (scripts/test.sh installs it)")
        cls.pki = tempfile.mkdtemp(prefix="outbox-https-pki-")
        make_pki(cls.pki)
        cls.sink = Sink(free_port())
        cls.sink.start()

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()
        shutil.rmtree(cls.pki, ignore_errors=True)

    def pem(self, name):
        return os.path.join(self.pki, name)

    def request(self, port, method, path, body=None, headers=None, context=None, host="localhost"):
        """One HTTPS request to host:port, verified against the test CA unless another context is given."""
        context = context or ssl.create_default_context(cafile=self.pem("ca.pem"))
        connection = http.client.HTTPSConnection(host, port, timeout=30, context=context)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def test_dashboard_and_api_over_https(self):
        daemon = Daemon(self.sink.port, scheme="https", extra=[
            f"http-tls-certificate-file = {self.pem('server.pem')}", f"http-tls-key-file = {self.pem('server.key')}"])
        try:
            daemon.start()
            port = daemon.port
            # The login form: a pre-session cookie, Secure, with the form's CSRF token.
            status, headers, body = self.request(port, "GET", "/login")
            self.assertEqual(status, 200, body[:300])
            cookies = [v for k, v in headers if k.lower() == "set-cookie"]
            self.assertEqual(len(cookies), 1, headers)
            for attribute in ["Secure", "HttpOnly", "SameSite=Strict"]:
                self.assertIn(attribute, cookies[0].split("; "), cookies[0])
            pre = cookies[0].split(";")[0]
            csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', body).group(1)
            # Log in: a new session cookie, Secure too; the overview with it.
            form = urllib.parse.urlencode({"csrf": csrf, "token": TOKEN})
            status, headers, body = self.request(port, "POST", "/login", body=form, headers={
                "Content-Type": "application/x-www-form-urlencoded", "Cookie": pre})
            self.assertEqual(status, 303, body[:300])
            cookies = [v for k, v in headers if k.lower() == "set-cookie"]
            self.assertEqual(len(cookies), 1, headers)
            self.assertIn("Secure", cookies[0].split("; "), cookies[0])
            session = cookies[0].split(";")[0]
            self.assertNotEqual(session, pre)
            status, _, body = self.request(port, "GET", "/", headers={"Cookie": session}, host="127.0.0.1")
            self.assertEqual(status, 200, body[:300])
            self.assertIn('id="counts"', body)
            self.assertNotIn(TOKEN, body)
            # The API over HTTPS.
            status, _, body = self.request(port, "GET", "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
            self.assertEqual(status, 200, body[:300])
            self.assertIn('"queue"', body)
            status, _, _ = self.request(port, "GET", "/v1/status")
            self.assertEqual(status, 401)
            # A client that does not trust the test CA refuses the certificate: the checks above
            # were verified ones.
            untrusting = ssl.create_default_context(cafile="/etc/ssl/certs/ca-certificates.crt")
            with self.assertRaises(ssl.SSLCertVerificationError):
                self.request(port, "GET", "/login", context=untrusting)
            # Plain HTTP on the HTTPS port gets no HTTP answer.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
                try:
                    answer = s.recv(4096)
                except (ConnectionResetError, socket.timeout):
                    answer = b""
            self.assertFalse(answer.startswith(b"HTTP/1.1 200"), answer[:100])
        finally:
            daemon.stop()

    def start_refused(self, extra):
        """Runs outbox serve with these [outbox] lines; it must exit non-zero without ever being ready."""
        daemon = Daemon(self.sink.port, scheme="https", extra=extra)
        try:
            process = subprocess.run([outbox_bin(), "serve", "--config", daemon.config], cwd=daemon.work,
                                     stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
            out = process.stdout.decode("utf-8", "replace")
            err = process.stderr.decode("utf-8", "replace")
            self.assertNotEqual(process.returncode, 0, out + err)
            self.assertNotIn("ready on", out)
            self.assertNotIn("listening on", out, "the checks come before the start-up line")
            return err
        finally:
            daemon.stop()

    def test_mismatched_key_is_refused(self):
        err = self.start_refused([f"http-tls-certificate-file = {self.pem('server.pem')}",
                                  f"http-tls-key-file = {self.pem('other.key')}"])
        self.assertIn("http-tls-key-file", err)
        self.assertIn("http-tls-certificate-file", err)
        self.assertIn("does not match", err)
        with open(self.pem("other.key")) as f:
            key_body = f.read().splitlines()[1]
        self.assertNotIn(key_body, err, "the key's bytes in an error")

    def test_incomplete_or_missing_files_are_refused(self):
        err = self.start_refused([f"http-tls-certificate-file = {self.pem('server.pem')}"])
        self.assertIn("http-tls-certificate-file", err)
        self.assertIn("http-tls-key-file is not", err)
        err = self.start_refused([f"http-tls-certificate-file = {self.pem('server.pem')}",
                                  f"http-tls-key-file = {self.pem('missing.key')}"])
        self.assertIn("http-tls-key-file", err)
        self.assertIn("not an existing, readable file", err)
        # A key where the certificate should be: not a certificate.
        err = self.start_refused([f"http-tls-certificate-file = {self.pem('server.key')}",
                                  f"http-tls-key-file = {self.pem('server.key')}"])
        self.assertIn("http-tls-certificate-file", err)


if __name__ == "__main__":
    unittest.main()
