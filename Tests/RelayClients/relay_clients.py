"""Real SMTP clients, as pure functions, for the relay listener's acceptance tests.

Every sender takes the same arguments: host, port, tls ("none", "starttls" or "implicit"),
user and password (None for no AUTH), ca (the CA file that signed the server's certificate,
None to skip TLS verification), sender, recipients (a list), message (bytes, CRLF line ends),
and returns the client's transcript (str) or raises ClientError with it. Nothing here knows
about Outbox: the same functions were checked against the testbed Postfix
(scripts/postfix-testbed.sh).

`RawSMTP` is a minimal line-level client over socket + ssl for what no client program will do
(refusals, pipelined STARTTLS, smuggling payloads, slow clients).
"""

import base64
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time

TLS_MODES = ("none", "starttls", "implicit")

#: The folders where Debian puts programs root runs (smtp-source, postfix are in /usr/sbin).
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class ClientError(AssertionError):
    """A client program or library failed; the message carries its transcript."""


class MissingProgram(AssertionError):
    """A client program is not installed (scripts/relay-clients-test.sh installs them)."""


def find_program(name):
    """The program's path, or raise MissingProgram: a missing client fails, never skips."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))
    if path is None:
        raise MissingProgram(
            f"the SMTP client program '{name}' is not installed: run scripts/relay-clients-test.sh, "
            f"which installs it with apt-get")
    return path


def make_message(sender, to, subject, body="Hello from the relay client tests.\r\n", extra_headers=(),
                 message_id=True, date=True):
    """An RFC 5322 message as bytes with CRLF line ends. `to` is a list of header addresses."""
    lines = [f"From: {sender}", f"To: {', '.join(to)}", f"Subject: {subject}"]
    if date:
        lines.append("Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()))
    if message_id:
        lines.append(f"Message-ID: <{subject.replace(' ', '.')}.{os.getpid()}.{time.time_ns()}@relay-tests.example.test>")
    lines.extend(extra_headers)
    lines.append("MIME-Version: 1.0")
    lines.append("Content-Type: text/plain; charset=utf-8")
    head = "\r\n".join(lines) + "\r\n\r\n"
    if isinstance(body, str):
        body = body.encode("utf-8")
    return head.encode("utf-8") + body


def _check_mode(tls):
    if tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")


def tls_context(ca):
    """A client context that verifies the server against `ca` (host name included); no
    verification when ca is None."""
    if ca is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca)


# --------------------------------------------------------------------------------------------
# Python's smtplib


def smtplib_send(host, port, tls, user, password, ca, sender, recipients, message,
                 mechanism=None, mail_options=(), rcpt_options=(), timeout=30):
    """smtplib: SMTP (+ starttls) or SMTP_SSL, login when user is set. mechanism None lets
    smtplib choose (it prefers CRAM-MD5, then PLAIN, then LOGIN); "PLAIN" or "LOGIN" forces
    that one through `server.auth`. Returns the transcript; raises ClientError with it (and the
    smtplib exception) on any failure, including a refused recipient."""
    _check_mode(tls)
    log = []
    try:
        if tls == "implicit":
            server = smtplib.SMTP_SSL(host, port, timeout=timeout, context=tls_context(ca))
        else:
            server = smtplib.SMTP(host, port, timeout=timeout)
        with server:
            code, text = server.ehlo("relay-tests.example.test")
            log.append(f"EHLO -> {code} {text!r}")
            if tls == "starttls":
                code, text = server.starttls(context=tls_context(ca))
                log.append(f"STARTTLS -> {code} {text!r}")
                code, text = server.ehlo("relay-tests.example.test")
                log.append(f"EHLO -> {code} {text!r}")
            if user is not None:
                if mechanism is None:
                    code, text = server.login(user, password)
                else:
                    server.user, server.password = user, password
                    authobject = {"PLAIN": server.auth_plain, "LOGIN": server.auth_login}[mechanism.upper()]
                    code, text = server.auth(mechanism.upper(), authobject, initial_response_ok=True)
                log.append(f"AUTH {mechanism or '(smtplib chose)'} -> {code} {text!r}")
            refused = server.sendmail(sender, recipients, message, mail_options=list(mail_options),
                                      rcpt_options=list(rcpt_options))
            log.append(f"sendmail -> refused {refused!r}")
            if refused:
                raise ClientError("smtplib: recipients refused: %r\n%s" % (refused, "\n".join(log)))
            code, text = server.docmd("QUIT")
            log.append(f"QUIT -> {code} {text!r}")
            server.close()
    except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
        raise ClientError(f"smtplib failed: {type(e).__name__}: {e}\n" + "\n".join(log)) from e
    return "\n".join(log)


# --------------------------------------------------------------------------------------------
# External programs


def _run(argv, what, timeout, input_bytes=None, env=None):
    """Runs a client program; `what` names it in errors (with any password already redacted)."""
    try:
        p = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")
        raise ClientError(f"{what}: did not finish within {timeout} s\n{out}") from e
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        raise ClientError(f"{what}: exited with {p.returncode}\n{out}")
    return out


def _redact(argv, password):
    return [a if password is None or password not in a else a.replace(password, "<password>") for a in argv]


def swaks_argv(host, port, tls, user, password, ca, sender, recipients, data_file, mechanism=None, pipeline=False):
    """The swaks command line (Debian's swaks 20201014: --tls, --tls-on-connect, --tls-verify,
    --tls-ca-path, --auth, --auth-user, --auth-password, --data @FILE)."""
    _check_mode(tls)
    argv = [find_program("swaks"), "--server", f"{host}:{port}", "--from", sender,
            "--to", ",".join(recipients), "--helo", "relay-tests.example.test",
            "--data", "@" + data_file, "--timeout", "30"]
    if tls == "starttls":
        argv.append("--tls")
    elif tls == "implicit":
        argv.append("--tls-on-connect")
    if tls != "none" and ca is not None:
        argv += ["--tls-verify", "--tls-ca-path", ca]
    if user is not None:
        argv += ["--auth", mechanism or "PLAIN", "--auth-user", user, "--auth-password", password]
    if pipeline:
        argv.append("--pipeline")
    return argv


def swaks_send(host, port, tls, user, password, ca, sender, recipients, message, mechanism=None,
               pipeline=False, timeout=60):
    """swaks. Returns its transcript; raises ClientError on a non-zero exit (swaks' exit codes:
    23 MAIL refused, 24 no RCPT accepted, 26 message refused after the dot, 28 AUTH, 29 TLS)."""
    with tempfile.TemporaryDirectory(prefix="relay-swaks-") as d:
        data_file = os.path.join(d, "message.eml")
        with open(data_file, "wb") as f:
            f.write(message)
        argv = swaks_argv(host, port, tls, user, password, ca, sender, recipients, data_file, mechanism, pipeline)
        return _run(argv, "swaks " + " ".join(_redact(argv[1:], password)), timeout)


def curl_argv(host, port, tls, user, password, ca, sender, recipients, data_file, mechanism=None):
    """The curl command line: smtp:// (with --ssl-reqd for STARTTLS) or smtps://; --cacert;
    --user; --login-options AUTH=MECH to force a mechanism; --mail-from, --mail-rcpt,
    --upload-file. curl checks the host name: the certificate must carry `host` (an IP works
    when the certificate has that IP address)."""
    _check_mode(tls)
    scheme = "smtps" if tls == "implicit" else "smtp"
    host_part = f"[{host}]" if ":" in host else host
    argv = [find_program("curl"), "--silent", "--show-error", "--max-time", "60",
            f"{scheme}://{host_part}:{port}/relay-tests.example.test",
            "--mail-from", sender, "--upload-file", data_file, "--verbose"]
    for r in recipients:
        argv += ["--mail-rcpt", r]
    if tls == "starttls":
        argv.append("--ssl-reqd")
    if tls != "none":
        argv += ["--cacert", ca] if ca is not None else ["--insecure"]
    if user is not None:
        argv += ["--user", f"{user}:{password}"]
        if mechanism is not None:
            argv += ["--login-options", f"AUTH={mechanism.upper()}"]
    return argv


def curl_send(host, port, tls, user, password, ca, sender, recipients, message, mechanism=None, timeout=90):
    with tempfile.TemporaryDirectory(prefix="relay-curl-") as d:
        data_file = os.path.join(d, "message.eml")
        with open(data_file, "wb") as f:
            f.write(message)
        argv = curl_argv(host, port, tls, user, password, ca, sender, recipients, data_file, mechanism)
        out = _run(argv, "curl " + " ".join(_redact(argv[1:], password)), timeout)
        return out.replace(password, "<password>") if password else out


def msmtp_config(host, port, tls, user, password, ca, sender, mechanism=None):
    """An msmtp configuration file (one account, "default")."""
    _check_mode(tls)
    lines = ["defaults", "logfile -", "syslog off", "timeout 30", "", "account default",
             f"host {host}", f"port {port}", "domain relay-tests.example.test", f"from {sender}"]
    if tls == "none":
        lines += ["tls off"]
    else:
        lines += ["tls on", "tls_starttls " + ("on" if tls == "starttls" else "off")]
        lines += [f"tls_trust_file {ca}"] if ca is not None else ["tls_certcheck off"]
    if user is not None:
        lines += [f"auth {(mechanism or 'on').lower()}", f"user {user}", f"password {password}"]
    else:
        lines += ["auth off"]
    return "\n".join(lines) + "\n"


def msmtp_send(host, port, tls, user, password, ca, sender, recipients, message, mechanism=None, timeout=60):
    """msmtp -C FILE -a default -- RCPT...: the envelope recipients on the command line, the
    message on standard input (msmtp sends it as it is; `from` in the file is MAIL FROM)."""
    with tempfile.TemporaryDirectory(prefix="relay-msmtp-") as d:
        conf = os.path.join(d, "msmtprc")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # msmtp refuses a readable password file
        with os.fdopen(fd, "w") as f:
            f.write(msmtp_config(host, port, tls, user, password, ca, sender, mechanism))
        argv = [find_program("msmtp"), "-C", conf, "-a", "default", "--debug", "--"] + list(recipients)
        out = _run(argv, "msmtp " + " ".join(argv[1:]) + f" (config:\n{msmtp_config(host, port, tls, user, '<password>', ca, sender, mechanism)})", timeout, input_bytes=message)
        return out.replace(password, "<password>") if password else out


SENDERS = {"smtplib": smtplib_send, "swaks": swaks_send, "curl": curl_send, "msmtp": msmtp_send}


# --------------------------------------------------------------------------------------------
# A raw line-level client


class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # the text after "NNN-" / "NNN "

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enhanced(self):
        """The enhanced status code of the first line ("5.7.8"), or None."""
        first = self.lines[0].split(" ", 1)[0] if self.lines and self.lines[0] else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return first
        return None

    def keywords(self):
        """EHLO keywords (upper-cased first word of each line after the first) -> parameters."""
        out = {}
        for line in self.lines[1:]:
            words = line.split()
            if words:
                out[words[0].upper()] = words[1:]
        return out

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class RawSMTP:
    """One SMTP session over a socket (optionally TLS from the start), reading replies line by
    line. Every read has a timeout; `read_reply` raises socket.timeout when nothing comes."""

    def __init__(self, host, port, implicit_tls=False, ca=None, timeout=15):
        self.host, self.port, self.ca = host, port, ca
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""
        self.tls = False
        if implicit_tls:
            self._wrap()

    def _wrap(self):
        self.sock = tls_context(self.ca).wrap_socket(self.sock, server_hostname=self.host)
        self.tls = True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def cmd(self, line):
        """Sends one command line (CRLF added) and returns its reply."""
        self.send(line.encode("utf-8") + b"\r\n")
        return self.read_reply()

    def _read_line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete reply line within %.1f s (have %r)" % (timeout, self.buffer))
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection (pending %r)" % self.buffer)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def read_reply(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        lines, code = [], None
        while True:
            line = self._read_line(timeout)
            if len(line) < 3 or not line[:3].isdigit():
                raise ClientError(f"malformed reply line {line!r}")
            code = int(line[:3])
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(code, lines)

    def greeting(self):
        return self.read_reply()

    def ehlo(self, name="relay-tests.example.test"):
        return self.cmd(f"EHLO {name}")

    def starttls(self):
        r = self.cmd("STARTTLS")
        if r.code == 220:
            self._wrap()
        return r

    def auth_plain(self, user, password, authzid=""):
        token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def auth_login(self, user, password):
        r = self.cmd("AUTH LOGIN")
        if r.code != 334:
            return r
        r = self.cmd(base64.b64encode(user.encode()).decode())
        if r.code != 334:
            return r
        return self.cmd(base64.b64encode(password.encode()).decode())

    def nothing_more(self, wait=1.5):
        """True when the server sends nothing within `wait` seconds (it still may close)."""
        if self.buffer:
            return False
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        except ssl.SSLWantReadError:
            return True
        if chunk:
            self.buffer += chunk
            return False
        return True  # closed: nothing was said

    def wait_closed(self, timeout):
        """True when the server closes the connection within `timeout` s; data read on the way
        is kept in the buffer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return False
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                return True
            if not chunk:
                return True
            self.buffer += chunk
        return False


