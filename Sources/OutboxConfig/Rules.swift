/// Cross-option rules. Each has its own code and message. Rules that involve an option whose
/// value was invalid are skipped (that option already has its own error).
extension ConfigurationReader {
    func location(_ key: String) -> ConfigurationLocation {
        smtp[key]?.location ?? sectionLocation ?? ConfigurationLocation(file: fileName, line: nil)
    }

    func given(_ key: String) -> Bool { smtp[key] != nil }

    mutating func checkRules(_ c: OutboxConfiguration) {
        let o = c.smtpClient
        let failedKeys = failed
        let anyFailed: ([String]) -> Bool = { keys in keys.contains { failedKeys.contains($0) } }

        // Where the OAuth requirement comes from, for messages and locations.
        let oauthTrigger: (key: String, text: String)? = {
            if o.serverType == .graph { return ("server-type", "server-type = GRAPH") }
            if o.usesXOAUTH2 {
                let key = o.serverType == .ews ? "mail.ews.auth.mechanisms" : "mail.smtp.auth.mechanisms"
                return (key, "\(key) = XOAUTH2")
            }
            return nil
        }()

        // 1. Authentication needs user and password.
        if o.serverType == .graph {
            let missing = [o.user == nil ? "user" : nil, o.password == nil && !failedKeys.contains("password") ? "password" : nil].compactMap { $0 }
            if !missing.isEmpty, !anyFailed(["server-type"]) {
                problem(
                    "graph_needs_credentials", location("server-type"), option: "server-type", value: "GRAPH",
                    "needs user (the mailbox that sends) and password (the Azure application's client secret); \(Self.notSet(missing))")
            }
        } else if o.enableAuthentication {
            let missing = [o.user == nil ? "user" : nil, o.password == nil && !failedKeys.contains("password") ? "password" : nil].compactMap { $0 }
            if !missing.isEmpty {
                let what = o.usesXOAUTH2 && o.isGoogle ? "user and password (the Google refresh_token)" : "user and password"
                problem(
                    "authentication_needs_credentials", location("enable-authentication"), option: "enable-authentication", value: "true",
                    "needs \(what); \(Self.notSet(missing))")
            }
        }

        // 2. XOAUTH2 or GRAPH needs client-id, and for Azure directory-id.
        if let trigger = oauthTrigger, !anyFailed([trigger.key, "tenant-authority"]) {
            if o.clientID == nil {
                problem(
                    "oauth_needs_client_id", location(trigger.key), option: "client-id", value: nil,
                    "is not set: \(trigger.text) needs the Client ID of the \(o.isGoogle ? "Google" : "Microsoft Azure") application")
            }
            if !o.isGoogle && o.directoryID == nil {
                problem(
                    "azure_needs_directory_id", location(trigger.key), option: "directory-id", value: nil,
                    "is not set: \(trigger.text) with Microsoft Azure (tenant-authority = \(o.tenantAuthority)) needs the Directory (tenant) ID")
            }
        }

        // 3. Google.
        if o.isGoogle && !anyFailed(["tenant-authority", "server-type"]) {
            switch o.serverType {
            case .graph:
                problem(
                    "google_with_graph", location("tenant-authority"), option: "tenant-authority", value: o.tenantAuthority,
                    "is a Google authority, but server-type = GRAPH is Microsoft Graph; use server-type = SMTP with mail.smtp.auth.mechanisms = XOAUTH2 for Gmail"
                )
            case .ews:
                if o.usesXOAUTH2 {
                    problem(
                        "google_with_ews", location("tenant-authority"), option: "tenant-authority", value: o.tenantAuthority,
                        "is a Google authority, but server-type = EWS is Microsoft Exchange; use server-type = SMTP for Gmail")
                }
            case .smtp:
                if o.usesXOAUTH2 && !anyFailed(["secret"]) {
                    if let section = c.secretSections[o.secret] {
                        if section.password == nil && !failed.contains("secret-\(o.secret).password") {
                            problem(
                                "google_secret_missing_password", secretHeaders[o.secret] ?? location("secret"), option: "[secret-\(o.secret)]",
                                value: nil,
                                "has no password: Gmail XOAUTH2 needs password = the Google application's client secret there")
                        }
                    } else {
                        problem(
                            "google_needs_secret_section", location("secret"), option: "secret", value: o.secret,
                            "names the section [secret-\(o.secret)], which is missing: Gmail XOAUTH2 (tenant-authority contains \"google\") needs it, with password = the Google application's client secret"
                        )
                    }
                }
            }
            if o.grantType != nil && o.usesOAuth {
                warn(
                    "grant_type_with_google", location("grant-type"), option: "grant-type",
                    "grant-type has no effect with Google: Gmail always uses the refresh_token grant (password is the refresh_token)")
            }
        }
        if o.isGoogle && !o.usesOAuth && given("tenant-authority") && !anyFailed(["tenant-authority"]) {
            warn(
                "oauth_option_unused", location("tenant-authority"), option: "tenant-authority",
                "tenant-authority has no effect: XOAUTH2 is not enabled (set enable-authentication = true and mail.smtp.auth.mechanisms = XOAUTH2)")
        }

        // 4. EWS needs the EWS URL in server; SMTP needs a host, not a URL.
        if !anyFailed(["server-type", "server"]) {
            switch o.serverType {
            case .ews:
                if let server = o.server {
                    if !Convert.isHTTPURL(server) {
                        problem(
                            "ews_needs_url", location("server"), option: "server", value: server,
                            "is not an EWS URL: server-type = EWS needs an https:// or http:// URL such as https://mail.example.com/EWS/Exchange.asmx"
                        )
                    }
                } else {
                    problem(
                        "ews_needs_url", location("server-type"), option: "server", value: nil,
                        "is not set: server-type = EWS needs the EWS URL, such as https://mail.example.com/EWS/Exchange.asmx")
                }
            case .smtp:
                if let server = o.server, !Convert.isHost(server) {
                    let hint =
                        server.contains("://")
                        ? "is a URL, but server-type = SMTP needs a host name or IP address (a URL is for server-type = EWS)"
                        : "is not a host name or IP address"
                    problem("invalid_server", location("server"), option: "server", value: server, hint)
                }
            case .graph:
                if given("server") {
                    warn(
                        "option_unused", location("server"), option: "server",
                        "server is not used with server-type = GRAPH (requests go to [outbox] graph-url, \(c.outbox.graphURL))")
                }
            }
        }

        // 5. Scope.
        if !anyFailed(["server-type", "scope", "tenant-authority"]) {
            let isGraphScope = o.scope.lowercased().hasPrefix("https://graph.microsoft.com/")
            if o.serverType == .graph {
                if given("scope") && !isGraphScope {
                    problem(
                        "scope_not_for_server_type", location("scope"), option: "scope", value: o.scope,
                        "cannot work with server-type = GRAPH; use \(OptionTable.graphScope), or remove the scope line")
                } else if !given("scope") {
                    notes.append(
                        "scope: server-type = GRAPH uses \(OptionTable.graphScope) instead of the default \(OptionTable.defaultOutlookScope)")
                }
            } else if o.usesXOAUTH2 && !o.isGoogle && isGraphScope {
                problem(
                    "scope_not_for_server_type", location("scope"), option: "scope", value: o.scope,
                    "is a Microsoft Graph scope and cannot work with server-type = \(o.serverType.rawValue); use \(OptionTable.defaultOutlookScope), or remove the scope line"
                )
            }
        }

        // 6. grant-type.
        if let grant = o.grantType, !anyFailed(["server-type", "grant-type"]) {
            if o.serverType == .graph && grant == .password {
                problem(
                    "graph_needs_client_credentials", location("grant-type"), option: "grant-type", value: grant.rawValue,
                    "cannot work with server-type = GRAPH, where password is the application's client secret; use client_credentials or remove grant-type"
                )
            } else if !o.usesOAuth {
                warn(
                    "option_unused", location("grant-type"), option: "grant-type",
                    "grant-type has no effect: neither XOAUTH2 nor server-type = GRAPH is in use")
            }
        }

        // Warnings.
        if o.serverType == .smtp, o.server != nil {
            if o.smtpConnectionSecurity == .sslTLS && (o.port == 25 || o.port == 587) {
                warn(
                    "ssl_tls_on_starttls_port", location("smtp-connection-security"), option: "smtp-connection-security",
                    "smtp-connection-security = ssl-tls on port \(o.port): this port normally expects STARTTLS (start-tls-required); ssl-tls is normally port 465"
                )
            }
            if (o.smtpConnectionSecurity == .startTLS || o.smtpConnectionSecurity == .startTLSRequired) && o.port == 465 {
                warn(
                    "starttls_on_tls_port", location("smtp-connection-security"), option: "smtp-connection-security",
                    "smtp-connection-security = \(o.smtpConnectionSecurity.rawValue) on port 465: this port normally expects TLS from the first byte (ssl-tls)"
                )
            }
        }
        if o.cnxMaxIdleTime == .zero {
            warn(
                "no_connection_reuse", location("cnx-max-idle-time"), option: "cnx-max-idle-time",
                "cnx-max-idle-time = 00:00:00 closes every connection as soon as it is idle: no connection is reused")
        }
        for key in ["connect-timeout", "protocol-timeout"] {
            let value = key == "connect-timeout" ? o.connectTimeout : o.protocolTimeout
            if value == .zero {
                warn(
                    "no_timeout", location(key), option: key,
                    "\(key) = 00:00:00 means no timeout (as in JavaMail): a server that stops answering holds a delivery forever")
            }
        }
        if o.enableAuthentication, o.serverType == .smtp, o.smtpConnectionSecurity == .none, let server = o.server, !Convert.isLoopback(server) {
            warn(
                "authentication_in_clear",
                given("smtp-connection-security") ? location("smtp-connection-security") : location("enable-authentication"),
                option: "smtp-connection-security",
                "enable-authentication = true with smtp-connection-security = none sends the credentials in clear text to \(server); use start-tls-required or ssl-tls"
            )
        }
        if o.serverType == .ews, let server = o.server, server.lowercased().hasPrefix("http://") {
            let host = server.dropFirst(7).split(whereSeparator: { $0 == "/" || $0 == ":" }).first.map(String.init) ?? ""
            if !Convert.isLoopback(host) {
                warn(
                    "authentication_in_clear", location("server"), option: "server",
                    "server = \(server) uses http://: credentials and messages travel in clear text; use https://")
            }
        }
        if o.serverType == .smtp, let mechanisms = o.authMechanisms, mechanisms.contains("XOAUTH2"), !o.enableAuthentication {
            warn(
                "xoauth2_without_authentication", location("mail.smtp.auth.mechanisms"), option: "mail.smtp.auth.mechanisms",
                "mail.smtp.auth.mechanisms = XOAUTH2 has no effect while enable-authentication = false")
        }
        if o.sslTrust.contains("*") {
            warn(
                "trust_all_certificates", location("mail.smtp.ssl.trust"), option: "mail.smtp.ssl.trust",
                "mail.smtp.ssl.trust = * accepts any certificate from any server; prefer [outbox] tls-ca-file for a private CA")
        }
        if !o.checkServerIdentity {
            warn(
                "no_server_identity_check", location("mail.smtp.ssl.checkserveridentity"), option: "mail.smtp.ssl.checkserveridentity",
                "mail.smtp.ssl.checkserveridentity = false accepts a certificate issued for another host name")
        }
        if o.usesFileTransport && !anyFailed(["server", "server-type"]) {
            notes.append("server is not set: messages are written as files under \(c.outbox.dataDirectory) (the file transport), not sent")
        }
        if o.serverType == .smtp, !o.usesFileTransport, let set = o.pacing.maxConcurrent, set > o.cnxPoolSize {
            warn(
                "max_concurrent_over_pool", location("max-concurrent"), option: "max-concurrent",
                "max-concurrent = \(set) is more than cnx-pool-size = \(o.cnxPoolSize): an SMTP route has at most cnx-pool-size sessions, so \(o.cnxPoolSize) applies"
            )
        }
        if let note = c.pacingNote(options: o) { notes.append(note) }
    }

    static func notSet(_ names: [String]) -> String {
        names.count == 1 ? "\(names[0]) is not set" : "\(names.joined(separator: " and ")) are not set"
    }
}
