import Testing
@Test func placeholderTransports() { #expect(1 + 1 == 2) }
