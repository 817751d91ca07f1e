import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

extension Emulator {
    /// Microsoft identity platform v2 and Google's token endpoint.
    package static func tokenRoutes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        // Microsoft identity platform v2 (PROTOCOLS.md §1.1).
        router.post("/:tenant/oauth2/v2.0/token") { request, context -> Response in
            var request = request
            let tenant = try context.parameters.require("tenant")
            guard request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true else {
                return aad("invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
            }
            let f = form(try await request.collectBody(upTo: 1 << 16))
            await state.set { $0.lastForm = f }
            let s = await state
            if await tenant != s.tenant { return aad("invalid_request", 90002, "Tenant '\(tenant)' not found.") }
            if await tokenDelaySleep(s) {}
            if await s.tokenUnavailableNext > 0 {
                await state.set { $0.tokenUnavailableNext -= 1 }
                return json(
                    .serviceUnavailable,
                    ["error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again."])
            }
            guard await f["client_id"] == s.clientID else {
                return aad("unauthorized_client", 700016, "Application with identifier '\(f["client_id"] ?? "")' was not found in the directory.")
            }
            let scope = f["scope"] ?? ""
            guard scope.hasSuffix("/.default"), await scope == s.expectedScope else {
                return aad("invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid.")
            }
            switch f["grant_type"] {
            case "client_credentials":
                guard await f["client_secret"] == s.clientSecret else {
                    return aad("invalid_client", 7000215, "Invalid client secret provided.")
                }
                if await s.secretExpired {
                    return aad("invalid_client", 7000222, "The provided client secret keys for app '\(f["client_id"]!)' are expired.")
                }
            case "password":
                guard await f["username"] == s.ropcUser, await f["password"] == s.ropcPassword else {
                    return aad("invalid_grant", 50126, "Error validating credentials due to invalid username or password.")
                }
            default:
                return aad("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
            }
            let token = await state.issue()
            return json(.ok, ["token_type": "Bearer", "expires_in": await s.expiresIn, "ext_expires_in": await s.expiresIn, "access_token": token])
        }
        // Google (PROTOCOLS.md §1.2).
        router.post("/google/token") { request, _ -> Response in
            var request = request
            guard request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true else {
                return json(.badRequest, ["error": "invalid_request", "error_description": "Invalid content type"])
            }
            let f = form(try await request.collectBody(upTo: 1 << 16))
            await state.set { $0.lastForm = f }
            let s = state
            guard f["grant_type"] == "refresh_token" else {
                return json(.badRequest, ["error": "unsupported_grant_type", "error_description": "Invalid grant_type: \(f["grant_type"] ?? "")"])
            }
            guard await f["client_id"] == s.clientID, await f["client_secret"] == s.googleClientSecret else {
                return json(.unauthorized, ["error": "invalid_client", "error_description": "Unauthorized"])
            }
            guard await f["refresh_token"] == s.googleRefreshToken, await !s.googleRevoked else {
                return json(.badRequest, ["error": "invalid_grant", "error_description": "Token has been expired or revoked."])
            }
            let token = await state.issue()
            return json(.ok, ["access_token": token, "expires_in": await s.expiresIn, "token_type": "Bearer", "scope": "https://mail.google.com/"])
        }
    }
}
