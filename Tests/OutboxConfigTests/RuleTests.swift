import Testing

@testable import OutboxConfig

@Suite struct CrossOptionRuleTests {
    @Test func authenticationNeedsUserAndPassword() {
        #expect(
            problems(smtpClient("server = mail.example.com\nenable-authentication = true")) == [
                "outbox.cfg:3: enable-authentication = true needs user and password; user and password are not set"
            ])
        #expect(
            problems(smtpClient("server = mail.example.com\nenable-authentication = true\nuser = a@example.com")) == [
                "outbox.cfg:3: enable-authentication = true needs user and password; password is not set"
            ])
    }

    @Test func xoauth2NeedsClientIDAndDirectoryID() {
        let text = smtpClient(
            """
            server = smtp.office365.com
            port = 587
            smtp-connection-security = start-tls-required
            enable-authentication = true
            user = a@contoso.com
            password = pw
            mail.smtp.auth.mechanisms = XOAUTH2
            """)
        #expect(
            problems(text) == [
                "outbox.cfg:8: client-id is not set: mail.smtp.auth.mechanisms = XOAUTH2 needs the Client ID of the Microsoft Azure application",
                "outbox.cfg:8: directory-id is not set: mail.smtp.auth.mechanisms = XOAUTH2 with Microsoft Azure (tenant-authority = https://login.microsoftonline.com) needs the Directory (tenant) ID",
            ])
        #expect(problems(text + "client-id = c\ndirectory-id = d\n") == [])
    }

    @Test func graphNeedsClientIDDirectoryIDUserPassword() {
        #expect(problemCodes(smtpClient("server-type = GRAPH")) == ["graph_needs_credentials", "oauth_needs_client_id", "azure_needs_directory_id"])
        #expect(
            problems(smtpClient("server-type = GRAPH")).first
                == "outbox.cfg:2: server-type = GRAPH needs user (the mailbox that sends) and password (the Azure application's client secret); user and password are not set"
        )
    }

    @Test func googleNeedsSecretSection() throws {
        let base = smtpClient(
            """
            server = smtp.gmail.com
            port = 587
            smtp-connection-security = start-tls-required
            enable-authentication = true
            user = a@gmail.com
            password = refresh
            client-id = 123.apps.googleusercontent.com
            tenant-authority = Google
            mail.smtp.auth.mechanisms = XOAUTH2
            secret = gmail
            """)
        #expect(
            problems(base) == [
                "outbox.cfg:11: secret = gmail names the section [secret-gmail], which is missing: Gmail XOAUTH2 (tenant-authority contains \"google\") needs it, with password = the Google application's client secret"
            ])
        #expect(problemCodes(base + "[secret-gmail]\n") == ["google_secret_missing_password"])
        #expect(problems(base + "[secret-gmail]\npassword = cs\n") == [])
        // Google needs no directory-id.
        #expect(try load(base + "[secret-gmail]\npassword = cs\n").smtpClient.isGoogle)
    }

    @Test func googleWithGraphOrEWSIsAnError() {
        let graph = smtpClient("server-type = GRAPH\nuser = u\npassword = p\nclient-id = c\ntenant-authority = https://accounts.google.com")
        #expect(problemCodes(graph) == ["google_with_graph"])
        let ews = smtpClient(
            "server-type = EWS\nserver = https://x.example.com/EWS/Exchange.asmx\nclient-id = c\ntenant-authority = google\nmail.ews.auth.mechanisms = XOAUTH2"
        )
        #expect(problemCodes(ews) == ["google_with_ews"])
    }

    @Test func ewsNeedsURL() {
        #expect(
            problems(smtpClient("server-type = EWS")) == [
                "outbox.cfg:2: server is not set: server-type = EWS needs the EWS URL, such as https://mail.example.com/EWS/Exchange.asmx"
            ])
        #expect(
            problems(smtpClient("server-type = EWS\nserver = mail.example.com")) == [
                "outbox.cfg:3: server = mail.example.com is not an EWS URL: server-type = EWS needs an https:// or http:// URL such as https://mail.example.com/EWS/Exchange.asmx"
            ])
        #expect(problems(smtpClient("server-type = EWS\nserver = https://mail.example.com/EWS/Exchange.asmx")) == [])
        #expect(problems(smtpClient("server-type = EWS\nserver = http://127.0.0.1:8080/EWS/Exchange.asmx")) == [])
    }

    static let graph = smtpClient("server-type = GRAPH\nuser = sender@contoso.com\npassword = appsecret\nclient-id = c\ndirectory-id = d")

    @Test func graphUsesGraphScopeInsteadOfDefault() throws {
        let c = try load(Self.graph)
        #expect(c.smtpClient.scope == OptionTable.defaultOutlookScope)
        #expect(c.smtpClient.effectiveScope == "https://graph.microsoft.com/.default")
        #expect(c.notes.contains { $0.contains("server-type = GRAPH uses https://graph.microsoft.com/.default") })
        #expect(value(of: "scope", in: c) == "https://graph.microsoft.com/.default (GRAPH; configured https://outlook.office.com/.default)")
        #expect(c.smtpClient.effectiveGrantType == .clientCredentials)
    }

    @Test func explicitScopeThatCannotWork() {
        #expect(
            problems(Self.graph + "scope = https://outlook.office.com/.default\n") == [
                "outbox.cfg:7: scope = https://outlook.office.com/.default cannot work with server-type = GRAPH; use https://graph.microsoft.com/.default, or remove the scope line"
            ])
        #expect(problems(Self.graph + "scope = https://graph.microsoft.com/.default\n") == [])
        let smtp = smtpClient(
            "server = smtp.office365.com\nenable-authentication = true\nuser = u\npassword = p\nclient-id = c\ndirectory-id = d\nmail.smtp.auth.mechanisms = XOAUTH2\nsmtp-connection-security = start-tls-required\nscope = https://graph.microsoft.com/.default"
        )
        #expect(
            problems(smtp) == [
                "outbox.cfg:10: scope = https://graph.microsoft.com/.default is a Microsoft Graph scope and cannot work with server-type = SMTP; use https://outlook.office.com/.default, or remove the scope line"
            ])
    }

    @Test func grantType() throws {
        #expect(
            problems(Self.graph + "grant-type = password\n") == [
                "outbox.cfg:7: grant-type = password cannot work with server-type = GRAPH, where password is the application's client secret; use client_credentials or remove grant-type"
            ])
        let c = try load(Self.graph + "grant-type = client_credentials\n")
        #expect(c.smtpClient.grantType == .clientCredentials)
        let unused = try load(smtpClient("grant-type = password"))
        #expect(unused.warnings.map(\.code) == ["option_unused"])
    }

    @Test func invalidOptionsDoNotCascade() {
        // server-type is invalid: no EWS/GRAPH rule fires on top of its own error.
        #expect(problemCodes(smtpClient("server-type = EWSS")) == ["invalid_value"])
    }
}