# --------------------------------------------------------------------------------------------
# Postfix as a relay client (a private instance of scripts/postfix-testbed.sh)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTBED_SCRIPT = os.path.join(REPO_ROOT, "scripts", "postfix-testbed.sh")


def testbed_env(pfci_dir, submission_port, smtps_port, plain_port):
    env = dict(os.environ)
    env.update(PFCI_DIR=pfci_dir, PFCI_SUBMISSION_PORT=str(submission_port), PFCI_SMTPS_PORT=str(smtps_port),
               PFCI_PLAIN_PORT=str(plain_port), PFCI_OAUTH="0", PFCI_DELIVERY="maildir")
    env["PATH"] = env.get("PATH", "") + os.pathsep + os.pathsep.join(_EXTRA_PATH)
    return env


def postfix_relay_settings(pfci_dir, relay_host, relay_port, user, password, ca, implicit_tls=False):
    """The postconf settings that make the testbed Postfix relay everything to
    [relay_host]:relay_port with TLS required and SASL (TESTBED.md, "Postfix as a client of
    Outbox's SMTP listener"). Writes the SASL password map; returns the settings list."""
    hostport = f"[{relay_host}]:{relay_port}"
    sasl_map = os.path.join(pfci_dir, "etc", "relay_sasl_passwd")
    with open(sasl_map, "w") as f:
        f.write(f"{hostport} {user}:{password}\n")
    os.chmod(sasl_map, 0o600)
    return [
        f"relayhost = {hostport}",
        "default_transport = smtp",
        "relay_transport = smtp",
        "virtual_mailbox_domains =",
        "virtual_mailbox_maps =",
        "smtp_sasl_auth_enable = yes",
        f"smtp_sasl_password_maps = texthash:{sasl_map}",
        "smtp_sasl_security_options = noanonymous",
        "smtp_sasl_tls_security_options = noanonymous",
        "smtp_tls_security_level = encrypt",
        f"smtp_tls_CAfile = {ca}",
        "smtp_tls_wrappermode = " + ("yes" if implicit_tls else "no"),
        "smtp_tls_loglevel = 1",
        "smtpd_relay_restrictions = permit_mynetworks, reject",
    ]


