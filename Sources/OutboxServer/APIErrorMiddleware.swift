import Hummingbird

/// Gives the answers the router makes itself (no such route, a method a route does not have, a
/// body it cannot read) the API's JSON shape `{"error": {"code", "message"}}` with a stable
/// code, like every other error of the API.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return error.response
        } catch let error as any HTTPResponseError {
            return Self.answer(status: error.status, method: request.method.rawValue, path: request.uri.path).response
        }
    }

    static func answer(status: HTTPResponse.Status, method: String, path: String) -> APIError {
        switch status.code {
        case 404:
            return APIError(status, "not_found", "there is no \(method) \(path) in this API (the routes are in openapi.yaml)")
        case 405:
            return APIError(status, "method_not_allowed", "\(path) does not take \(method) (the routes are in openapi.yaml)")
        case 413:
            return APIError(status, "too_large", "the request body is larger than the limit ([outbox] max-request-size)")
        case 400..<500:
            return APIError(status, "bad_request", "the request cannot be read (\(status.code) \(status.reasonPhrase))")
        default:
            return APIError(status, "internal_error", "the request failed inside Outbox (\(status.code)); the cause is in the daemon's log")
        }
    }
}
