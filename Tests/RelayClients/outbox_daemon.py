"""Runs `outbox serve` with a [relay] section for one test class, and reads what it delivered
(the file transport's .eml files under DATA/sent/, the HTTP API's message list)."""

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
import urllib.request

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
READY_TIMEOUT = float(os.environ.get("RELAY_TEST_READY_TIMEOUT", "60"))

READY_RE = re.compile(r"^outbox: ready on (\S+)\s*$")
RELAY_RE = re.compile(r"^outbox: relay listening on (smtps?)://(\S+):(\d+)\s*$")


def outbox_bin():
    path = os.environ.get("OUTBOX_BIN") or ".build/debug/outbox"
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(f"the Outbox binary {path} does not exist or is not executable: build it "
                             f"(swift build) or set OUTBOX_BIN")
    return path


def tls_files():
    """(ca, cert, key) of the testbed: RELAY_TEST_TLS_DIR, else $PFCI_DIR/tls, else the folders
    scripts/relay-clients-test.sh and scripts/test.sh use."""
    candidates = []
    if os.environ.get("RELAY_TEST_TLS_DIR"):
        candidates.append(os.environ["RELAY_TEST_TLS_DIR"])
    if os.environ.get("PFCI_DIR"):
        candidates.append(os.path.join(os.environ["PFCI_DIR"], "tls"))
    candidates += ["/tmp/outbox-relay-pfci/tls", "/tmp/outbox-pfci/tls"]
    for d in candidates:
        files = tuple(os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key"))
        if all(os.path.isfile(f) for f in files):
            return files
    raise AssertionError("no testbed TLS files (ca.pem, server.pem, server.key) in any of "
                         f"{candidates}: run scripts/relay-clients-test.sh, which creates them with "
                         "scripts/postfix-testbed.sh")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_hash_cache = {}


def hash_password(password):
    """`outbox hash-password --cost 4`, the password on standard input (no trailing newline)."""
    if password in _hash_cache:
        return _hash_cache[password]
    argv = [outbox_bin(), "hash-password", "--cost", "4"]
    try:
        p = subprocess.run(argv, input=password.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(argv)} did not finish within 60 s")
    out = p.stdout.decode("utf-8", "replace")
    hashes = [l.strip() for l in out.splitlines() if re.match(r"^\$2[aby]?\$\d\d\$", l.strip())]
    if p.returncode != 0 or not hashes:
        raise AssertionError(f"{' '.join(argv)} exited with {p.returncode} and printed no bcrypt hash:\n"
                             f"{out}{p.stderr.decode('utf-8', 'replace')}")
    _hash_cache[password] = hashes[-1]
    return hashes[-1]


class Client:
    """A [client-NAME] identity."""

    def __init__(self, name, user, password, allowed_senders, intake_limit=None):
        self.name, self.user, self.password, self.allowed_senders = name, user, password, allowed_senders
        self.intake_limit = intake_limit


def config_text(data_dir, http_port, relay, clients):
    lines = ["[outbox]", f"data-directory = {data_dir}", f"http-listen = 127.0.0.1:{http_port}", "", "[relay]"]
    for key, value in relay.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"{key} = {value}".rstrip())
    for c in clients:
        lines += ["", f"[client-{c.name}]", f"user = {c.user}", f"password-hash = {hash_password(c.password)}",
                  f"allowed-senders = {c.allowed_senders}"]
        if c.intake_limit is not None:
            lines.append(f"intake-limit-per-minute = {c.intake_limit}")
    return "\n".join(lines) + "\n"