def postfix_start(pfci_dir, submission_port, smtps_port, plain_port, timeout=120):
    """Starts a private testbed Postfix (its own folder and ports, no OAuth)."""
    find_program("postfix")
    return _run(["bash", TESTBED_SCRIPT, "start"], f"postfix-testbed.sh start (PFCI_DIR={pfci_dir})", timeout,
                env=testbed_env(pfci_dir, submission_port, smtps_port, plain_port))


def postfix_configure(pfci_dir, settings, timeout=60):
    """postconf -e the settings, then postfix reload."""
    postconf = find_program("postconf")
    etc = os.path.join(pfci_dir, "etc")
    _run([postconf, "-c", etc, "-e"] + list(settings), "postconf -e", timeout)
    return _run([find_program("postfix"), "-c", etc, "reload"], "postfix reload", timeout)


def postfix_stop(pfci_dir, timeout=60):
    env = testbed_env(pfci_dir, 0, 0, 0)
    try:
        subprocess.run(["bash", TESTBED_SCRIPT, "stop"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def postfix_flush(pfci_dir, timeout=30):
    """postqueue -f: try the deferred messages again now."""
    try:
        subprocess.run([find_program("postqueue"), "-c", os.path.join(pfci_dir, "etc"), "-f"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def postfix_diagnostics(pfci_dir, lines=40):
    """The queue listing and the end of the instance's log, for a failure message."""
    out = []
    try:
        q = subprocess.run([find_program("postqueue"), "-c", os.path.join(pfci_dir, "etc"), "-p"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        out.append("postqueue -p:\n" + q.stdout.decode("utf-8", "replace"))
    except Exception as e:  # diagnostics only
        out.append(f"postqueue -p failed: {e}")
    log = os.path.join(pfci_dir, "log", "postfix.log")
    try:
        with open(log, "rb") as f:
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        out.append(f"{log} (last {lines} lines):\n" + "\n".join(tail))
    except OSError as e:
        out.append(f"cannot read {log}: {e}")
    return "\n".join(out)


def smtp_source_send(host, port, sender, recipient, subject, count=1, timeout=60):
    """Postfix's smtp-source: `count` messages with Subject `subject`, in clear, no AUTH."""
    argv = [find_program("smtp-source"), "-m", str(count), "-S", subject, "-f", sender, "-t", recipient,
            f"{host}:{port}"]
    return _run(argv, "smtp-source " + " ".join(argv[1:]), timeout)
