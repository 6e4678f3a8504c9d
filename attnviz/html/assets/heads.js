/* attnviz heads report: corpus statistics per head. Hand-written, no dependencies, no network.
 * Data: the JSON in #attnviz-data (see attnviz/html/heads.py; the numbers are those of heads.json).
 * Scripting API: window.attnviz.select({statistic, layer, head}), .state(), .value(). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");
  var SVG = "http://www.w3.org/2000/svg";
  var L = D.num_layers, H = D.num_heads;

  var el = attnvizKit.el, iso = attnvizKit.iso;
  function sv(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }
  var BLUES = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  function colour(t) {
    if (t == null) return [221, 221, 221];
    t = Math.max(0, Math.min(1, t)) * (BLUES.length - 1);
    var i = Math.min(BLUES.length - 2, Math.floor(t)), f = t - i, a = BLUES[i], b = BLUES[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function rgb(c) { return "rgb(" + Math.round(c[0]) + "," + Math.round(c[1]) + "," + Math.round(c[2]) + ")"; }
  function fmt(v) { return v == null ? "n/a" : Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(3); }
  function grid(name) { return name === "probe_accuracy" ? D.probes.accuracy : D.statistics[name]; }
  function unit(name) { var u = D.labels[name].unit; return u ? " " + u : ""; }
  function range(name) {
    var lo = Infinity, hi = -Infinity, g = grid(name);
    for (var l = 0; l < L; l++) for (var h = 0; h < H; h++) {
      var v = g[l][h]; if (v == null) continue;
      if (v < lo) lo = v; if (v > hi) hi = v;
    }
    return lo === Infinity ? [0, 1] : [lo, hi];
  }
  function norm(name, v) {
    if (v == null) return null;
    var r = range(name); return r[1] > r[0] ? (v - r[0]) / (r[1] - r[0]) : 0.5;
  }
  function rank(name, l, h) {  // 1 = most distinctive (highest, or lowest for the entropies)
    var g = grid(name), v = g[l][h], low = D.lowest.indexOf(name) >= 0, n = 1;
    if (v == null) return null;
    for (var a = 0; a < L; a++) for (var b = 0; b < H; b++) {
      var w = g[a][b]; if (w != null && (low ? w < v : w > v)) n++;
    }
    return n;
  }
  function best(name) {
    var g = grid(name), low = D.lowest.indexOf(name) >= 0, bl = 0, bh = 0, bv = null;
    for (var l = 0; l < L; l++) for (var h = 0; h < H; h++) {
      var v = g[l][h];
      if (v != null && (bv == null || (low ? v < bv : v > bv))) { bv = v; bl = l; bh = h; }
    }
    return [bl, bh];
  }

  var first = D.order[0], top = best(first);
  var S = { statistic: first, layer: top[0], head: top[1] };

  // ---------------------------------------------------------------- layout
  var c = D.corpus, st = D.settings;
  app.textContent = "";
  app.appendChild(el("h1", null, ["attnviz heads · ", iso(D.label)]));
  app.appendChild(el("p", { cls: "meta", text: D.model_type + " · " + L + " layers × " + H + " heads · " +
    (D.causal ? "causal" : "bidirectional") + " · backend " + D.backend }));
  app.appendChild(el("p", { cls: "meta" }, ["corpus ", iso(c.path), " · " + c.examples + " examples · " + c.tokens +
    " tokens · " + c.query_units + " query units · " + c.truncated_examples + " truncated · counted in " + st.units]));
  app.appendChild(el("p", { cls: "meta", text: "engine " + st.engine + " · batch size " + st.batch_size +
    " · max length " + (st.max_length == null ? "model's limit" : st.max_length) + " · limit " + (st.limit == null ? "none" : st.limit) +
    " · head map: " + st.cluster_queries + " query units of one example in " + st.cluster_every +
    " (" + c.head_distance_queries + " rows)" }));

  var pick = el("select", { id: "statistic", onchange: function () { select({ statistic: pick.value }); } });
  D.order.forEach(function (n) { pick.appendChild(el("option", { value: n, text: n + ": " + D.labels[n].label })); });
  app.appendChild(el("div", { cls: "controls" }, [el("label", {}, ["statistic ", pick])]));
  var defn = el("p", { id: "definition", cls: "definition" });
  var status = el("div", { id: "hover", cls: "status" });
  app.appendChild(defn);
  app.appendChild(status);

  var table = el("table", { cls: "grid heatmap", id: "heatmap" });
  var head = el("tr", {}, [el("th", { text: "" })]);
  for (var h = 0; h < H; h++) head.appendChild(el("th", { text: "H" + h }));
  table.appendChild(head);
  var cells = [];
  for (var l = 0; l < L; l++) {
    var tr = el("tr", {}, [el("th", { text: "L" + l })]), row = [];
    for (h = 0; h < H; h++) {
      var td = el("td", { "data-layer": l, "data-head": h });
      td.addEventListener("mouseenter", hover);
      td.addEventListener("mouseleave", function () { showHover(null); });
      td.addEventListener("click", function (e) {
        var t = e.currentTarget; select({ layer: +t.getAttribute("data-layer"), head: +t.getAttribute("data-head") });
      });
      tr.appendChild(td); row.push(td);
    }
    table.appendChild(tr); cells.push(row);
  }
  var side = el("table", { cls: "stats", id: "headstats" });
  var sideBox = el("div", { cls: "side" }, [el("h2", { id: "headtitle" }), side]);
  app.appendChild(el("h2", { text: "layers × heads" }));
  app.appendChild(el("div", { cls: "heatrow" }, [el("div", { cls: "heatbox" }, [table]), sideBox]));

  app.appendChild(el("h2", { text: "head map" }));
  app.appendChild(el("p", { cls: "note", text: "Each head placed by " + D.head_map.method + ". " + D.definitions.head_distance +
    ". Colour: the selected statistic." }));
  var W = 520, M = 30, pts = D.head_map.mds, xs = pts.map(function (p) { return p[0]; }), ys = pts.map(function (p) { return p[1]; });
  var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
  var span = Math.max(x1 - x0, y1 - y0) || 1;
  var svg = sv("svg", { id: "headmap", width: W, height: W, viewBox: "0 0 " + W + " " + W, role: "img" });
  svg.appendChild(sv("rect", { x: 0, y: 0, width: W, height: W, fill: "#fff", stroke: "#ddd" }));
  var dots = [], labels = [], showAll = pts.length <= 150;
  pts.forEach(function (p, i) {
    var px = M + (p[0] - x0) / span * (W - 2 * M), py = W - M - (p[1] - y0) / span * (W - 2 * M);
    var g = sv("g", { "class": "pt", "data-layer": Math.floor(i / H), "data-head": i % H });
    var dot = sv("circle", { cx: px, cy: py, r: 6, stroke: "#555", "stroke-width": 1 });
    var t = sv("text", { x: px + 8, y: py + 4, "font-size": 10, fill: "#333" });
    t.textContent = D.head_map.heads[i];
    g.appendChild(dot); g.appendChild(t);
    g.addEventListener("click", function () { select({ layer: Math.floor(i / H), head: i % H }); });
    svg.appendChild(g); dots.push(dot); labels.push(t);
  });
  app.appendChild(svg);

  if (D.probes) {
    var P = D.probes;
    app.appendChild(el("h2", { text: "probes" }));
    app.appendChild(el("p", { cls: "note", text: P.count + " probes. " + D.definitions.probe_accuracy + "." }));
    var bt = el("table", { cls: "stats", id: "baselines" }, [el("tr", {}, [el("th", { text: "baseline" }), el("th", { text: "accuracy" }), el("th", { text: "rule" })])]);
    Object.keys(P.baselines).forEach(function (k) {
      bt.appendChild(el("tr", {}, [el("td", { text: k }), el("td", { text: fmt(P.baselines[k]) }), el("td", { text: P.baseline_definitions[k] || "" })]));
    });
    app.appendChild(bt);
    var pt = el("table", { cls: "stats", id: "probes" }, [el("tr", {}, [el("th", { text: "layer" }), el("th", { text: "head" }), el("th", { text: "accuracy" })])]);
    P.best.forEach(function (b) {
      pt.appendChild(el("tr", { cls: "pick", onclick: function () { select({ statistic: "probe_accuracy", layer: b.layer, head: b.head }); } },
        [el("td", { text: "L" + b.layer }), el("td", { text: "H" + b.head }), el("td", { text: fmt(b.accuracy) })]));
    });
    app.appendChild(el("p", { cls: "note", text: "best heads (click one to select it):" }));
    app.appendChild(pt);
  }

  // ---------------------------------------------------------------- drawing
  function hover(e) {
    var t = e.currentTarget; showHover([+t.getAttribute("data-layer"), +t.getAttribute("data-head")]);
  }
  function showHover(lh) {
    if (!lh) { status.textContent = "point at a head for its value; click it to select it"; return; }
    var v = grid(S.statistic)[lh[0]][lh[1]];
    status.textContent = "layer " + lh[0] + ", head " + lh[1] + ": " + S.statistic + " = " + fmt(v) + unit(S.statistic) +
      (v == null ? "" : " (rank " + rank(S.statistic, lh[0], lh[1]) + " of " + L * H + ")");
  }
  function draw() {
    var name = S.statistic, g = grid(name), r = range(name);
    pick.value = name;
    defn.textContent = "";
    defn.appendChild(el("b", { text: D.labels[name].label + (D.labels[name].unit ? " (" + D.labels[name].unit + ")" : "") + ": " }));
    defn.appendChild(document.createTextNode(D.definitions[name] + ". Range over heads " + fmt(r[0]) + " … " + fmt(r[1]) + "."));
    for (var l = 0; l < L; l++) for (var h = 0; h < H; h++) {
      var v = g[l][h], t = norm(name, v), td = cells[l][h];
      td.style.background = rgb(colour(t));
      td.style.color = t != null && t > 0.55 ? "#fff" : "#222";
      td.textContent = v == null ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2);
      td.title = "L" + l + " H" + h + ": " + fmt(v) + unit(name);
      td.className = l === S.layer && h === S.head ? "on" : "";
    }
    dots.forEach(function (d, i) {
      var l = Math.floor(i / H), h = i % H, on = l === S.layer && h === S.head;
      d.setAttribute("fill", rgb(colour(norm(name, g[l][h]))));
      d.setAttribute("r", on ? 9 : 6);
      d.setAttribute("stroke", on ? "#d08a00" : "#555");
      d.setAttribute("stroke-width", on ? 3 : 1);
      labels[i].setAttribute("font-weight", on ? "bold" : "normal");
      labels[i].style.display = showAll || on ? "" : "none";
      if (on) d.parentNode.parentNode.appendChild(d.parentNode);  // on top
    });
    document.getElementById("headtitle").textContent = "layer " + S.layer + ", head " + S.head;
    side.textContent = "";
    side.appendChild(el("tr", {}, [el("th", { text: "statistic" }), el("th", { text: "value" }), el("th", { text: "rank" })]));
    D.order.forEach(function (n) {
      var v = grid(n)[S.layer][S.head], rk = rank(n, S.layer, S.head);
      side.appendChild(el("tr", { cls: "pick" + (n === name ? " on" : ""), title: D.definitions[n],
        onclick: function () { select({ statistic: n }); } },
        [el("td", { text: n }), el("td", { text: fmt(v) + unit(n) }), el("td", { text: rk == null ? "" : rk + " of " + L * H })]));
    });
    showHover(null);
  }

  function select(o) {
    o = o || {};
    if (o.statistic != null) {
      if (D.order.indexOf(o.statistic) < 0) throw new Error("unknown statistic '" + o.statistic + "'; one of " + D.order.join(", "));
      S.statistic = o.statistic;
    }
    if (o.layer != null) {
      if (!(o.layer >= 0 && o.layer < L)) throw new Error("layer must be 0.." + (L - 1));
      S.layer = o.layer | 0;
    }
    if (o.head != null) {
      if (!(o.head >= 0 && o.head < H)) throw new Error("head must be 0.." + (H - 1));
      S.head = o.head | 0;
    }
    draw();
    return state();
  }
  function state() { return { statistic: S.statistic, layer: S.layer, head: S.head }; }
  function value() { return grid(S.statistic)[S.layer][S.head]; }

  window.attnviz = { select: select, state: state, value: value, data: D };
  draw();
})();
