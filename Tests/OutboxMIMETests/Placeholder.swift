import Testing
@Test func placeholderOutboxMIMETests() { #expect(1 + 1 == 2) }
