import Testing
@Test func placeholderOutboxConfigTests() { #expect(1 + 1 == 2) }