@Suite struct WarningTests {
    func warnings(_ lines: String) throws -> [String] {
        try load(smtpClient(lines)).warnings.map(\.description)
    }

    @Test func sslTLSOnStartTLSPorts() throws {
        #expect(
            try warnings("server = mail.example.com\nport = 587\nsmtp-connection-security = ssl-tls") == [
                "outbox.cfg:4: warning: smtp-connection-security = ssl-tls on port 587: this port normally expects STARTTLS (start-tls-required); ssl-tls is normally port 465"
            ])
        #expect(try warnings("server = mail.example.com\nsmtp-connection-security = ssl-tls").count == 1)  // port 25
        #expect(try warnings("server = mail.example.com\nport = 465\nsmtp-connection-security = ssl-tls").isEmpty)
        #expect(try warnings("server = mail.example.com\nport = 465\nsmtp-connection-security = start-tls").map { $0.contains("port 465") } == [true])
    }

    @Test func zeroMaxIdleTime() throws {
        #expect(
            try warnings("cnx-max-idle-time = 00:00:00") == [
                "outbox.cfg:2: warning: cnx-max-idle-time = 00:00:00 closes every connection as soon as it is idle: no connection is reused"
            ])
    }

    @Test func authenticationInClearText() throws {
        let lines = "enable-authentication = true\nuser = u\npassword = p\n"
        #expect(
            try warnings(lines + "server = mail.example.com") == [
                "outbox.cfg:2: warning: enable-authentication = true with smtp-connection-security = none sends the credentials in clear text to mail.example.com; use start-tls-required or ssl-tls"
            ])
        #expect(try warnings(lines + "server = localhost").isEmpty)
        #expect(try warnings(lines + "server = 127.0.0.1").isEmpty)
        #expect(try warnings(lines + "server = ::1").isEmpty)
        #expect(try warnings(lines + "server = mail.example.com\nsmtp-connection-security = start-tls-required").isEmpty)
    }

    @Test func unusedMailPropertyIsKept() throws {
        let c = try load(smtpClient("mail.smtp.quitwait = false\nmail.smtp.auth.mechanism = XOAUTH2"))
        #expect(c.mailProperties == ["mail.smtp.quitwait": "false", "mail.smtp.auth.mechanism": "XOAUTH2"])
        #expect(c.unusedMailProperties == ["mail.smtp.quitwait", "mail.smtp.auth.mechanism"])
        #expect(
            c.warnings.map(\.description) == [
                "outbox.cfg:2: warning: mail.smtp.quitwait is kept but not used by Outbox",
                "outbox.cfg:3: warning: mail.smtp.auth.mechanism is kept but not used by Outbox; did you mean mail.smtp.auth.mechanisms?",
            ])
    }

    @Test func otherWarnings() throws {
        #expect(try load(smtpClient("mail.smtp.auth.mechanisms = XOAUTH2")).warnings.map(\.code) == ["xoauth2_without_authentication"])
        #expect(
            try load(smtpClient("mail.smtp.ssl.trust = *\nmail.smtp.ssl.checkserveridentity = false")).warnings.map(\.code) == [
                "trust_all_certificates", "no_server_identity_check",
            ])
        #expect(try load(smtpClient("connect-timeout = 00:00:00")).warnings.map(\.code) == ["no_timeout"])
        #expect(
            try load(smtpClient("server-type = EWS\nserver = http://mail.example.com/EWS/Exchange.asmx")).warnings.map(\.code) == [
                "authentication_in_clear"
            ])
    }
}
