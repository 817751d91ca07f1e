import Testing
@Test func placeholderOutboxSMTPTests() { #expect(1 + 1 == 2) }
