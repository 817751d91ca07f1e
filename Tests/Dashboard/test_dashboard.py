"""The web dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by Selenium, against `outbox serve` delivering to Postfix's smtp-sink.

The queue is seeded with known messages: 3 delivered through an accepting smtp-sink, then 2
deferred (an smtp-sink that answers 4xx to RCPT; retry-initial-delay is an hour, so they stay
deferred). The browser logs in with an operator token, reads the counts, filters, opens a message,
retries a deferred one after the sink accepts again and watches it become delivered, cancels the
other one and purges a delivered one's content. Plain HTTP requests prove that every action is
refused without a session and with a wrong CSRF token, and that a non-loopback Host is refused
when no token is configured. Screenshots of the main pages go to .build/test-artifacts/dashboard/
(the path is printed); each page's browser log must hold no error.

Run by scripts/test.sh: python3 -m unittest -v Tests/Dashboard/test_dashboard.py
"""
import http.client
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ARTIFACTS = os.path.join(ROOT, ".build", "test-artifacts", "dashboard")
TOKEN = "dash-operator-token-7f3a9c"
SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")


def outbox_bin():
    path = os.environ.get("OUTBOX_BIN") or os.path.join(ROOT, ".build", "debug", "outbox")
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} is not an executable: build Outbox (swift build) or set OUTBOX_BIN")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, predicate, timeout=30.0, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last value {last!r})")


