/* The status page (gateway/ops/web): polls /api/status every 1.5 s and renders the snapshot of Gateway.status
   (gateway/runtime/gateway.py) as a control-room panel; the trend of one tag from /api/trend with uPlot.
   Read-only: there is no control here. Text from the gateway is only ever set as textContent (never as HTML). */
(function () {
  "use strict";
  var L = JSON.parse(document.getElementById("labels").textContent);
  var POLL_MS = 1500, TREND_MS = 10000, STALE_S = 5, TIMEOUT_MS = 5000;
  var state = { trendTag: null, trendHours: 1, chart: null, lastOk: 0, limits: {}, tags: {} };

  function t(key) { return Object.prototype.hasOwnProperty.call(L, key) ? L[key] : key; }
  function word(v) { return v == null ? "" : (L["state." + v] || String(v)); }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function badge(v, cls) { return el("span", { cls: "badge " + (cls || v), text: word(v) }); }
  function num(v, digits) {
    if (v == null) return "-";
    if (typeof v === "boolean") return v ? "1" : "0";
    if (typeof v !== "number") return String(v);
    // a tag's precision (decimal places); without one 6 significant digits, as gateway.model.format_value
    return digits == null ? String(parseFloat(v.toPrecision(6))) : v.toFixed(digits);
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtTime(s) {
    if (!s) return "-";
    var d = new Date(typeof s === "number" ? s * 1000 : s);
    if (isNaN(d.getTime())) return String(s);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" +
      pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function table(cols, rows) {
    var head = el("tr", null, cols.map(function (c) { return el("th", { text: t(c) }); }));
    var body = el("tbody", null, rows);
    return el("table", null, [el("thead", null, [head]), body]);
  }
  function td(v, cls) { return el("td", cls ? { cls: cls } : null, [v == null ? "" : (typeof v === "string" ? v : v)]); }
  function section(id, title, kids, wide) {
    var s = document.getElementById(id);
    var fresh = el("section", { id: id, cls: wide ? "wide" : "" }, [el("h2", { text: title })].concat(kids));
    if (s) s.replaceWith(fresh); else document.getElementById("main").appendChild(fresh);
    return fresh;
  }

  // ------------------------------------------------------------------ sections

  function header(s, ans) {
    var h = document.getElementById("top");
    h.textContent = "";
    h.appendChild(el("h1", { text: t("title") + " · " + (s ? s.gateway_id : "") }));
    if (s) {
      h.appendChild(el("span", { cls: "muted", text: t("updated") + " " + fmtTime(s.time) }));
      h.appendChild(el("span", { cls: "muted", text: t("uptime") + " " + num(s.uptime_s, 0) + " s" }));
    }
    var age = ans && ans.received_s ? ans.now_s - ans.received_s : null;
    var snapAge = s && s.time ? ans.now_s - Date.parse(s.time) / 1000 : null;
    if (!s || age > STALE_S || snapAge > STALE_S) h.appendChild(el("span", { cls: "banner", id: "stale", text: t("stale") }));
    if (Date.now() - state.lastOk > STALE_S * 1000 && state.lastOk) h.appendChild(el("span", { cls: "banner", text: t("connection_lost") }));
    h.appendChild(el("span", { cls: "muted", text: t("read_only") }));
  }

  function alarmRow(a, withLatched) {
    var mark = a.first_out ? el("span", { cls: "badge first", title: t("first_out"), text: "★ " + t("first_out") }) : null;
    var lvl = a.level ? t("level" + a.level) : "";
    var states = [badge(a.state)];
    if (a.latched && withLatched) states.push(badge("latched"));
    var digits = (state.tags[a.tag] || {}).precision;
    var detail = a.limit != null ? num(a.value, digits) + " / " + num(a.limit, digits) : (a.reason || "");
    return el("tr", { cls: "p" + a.priority + " " + a.state, "data-alarm": a.id }, [
      td(mark ? el("span", null, [mark, a.id]) : a.id), td(a.tag), el("td", null, states), td("P" + a.priority),
      td(lvl), td(detail, "num"), td(fmtTime(a.since))]);
  }

  function alarms(s) {
    var list = s.alarms || [];
    var kids = [el("div", { cls: "note", text: t("first_out_mark") })];
    if (!list.length) kids.push(el("div", { cls: "muted", id: "no-alarms", text: t("no_alarms") }));
    else kids.push(table(["col.alarm", "col.tag", "col.state", "col.priority", "col.level", "col.value", "col.since"],
      list.map(function (a) { return alarmRow(a, true); })));
    var pd = s.points_disabled || {};
    if (pd.active) kids.push(el("div", { cls: "note" }, [badge("suppressed"), t("points_disabled") + ": " + pd.count +
      " (" + (pd.points || []).join(", ") + ")"]));
    var hidden = s.alarms_hidden || [];
    if (hidden.length) {
      kids.push(el("h2", { text: t("hidden") }));
      kids.push(table(["col.alarm", "col.tag", "col.state", "col.priority", "col.level", "col.until"],
        hidden.map(function (a) {
          return el("tr", { cls: "p" + a.priority }, [td(a.id), td(a.tag), el("td", null, [badge(a.state)]),
            td("P" + a.priority), td(a.level ? t("level" + a.level) : ""), td(fmtTime(a.shelved_until))]);
        })));
    }
    section("alarms", t("alarms") + " (" + list.length + ")", kids, true);
  }

  function sequence(s) {
    var groups = s.alarm_sequence || [];
    var kids = [];
    groups.forEach(function (g) {
      kids.push(el("div", { cls: "note", text: t("group") + " " + g.group + " · " + t("activations") + " " + g.count }));
      var rows = (g.alarms || []).map(function (a, i) {
        return el("tr", { cls: "p" + a.priority }, [td(String(i + 1)), td(fmtTime(a.since)),
          td(a.first_out ? el("span", null, [el("span", { cls: "badge first", text: "★ " + t("first_out") }), a.id]) : a.id),
          el("td", null, [badge(a.state)]), td("P" + a.priority), td(a.level ? t("level" + a.level) : "")]);
      });
      kids.push(table(["#", "col.since", "col.alarm", "col.state", "col.priority", "col.level"], rows));
    });
    if (!groups.length) kids.push(el("div", { cls: "muted", text: t("none") }));
    section("sequence", t("sequence"), kids);
  }

  function interlocks(s) {
    var rows = (s.interlocks || []).map(function (il) {
      var v = il.votes || {};
      var votes = il.votes ? v.process + " + " + v.fault + " / " + v.needed + "oo" + v.of : "-";
      var st = [badge(il.state)];
      if (il.cause) st.push(badge(il.cause));
      if (il.degraded) st.push(el("span", { cls: "badge fault", text: t("degraded") }));
      var b = il.bypass;
      var bp = b ? el("span", null, [badge("bypassed"), t("bypassed_by").replace("{user}", b.user)
        .replace("{until}", fmtTime(b.until)).replace("{reason}", b.reason)]) : t("no");
      var inputs = (il.inputs || []).map(function (i) { return i.tag + " " + i.condition + (i.state ? " ●" : " ○"); }).join(", ");
      return el("tr", { "data-interlock": il.name }, [td(il.name), td(il.vote), td(votes, "num"), el("td", null, st),
        td(fmtTime(il.tripped_at)), td(bp), td(inputs)]);
    });
    section("interlocks", t("interlocks"), [table(["col.interlock", "col.vote", "col.votes", "col.state",
      "col.tripped_at", "col.bypass", "col.inputs"], rows)], true);
  }

  function hiddenDangers(s) {   // gateway.safety.hidden_danger: protections defeated longer than after_minutes
    var list = s.hidden_dangers || [];
    var rows = list.map(function (h) {
      var f = h.feeds || {};
      return el("tr", { "data-hidden-danger": h.id }, [td(t("kind." + h.kind)), td(h.target),
        td((f.gas_alarms || []).concat(f.interlocks || []).join(", ")), td(h.by || "-"), td(h.reason || "-"),
        td(fmtTime(h.since)), td(fmtTime(h.until)), td(h.id)]);
    });
    section("hidden-dangers", t("hidden_dangers") + " (" + list.length + ")", [rows.length ? table(["col.kind",
      "col.target", "col.defeats", "col.by", "col.reason", "col.since", "col.until", "col.record"], rows) :
      el("div", { cls: "muted", text: t("none") })], true);
  }

  function trips(s) {
    var rows = (s.trips || []).map(function (x) {
      return el("tr", null, [td(x.interlock), td(x.tag + " := " + x.value), td(word(x.cause)), td(fmtTime(x.detected)),
        td(x.confirmed ? fmtTime(x.confirmed) : badge("unconfirmed", "unconfirmed")), td(num(x.latency_confirm_ms, 0), "num")]);
    });
    section("trips", t("trips"), [rows.length ? table(["col.interlock", "col.output", "col.cause", "col.since",
      "col.confirmed_at", "col.latency"], rows) : el("div", { cls: "muted", text: t("none") })]);
  }

  function outputs(s) {
    var rows = (s.outputs || []).map(function (o) {
      var conf = o.confirmed ? badge("confirmed", "confirmed") : (o.fault ? badge("fault") : badge("unconfirmed", "unconfirmed"));
      var txt = o.confirmed ? t("yes") : (o.fault ? word("fault") : t("no"));
      conf.textContent = txt;
      var actual = (state.tags[o.tag] || {}).value;
      return el("tr", { "data-output": o.tag }, [td(o.tag), td(num(o.commanded), "num"), td(num(actual), "num"),
        el("td", null, [conf]), td(fmtTime(o.confirmed_at)), td(String(o.attempts == null ? "" : o.attempts), "num"),
        td(o.confirmed ? "" : (o.last_error || ""))]);
    });
    section("outputs", t("outputs"), [table(["col.output", "col.commanded", "col.value", "col.confirmed",
      "col.confirmed_at", "col.attempts", "col.error"], rows)]);
  }

  function hazard(s) {
    var units = s.hazard || [];
    var kids = [el("div", { cls: "note", text: t("hazard_note") })];
    units.forEach(function (u) {
      var grade = u.grade ? t("grade." + u.grade) : t("grade.none");
      var colour = u.colour ? el("span", null, [el("span", { cls: "swatch " + u.colour }), t("colour." + u.colour) || u.colour]) : "-";
      var inv = "S " + num(u.S_live, 2) + " · R " + num(u.R_live, 2) + (u.inventory_uncertain ? " (" + t("uncertain_inventory") + ")" : "");
      kids.push(table(["col.unit_name", "col.design_grade", "col.colour", "col.design_basis", "col.current_inventory",
        "col.major_hazard"], [el("tr", { "data-unit": u.unit }, [td(u.unit), td(grade), td(colour),
        td("S " + num(u.S, 2) + " · R " + num(u.R, 2)), td(inv), td(u.major_hazard ? t("yes") : t("no"))])]));
      var tanks = (u.tanks || []).map(function (k) {
        return el("tr", null, [td(k.name), td(k.substance), td(num(k.design_q_t, 1), "num"),
          td(num(k.inventory_q_t, 1) + (k.inventory_uncertain ? " ?" : ""), "num")]);
      });
      if (tanks.length) kids.push(table(["col.tank", "col.substance", "col.design_q", "col.current_q"], tanks));
      if ((u.reasons || []).length) kids.push(el("div", { cls: "note", text: u.reasons.join("; ") }));
    });
    if (!units.length) kids.push(el("div", { cls: "muted", text: t("none") }));
    section("hazard", t("hazard"), kids);
  }

  function tags(s) {
    var rows = Object.keys(s.tags || {}).map(function (name) {
      var x = s.tags[name];
      var tr = el("tr", { cls: "pick" + (name === state.trendTag ? " picked" : ""), "data-tag": name }, [td(name),
        td(num(x.value, x.precision), "num"), td(x.unit || ""), el("td", null, [badge(x.quality)]), td(num(x.age_s, 1), "num"),
        td(x.device || ""), td(x.reason || "")]);
      tr.addEventListener("click", function () { pickTrend(name); });
      return tr;
    });
    section("tags", t("tags") + " · " + t("trend_pick"), [table(["col.tag", "col.value", "col.unit", "col.quality",
      "col.age", "col.device", "col.error"], rows)]);
  }

  function devices(s) {
    var rows = Object.keys(s.devices || {}).map(function (name) {
      var d = s.devices[name];
      return el("tr", { "data-device": name }, [td(name), td(d.protocol || ""), el("td", null, [badge(d.state)]),
        td(String(d.polls == null ? "" : d.polls), "num"), td(String(d.bad == null ? "" : d.bad), "num"),
        td(String(d.tags == null ? "" : d.tags), "num"), td(d.state !== "up" ? (d.error || "") : "")]);
    });
    var kids = [table(["col.device", "col.protocol", "col.link", "col.polls", "col.bad", "col.tags", "col.error"], rows)];
    var hb = s.heartbeats || [];
    if (hb.length) {
      kids.push(el("h2", { text: t("heartbeats") }));
      kids.push(table(["col.device", "col.value", "col.state", "col.error"], hb.map(function (h) {
        return el("tr", null, [td(h.device + " " + h.address), td(String(h.value), "num"), el("td", null, [badge(h.state)]),
          td(h.last_error || h.held_reason || "")]);
      })));
    }
    var an = s.annunciators || [];
    if (an.length) {
      kids.push(el("h2", { text: t("annunciators") }));
      kids.push(table(["col.output", "col.state", "col.error"], an.map(function (a) {
        return el("tr", null, [td(a.output + " (" + word(a.kind) + ")"), el("td", null, [badge(a.mode)]),
          td(a.confirmed === false ? (a.last_error || "") : "")]);
      })));
    }
    section("devices", t("devices"), kids);
  }

  function store(s) {
    var st = s.store || {};
    var up = s.uplink;
    var rec = s.record_path || {};
    var rows = [];
    function row(k, v, attrs) { rows.push(el("tr", attrs || null, [td(t(k)), td(v == null ? "-" : String(v), "num")])); }
    if (st.error) rows.push(el("tr", null, [td(t("store")), el("td", null, [badge("fault"), st.error])]));
    else {
      row("store_depth", st.queue_depth);
      row("readings_total", st.readings_total);
      row("readings_unsent", st.readings_unsent);
      row("oldest_unsent", st.oldest_unsent_ts ? fmtTime(st.oldest_unsent_ts) : "-");
      row("batches_unacked", st.batches_unacked);
      row("last_acked_seq", st.last_acked_seq == null ? t("none") : st.last_acked_seq, { id: "last-acked" });
      row("dropped", st.dropped);
    }
    if (rec.store) rows.push(el("tr", null, [td(t("record_fault")), el("td", null, [badge("fault"), rec.store])]));
    if (rec.uplink) rows.push(el("tr", null, [td(t("record_fault")), el("td", null, [badge("fault"), rec.uplink])]));
    if (up == null) row("uplink", t("uplink_none"));
    else {
      rows.push(el("tr", null, [td(t("uplink")), el("td", null, [badge(up.consecutive_failures ? "failing" : "ok")])]));
      row("uplink_sent", up.sent);
      if (up.consecutive_failures) row("uplink_failures", up.consecutive_failures + " (" + (up.last_error || "") + ")");
    }
    section("store", t("store"), [el("table", null, [el("tbody", null, rows)])]);
  }

  // ------------------------------------------------------------------ trend

  function trendSection() {
    if (document.getElementById("trend")) return;
    var sel = el("select", { id: "trend-hours" }, [0.25, 1, 8, 24, 168].map(function (h) {
      var o = el("option", { value: String(h), text: h + " " + t("trend_hours") });
      if (h === state.trendHours) o.selected = true;
      return o;
    }));
    sel.addEventListener("change", function () { state.trendHours = parseFloat(sel.value); loadTrend(); });
    var s = el("section", { id: "trend", cls: "wide" }, [el("h2", { id: "trend-title", text: t("trend") }),
      el("div", { id: "trend-controls" }, [sel, el("span", { id: "trend-note", cls: "muted" })]),
      el("div", { id: "trend-chart", "data-points": "0" })]);
    var main = document.getElementById("main");
    main.insertBefore(s, document.getElementById("tags"));
  }

  function pickTrend(tag) { state.trendTag = tag; loadTrend(); }

  var LIMIT_COLOURS = { 1: "#e0312f", 2: "#f08c00", 3: "#f2d024", 4: "#3d8bfd" };

  function drawTrend(ans) {
    var box = document.getElementById("trend-chart");
    var pts = ans.points || [];
    var xs = [], mn = [], mx = [];
    pts.forEach(function (p) { xs.push(p[0]); mn.push(p[1]); mx.push(p[2]); });
    var limits = ans.limits || [];
    var data = [xs, mn, mx];
    var unit = ans.unit || "";
    var series = [{}, { label: ans.tag + " " + t("trend_min"), stroke: "#6cc3ff", width: 1 },
      { label: ans.tag + " " + t("trend_max"), stroke: "#e6e6e6", width: 1 }];
    limits.forEach(function (l) {
      data.push(xs.map(function () { return l.setpoint; }));
      series.push({ label: l.kind + " " + l.setpoint + " " + unit, stroke: LIMIT_COLOURS[l.priority] || "#999",
        dash: [6, 4], width: 1.5, points: { show: false } });
    });
    document.getElementById("trend-title").textContent = t("trend") + " · " + ans.tag + (unit ? " (" + unit + ")" : "");
    document.getElementById("trend-note").textContent = pts.length ? pts.length + " / " + ans.raw : t("trend_none");
    box.setAttribute("data-points", String(pts.length));
    box.setAttribute("data-tag", ans.tag);
    box.setAttribute("data-limits", String(limits.length));
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    if (typeof uPlot === "undefined") return;
    var opts = { width: Math.max(box.clientWidth - 10, 300), height: 300, series: series,
      axes: [{ stroke: "#9aa4ad", grid: { stroke: "#333a42" } }, { stroke: "#9aa4ad", grid: { stroke: "#333a42" },
        label: unit }],
      scales: { x: { time: true } } };
    state.chart = new uPlot(opts, data, box);
    window.statusPage.chart = state.chart;
  }

  function loadTrend() {
    if (!state.trendTag) return;
    trendSection();
    var url = "/api/trend?tag=" + encodeURIComponent(state.trendTag) + "&hours=" + state.trendHours;
    get(url).then(drawTrend).catch(function (e) {
      document.getElementById("trend-note").textContent = String(e && e.message || e);
    });
  }

  // ------------------------------------------------------------------ polling

  function get(url) {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    return fetch(url, { signal: ctl.signal, cache: "no-store", credentials: "same-origin" }).then(function (r) {
      clearTimeout(timer);
      return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || r.status); return j; });
    }, function (e) { clearTimeout(timer); throw e; });
  }

  function render(ans) {
    var s = ans.status;
    state.limits = ans.limits || {};
    header(s, ans);
    if (!s) return;
    state.tags = s.tags || {};
    alarms(s); sequence(s); outputs(s); interlocks(s); hiddenDangers(s); trips(s); hazard(s); trendSection(); tags(s); devices(s); store(s);
    if (!state.trendTag) {   // first the first tag that has alarm limits
      var withLimits = Object.keys(state.tags).filter(function (k) { return state.limits[k]; });
      state.trendTag = withLimits[0] || Object.keys(state.tags)[0] || null;
      if (state.trendTag) loadTrend();
    }
    document.body.setAttribute("data-updated", s.time || "");
  }

  function poll() {
    get("/api/status").then(function (ans) { state.lastOk = Date.now(); render(ans); })
      .catch(function () { header(null, null); })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  window.statusPage = { chart: null, state: state };
  poll();
  setInterval(loadTrend, TREND_MS);
})();
