/* jwtgate dashboard.
 *
 * Polls the gateway's NGINX Plus-style API (the `api` location) once a second and renders
 * what it answers. Every value that comes from the API is put into the page with
 * textContent or as a plain attribute value, never parsed as HTML: claim values such as
 * `sub` are chosen by whoever holds a token. No external resources; no build step.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;          // one poll a second, as the NGINX Plus dashboard
  var TIMEOUT_MS = 4000;       // an API call slower than this counts as unreachable
  var API_VERSION = "9";
  var MAX_TEXT = 200;          // longer values (a hostile sub) are cut for display
  var MAX_ROWS = 50;
  var TOKEN_KEY = "jwtgate-dashboard-token";
  var OUTCOMES = ["ok", "missing", "malformed", "bad_signature", "expired", "not_yet_valid",
                  "wrong_type", "require_failed", "revoked", "key_unavailable"];
  var PEER_STATES = ["up", "down", "unavail", "unhealthy", "draining", "checking"];

  var meta = document.querySelector('meta[name="jwtgate-api"]');
  var base = (meta && meta.getAttribute("content")) || "/api/";
  if (base.indexOf("__JWTGATE") === 0) { base = "/api/"; }  // the page opened without the gateway
  if (base.charAt(base.length - 1) !== "/") { base += "/"; }
  var root = base + API_VERSION + "/";

  var KEYVALS_EVERY = 5;        // keyval contents (possibly large) every 5th poll; counts come every poll
  var prev = null;             // the previous successful sample: {t: ms, c: {name: counter}}
  var polls = 0;
  var keyvals = null;          // the last /http/keyvals answer

  // -- small helpers ----------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }
  function num(v) { return (typeof v === "number" && isFinite(v)) ? v : 0; }
  function obj(v) { return (v && typeof v === "object" && !Array.isArray(v)) ? v : {}; }
  function arr(v) { return Array.isArray(v) ? v : []; }
  function str(v) {
    var s = (v === null || v === undefined) ? "" : String(v);
    return s.length > MAX_TEXT ? s.slice(0, MAX_TEXT) + "\u2026" : s;
  }
  function fmtInt(v) { return Math.round(num(v)).toLocaleString("en-US"); }
  function fmtRate(v) {
    if (v === null || v === undefined) { return "\u2013"; }
    return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US");
  }
  function fmtAge(s) {
    if (typeof s !== "number" || !isFinite(s)) { return "never"; }
    s = Math.max(0, Math.round(s));
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + (s % 60) + " s"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"; }
    return Math.floor(s / 86400) + " d";
  }
  function fmtTime(unix) {
    if (typeof unix !== "number" || !isFinite(unix)) { return "never"; }
    return new Date(unix * 1000).toLocaleTimeString("en-GB");
  }
  function setText(id, text) {
    var e = $(id);
    if (e && e.textContent !== text) { e.textContent = text; }
  }
  function td(text, cls) {
    var c = document.createElement("td");
    c.textContent = str(text);
    if (cls) { c.className = cls; }
    return c;
  }
  // Replace the body rows of table `id`; `rows` is a list of lists of <td>.
  function fillTable(id, rows) {
    var table = $(id);
    var frag = document.createDocumentFragment();
    rows.slice(0, MAX_ROWS).forEach(function (cells) {
      var tr = document.createElement("tr");
      cells.forEach(function (c) { tr.appendChild(c); });
      frag.appendChild(tr);
    });
    var body = table.tBodies[0];
    while (body.firstChild) { body.removeChild(body.firstChild); }
    body.appendChild(frag);
    var empty = table.parentNode.querySelector(".empty");
    if (empty) { empty.hidden = rows.length > 0; }
  }

  // Per-second rate of a counter since the previous poll; null on the first poll or when the
  // counter went down (the gateway restarted).
  function rateOf(now, key, value) {
    now.c[key] = value;
    if (!prev || !(key in prev.c)) { return null; }
    var dt = (now.t - prev.t) / 1000;
    var dv = value - prev.c[key];
    return (dt > 0 && dv >= 0) ? dv / dt : null;
  }

  // -- the API --------------------------------------------------------------------------

  function apiError(status, text) {
    var e = new Error(text);
    e.status = status;
    return e;
  }

  function token() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  // GET one API path; resolves to the parsed JSON, or null when the API has no such path (404).
  function getJSON(path) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, TIMEOUT_MS);
    var headers = { "Accept": "application/json" };
    var t = token();
    if (t) { headers.Authorization = "Bearer " + t; }
    return fetch(root + path, { cache: "no-store", credentials: "same-origin", headers: headers,
                                signal: ctrl.signal, redirect: "error" })
      .catch(function (e) {
        e.network = true;  // no answer at all: refused, reset, timed out (AbortError)
        throw e;
      })
      .then(function (r) {
        if (r.status === 404) { return null; }
        if (!r.ok) { throw apiError(r.status, "HTTP " + r.status); }
        return r.json().catch(function () { throw apiError(0, "the API answered something that is not JSON"); });
      })
      .finally(function () { clearTimeout(timer); });
  }

  // -- rendering ------------------------------------------------------------------------

  function render(d, now) {
    var req = obj(d.requests);
    setText("req-total", fmtInt(req.total));
    setText("req-current", fmtInt(req.current));
    setText("req-rate", fmtRate(rateOf(now, "requests", num(req.total))));

    // server zones
    var zones = obj(d.zones);
    fillTable("server-zones", Object.keys(zones).sort().map(function (name) {
      var z = obj(zones[name]), r = obj(z.responses);
      return [td(name), td(fmtRate(rateOf(now, "zone:" + name, num(z.requests))), "n"),
              td(fmtInt(z.requests), "n"), td(fmtInt(z.processing), "n"),
              td(fmtInt(r["1xx"]), "n"), td(fmtInt(r["2xx"]), "n"), td(fmtInt(r["3xx"]), "n"),
              td(fmtInt(r["4xx"]), "n" + (num(r["4xx"]) ? " nonzero" : "")),
              td(fmtInt(r["5xx"]), "n" + (num(r["5xx"]) ? " nonzero" : ""))];
    }));

    // authentication outcomes, token cache, key sets, top talkers, revocations (jwtgate extension)
    var jg = obj(d.jwtgate);
    var outcomes = obj(obj(jg.auth).outcomes);
    var names = OUTCOMES.concat(Object.keys(outcomes).filter(function (k) { return OUTCOMES.indexOf(k) < 0; }).sort());
    var failRate = null;
    fillTable("auth-outcomes", names.map(function (name) {
      var n = num(outcomes[name]);
      var rate = rateOf(now, "auth:" + name, n);
      if (name !== "ok" && rate !== null) { failRate = (failRate || 0) + rate; }
      var cls = (name !== "ok" && n > 0) ? "n nonzero" : "n";
      var label = td(name.replace(/_/g, " "));
      label.setAttribute("data-reason", name);
      return [label, td(fmtRate(rate), cls), td(fmtInt(n), cls)];
    }));
    setText("auth-fail-rate", d.jwtgate ? fmtRate(failRate) : "\u2013");

    var cache = obj(jg.token_cache), hits = num(cache.hits), misses = num(cache.misses);
    setText("cache-hits", fmtInt(hits));
    setText("cache-misses", fmtInt(misses));
    setText("cache-ratio", hits + misses > 0 ? (100 * hits / (hits + misses)).toFixed(1) + " %" : "\u2013");

    fillTable("top-subs", arr(jg.top_subs).map(function (entry) {
      var e = obj(entry), sub = str(e.sub);
      var cell = td(sub, "sub");
      cell.setAttribute("title", String(e.sub === undefined ? "" : e.sub).slice(0, 1000));
      return [cell, td(fmtInt(e.requests), "n"), td(fmtRate(rateOf(now, "sub:" + String(e.sub), num(e.requests))), "n")];
    }));

    fillTable("key-sets", arr(jg.key_sets).map(function (entry) {
      var k = obj(entry), keys = num(k.keys), fails = num(k.fetch_failures);
      return [td(k.source, "text"), td(fmtInt(keys), "n" + (keys > 0 ? " fresh" : " bad")),
              td(fmtTime(k.last_refresh)), td(fmtAge(k.age), "n"),
              td(fmtInt(fails), "n" + (fails > 0 ? " nonzero" : ""))];
    }));

    // rate limits
    var limits = obj(d.limits), rejected = 0;
    fillTable("limit-reqs", Object.keys(limits).sort().map(function (name) {
      var l = obj(limits[name]);
      rejected += num(l.rejected);
      return [td(name), td(fmtInt(l.passed), "n"), td(fmtInt(l.delayed), "n"),
              td(fmtInt(l.rejected), "n" + (num(l.rejected) ? " nonzero" : "")),
              td(fmtRate(rateOf(now, "limit:" + name, num(l.rejected))), "n"),
              td(fmtInt(l.delayed_dry_run), "n"), td(fmtInt(l.rejected_dry_run), "n")];
    }));
    setText("limit-rejected", d.limits ? fmtInt(rejected) : "\u2013");

    // upstreams and their peers
    var ups = obj(d.upstreams), peerRows = [];
    Object.keys(ups).sort().forEach(function (name) {
      arr(obj(ups[name]).peers).forEach(function (entry) {
        var p = obj(entry), state = String(p.state || "");
        var stateCls = PEER_STATES.indexOf(state) >= 0 ? "state-" + state : "";
        var rt = p.response_time;
        peerRows.push([td(name), td(str(p.server || p.name) + (p.backup ? " (backup)" : "")),
                       td(state || "?", stateCls), td(fmtInt(p.active), "n"), td(fmtInt(p.requests), "n"),
                       td(fmtInt(obj(p.responses)["5xx"]), "n"), td(fmtInt(p.fails), "n"),
                       td(fmtInt(p.unavail), "n"),
                       td(typeof rt === "number" ? fmtInt(rt) + " ms" : "\u2013", "n")]);
      });
    });
    fillTable("upstreams", peerRows);

    // revocations: entry counts from the jwtgate extension, keys from the keyvals endpoint
    var revs = obj(jg.revocations), kv = obj(d.keyvals), total = 0;
    var zoneNames = Object.keys(revs).concat(Object.keys(kv).filter(function (z) { return !(z in revs); })).sort();
    fillTable("revocations", zoneNames.map(function (zone) {
      var entries = revs[zone], keys = Object.keys(obj(kv[zone]));
      var n = typeof entries === "number" ? entries
            : Array.isArray(entries) ? entries.length
            : (entries && typeof entries === "object") ? Object.keys(entries).length : keys.length;
      total += n;
      var shown = keys.slice(0, 5).map(str).join(", ") + (keys.length > 5 ? ", \u2026" : "");
      return [td(zone), td(fmtInt(n), "n"), td(shown || "\u2013", "muted text")];
    }));
    setText("revoked-total", (d.jwtgate || d.keyvals) ? fmtInt(total) : "\u2013");
  }

  // -- the connection state -------------------------------------------------------------

  function setConn(cls, text) {
    var pill = $("conn");
    pill.className = "pill " + cls;
    pill.textContent = text;
  }

  function healthy() {
    $("banner").hidden = true;
    $("token-form").hidden = true;
    setConn("pill-ok", "live");
    setText("updated", new Date().toLocaleTimeString("en-GB"));
  }

  function failed(err) {
    var status = err && err.status, text;
    if (status === 401 || status === 403) {
      text = "The API refused the dashboard (HTTP " + status + "). " +
             (status === 401 ? "It wants a token: paste one below." : "Check allow/deny and the token.");
      $("token-form").hidden = status !== 401;
    } else if (status === 404) {
      text = "No API at " + root + " (HTTP 404): add `api;` to a location, or give `dashboard` its URI.";
    } else if (status) {
      text = "The API answered HTTP " + status + ".";
    } else if (err && err.network && err.name === "AbortError") {
      text = "The API did not answer within " + (TIMEOUT_MS / 1000) + " s.";
    } else if (err && err.network) {
      text = "The API is unreachable.";
    } else {
      text = "Unexpected answer from the API: " + str(err && err.message);
    }
    setText("banner-text", text + " Retrying every second; the numbers below are from the last good poll.");
    $("banner").hidden = false;
    setConn("pill-bad", status ? "HTTP " + status : "offline");
  }

  function poll() {
    var started = performance.now();
    Promise.all([
      getJSON("http/requests"), getJSON("http/server_zones"), getJSON("jwtgate"),
      getJSON("http/limit_reqs"), getJSON("http/upstreams"),
      (polls % KEYVALS_EVERY === 0 || keyvals === null) ? getJSON("http/keyvals") : Promise.resolve(keyvals)
    ]).then(function (r) {
      if (r[0] === null) { throw apiError(404, "no API"); }
      var now = { t: performance.now(), c: {} };
      keyvals = r[5];
      render({ requests: r[0], zones: r[1], jwtgate: r[2], limits: r[3], upstreams: r[4], keyvals: r[5] }, now);
      prev = now;
      polls += 1;
      document.body.setAttribute("data-polls", String(polls));
      healthy();
    }).catch(failed).then(function () {
      setTimeout(poll, Math.max(50, POLL_MS - (performance.now() - started)));
    });
  }

  $("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var value = $("token-input").value.trim();
    try { window.sessionStorage.setItem(TOKEN_KEY, value); } catch (e) { /* storage disabled */ }
    $("token-input").value = "";
    $("token-form").hidden = true;
  });

  setText("api-base", root);
  document.body.setAttribute("data-polls", "0");
  poll();
}());