class Sink:
    """Postfix's smtp-sink on one port: accepting, or answering 4xx to RCPT (-r RCPT)."""

    def __init__(self, port):
        self.port = port
        self.proc = None

    def start(self, defer_rcpt=False):
        self.stop()
        argv = [SMTP_SINK] + (["-u", "nobody"] if os.geteuid() == 0 else []) + (["-r", "RCPT"] if defer_rcpt else []) \
            + [f"127.0.0.1:{self.port}", "16"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("smtp-sink listening", self._listening, timeout=10)

    def _listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(64).startswith(b"220")
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class Daemon:
    def __init__(self, sink_port, tokens=True, extra=(), scheme="http"):
        self.work = tempfile.mkdtemp(prefix="outbox-dashboard-")
        self.port = free_port()
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        # The sink is stopped and started anew under pooled idle connections, with the default
        # cnx-check-idle-time: the first reuse finds its connection dead, and the retry "on a new
        # connection" must not take another dead idle one (the pool checks them once one died).
        lines = ["[smtp-client]", "server = 127.0.0.1", f"port = {sink_port}", "", "[outbox]",
                 f"data-directory = {self.work}/data", f"http-listen = 127.0.0.1:{self.port}",
                 "retry-initial-delay = 01:00:00", *extra]
        if tokens:
            lines += [f"api-tokens = {TOKEN}", "require-api-token = true"]
        self.config = os.path.join(self.work, "outbox.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(self.work, "stderr.log")
        self.proc = None

    def start(self):
        """Starts `outbox serve` and waits for its ready line."""
        self.stderr = open(self.log_path, "wb")
        self.proc = subprocess.Popen([outbox_bin(), "serve", "--config", self.config], stdout=subprocess.PIPE,
                                     stderr=self.stderr, stdin=subprocess.DEVNULL, cwd=self.work)
        ready = threading.Event()

        def reader():
            for raw in self.proc.stdout:
                if raw.startswith(b"outbox: ready on"):
                    ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(60):
            raise AssertionError("outbox serve was not ready within 60 s:\n" + self.log())

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)

    def api(self, method, path, body=None, token=TOKEN):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def submit(self, subject, to):
        return self.api("POST", "/v1/messages", {"from": "sender@example.test", "to": [to], "subject": subject,
                                                 "text": f"body of {subject}\n"})["id"]

    def status(self, message_id):
        return self.api("GET", f"/v1/messages/{message_id}")["status"]


def raw_request(port, method, path, body=None, headers=None):
    """One plain HTTP request (no browser, no cookie jar): (status, headers, body text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


class DashboardInBrowser(unittest.TestCase):
    """Login, counts, filters, a message's page, retry, cancel, purge; refusals (see the module's text)."""

    @classmethod
    def setUpClass(cls):
        os.makedirs(ARTIFACTS, exist_ok=True)
        print(f"\ndashboard screenshots: {ARTIFACTS}", flush=True)
        cls.sink = Sink(free_port())
        cls.daemon = Daemon(cls.sink.port)
        try:
            cls.seed()
        except BaseException:
            cls.daemon.stop()
            cls.sink.stop()
            raise

    @classmethod
    def seed(cls):
        cls.sink.start()
        cls.daemon.start()
        d = cls.daemon
        # 3 delivered, then 2 deferred (smtp-sink answers 4xx to RCPT).
        cls.delivered = [d.submit(f"Delivered report {i}", f"user{i}@example.test") for i in range(3)]
        for m in cls.delivered:
            wait_until(f"message {m} delivered", lambda m=m: d.status(m) == "delivered")
        cls.sink.start(defer_rcpt=True)
        cls.deferred = [d.submit(f"Deferred invoice {i}", f"late{i}@example.test") for i in range(2)]
        for m in cls.deferred:
            wait_until(f"message {m} deferred", lambda m=m: d.status(m) == "deferred")
        options = webdriver.ChromeOptions()
        for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"]:
            options.add_argument(argument)
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
        cls.browser = webdriver.Chrome(options=options, service=service)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.browser.quit()
        finally:
            cls.daemon.stop()
            cls.sink.stop()

    # ---- helpers

    def open(self, path, shot=None):
        self.browser.get(self.daemon.base + path)
        if shot:
            self.browser.save_screenshot(os.path.join(ARTIFACTS, f"{shot}.png"))
        errors = [e for e in self.browser.get_log("browser") if e.get("level") == "SEVERE"]
        self.assertEqual(errors, [], f"console errors on {path}")

    def login(self):
        self.open("/login", shot="login")
        self.browser.find_element(By.NAME, "token").send_keys(TOKEN)
        self.browser.find_element(By.ID, "login").click()
        wait_until("the overview after login", lambda: self.browser.find_elements(By.ID, "counts"), timeout=10)

    def count_cell(self, status):
        cell = self.browser.find_element(By.CSS_SELECTOR, f'#counts a[data-status="{status}"]')
        return int(cell.text.replace(",", ""))

    def csrf(self):
        return self.browser.find_element(By.CSS_SELECTOR, 'input[name="csrf"]').get_attribute("value")

    def session_cookie(self):
        cookie = self.browser.get_cookie("outbox_session")
        self.assertIsNotNone(cookie, "no outbox_session cookie after login")
        return cookie

    # ---- the tests (in order: names sort)

    def test_1_login_and_counts(self):
        self.open("/", shot=None)
        self.assertIn("/login", self.browser.current_url, "the overview without a session must ask for a login")
        self.login()
        cookie = self.session_cookie()
        self.assertTrue(cookie.get("httpOnly"), cookie)
        self.assertEqual(cookie.get("sameSite"), "Strict", cookie)
        self.open("/", shot="overview")
        self.assertEqual(self.count_cell("delivered"), 3)
        self.assertEqual(self.count_cell("deferred"), 2)
        self.assertEqual(self.count_cell("queued"), 0)
        self.assertIsNotNone(self.browser.find_element(By.ID, "rate-chart"))
        self.assertNotIn(TOKEN, self.browser.page_source)

    def test_2_filter_and_open(self):
        self.open("/messages", shot="messages")
        rows = self.browser.find_elements(By.CSS_SELECTOR, "#messages tr[data-id]")
        self.assertEqual(len(rows), 5)
        Select(self.browser.find_element(By.NAME, "status")).select_by_value("deferred")
        self.browser.find_element(By.NAME, "subject").send_keys("invoice 1")
        self.browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
        wait_until("the filtered list", lambda: "status=deferred" in self.browser.current_url, timeout=10)
        self.browser.save_screenshot(os.path.join(ARTIFACTS, "messages-filtered.png"))
        ids = [r.get_attribute("data-id") for r in self.browser.find_elements(By.CSS_SELECTOR, "#messages tr[data-id]")]
        self.assertEqual(ids, [self.deferred[1]])
        self.open(f"/messages?recipient=user2%40example&status=delivered")
        ids = [r.get_attribute("data-id") for r in self.browser.find_elements(By.CSS_SELECTOR, "#messages tr[data-id]")]
        self.assertEqual(ids, [self.delivered[2]])
        self.browser.find_element(By.CSS_SELECTOR, f'#messages tr[data-id="{self.delivered[2]}"] a').click()
        wait_until("the detail page", lambda: self.browser.find_elements(By.ID, "attempts"), timeout=10)
        self.open(f"/messages/{self.delivered[2]}", shot="message")
        self.assertEqual(self.browser.find_element(By.ID, "status").text, "delivered")
        self.assertIn("Subject: Delivered report 2", self.browser.find_element(By.ID, "headers").text)
        attempts = self.browser.find_elements(By.CSS_SELECTOR, "#attempts tr")
        self.assertGreaterEqual(len(attempts), 2, "the header row and at least one attempt")
        self.assertIn("user2@example.test", self.browser.find_element(By.ID, "recipients").text)
        status, headers, body = raw_request(self.daemon.port, "GET", f"/messages/{self.delivered[2]}/raw",
                                            headers={"Cookie": f"outbox_session={self.session_cookie()['value']}"})
        self.assertEqual(status, 200)
        self.assertIn(".eml", headers.get("Content-Disposition", ""))
        self.assertIn("Subject: Delivered report 2", body)

    def test_3_retry_deferred_becomes_delivered(self):
        self.sink.start(defer_rcpt=False)
        target = self.deferred[0]
        self.open(f"/messages/{target}")
        self.browser.find_element(By.LINK_TEXT, "Retry now…").click()
        wait_until("the confirmation", lambda: self.browser.find_elements(By.ID, "confirm"), timeout=10)
        self.browser.save_screenshot(os.path.join(ARTIFACTS, "confirm.png"))
        self.browser.find_element(By.ID, "confirm").click()

        def shown_status():
            self.browser.get(self.daemon.base + f"/messages/{target}")
            return self.browser.find_element(By.ID, "status").text == "delivered"

        try:
            wait_until(f"message {target} shown as delivered", shown_status, timeout=60, interval=1)
        except AssertionError:
            print(json.dumps(self.daemon.api("GET", f"/v1/messages/{target}"), indent=1), self.daemon.log()[-3000:])
            raise
        self.assertIn("retry requested by an operator", self.daemon.log())
        self.assertNotIn(TOKEN, self.daemon.log(), "a token in the daemon's log")

    def test_4_cancel_and_purge(self):
        target = self.deferred[1]
        self.open(f"/messages/{target}/confirm?action=cancel")
        self.browser.find_element(By.ID, "confirm").click()
        wait_until("cancelled", lambda: self.daemon.status(target) == "cancelled", timeout=10)
        purged = self.delivered[0]
        self.open(f"/messages/{purged}/confirm?action=purge")
        self.browser.find_element(By.ID, "confirm").click()
        wait_until("purged", lambda: self.daemon.api("GET", f"/v1/messages/{purged}")["content_purged"], timeout=10)
        self.open(f"/messages/{purged}", shot="purged")
        self.assertIn("content was purged", self.browser.page_source)
        self.open("/credentials", shot="credentials")
        self.assertIn("default", self.browser.find_element(By.ID, "credentials").text)
        self.open("/")
        self.assertEqual(self.count_cell("delivered"), 4)
        self.assertEqual(self.count_cell("cancelled"), 1)
        self.assertEqual(self.count_cell("deferred"), 0)

    def test_5_actions_refused_without_session_or_csrf(self):
        self.open(f"/messages/{self.delivered[1]}")
        csrf = self.csrf()
        cookie = f"outbox_session={self.session_cookie()['value']}"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        target = self.delivered[1]
        cases = [
            ("no session", {}, f"csrf={csrf}"),
            ("no CSRF token", {"Cookie": cookie}, ""),
            ("a wrong CSRF token", {"Cookie": cookie}, "csrf=" + "0" * len(csrf)),
        ]
        for path in [f"/messages/{target}/purge", f"/messages/{target}/retry", f"/messages/{target}/cancel",
                     "/actions/bulk", "/logout"]:
            for what, headers, body in cases:
                if path == "/actions/bulk":
                    body += "&action=purge&status=delivered"
                status, _, text = raw_request(self.daemon.port, "POST", path, body=body, headers={**form, **headers})
                self.assertEqual(status, 403, f"POST {path} with {what}: {status} {text[:200]}")
        self.assertFalse(self.daemon.api("GET", f"/v1/messages/{target}")["content_purged"],
                         "a refused purge changed the message")
        # The same session with its right token works (the checks above can fail).
        status, _, _ = raw_request(self.daemon.port, "POST", f"/messages/{target}/purge", body=f"csrf={csrf}",
                                   headers={**form, "Cookie": cookie})
        self.assertEqual(status, 303)
        self.assertTrue(self.daemon.api("GET", f"/v1/messages/{target}")["content_purged"])
        # The login form is protected too (login CSRF): its POST needs the form's pre-session and
        # CSRF token; the right token without them is refused, with them it opens a session.
        status, headers, body = raw_request(self.daemon.port, "GET", "/login")
        self.assertEqual(status, 200)
        pre = headers["Set-Cookie"].split(";")[0]
        login_csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', body).group(1)
        for what, headers, body in [
            ("no pre-session", {}, f"csrf={login_csrf}&token={TOKEN}"),
            ("no CSRF token", {"Cookie": pre}, f"token={TOKEN}"),
            ("a wrong CSRF token", {"Cookie": pre}, f"csrf={'0' * 64}&token={TOKEN}"),
        ]:
            status, _, text = raw_request(self.daemon.port, "POST", "/login", body=body, headers={**form, **headers})
            self.assertEqual(status, 403, f"POST /login with {what}: {status} {text[:200]}")
            self.assertIn("invalid_csrf_token", text)
        status, headers, _ = raw_request(self.daemon.port, "POST", "/login", body=f"csrf={login_csrf}&token={TOKEN}",
                                         headers={**form, "Cookie": pre})
        self.assertEqual((status, headers.get("Location")), (303, "/"))
        self.assertNotEqual(headers["Set-Cookie"].split(";")[0], pre, "a login keeps the pre-session's id")
        # Pages without a session go to the login page; the API without a token is refused.
        status, headers, _ = raw_request(self.daemon.port, "GET", "/messages")
        self.assertEqual((status, headers.get("Location")), (303, "/login"))
        status, _, _ = raw_request(self.daemon.port, "GET", "/v1/messages")
        self.assertEqual(status, 401)


class LoopbackWithoutTokens(unittest.TestCase):
    """No api-tokens on loopback: no login, but a Host that is not loopback is refused (DNS rebinding)."""

    def test_host_check(self):
        sink = Sink(free_port())
        sink.start()
        daemon = Daemon(sink.port, tokens=False)
        try:
            daemon.start()
            for host in ["localhost", f"localhost:{daemon.port}", f"127.0.0.1:{daemon.port}", f"[::1]:{daemon.port}"]:
                for path in ["/", "/v1/messages"]:
                    status, _, _ = raw_request(daemon.port, "GET", path, headers={"Host": host})
                    self.assertEqual(status, 200, f"GET {path} with Host {host}")
            for host in ["evil.example", f"evil.example:{daemon.port}", "127.0.0.1.evil.example", "localhost.evil.example"]:
                for path in ["/", "/messages", "/v1/messages", "/v1/status"]:
                    status, _, body = raw_request(daemon.port, "GET", path, headers={"Host": host})
                    self.assertEqual(status, 403, f"GET {path} with Host {host}: {body[:200]}")
                    self.assertIn("forbidden_host", body)
        finally:
            daemon.stop()
            sink.stop()


if __name__ == "__main__":
    unittest.main()
