"""Support for test_relay_durability.py: the testbed Postfix (scripts/postfix-testbed.sh) as the
real mail server, `outbox serve` with a [relay] listener that relays into it (started, killed with
-9 and restarted on the same data directory), the daemon's HTTP API, and the Postfix maildir.

Python 3 standard library only. Everything listens on and connects to 127.0.0.1.

Environment:
  OUTBOX_BIN     the outbox binary (default .build/debug/outbox under the repository)
  PFCI_DIR       the testbed's folder (default /tmp/outbox-pfci, as scripts/test.sh)
  PFCI_PLAIN_PORT, PFCI_USER, PFCI_PASS   the testbed's clear-text port and SASL user (2588,
                 testuser@example.test, testpass): that port relays only after AUTH
  DURABILITY_KEEP=1   keep the daemons' folders (config, data, stderr) after the run
"""

import email
import email.policy
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTBED_SCRIPT = os.path.join(REPO_ROOT, "scripts", "postfix-testbed.sh")

RELAY_RE = re.compile(r"^outbox: relay listening on (smtps?)://(\S+):(\d+)\s*$")
READY_RE = re.compile(r"^outbox: ready on (\S+)\s*$")
QUEUED_RE = re.compile(r"queued as (\S+)")

REJECT_RCPT = "reject@example.test"
TEMPFAIL_RCPT = "tempfail@example.test"


def log(msg):
    print(f"[durability {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def outbox_bin(wait=90):
    """The binary; it may be rebuilt by others in the same checkout, so a missing file is waited
    for (bounded) before it is a failure."""
    path = os.environ.get("OUTBOX_BIN") or ".build/debug/outbox"
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    deadline = time.monotonic() + wait
    while not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the Outbox binary {path} does not exist or is not executable (waited {wait} s): "
                                 "build it (swift build) or set OUTBOX_BIN")
        time.sleep(1)
    return path


