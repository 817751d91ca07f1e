/// Chooses the MIME structure and transfer encodings of a `Message` and lays it out as segments.
///
/// Structure: a single part when there is one body; `multipart/alternative` for text + HTML;
/// `multipart/related` for HTML + inline parts; `multipart/mixed` around attachments.
struct MessageSerializer {
    let message: Message
    let options: MIMEEncodingOptions

    indirect enum Part {
        case leaf(headers: [UInt8], body: Body)
        case multipart(subtype: String, boundary: String, parts: [Part])
    }

    enum Body {
        case bytes([UInt8])
        case base64File(path: String)
    }

    private static let crlf: [UInt8] = [13, 10]

    func segments() throws(MIMEError) -> [Segment] {
        try message.validate()
        let m = message
        var head: [UInt8] = []
        head += HeaderWriter.unstructured("Date", RFC5322Date.format(m.date))
        head += try HeaderWriter.addresses("From", [m.from], options: options)
        if let s = m.sender { head += try HeaderWriter.addresses("Sender", [s], options: options) }
        if !m.replyTo.isEmpty { head += try HeaderWriter.addresses("Reply-To", m.replyTo, options: options) }
        if !m.to.isEmpty { head += try HeaderWriter.addresses("To", m.to, options: options) }
        if !m.cc.isEmpty { head += try HeaderWriter.addresses("Cc", m.cc, options: options) }
        head += try HeaderWriter.messageIDs("Message-ID", [m.messageID])
        if !m.inReplyTo.isEmpty { head += try HeaderWriter.messageIDs("In-Reply-To", m.inReplyTo) }
        if !m.references.isEmpty { head += try HeaderWriter.messageIDs("References", m.references) }
        if let subject = m.subject { head += HeaderWriter.unstructured("Subject", subject) }
        for h in m.headers { head += HeaderWriter.unstructured(h.name, h.value) }
        if let p = m.priority {
            let label = ["Highest", "High", "Normal", "Low", "Lowest"][p.rawValue - 1]
            head += HeaderWriter.unstructured("X-Priority", "\(p.rawValue) (\(label))")
            head += HeaderWriter.unstructured("Importance", p.rawValue < 3 ? "High" : (p.rawValue > 3 ? "Low" : "Normal"))
        }
        head += HeaderWriter.unstructured("MIME-Version", "1.0")

        var segments: [Segment] = []
        var pending = head
        try layout(try structure(), into: &segments, pending: &pending)
        if !pending.isEmpty { segments.append(.bytes(pending)) }
        return segments
    }

    // MARK: Structure

    private func structure() throws(MIMEError) -> Part {
        let inline = message.html != nil ? message.attachments.filter(\.isInline) : []
        let attached = message.html != nil ? message.attachments.filter { !$0.isInline } : message.attachments

        var body: Part?
        let textPart = message.text.map { textLeaf($0, subtype: "plain") }
        var htmlPart = message.html.map { textLeaf($0, subtype: "html") }
        if let h = htmlPart, !inline.isEmpty {
            var parts = [h]
            for a in inline { parts.append(try attachmentLeaf(a)) }
            htmlPart = .multipart(subtype: "related", boundary: boundary(), parts: parts)
        }
        switch (textPart, htmlPart) {
        case (let t?, let h?): body = .multipart(subtype: "alternative", boundary: boundary(), parts: [t, h])
        case (let t?, nil): body = t
        case (nil, let h?): body = h
        case (nil, nil): body = attached.isEmpty ? textLeaf("", subtype: "plain") : nil
        }
        if attached.isEmpty, let body { return body }
        var parts: [Part] = body.map { [$0] } ?? []
        for a in attached { parts.append(try attachmentLeaf(a)) }
        return .multipart(subtype: "mixed", boundary: boundary(), parts: parts)
    }

    /// A boundary that cannot occur in base64 or quoted-printable output ("=_" is invalid in
    /// both); 7bit and 8bit bodies are checked against it in `layout`.
    private func boundary() -> String {
        String(decoding: Array("=_Outbox_".utf8) + RandomToken.make(28), as: UTF8.self)
    }

