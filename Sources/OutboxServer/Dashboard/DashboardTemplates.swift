import Mustache

/// The dashboard's pages: Mustache templates compiled into the binary (no file to ship), HTML
/// escaped by `{{ }}`. No script, no CDN: the overview refreshes itself with a meta refresh.
enum DashboardTemplates {
    static let library: MustacheLibrary = {
        var library = MustacheLibrary()
        for (name, text) in sources {
            // The templates are constants of this file; a unit test renders each one.
            if let template = try? MustacheTemplate(string: text) { library.register(template, named: name) }
        }
        return library
    }()

    static func render(_ name: String, _ context: [String: Any]) -> String {
        library.render(context, withTemplate: name) ?? "template \(name) is missing"
    }

    static let sources: [String: String] = [
        "head": head, "foot": foot, "overview": overview, "messages": messages, "message": message, "confirm": confirm,
        "result": result, "credentials": credentials, "login": login, "error": error,
    ]

    static let head = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
        {{#refresh}}<meta http-equiv="refresh" content="{{refresh}}">{{/refresh}}
        <title>{{title}} · Outbox</title>
        <link rel="icon" href="data:,">
        <style>
        body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2433;background:#f5f6f8}
        header{background:#1d2433;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
        header a{color:#cfd6e4;text-decoration:none}header a.on,header a:hover{color:#fff;text-decoration:underline}
        header .brand{font-weight:600;color:#fff}header form{margin-left:auto}
        main{padding:1em 1.2em;max-width:1200px}
        h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.2em 0 .4em}
        table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1em}
        th,td{border-bottom:1px solid #e3e6eb;padding:.35em .6em;text-align:left;vertical-align:top}
        th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
        .card{background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:.8em 1em;margin-bottom:1em}
        .cards{display:flex;flex-wrap:wrap;gap:1em}.cards .card{flex:1 1 220px}
        .big{font-size:1.6em;font-weight:600}
        .s-delivered{color:#1a7f37}.s-failed,.s-unknown{color:#b42318}.s-deferred{color:#9a6700}.s-cancelled{color:#6e7781}
        .alert{background:#fdecea;border:1px solid #f4b8b2;color:#8a1c12;border-radius:6px;padding:.6em 1em;margin-bottom:1em}
        .notice{background:#e8f5ec;border:1px solid #a7d8b5;border-radius:6px;padding:.6em 1em;margin-bottom:1em}
        form.filters{display:flex;flex-wrap:wrap;gap:.5em;align-items:end;margin-bottom:1em}
        form.filters label{display:flex;flex-direction:column;font-size:.85em;color:#4b5563}
        input,select,button{font:inherit;padding:.3em .5em;border:1px solid #c4c9d2;border-radius:4px;background:#fff}
        button{cursor:pointer;background:#2f5bd3;color:#fff;border-color:#2f5bd3}button.danger{background:#b42318;border-color:#b42318}
        a.button{display:inline-block;padding:.3em .7em;border:1px solid #c4c9d2;border-radius:4px;background:#fff;color:#1d2433;text-decoration:none}
        pre{background:#fff;border:1px solid #e3e6eb;padding:.6em;overflow:auto;white-space:pre-wrap;word-break:break-all}
        .muted{color:#6e7781}.pager{display:flex;gap:1em;margin:1em 0}
        svg text{font-size:11px;fill:#4b5563}
        </style></head><body>
        <header><span class="brand">Outbox</span>
        {{#nav}}<a href="/" class="{{#overview}}on{{/overview}}">Overview</a>
        <a href="/messages" class="{{#messages}}on{{/messages}}">Messages</a>
        <a href="/credentials" class="{{#credentials}}on{{/credentials}}">Credentials</a>{{/nav}}
        {{#session}}<form method="post" action="/logout"><span class="muted">{{who}}</span>
        <input type="hidden" name="csrf" value="{{csrf}}"> <button type="submit">Log out</button></form>{{/session}}
        </header><main>
        """

    static let foot = """
        </main></body></html>
        """

    static let overview = """
        {{> head}}
        <h1>Queue overview</h1>
        {{#alerts}}<div class="alert"><strong>Route {{route}}: {{code}}</strong> since {{since}}: {{message}}</div>{{/alerts}}
        <div class="cards">
        <div class="card"><div class="muted">Waiting (queued, deferred, sending)</div><div class="big" id="waiting">{{waiting}}</div></div>
        <div class="card"><div class="muted">Oldest waiting message</div><div class="big" id="oldest">{{oldest}}</div></div>
        <div class="card"><div class="muted">Delivered / failed, last hour</div>
        <div class="big"><span class="s-delivered">{{deliveredHour}}</span> / <span class="s-failed">{{failedHour}}</span></div>
        <div class="muted">{{deliveredRate}} delivered/s, {{failedRate}} failed/s</div></div>
        </div>
        <h2>Messages by status</h2>
        <table id="counts"><tr><th>Route</th>{{#statuses}}<th class="n">{{.}}</th>{{/statuses}}<th class="n">total</th></tr>
        {{#countRows}}<tr><td>{{route}}</td>{{#cells}}<td class="n"><a href="/messages?status={{status}}&amp;route={{route}}" data-status="{{status}}">{{n}}</a></td>{{/cells}}<td class="n">{{total}}</td></tr>{{/countRows}}
        </table>
        <h2>Delivered and failed per minute, last hour</h2>
        <div class="card">{{{chart}}}</div>
        <h2>Routes</h2>
        <table id="routes"><tr><th>Route</th><th>State</th><th>Alert</th><th>Since</th><th>Next probe</th><th>Failed probes</th></tr>
        {{#routes}}<tr><td>{{route}}</td><td class="{{#paused}}s-failed{{/paused}}">{{state}}</td><td>{{alert}}</td><td>{{since}}</td><td>{{nextProbe}}</td><td class="n">{{failedProbes}}</td></tr>{{/routes}}
        {{^routes}}<tr><td colspan="6" class="muted">No dispatcher runs in this process.</td></tr>{{/routes}}
        </table>
        <p class="muted">Refreshed every {{refresh}} s · {{now}}</p>
        {{> foot}}
        """

    static let messages = """
        {{> head}}
        <h1>Messages</h1>
        {{#notice}}<div class="notice">{{notice}}</div>{{/notice}}
        <form class="filters" method="get" action="/messages">
        <label>Status<select name="status"><option value="">any</option>{{#statusOptions}}<option value="{{value}}"{{#selected}} selected{{/selected}}>{{value}}</option>{{/statusOptions}}</select></label>
        <label>Route<input name="route" value="{{f.route}}" size="8"></label>
        <label>Sender<input name="sender" value="{{f.sender}}"></label>
        <label>Recipient<input name="recipient" value="{{f.recipient}}"></label>
        <label>Subject<input name="subject" value="{{f.subject}}"></label>
        <label>Since (UTC)<input type="datetime-local" name="since" value="{{f.since}}"></label>
        <label>Until (UTC)<input type="datetime-local" name="until" value="{{f.until}}"></label>
        <label>Possible duplicate<select name="duplicate"><option value="">any</option>
        <option value="true"{{#dupTrue}} selected{{/dupTrue}}>yes</option><option value="false"{{#dupFalse}} selected{{/dupFalse}}>no</option></select></label>
        <button type="submit">Filter</button> <a class="button" href="/messages">Clear</a>
        </form>
        <p>Actions on every message this filter takes:
        <a class="button" href="/actions/confirm?action=retry&amp;{{filterQuery}}">Retry…</a>
        <a class="button" href="/actions/confirm?action=cancel&amp;{{filterQuery}}">Cancel…</a>
        <a class="button" href="/actions/confirm?action=purge&amp;{{filterQuery}}">Purge…</a></p>
        <table id="messages"><tr><th>Queued (UTC)</th><th>Status</th><th>Sender</th><th>Recipients</th><th>Subject</th><th class="n">Attempts</th><th>Id</th></tr>
        {{#rows}}<tr data-id="{{id}}"><td>{{created}}</td><td class="s-{{status}}">{{status}}{{#duplicate}} ⚠ duplicate?{{/duplicate}}</td><td>{{from}}</td><td>{{recipients}}</td><td>{{subject}}</td><td class="n">{{attempts}}</td><td><a href="/messages/{{id}}">{{shortID}}</a></td></tr>{{/rows}}
        {{^rows}}<tr><td colspan="7" class="muted">{{#more}}No match among the messages searched so far.{{/more}}{{^more}}No message matches.{{/more}}</td></tr>{{/rows}}
        </table>
        <div class="pager"><a class="button" href="/messages?{{filterQuery}}">Newest</a>{{#next}}<a class="button" id="older" href="/messages?{{filterQuery}}&amp;cursor={{next}}">Older →</a>{{/next}}</div>
        {{> foot}}
        """

    static let message = """
        {{> head}}
        <h1>Message {{id}}</h1>
        {{#notice}}<div class="notice">{{notice}}</div>{{/notice}}
        <p><span class="s-{{status}} big" id="status">{{status}}</span>{{#duplicate}} <strong class="s-failed">possible duplicate</strong>{{/duplicate}}</p>
        <p>{{#canRetry}}<a class="button" href="/messages/{{id}}/confirm?action=retry">Retry now…</a> {{/canRetry}}
        {{#canCancel}}<a class="button" href="/messages/{{id}}/confirm?action=cancel">Cancel…</a> {{/canCancel}}
        {{#canPurge}}<a class="button" href="/messages/{{id}}/confirm?action=purge">Purge content…</a> {{/canPurge}}
        {{^purged}}<a class="button" href="/messages/{{id}}/raw">Download .eml</a>{{/purged}}</p>
        <h2>Envelope</h2>
        <table><tr><th>Sender</th><td>{{from}}</td></tr><tr><th>Route</th><td>{{route}}</td></tr>
        <tr><th>Message-ID</th><td>{{messageID}}</td></tr><tr><th>Size</th><td>{{size}}</td></tr>
        <tr><th>Queued</th><td>{{created}}</td></tr><tr><th>Updated</th><td>{{updated}}</td></tr>
        <tr><th>Next attempt</th><td>{{nextAttempt}}</td></tr><tr><th>Last error</th><td>{{lastError}}</td></tr></table>
        <h2>Recipients</h2>
        <table id="recipients"><tr><th>Address</th><th>State</th><th>Reply</th></tr>
        {{#recipients}}<tr><td>{{address}}</td><td>{{status}}</td><td>{{reply}}</td></tr>{{/recipients}}</table>
        <h2>Attempts</h2>
        <table id="attempts"><tr><th>#</th><th>Started (UTC)</th><th>Duration</th><th>Transport</th><th>Destination</th><th>Outcome</th><th>Reply or error</th></tr>
        {{#attempts}}<tr><td>{{number}}</td><td>{{started}}</td><td>{{duration}}</td><td>{{transport}}</td><td>{{destination}}</td><td>{{outcome}}</td><td>{{reply}}</td></tr>{{/attempts}}
        {{^attempts}}<tr><td colspan="7" class="muted">No attempt yet.</td></tr>{{/attempts}}</table>
        <h2>Headers</h2>
        {{#purged}}<p class="muted">The content was purged.</p>{{/purged}}{{^purged}}<pre id="headers">{{headers}}</pre>{{/purged}}
        {{> foot}}
        """

    static let confirm = """
        {{> head}}
        <h1>{{heading}}</h1>
        <div class="card"><p>{{question}}</p>
        <form method="post" action="{{action}}">
        <input type="hidden" name="csrf" value="{{csrf}}">
        {{#fields}}<input type="hidden" name="{{name}}" value="{{value}}">{{/fields}}
        <button type="submit" class="{{#danger}}danger{{/danger}}" id="confirm">{{button}}</button>
        <a class="button" href="{{back}}">Back</a></form></div>
        {{> foot}}
        """

    static let result = """
        {{> head}}
        <h1>{{heading}}</h1>
        <div class="notice" id="result">{{summary}}</div>
        {{#hasConflicts}}<h2>Not changed</h2><table><tr><th>Id</th><th>Status</th></tr>
        {{#conflicts}}<tr><td><a href="/messages/{{id}}">{{id}}</a></td><td>{{status}}</td></tr>{{/conflicts}}</table>{{/hasConflicts}}
        {{#more}}<p>More messages match: <a class="button" href="{{more}}">Go on…</a></p>{{/more}}
        <p><a class="button" href="{{back}}">Back</a></p>
        {{> foot}}
        """

    static let credentials = """
        {{> head}}
        <h1>Credentials</h1>
        <p class="muted">Per route: how it authenticates and the state of its token. Secrets are never shown.</p>
        <table id="credentials"><tr><th>Route</th><th>Server type</th><th>Authentication</th><th>Account</th><th>State</th><th>Last refresh</th><th>Expires</th><th>Last error</th></tr>
        {{#routes}}<tr><td>{{route}}</td><td>{{serverType}}</td><td>{{method}}</td><td>{{user}}</td><td class="{{#bad}}s-failed{{/bad}}">{{state}}</td><td>{{lastRefresh}}</td><td>{{expiry}}</td><td>{{lastError}}</td></tr>{{/routes}}
        </table>
        {{> foot}}
        """

    static let login = """
        {{> head}}
        <h1>Log in</h1>
        {{#problem}}<div class="alert" id="problem">{{problem}}</div>{{/problem}}
        <div class="card"><form method="post" action="/login"><input type="hidden" name="csrf" value="{{loginCSRF}}">
        <p><label>Operator token (one of [outbox] api-tokens)<br><input type="password" name="token" autocomplete="off" size="40" autofocus></label></p>
        <button type="submit" id="login">Log in</button></form></div>
        {{> foot}}
        """

    static let error = """
        {{> head}}
        <h1>{{heading}}</h1>
        <div class="alert" id="problem">{{message}}</div>
        <p><a class="button" href="/">Overview</a></p>
        {{> foot}}
        """
}

/// Lets the tests check that each embedded template compiles.
package enum DashboardTemplatesProbe {
    /// True when the template `name` exists and parses.
    package static func compiles(_ name: String) -> Bool {
        guard let text = DashboardTemplates.sources[name] else { return false }
        return (try? MustacheTemplate(string: text)) != nil
    }
}