def port_open(port, host="127.0.0.1", timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _can_bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    """A port below the kernel's ephemeral range (32768-60999), so that none of the test's own
    outgoing connections can take it between this choice and a (re)start of the daemon."""
    for _ in range(500):
        p = random.randint(20000, 29999)
        if _can_bind(p) and not port_open(p, timeout=0.2):
            return p
    raise AssertionError("no free port between 20000 and 29999 on 127.0.0.1")


# ---------------------------------------------------------------------------------------------
# The testbed Postfix


class PostfixTestbed:
    """The private Postfix of scripts/postfix-testbed.sh (clear-text port, SASL user, catch-all
    maildir), with the recipient_access map scripts/test.sh installs (reject@ -> 550 class,
    tempfail@ -> 450)."""

    def __init__(self):
        self.dir = os.environ.get("PFCI_DIR") or "/tmp/outbox-pfci"
        self.port = int(os.environ.get("PFCI_PLAIN_PORT") or 2588)
        self.user = os.environ.get("PFCI_USER") or "testuser@example.test"
        self.password = os.environ.get("PFCI_PASS") or "testpass"
        self.etc = os.path.join(self.dir, "etc")
        self.maildir = os.path.join(self.dir, "mail", "sink")
        self.log_path = os.path.join(self.dir, "log", "postfix.log")
        self.started_here = False
        self.started_pid = None

    def _run(self, argv, timeout, env=None):
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, env=env,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise AssertionError(f"{argv[0]} is not installed ({e}): run scripts/test.sh --start-peers, which "
                                 "installs Postfix and starts the testbed")
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(argv)} did not finish within {timeout} s")
        return p.returncode, p.stdout.decode("utf-8", "replace")

    def ensure(self):
        """Starts the testbed when its clear-text port is closed, and installs the recipient_access
        map when it is missing. Any failure is an AssertionError that says what is wrong."""
        if not port_open(self.port):
            if not os.path.isfile(TESTBED_SCRIPT):
                raise AssertionError(f"Postfix is not listening on 127.0.0.1:{self.port} and {TESTBED_SCRIPT} is missing")
            log(f"starting the testbed Postfix (PFCI_DIR={self.dir}, plain port {self.port})")
            env = dict(os.environ, PFCI_DIR=self.dir, PFCI_PLAIN_PORT=str(self.port))
            rc, out = self._run(["bash", TESTBED_SCRIPT, "start"], timeout=300, env=env)
            if rc != 0 or not port_open(self.port):
                raise AssertionError(f"could not start the testbed Postfix (scripts/postfix-testbed.sh start, "
                                     f"exit {rc}); output:\n{out}")
            self.started_here = True
            self.started_pid = self._master_pid()
        if not os.path.isfile(os.path.join(self.etc, "main.cf")) or not self._master_alive():
            raise AssertionError(f"something listens on 127.0.0.1:{self.port} but it is not the testbed Postfix of "
                                 f"{self.dir} ({self.etc}/main.cf missing or its master process not running): set "
                                 f"PFCI_DIR (and PFCI_PLAIN_PORT) to the running testbed's (scripts/postfix-testbed.sh)")
        os.makedirs(os.path.join(self.maildir, "new"), exist_ok=True)
        self._ensure_recipient_access()

    def _master_pid(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def _master_alive(self):
        return self._master_pid() is not None

    def _ensure_recipient_access(self):
        access = os.path.join(self.etc, "recipient_access")
        want = [f"{REJECT_RCPT} REJECT no such user here", f"{TEMPFAIL_RCPT} 450 4.2.0 mailbox busy, try later"]
        try:
            with open(access) as f:
                have = f.read().splitlines()
        except FileNotFoundError:
            have = []
        rc, current = self._run(["postconf", "-c", self.etc, "-h", "smtpd_recipient_restrictions"], timeout=30)
        map_ok = all(any(line.split()[:1] == w.split()[:1] for line in have if line.strip()) for w in want)
        restriction_ok = rc == 0 and "check_recipient_access" in current and access in current
        if map_ok and restriction_ok:
            return
        log(f"installing the recipient_access map in {self.etc} (reject@ and tempfail@ refused)")
        with open(access, "w") as f:
            f.write("\n".join(want) + "\n")
        rc, out = self._run(["postconf", "-c", self.etc, "-e",
                             f"smtpd_recipient_restrictions = check_recipient_access texthash:{access}"], timeout=30)
        if rc != 0:
            raise AssertionError(f"postconf -c {self.etc} -e smtpd_recipient_restrictions failed ({rc}): {out}")
        rc, out = self._run(["postfix", "-c", self.etc, "reload"], timeout=60)
        if rc != 0:
            raise AssertionError(f"postfix -c {self.etc} reload failed ({rc}): {out}")
        # smtpd processes started after the reload use the map; wait until the port answers again.
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix did not listen on 127.0.0.1:{self.port} again after the reload")
            time.sleep(0.2)
        time.sleep(1)

    def stop_if_started(self):
        """Stops the testbed when this module started it and it is still that instance (someone
        who restarted it meanwhile, e.g. scripts/test.sh, keeps theirs)."""
        if self.started_here and self._master_pid() != self.started_pid:
            self.started_here = False
        if self.started_here and not os.environ.get("DURABILITY_KEEP"):
            env = dict(os.environ, PFCI_DIR=self.dir)
            try:
                self._run(["bash", TESTBED_SCRIPT, "stop"], timeout=60, env=env)
            except AssertionError:
                pass
            self.started_here = False

    def log_lines(self, needle):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [l for l in data.splitlines() if needle in l]


# ---------------------------------------------------------------------------------------------
# The maildir


class Maildir:
    """Reads $PFCI_DIR/mail/sink/{new,cur}. Headers are parsed once per file (the files never
    change once in new/); full messages on demand."""

    def __init__(self, root):
        self.root = root
        self._headers = {}  # path -> email.message.Message (headers only) or None

    def paths(self):
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.root, sub)
            try:
                out += [os.path.join(d, n) for n in os.listdir(d) if not n.startswith(".")]
            except FileNotFoundError:
                pass
        return out

    def headers(self, path):
        if path not in self._headers:
            try:
                with open(path, "rb") as f:
                    head = f.read(65536)
            except FileNotFoundError:  # moved from new/ to cur/ by someone
                return None
            end = head.find(b"\n\n")
            if end >= 0:
                head = head[:end + 2]
            self._headers[path] = email.message_from_bytes(head, policy=email.policy.compat32)
        return self._headers[path]

    def scan(self, predicate):
        """[(path, headers)] of the files whose headers satisfy predicate(headers)."""
        out = []
        for p in self.paths():
            h = self.headers(p)
            if h is not None and predicate(h):
                out.append((p, h))
        return out

    @staticmethod
    def full(path):
        with open(path, "rb") as f:
            return email.message_from_binary_file(f, policy=email.policy.default)