    // MARK: Leaves

    private func textLeaf(_ text: String, subtype: String) -> Part {
        let bytes = TransferEncoding.normalizeLineEnds(Array(text.utf8))
        let (cte, body) = TransferEncoding.encodeText(bytes, allow8Bit: options.allow8BitMIME)
        var headers = HeaderWriter.parameterized("Content-Type", "text/\(subtype)", [("charset", "utf-8")])
        headers += HeaderWriter.unstructured("Content-Transfer-Encoding", cte)
        return .leaf(headers: headers, body: .bytes(body))
    }

    private func attachmentLeaf(_ a: Attachment) throws(MIMEError) -> Part {
        var typeWriter = HeaderWriter("Content-Type")
        let asciiName = a.filename.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
        // `name` is what clients without RFC 2231 read: encoded words when not ASCII (the
        // quoted string may fold between them, so they are added without separators).
        let nameTokens = asciiName ? MIMEParams.tokens("name", a.filename) : MIMEParams.encodedWordTokens("name", a.filename)
        typeWriter.add(a.contentType.lowercased(), reserve: 1)
        typeWriter.glue(";")
        if asciiName {
            typeWriter.addSeparated(nameTokens, by: ";")
        } else {
            for t in nameTokens { typeWriter.add(t) }
        }
        var headers = typeWriter.finished()
        headers += HeaderWriter.parameterized(
            "Content-Disposition", a.isInline ? "inline" : "attachment", [("filename", a.filename)])
        if let cid = a.contentID { headers += try HeaderWriter.messageIDs("Content-ID", [cid]) }
        switch a.source {
        case .data(let bytes):
            let (cte, body) = TransferEncoding.encodeBinary(bytes, isText: a.contentType.lowercased().hasPrefix("text/"))
            headers += HeaderWriter.unstructured("Content-Transfer-Encoding", cte)
            return .leaf(headers: headers, body: .bytes(body))
        case .file(let path):
            guard FileInfo.isReadableFile(path) else {
                throw MIMEError(.fileUnreadable, "the attachment file \(path) does not exist or cannot be read")
            }
            headers += HeaderWriter.unstructured("Content-Transfer-Encoding", "base64")
            return .leaf(headers: headers, body: .base64File(path: path))
        }
    }

    // MARK: Layout

    /// Appends `part` (its headers, blank line and body) to `segments`, coalescing small byte runs in `pending`.
    private func layout(_ part: Part, into segments: inout [Segment], pending: inout [UInt8]) throws(MIMEError) {
        switch part {
        case .leaf(let headers, let body):
            pending += headers
            pending += Self.crlf
            switch body {
            case .bytes(let b): pending += b
            case .base64File(let path):
                segments.append(.bytes(pending))
                pending = []
                segments.append(.base64File(path: path))
            }
        case .multipart(let subtype, var boundary, let parts):
            while containsRawBody(parts, boundary) { boundary = self.boundary() }
            pending += HeaderWriter.parameterized("Content-Type", "multipart/\(subtype)", [("boundary", boundary)])
            pending += Self.crlf
            for (i, p) in parts.enumerated() {
                pending += Array(((i == 0 ? "" : "\r\n") + "--" + boundary + "\r\n").utf8)
                try layout(p, into: &segments, pending: &pending)
            }
            pending += Array(("\r\n--" + boundary + "--\r\n").utf8)
        }
    }

    /// True when a 7bit/8bit body contains the boundary (base64/QP bodies cannot).
    private func containsRawBody(_ parts: [Part], _ boundary: String) -> Bool {
        let needle = Array(boundary.utf8)
        for p in parts {
            switch p {
            case .leaf(_, .bytes(let b)): if TransferEncoding.contains(b, needle) { return true }
            case .leaf(_, .base64File): continue
            case .multipart(_, _, let inner): if containsRawBody(inner, boundary) { return true }
            }
        }
        return false
    }
}
