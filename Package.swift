// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

let package = Package(
    name: "Outbox",
    // macOS 15: the hand-back counter uses Synchronization's Atomic. Locks are NIOLockedValueBox
    // everywhere (one locking primitive); the token cache is an actor (it serialises refreshes).
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "OutboxSMTPGrammar", targets: ["OutboxSMTPGrammar"]),
        .library(name: "OutboxSMTP", targets: ["OutboxSMTP"]),
        .library(name: "OutboxMIME", targets: ["OutboxMIME"]),
        .library(name: "OutboxConfig", targets: ["OutboxConfig"]),
        .library(name: "OutboxTransports", targets: ["OutboxTransports"]),
        .library(name: "Outbox", targets: ["Outbox"]),
        .executable(name: "outbox", targets: ["outbox"]),
        .executable(name: "outbox-bench", targets: ["outbox-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        // HMAC-MD5 and MD5 for NTLMv2 (EWS on-premises); already in the graph through hummingbird-auth.
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: ["ConfigurationSupport"]),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
        // Traces: the Tracing API (spans of each delivery attempt), and swift-otel's OTLP/HTTP
        // exporter for `[outbox] otel-endpoint`, with its OTLPHTTP trait only: gRPC stays out of the build.
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        // The dashboard's server-rendered pages (templates embedded in the binary).
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
        // `swift package generate-documentation` (scripts/docs.sh): a command plugin, used by no target.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // The smtp-client options: parse, validate, defaults, when each change takes effect.
        .target(name: "OutboxConfig", swiftSettings: strict),
        // Messages, addresses, header and body encoders, the streaming writer.
        .target(
            name: "OutboxMIME",
            dependencies: ["OutboxSMTPGrammar", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        // The channel-free SMTP grammar both sides share: replies (parse, encode), commands
        // (encode for the client, parse for the listener), ESMTP parameters, xtext, DSN, errors.
        .target(
            name: "OutboxSMTPGrammar",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        // The client state machine, its channel handler, SASL, SMTPConnection (the async front).
        .target(
            name: "OutboxSMTP",
            dependencies: [
                "OutboxSMTPGrammar",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // OAuth 2.0 tokens (Azure client credentials and ROPC, Google refresh token), the token cache.
        .target(
            name: "OutboxOAuth",
            dependencies: [
                "OutboxConfig",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // The system's OpenSSL libcrypto, used for MD4 alone (NTLM's NT hash): swift-crypto does not
        // export MD4, and no crypto is written by hand. Debian: libssl-dev.
        .systemLibrary(
            name: "CLibCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"]), .brew(["openssl@3"])]
        ),
        // MailTransport: SMTP, file, Graph, EWS; configuration -> engine glue.
        .target(
            name: "OutboxTransports",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                "OutboxSMTP", "OutboxMIME", "OutboxConfig", "OutboxOAuth", "CLibCrypto",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // The library's front door: Mailer (a Service), metrics.
        .target(
            name: "Outbox",
            dependencies: [
                "OutboxTransports", "OutboxSMTP", "OutboxMIME", "OutboxConfig", "OutboxOAuth",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // The SMTP submission listener: server state machine, message decoder (smuggling rule),
        // TLS, AUTH (bcrypt off the event loops), limits; commits accepted messages to the queue.
        .target(
            name: "OutboxRelay",
            dependencies: [
                "Outbox", "OutboxConfig", "OutboxMIME", "OutboxSMTPGrammar",
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The daemon's HTTP API (Hummingbird), Prometheus metrics, `outbox serve`'s service group.
        .target(
            name: "OutboxServer",
            dependencies: [
                "Outbox", "OutboxRelay", "OutboxTransports", "OutboxMIME", "OutboxConfig",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "outbox",
            dependencies: [
                "OutboxServer", "OutboxRelay",
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                "Outbox", "OutboxTransports", "OutboxSMTP", "OutboxMIME", "OutboxConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "outbox-bench",
            dependencies: [
                "OutboxSMTP", "OutboxMIME", "Outbox", "OutboxConfig",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // What the test targets share: the peers' environment (TestPeers), the log recorder, the
        // maildir reader, the outbox binary's locator and runner, the manual clock, free ports,
        // built-in test certificates, the store contracts both stores keep, the HTTPS emulator
        // of Microsoft's and Google's endpoints, and the scripted SMTP peer on testing channels.
        // Used by test targets only; not a product.
        .target(
            name: "OutboxTestSupport",
            dependencies: [
                "Outbox", "OutboxConfig", "OutboxMIME", "OutboxSMTP",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/OutboxTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxConfigTests",
            dependencies: [
                "OutboxConfig",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxMIMETests",
            dependencies: [
                "OutboxMIME",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxCLITests",
            dependencies: ["outbox", "OutboxTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxServerTests",
            dependencies: [
                "OutboxServer", "OutboxTestSupport", "Outbox", "OutboxConfig",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxTests",
            dependencies: [
                "Outbox", "OutboxTestSupport", "OutboxTransports", "OutboxMIME", "OutboxConfig",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxTransportsTests",
            dependencies: [
                "OutboxTransports", "OutboxTestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxOAuthTests",
            dependencies: [
                "OutboxOAuth", "OutboxTestSupport", "OutboxTransports", "OutboxMIME", "OutboxConfig",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxRelayTests",
            dependencies: [
                "OutboxRelay", "OutboxConfig", "OutboxSMTPGrammar",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "OutboxSMTPTests",
            dependencies: [
                "OutboxSMTP", "OutboxSMTPGrammar", "OutboxTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Every test that needs a peer: Postfix, PostgreSQL, or `outbox` processes talking to them
        // (scripts/test.sh starts the peers). `swift test --skip OutboxIntegrationTests` runs the
        // unit tests alone, on a machine without peers.
        .testTarget(
            name: "OutboxIntegrationTests",
            dependencies: [
                "OutboxTestSupport", "outbox",
                "Outbox", "OutboxTransports", "OutboxSMTP", "OutboxMIME", "OutboxConfig",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