# ---------------------------------------------------------------------------------------------
# outbox serve


class OutboxDaemon:
    """`outbox serve` on one config and data directory; start, kill -9 and restart."""

    def __init__(self, name, postfix, outbox_extra=None, smtp_extra=None, relay_extra=None):
        self.name = name
        self.work = tempfile.mkdtemp(prefix=f"outbox-durability-{name}-")
        self.data_dir = os.path.join(self.work, "data")
        self.http_port = free_port()
        self.relay_port = free_port()
        while self.relay_port == self.http_port:
            self.relay_port = free_port()
        smtp = {
            "server": "127.0.0.1",
            "port": postfix.port,
            "smtp-connection-security": "none",
            "cnx-pool-size": 4,
            # The testbed's clear-text port relays only for authenticated clients (554 5.7.1 otherwise).
            "enable-authentication": "true",
            "user": postfix.user,
            "password": postfix.password,
            "mail.smtp.auth.mechanisms": "PLAIN",
        }
        smtp.update(smtp_extra or {})
        outbox = {
            "data-directory": self.data_dir,
            "http-listen": f"127.0.0.1:{self.http_port}",
            "retry-initial-delay": "00:00:01",
            "retry-max-delay": "00:00:02",
        }
        outbox.update(outbox_extra or {})
        relay = {
            "listen": f"127.0.0.1:{self.relay_port}",
            "allowed-networks": "127.0.0.0/8",
            "hostname": "relay.example.test",
        }
        relay.update(relay_extra or {})
        lines = []
        for section, values in (("smtp-client", smtp), ("outbox", outbox), ("relay", relay)):
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in values.items() if v is not None]
            lines.append("")
        self.config_text = "\n".join(lines)
        self.config_path = os.path.join(self.work, "outbox.conf")
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        self.stderr_path = os.path.join(self.work, "stderr.log")
        self.stdout_path = os.path.join(self.work, "stdout.log")
        self.proc = None
        self.starts = 0
        self.exits = []  # (start number, how it ended, return code)
        self._lock = threading.Lock()
        self._stdout_lines = []

    # ---- process

    def start(self, timeout=90):
        """Starts the daemon and waits (bounded) for 'outbox: relay listening on
        smtp://127.0.0.1:PORT' and a /healthz that answers 200."""
        argv = [outbox_bin(), "serve", "--config", self.config_path]
        self.starts += 1
        n = self.starts
        with open(self.stderr_path, "ab") as e:
            e.write(f"==== start {n} at {time.strftime('%H:%M:%S')} ====\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            err = open(self.stderr_path, "ab")
            try:
                proc = subprocess.Popen(argv, cwd=self.work, stdout=subprocess.PIPE, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                break
            except OSError as e:
                # The binary may be being rewritten by a build in the same checkout (ETXTBSY, ENOEXEC).
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not run {argv[0]}: {e}")
                time.sleep(1)
                argv[0] = outbox_bin()
            finally:
                err.close()
        self.proc = proc
        lines = []
        with self._lock:
            self._stdout_lines = lines
        changed = threading.Condition()

        def reader():
            with open(self.stdout_path, "ab") as out, proc.stdout:
                out.write(f"==== start {n} ====\n".encode())
                for raw in proc.stdout:
                    out.write(raw)
                    out.flush()
                    with changed:
                        lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                        changed.notify_all()
            with changed:
                changed.notify_all()

        threading.Thread(target=reader, daemon=True, name=f"stdout-{self.name}-{n}").start()
        want = ("127.0.0.1", self.relay_port)
        with changed:
            while True:
                relay_ok = any((m := RELAY_RE.match(l)) and m.group(1) == "smtp" and (m.group(2), int(m.group(3))) == want
                               for l in lines)
                if relay_ok:
                    break
                if proc.poll() is not None:
                    self.exits.append((n, "exited before ready", proc.returncode))
                    raise AssertionError(f"outbox serve (start {n}) exited with {proc.returncode} before it printed "
                                         f"'outbox: relay listening on smtp://127.0.0.1:{self.relay_port}'\n"
                                         + self.diagnostics())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"outbox serve (start {n}) did not print 'outbox: relay listening on "
                                         f"smtp://127.0.0.1:{self.relay_port}' within {timeout} s\n" + self.diagnostics())
                changed.wait(min(left, 0.5))
        while True:
            try:
                if self.http_status("/healthz") == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"outbox serve (start {n}): /healthz on 127.0.0.1:{self.http_port} did not "
                                     f"answer 200 in time\n" + self.diagnostics())
            time.sleep(0.1)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        """SIGKILL, then reap. Returns False when the process had already exited (a crash of its own)."""
        proc = self.proc
        if proc is None:
            return False
        if proc.poll() is not None:
            self.exits.append((self.starts, "had already exited", proc.returncode))
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        self.exits.append((self.starts, "kill -9", proc.returncode))
        return True

    def stop(self, timeout=30):
        """SIGTERM, SIGKILL after `timeout` s. Returns a complaint or None."""
        proc = self.proc
        if proc is None:
            return None
        complaint = None
        if proc.poll() is not None:
            complaint = f"outbox serve had already exited with {proc.returncode}"
            self.exits.append((self.starts, "had already exited", proc.returncode))
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
                self.exits.append((self.starts, "SIGTERM", proc.returncode))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                complaint = f"outbox serve did not stop within {timeout} s of SIGTERM (killed)"
                self.exits.append((self.starts, "SIGTERM timed out, killed", proc.returncode))
        self.proc = None
        return complaint

    def cleanup(self):
        if os.environ.get("DURABILITY_KEEP"):
            log(f"kept {self.work}")
            return
        shutil.rmtree(self.work, ignore_errors=True)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_lines(self, pattern):
        rx = re.compile(pattern)
        return [l for l in self.stderr_text().splitlines() if rx.search(l)]

    def diagnostics(self, lines=40):
        err = self.stderr_text().splitlines()[-lines:]
        with self._lock:
            out = list(self._stdout_lines[-lines:])
        return (f"config {self.config_path}:\n{self.config_text}"
                + "stdout (this start):\n  " + "\n  ".join(out)
                + f"\nstderr ({self.stderr_path}, last {lines} lines):\n  " + "\n  ".join(err))

    # ---- HTTP API

    def http_status(self, path, timeout=5):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def api(self, path, timeout=15):
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise AssertionError(f"GET {url} answered {e.code}: {e.read()[:500]!r}")

    def messages(self, status=None):
        """Every message of GET /v1/messages (all pages), oldest first."""
        out, cursor = [], None
        for _ in range(1000):
            q = {"limit": "1000"}
            if status:
                q["status"] = status
            if cursor:
                q["cursor"] = cursor
            page = self.api("/v1/messages?" + urllib.parse.urlencode(q))
            out += page.get("messages", [])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def message(self, queue_id):
        return self.api("/v1/messages/" + urllib.parse.quote(queue_id, safe=""))

    def queue_counts(self):
        return (self.api("/v1/status") or {}).get("queue") or {}

    def open_count(self):
        q = self.queue_counts()
        return sum(int(q.get(k, 0)) for k in ("queued", "sending", "deferred"))


def started_daemon(name, postfix, **options):
    """An OutboxDaemon already started (for a test class's setUpClass); stopped and removed
    again when it cannot start."""
    daemon = OutboxDaemon(name, postfix, **options)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        daemon.cleanup()
        raise
    return daemon


def finish_daemon(daemon, label):
    """Stops a daemon (logging what its stop complained of) and removes its folder."""
    complaint = daemon.stop()
    if complaint:
        log(f"{label} daemon: {complaint}")
    daemon.cleanup()


def wait_until(predicate, timeout, interval=0.5):
    """predicate()'s first truthy value, or its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
