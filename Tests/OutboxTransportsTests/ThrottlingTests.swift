import Foundation
import OutboxSMTP
import Testing

@testable import OutboxTransports

@Suite("Throttling replies")
struct ThrottlingTests {
    @Test(
        "the providers' throttling answers",
        arguments: [
            (432, "4.3.2", "STOREDRV.ClientSubmit; sender thread limit exceeded", true),
            (421, "4.7.0", "Try again later, closing connection", true),
            (454, "4.7.0", "Too many login attempts, please try again later", true),
            (550, "5.4.5", "Daily user sending limit exceeded", true),
            (554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException", true),
            (554, "5.2.0", "STOREDRV.Submission.Exception:SendAsDeniedException", false),
            (452, "4.5.3", "Error: too many recipients", false),
            (421, "4.4.2", "Error: timeout exceeded", false),
            (550, "5.1.1", "User unknown", false),
        ])
    func smtp(code: Int, enhanced: String, text: String, throttles: Bool) {
        #expect(Throttling.isThrottling(code: code, enhancedCode: enhanced, text: text) == throttles)
    }

    @Test("HTTP: 429 always, 503 only with Retry-After")
    func http() {
        #expect(Throttling.isThrottling(httpStatus: 429, retryAfter: nil))
        #expect(Throttling.isThrottling(httpStatus: 503, retryAfter: .seconds(3)))
        #expect(!Throttling.isThrottling(httpStatus: 503, retryAfter: nil))
        #expect(!Throttling.isThrottling(httpStatus: 500, retryAfter: .seconds(3)))
    }

    @Test("452 4.5.3 is too many recipients; 452 4.3.1 is not")
    func tooManyRecipients() {
        #expect(Throttling.isTooManyRecipients(code: 452, enhancedCode: "4.5.3", text: nil))
        #expect(Throttling.isTooManyRecipients(code: 452, enhancedCode: nil, text: "Too many recipients"))
        #expect(!Throttling.isTooManyRecipients(code: 452, enhancedCode: "4.3.1", text: "Insufficient system storage"))
        #expect(!Throttling.isTooManyRecipients(code: 450, enhancedCode: "4.5.3", text: nil))
    }
}