class OutboxDaemon:
    """One `outbox serve` process in its own temporary folder."""

    def __init__(self, name, relay, clients, plain_listeners=1, implicit_tls=True, tls=True):
        self.name = name
        self.ca = self.cert = self.key = None
        if tls or implicit_tls:
            self.ca, self.cert, self.key = tls_files()
        self.work = tempfile.mkdtemp(prefix=f"outbox-relay-{name}-")
        self.data_dir = os.path.join(self.work, "data")
        self.sent_dir = os.path.join(self.data_dir, "sent")
        self.http_port = free_port()
        self.plain_ports = [free_port() for _ in range(plain_listeners)]
        self.tls_port = free_port() if implicit_tls else None
        options = {"listen": ", ".join(f"127.0.0.1:{p}" for p in self.plain_ports)}
        if self.tls_port:
            options["listen-tls"] = f"127.0.0.1:{self.tls_port}"
        if tls or implicit_tls:
            options["tls-certificate-file"] = self.cert
            options["tls-key-file"] = self.key
        options.update(relay)
        self.relay = options
        self.clients = clients
        self.config_path = os.path.join(self.work, "outbox.conf")
        try:
            text = config_text(self.data_dir, self.http_port, options, clients)
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        with open(self.config_path, "w") as f:
            f.write(text)
        self.stdout_lines = []
        self.stderr_path = os.path.join(self.work, "stderr.log")
        self.proc = None
        self._eml_cache = {}

    @property
    def port(self):
        return self.plain_ports[0]

    # ---- process

    def start(self):
        argv = [outbox_bin(), "serve", "--config", self.config_path]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=self.work, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL)
        changed = threading.Condition()
        self._changed = changed

        def reader():
            for raw in self.proc.stdout:
                with changed:
                    self.stdout_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    changed.notify_all()
            with changed:
                changed.notify_all()

        threading.Thread(target=reader, daemon=True).start()
        want_smtp = {("127.0.0.1", p) for p in self.plain_ports}
        want_smtps = {("127.0.0.1", self.tls_port)} if self.tls_port else set()
        deadline = time.monotonic() + READY_TIMEOUT
        with changed:
            while True:
                ready, smtp, smtps = self._parse_stdout()
                if ready and want_smtp <= smtp and want_smtps <= smtps:
                    break
                if self.proc.poll() is not None:
                    raise AssertionError(f"outbox serve exited with {self.proc.returncode} before it was ready\n"
                                         + self.diagnostics())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"outbox serve did not print 'outbox: ready on 127.0.0.1:{self.http_port}' and "
                        f"'outbox: relay listening on smtp://127.0.0.1:PORT' for {sorted(p for _, p in want_smtp)}"
                        + (f" and 'smtps://127.0.0.1:{self.tls_port}'" if self.tls_port else "")
                        + f" within {READY_TIMEOUT:.0f} s\n" + self.diagnostics())
                changed.wait(min(left, 0.5))
        extra_smtp, extra_smtps = smtp - want_smtp, smtps - want_smtps
        if extra_smtp or extra_smtps:
            raise AssertionError(f"outbox serve announced listeners that were not configured: "
                                 f"{extra_smtp | extra_smtps}\n" + self.diagnostics())
        return self

    def _parse_stdout(self):
        ready, smtp, smtps = False, set(), set()
        for line in self.stdout_lines:
            if READY_RE.match(line):
                ready = True
            m = RELAY_RE.match(line)
            if m:
                (smtps if m.group(1) == "smtps" else smtp).add((m.group(2), int(m.group(3))))
        return ready, smtp, smtps

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after `timeout` s. Returns None, or a complaint when it had to be
        killed or had already exited."""
        complaint = None
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            complaint = f"outbox serve had already exited with {self.proc.returncode}"
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                complaint = f"outbox serve did not stop within {timeout} s of SIGTERM (killed)"
        for f in (self._stderr, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass
        return complaint

    def cleanup(self):
        if os.environ.get("RELAY_TEST_KEEP"):
            return
        shutil.rmtree(self.work, ignore_errors=True)

    def diagnostics(self, lines=40):
        try:
            with open(self.stderr_path, "rb") as f:
                err = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            err = []
        with open(self.config_path) as f:
            config = f.read()
        return (f"config {self.config_path}:\n" + config
                + "stdout:\n  " + "\n  ".join(self.stdout_lines[-lines:])
                + f"\nstderr (last {lines} lines):\n  " + "\n  ".join(err))

    # ---- what was delivered

    def eml_files(self):
        """{path: bytes} of the complete .eml files (temporary files start with a dot)."""
        out = {}
        try:
            names = os.listdir(self.sent_dir)
        except FileNotFoundError:
            return out
        for n in sorted(names):
            if n.startswith(".") or not n.endswith(".eml"):
                continue
            path = os.path.join(self.sent_dir, n)
            if path not in self._eml_cache:
                with open(path, "rb") as f:
                    self._eml_cache[path] = f.read()
            out[path] = self._eml_cache[path]
        return out

    def emls_with(self, marker):
        if isinstance(marker, str):
            marker = marker.encode("utf-8")
        return [(p, b) for p, b in self.eml_files().items() if marker in b]

    def wait_for_eml(self, marker, timeout=30, settle=0.5):
        """The .eml files that contain `marker`, once there is at least one (then `settle` s more,
        so a duplicate written right after shows too); [] after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.emls_with(marker)
            if found:
                if settle:
                    time.sleep(settle)
                    found = self.emls_with(marker)
                return found
            if time.monotonic() > deadline or not self.alive():
                return []
            time.sleep(0.1)

    def api_messages(self):
        """Every message of GET /v1/messages (all pages)."""
        out, cursor = [], None
        for _ in range(100):
            url = f"http://127.0.0.1:{self.http_port}/v1/messages?limit=1000"
            if cursor:
                url += "&cursor=" + urllib.request.quote(cursor)
            with urllib.request.urlopen(url, timeout=15) as r:
                page = json.loads(r.read())
            out += page.get("messages", [])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def api_message_with_id(self, message_id, timeout=10):
        """The API's record of the message whose Message-ID is `message_id` (angle brackets
        ignored), or None."""
        bare = message_id.strip().strip("<>")
        deadline = time.monotonic() + timeout
        while True:
            for m in self.api_messages():
                if (m.get("message_id") or "").strip().strip("<>") == bare:
                    return m
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
