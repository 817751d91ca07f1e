import Foundation
import Testing

@testable import OutboxMIME

/// Parses messages with Python's standard `email` package, an independent MIME implementation.
/// One python3 process parses a batch of messages. A missing python3 is a test failure.
enum PythonParser {
    static let script = #"""
        import sys, json, hashlib
        from email.parser import BytesParser
        from email import policy
        from email.header import decode_header, make_header
        from email.utils import getaddresses

        def fix(s):
            # BytesParser keeps raw UTF-8 header bytes (SMTPUTF8) as surrogate escapes.
            if s is None:
                return None
            return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

        def addrs(msg, name):
            h = msg[name]
            if h is None:
                return None
            return [{"name": fix(a.display_name), "addr": fix(a.addr_spec)} for a in h.addresses]

        def rfc_names(legacy, name):
            # The legacy API decodes display names exactly per RFC 2047 section 6.2 (white space
            # between adjacent encoded words is dropped); the default policy's phrase parser keeps
            # it and collapses white space inside encoded words, so names are compared from here.
            raw = legacy.get_all(name)
            if raw is None:
                return None
            raw = [fix(str(v)) for v in raw]
            return [str(make_header(decode_header(n))) for n, a in getaddresses(raw)]

        out = []
        for path in sys.argv[1:]:
            with open(path, "rb") as f:
                raw = f.read()
            msg = BytesParser(policy=policy.default).parsebytes(raw)
            legacy = BytesParser(policy=policy.compat32).parsebytes(raw)
            defects = [type(d).__name__ for d in msg.defects]
            headers = []
            for k, v in msg.items():
                defects += [k + ":" + type(d).__name__ for d in getattr(v, "defects", [])]
                headers.append([k, fix(str(v))])
            parts = []
            structure = []
            for part in msg.walk():
                defects += [type(d).__name__ for d in part.defects if part is not msg]
                if part.is_multipart():
                    structure.append(part.get_content_type())
                    continue
                payload = part.get_payload(decode=True) or b""
                # get_filename() strips white space; the parsed parameter keeps the name exact.
                filename = part.get_filename()
                cd = part["content-disposition"]
                if cd is not None and "filename" in cd.params:
                    filename = cd.params["filename"]
                entry = {
                    "contentType": part.get_content_type(),
                    "filename": filename,
                    "disposition": part.get_content_disposition(),
                    "cid": str(part["content-id"]) if part["content-id"] is not None else None,
                    "cte": str(part["content-transfer-encoding"]) if part["content-transfer-encoding"] is not None else None,
                    "sha256": hashlib.sha256(payload).hexdigest(),
                    "length": len(payload),
                    "text": None,
                }
                if part.get_content_maintype() == "text" and part.get_filename() is None:
                    entry["text"] = part.get_content().replace("\r\n", "\n")
                parts.append(entry)
            out.append({
                "subject": fix(str(msg["subject"])) if msg["subject"] is not None else None,
                "from": addrs(msg, "from"), "to": addrs(msg, "to"), "cc": addrs(msg, "cc"),
                "replyTo": addrs(msg, "reply-to"), "sender": addrs(msg, "sender"),
                "rfcNames": {h: rfc_names(legacy, h) for h in ["from", "to", "cc", "reply-to", "sender"] if legacy.get_all(h) is not None},
                "hasBcc": msg["bcc"] is not None,
                "date": msg["date"].datetime.isoformat() if msg["date"] is not None and msg["date"].datetime else None,
                "messageID": str(msg["message-id"]) if msg["message-id"] is not None else None,
                "contentType": msg.get_content_type(),
                "structure": structure,
                "defects": defects,
                "headers": headers,
                "parts": parts,
            })
        json.dump(out, sys.stdout)
        """#

    struct PyAddress: Decodable, Equatable, CustomStringConvertible {
        var name: String
        var addr: String
        var description: String { "\(name) <\(addr)>" }
    }

    struct PyPart: Decodable {
        var contentType: String
        var filename: String?
        var disposition: String?
        var cid: String?
        var cte: String?
        var sha256: String
        var length: Int
        var text: String?
    }

    struct PyMessage: Decodable {
        var subject: String?
        var from: [PyAddress]?
        var to: [PyAddress]?
        var cc: [PyAddress]?
        var replyTo: [PyAddress]?
        var sender: [PyAddress]?
        /// Display names decoded by the legacy API, exactly per RFC 2047 (see the script).
        var rfcNames: [String: [String]]
        var hasBcc: Bool
        var date: String?
        var messageID: String?
        var contentType: String
        var structure: [String]
        var defects: [String]
        var headers: [[String]]
        var parts: [PyPart]

        func header(_ name: String) -> String? {
            headers.first { $0[0].lowercased() == name.lowercased() }?[1]
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Parses each message (its bytes) and returns Python's view of it, in order.
    static func parse(_ messages: [[UInt8]]) throws -> [PyMessage] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-mime-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var paths: [String] = []
        for (i, m) in messages.enumerated() {
            let url = dir.appendingPathComponent("m\(i).eml")
            try Data(m).write(to: url)
            paths.append(url.path)
        }
        let scriptURL = dir.appendingPathComponent("parse.py")
        try Data(script.utf8).write(to: scriptURL)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", scriptURL.path] + paths
        let outURL = dir.appendingPathComponent("out.json")
        let errURL = dir.appendingPathComponent("err.txt")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: outURL)
        process.standardError = try FileHandle(forWritingTo: errURL)
        do {
            try process.run()
        } catch {
            throw Failure(description: "cannot run python3 (required for the round-trip tests): \(error)")
        }
        process.waitUntilExit()
        let out = try Data(contentsOf: outURL)
        guard process.terminationStatus == 0 else {
            let err = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
            throw Failure(description: "python3 failed with status \(process.terminationStatus): \(err)")
        }
        return try JSONDecoder().decode([PyMessage].self, from: out)
    }
}

/// Wire-format checks every serialised message must pass.
enum WireCheck {
    struct Report {
        var longestLine = 0
        var longestHeaderLine = 0
        var bareLineEnd = false
        var nonASCIIHeader = false
        var headerCount = 0
    }

    static func check(_ bytes: [UInt8]) -> Report {
        var r = Report()
        var line = 0
        var inHeader = true
        var lineHasNonASCII = false
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 13, i + 1 < bytes.count, bytes[i + 1] == 10 {
                r.longestLine = max(r.longestLine, line)
                if inHeader {
                    if line == 0 {
                        inHeader = false
                    } else {
                        r.longestHeaderLine = max(r.longestHeaderLine, line)
                        if lineHasNonASCII { r.nonASCIIHeader = true }
                        if bytes[i - line] != 32 && bytes[i - line] != 9 { r.headerCount += 1 }
                    }
                }
                line = 0
                lineHasNonASCII = false
                i += 2
                continue
            }
            if b == 13 || b == 10 { r.bareLineEnd = true }
            if b >= 0x80 { lineHasNonASCII = true }
            line += 1
            i += 1
        }
        r.longestLine = max(r.longestLine, line)
        if !bytes.isEmpty, !(bytes.count >= 2 && bytes[bytes.count - 2] == 13 && bytes.last == 10) { r.bareLineEnd = true }
        return r
    }

    /// Header lines longer than 78 characters (for failure messages).
    static func longHeaderLines(_ bytes: [UInt8]) -> [String] {
        let text = String(decoding: bytes, as: UTF8.self)
        let head = text.components(separatedBy: "\r\n\r\n").first ?? ""
        return head.components(separatedBy: "\r\n").filter { $0.utf8.count > 78 }
    }

    /// Text as the parser returns it: LF line ends, ending with a line break unless empty.
    static func normalizedText(_ s: String) -> String {
        // On scalars: Foundation's replacingOccurrences mishandles "\r\n" before a combining mark.
        var out = String.UnicodeScalarView()
        var previousCR = false
        for u in s.unicodeScalars {
            if u == "\n", previousCR { previousCR = false; continue }
            previousCR = u == "\r"
            out.append(u == "\r" ? "\n" : u)
        }
        if let last = out.last, last != "\n" { out.append("\n") }
        return String(out)
    }
}
