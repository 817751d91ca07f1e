#!/usr/bin/env python3
"""A small EWS endpoint behind real NTLM, for Outbox's NTLM tests.

The NTLM acceptor is pyspnego's (spnego.server(protocol="ntlm")), which checks NTLMv2 responses
and the MIC against the accounts in NTLM_USER_FILE (lines `DOMAIN:USER:PASSWORD`, or
`:user@domain:PASSWORD` for a UPN). Python's hashlib has no MD4 here; pyspnego brings its own.

Behaviour, per TCP connection (HTTP/1.1, kept alive), as IIS does for Windows authentication:
- a request without Authorization on a connection that is not authenticated: 401 with one
  `WWW-Authenticate` field per offered scheme (--schemes, default "NTLM,Negotiate");
- `Authorization: NTLM|Negotiate <NEGOTIATE_MESSAGE>`: a new acceptor context, 401 with
  `WWW-Authenticate: <scheme> <CHALLENGE_MESSAGE>`;
- `Authorization: NTLM|Negotiate <AUTHENTICATE_MESSAGE>`: the context checks it; on success the
  connection is authenticated and the request is served, else 401 with the offers again;
- any other Authorization (Basic, Bearer): 401 with the offers;
- on an authenticated connection a request without Authorization is served.
Served requests: EWS CreateItem (the MimeContent is decoded and logged; answered with a
CreateItemResponse Success/NoError as the Swift emulator in Tests/OutboxTestSupport answers) and
GetFolder (GetFolderResponse Success/NoError).

Every event is appended as one JSON line to --events: {"event": ..., "conn": N, ...}; events:
unauthenticated, negotiate, authenticated (with "user"), auth_failed, served (with "op", and for
CreateItem "mime" in base64). --close-after N ends a connection after N served requests
(`Connection: close`), as a recycled server does. The first line on stdout is `PORT <n>` once it listens.
"""

import argparse
import base64
import http.server
import itertools
import json
import os
import re
import signal
import ssl
import sys
import threading

import spnego

M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"


def create_item_response():
    return (
        '<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<s:Body><m:CreateItemResponse xmlns:m="{M_NS}" xmlns:t="{T_NS}"><m:ResponseMessages>'
        '<m:CreateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:CreateItemResponseMessage>"
        "</m:ResponseMessages></m:CreateItemResponse></s:Body></s:Envelope>"
    )


def get_folder_response():
    return (
        '<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<s:Body><m:GetFolderResponse xmlns:m="{M_NS}" xmlns:t="{T_NS}"><m:ResponseMessages>'
        '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        '<m:Folders><t:Folder><t:FolderId Id="AQMk-inbox" ChangeKey="AQAAAA=="/></t:Folder></m:Folders>'
        "</m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"
    )


class Events:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def add(self, **event):
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


CONNECTIONS = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    schemes = ["NTLM", "Negotiate"]
    events = None
    close_after = 0

    def setup(self):
        super().setup()
        self.conn_id = next(CONNECTIONS)
        self.context = None
        self.user = None
        self.served = 0

    def log_message(self, format, *args):  # noqa: A002 - quiet: the events file is the log
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status == 200:
            self.served += 1
            if self.close_after and self.served >= self.close_after:
                # The server ends the connection (as an idle or recycled IIS worker does).
                self.send_header("Connection", "close")
                self.close_connection = True
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)

    def refuse(self):
        self.answer(401, headers=[("WWW-Authenticate", s) for s in self.schemes])

    def do_POST(self):
        body = self.read_body()
        authorization = self.headers.get("Authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() not in [s.lower() for s in self.schemes] or not token:
                self.events.add(event="unauthenticated", conn=self.conn_id, scheme=scheme)
                return self.refuse()
            raw = base64.b64decode(token)
            kind = raw[8] if len(raw) > 8 and raw.startswith(b"NTLMSSP\x00") else 0
            if kind == 1:
                self.user = None
                self.context = spnego.server(hostname="ews.test", service="http", protocol="ntlm")
                challenge = self.context.step(raw)
                self.events.add(event="negotiate", conn=self.conn_id, scheme=scheme)
                return self.answer(401, headers=[("WWW-Authenticate", f"{scheme} {base64.b64encode(challenge).decode()}")])
            if kind != 3 or self.context is None:
                self.events.add(event="auth_failed", conn=self.conn_id, reason="no handshake on this connection")
                return self.refuse()
            try:
                self.context.step(raw)
                if not self.context.complete:
                    raise ValueError("context not complete")
            except Exception as e:  # spnego raises SpnegoError subclasses
                self.context = None
                self.events.add(event="auth_failed", conn=self.conn_id, reason=type(e).__name__)
                return self.refuse()
            self.user = self.context.client_principal
            self.context = None
            self.events.add(event="authenticated", conn=self.conn_id, user=self.user, scheme=scheme)
        elif self.user is None:
            self.events.add(event="unauthenticated", conn=self.conn_id, scheme=None)
            return self.refuse()
        text = body.decode("utf-8", "replace")
        if "<m:CreateItem " in text:
            m = re.search(r"<t:MimeContent CharacterSet=\"UTF-8\">([^<]*)</t:MimeContent>", text)
            if not m:
                return self.answer(500, b"no MimeContent")
            mime = base64.b64decode(m.group(1), validate=True)
            self.events.add(event="served", conn=self.conn_id, op="CreateItem", user=self.user, mime=base64.b64encode(mime).decode())
            return self.answer(200, create_item_response().encode())
        if "<m:GetFolder>" in text:
            self.events.add(event="served", conn=self.conn_id, op="GetFolder", user=self.user)
            return self.answer(200, get_folder_response().encode())
        return self.answer(500, b"unknown operation")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--plain", action="store_true", help="plain http (to prove Outbox refuses NTLM there)")
    parser.add_argument("--users", required=True, help="the NTLM_USER_FILE")
    parser.add_argument("--schemes", default="NTLM,Negotiate")
    parser.add_argument("--events", required=True)
    parser.add_argument("--close-after", type=int, default=0, help="close a connection after N served requests")
    args = parser.parse_args()
    # A parent may start us with signals blocked (threads of an event loop do): unblock them, so
    # that SIGTERM ends the server.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.environ["NTLM_USER_FILE"] = args.users
    Handler.schemes = [s for s in args.schemes.split(",") if s]
    Handler.events = Events(args.events)
    Handler.close_after = args.close_after
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if not args.plain:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
