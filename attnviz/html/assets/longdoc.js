/* attnviz long-document report: sparse attention along a whole document. Hand-written, no dependencies, no network.
 * Data: the JSON in #attnviz-data (attnviz/html/longdoc.py). Each layer's blocks are decoded only when it is shown.
 * Scripting API: window.attnviz.select({layer, token}), .state(), .row(): the shown row's keys and weights. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");
  var el = attnvizKit.el, iso = attnvizKit.iso, put = attnvizKit.put;
  var N = D.n, K = D.k, L = D.num_layers;
  var cache = {};  // layer -> decoded arrays
  var st = { layer: D.layer, token: D.focus.length ? D.focus[0] : (D.global_index.length ? D.global_index[0] : 0),
             x0: 0, x1: N };  // the document range shown (tokens)
  var decoded = [];

  function layerData(l) {
    if (!cache[l]) {
      var b = D.layers[l];
      cache[l] = {
        idx: new Uint32Array(attnvizKit.bytes(b.top_idx).buffer),
        w: new Float32Array(attnvizKit.bytes(b.top_w).buffer),
        img: attnvizKit.bytes(b.overview), rows: b.rows, cols: b.cols, vmax: b.vmax
      };
      decoded.push(l);
    }
    return cache[l];
  }
  var VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function colour(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    var i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function weight(v) { return v >= 0.01 ? attnvizKit.shortWeight(v) : v.toPrecision(2).replace(/^0\./, "."); }
  function keyLabel(i) {
    if (i < N) return D.tokens[i];
    var s = D.side_spans[i - N];
    return "global block " + (i - N) + " (tokens " + s[0] + ".." + (s[1] - 1) + ")";
  }
  function row(l, q) {
    var d = layerData(l), out = [];
    for (var j = 0; j < K; j++) { var v = d.w[q * K + j]; if (v > 0) out.push({ index: d.idx[q * K + j], weight: v }); }
    return out;
  }

  // ---- layout
  var title = el("h1", {}, ["attnviz · ", iso(D.label), " · long document"]);
  var lay = D.layout === "blocks"
    ? "block-sparse, blocks of " + D.block_size
    : "sliding window ±" + D.half_width + (D.side_spans.length ? ", " + D.side_spans.length + " transient-global keys" : "");
  var summary = el("p", { cls: "ld-note", text: D.n + " tokens · " + L + " layers × " + D.num_heads + " heads · " + lay +
    " · global tokens: " + (D.global_index.length ? D.global_index.length : "none") +
    " · checked: rows sum to 1 (±" + D.checks.row_sum_max_error.toExponential(1) + "); on the first " +
    D.checks.probe_tokens + " tokens equal to " + D.checks.reference +
    " (largest difference " + D.checks.probe_max_abs_diff.toExponential(1) + ")" });
  var warn = D.random_weights ? el("p", { cls: "ld-note", style: "color:#b00020;font-weight:bold", text: D.random_weights.toUpperCase() }) : null;
  var layerBar = el("div", { cls: "ld-controls" }, [el("span", { text: "layer (head mean):" })]);
  var buttons = [];
  for (var l = 0; l < L; l++) {
    (function (l) {
      var b = el("button", { text: String(l), onclick: function () { select({ layer: l }); } });
      buttons.push(b); layerBar.appendChild(b);
    })(l);
  }
  var zoomNote = el("span", { cls: "ld-note" });
  var reset = el("button", { text: "whole document", onclick: function () { st.x0 = 0; st.x1 = N; draw(); } });
  layerBar.appendChild(reset); layerBar.appendChild(zoomNote);
  var W = Math.min(1200, Math.max(600, window.innerWidth - 60));
  var over = el("canvas", { cls: "ld-canvas", width: W, height: D.layout === "blocks" ? Math.min(W, 420) : 170 });
  var overNote = el("p", { cls: "ld-note" });
  var prof = el("canvas", { cls: "ld-canvas", width: W, height: 120 });
  var profNote = el("p", { cls: "ld-note" });
  var docDiv = el("div", { cls: "ld-doc" });
  var table = el("table", { cls: "ld-top" });
  put(app, [title, summary, warn, layerBar, over, overNote, prof, profNote, docDiv, table]);

  var spans = [];
  var globals = {};
  D.global_index.forEach(function (g) { globals[g] = true; });
  for (var i = 0; i < N; i++) {
    (function (i) {
      var s = el("span", { cls: "t" + (globals[i] ? " global" : ""), title: i + ": " + D.tokens[i],
                           onclick: function () { select({ token: i }); } });
      s.textContent = D.tokens[i];
      spans.push(s); docDiv.appendChild(s); docDiv.appendChild(document.createTextNode(" "));
    })(i);
  }

  // ---- drawing
  function drawOverview() {
    var d = layerData(st.layer), ctx = over.getContext("2d"), cw = over.width, ch = over.height;
    ctx.fillStyle = "#d9d9d9"; ctx.fillRect(0, 0, cw, ch);
    if (D.layout === "blocks") {
      var nb = d.cols, cell = Math.min(cw, ch) / nb;
      for (var r = 0; r < nb; r++) for (var c = 0; c < nb; c++) {
        var v = d.img[r * nb + c]; if (v === 255) continue;
        var rgb = colour(v / 254); ctx.fillStyle = "rgb(" + (rgb[0] | 0) + "," + (rgb[1] | 0) + "," + (rgb[2] | 0) + ")";
        ctx.fillRect(c * cell, r * cell, Math.ceil(cell), Math.ceil(cell));
      }
      var qb = Math.floor(st.token / D.block_size);
      ctx.strokeStyle = "#d62728"; ctx.strokeRect(0, qb * cell, nb * cell, cell);
      put(overNote, ["query block (y) by key block (x), blocks of " + D.block_size + " tokens; colour: the block's queries' mean weight on the key block (square-root scale up to " + weight(d.vmax) + "); grey: never attended; click a cell to pick its query block's first token"]);
      return;
    }
    var rows = d.rows, cols = d.cols, pool = D.pool;
    var img = ctx.createImageData(cw, ch);
    for (var x = 0; x < cw; x++) {
      // the token under this pixel (the same mapping as the profile, the red line and clicks), then its column
      var c = Math.min(cols - 1, Math.floor((st.x0 + (x + 0.5) * (st.x1 - st.x0) / cw) / pool));
      for (var y = 0; y < ch; y++) {
        var r = rows - 1 - Math.floor(y * rows / ch), v = d.img[r * cols + c], p = (y * cw + x) * 4, rgb;
        rgb = v === 255 ? [217, 217, 217] : colour(v / 254);
        img.data[p] = rgb[0]; img.data[p + 1] = rgb[1]; img.data[p + 2] = rgb[2]; img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    var fx = (st.token - st.x0 + 0.5) / (st.x1 - st.x0) * cw;
    ctx.strokeStyle = "#d62728"; ctx.beginPath(); ctx.moveTo(fx, 0); ctx.lineTo(fx, ch); ctx.stroke();
    put(overNote, ["band of layer " + st.layer + ": query position (x) by key offset −" + D.half_width + ".." + D.half_width +
      " (y, bottom to top); colour: attention probability, head mean, square-root scale up to " + weight(d.vmax) +
      "; grey: no key there, a global key or query" + (pool > 1 || D.offset_pool > 1 ? "; reduced: each cell averages " +
      pool + " queries × " + D.offset_pool + " offsets" : "") + ". Wheel: zoom; drag: pan; click: pick a query."]);
  }
  var styled = null;  // the (layer, token) whose row the text and the table show
  function drawProfile() {
    var ctx = prof.getContext("2d"), cw = prof.width, ch = prof.height, r = row(st.layer, st.token);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, cw, ch);
    var span = st.x1 - st.x0, top = 0, shown = 0;
    r.forEach(function (k) { top = Math.max(top, k.weight); shown += k.weight; });
    var q = st.token, w = D.layout === "blocks" ? null : D.window[st.layer];
    if (w != null) {
      ctx.fillStyle = "#cfe3f5";
      ctx.fillRect((q - w - st.x0) / span * cw, 0, (2 * w + 1) / span * cw, ch);
    }
    ctx.fillStyle = "#1f77b4";
    r.forEach(function (k) {
      if (k.index >= N || k.index < st.x0 || k.index >= st.x1) return;
      var x = (k.index - st.x0) / span * cw, h = k.weight / top * (ch - 14);
      ctx.fillRect(x, ch - h, Math.max(2, cw / span), h);
    });
    ctx.fillStyle = "#d62728"; ctx.fillRect((q - st.x0 + 0.5) / span * cw - 1, 0, 2, ch);
    put(profNote, ["the row of ", iso(D.tokens[q]), " (token " + q + ", layer " + st.layer + ", head mean): its " + r.length +
      " strongest keys, exact weights (bars to scale up to " + weight(top) + "), holding " + weight(shown) +
      " of the row" + (w != null ? "; shaded: its window" : "") + "; range shown: tokens " + Math.floor(st.x0) + ".." + (Math.ceil(st.x1) - 1)]);
    if (styled === st.layer + ":" + q) return;  // panning or zooming: the canvases only
    styled = st.layer + ":" + q;
    spans.forEach(function (s) { s.style.background = ""; s.classList.remove("focus"); });
    spans[q].classList.add("focus");
    r.forEach(function (k) {
      if (k.index < N) spans[k.index].style.background = "rgba(31,119,180," + (0.15 + 0.85 * k.weight / top).toFixed(3) + ")";
    });
    var head = el("tr", {}, [el("th", { text: "key" }), el("th", { text: "position" }), el("th", { text: "weight" })]);
    put(table, [head].concat(r.map(function (k) {
      return el("tr", { onclick: function () { if (k.index < N) select({ token: k.index }); } },
        [el("td", {}, [iso(keyLabel(k.index))]), el("td", { text: k.index < N ? String(k.index) : "–" }),
         el("td", { text: weight(k.weight) })]);
    })));
  }
  function draw() {
    buttons.forEach(function (b, l) { b.classList.toggle("on", l === st.layer); });
    zoomNote.textContent = st.x1 - st.x0 < N ? " zoomed: tokens " + Math.floor(st.x0) + ".." + (Math.ceil(st.x1) - 1) : "";
    drawOverview(); drawProfile();
  }
  function select(o) {
    if (o.layer != null) st.layer = Math.max(0, Math.min(L - 1, o.layer | 0));
    if (o.token != null) {
      st.token = Math.max(0, Math.min(N - 1, o.token | 0));
      if (st.token < st.x0 || st.token >= st.x1) { var span = st.x1 - st.x0; st.x0 = Math.max(0, Math.min(N - span, st.token - span / 2)); st.x1 = st.x0 + span; }
      spans[st.token].scrollIntoView({ block: "nearest" });
    }
    draw();
  }

  // ---- pan and zoom along the document (band); click picks a query
  var drag = null;
  function tokenAt(ev, canvas) {
    var rect = canvas.getBoundingClientRect(), fx = (ev.clientX - rect.left) / rect.width;
    return st.x0 + fx * (st.x1 - st.x0);
  }
  [over, prof].forEach(function (canvas) {
    canvas.addEventListener("wheel", function (ev) {
      if (D.layout === "blocks" && canvas === over) return;
      ev.preventDefault();
      var at = tokenAt(ev, canvas), f = ev.deltaY > 0 ? 1.25 : 0.8, span = Math.min(N, Math.max(16, (st.x1 - st.x0) * f));
      st.x0 = Math.max(0, Math.min(N - span, at - (at - st.x0) * span / (st.x1 - st.x0))); st.x1 = st.x0 + span;
      draw();
    }, { passive: false });
    canvas.addEventListener("pointerdown", function (ev) { drag = { x: ev.clientX, x0: st.x0, moved: false, canvas: canvas }; });
    canvas.addEventListener("pointermove", function (ev) {
      if (!drag || drag.canvas !== canvas || (D.layout === "blocks" && canvas === over)) return;
      var dx = ev.clientX - drag.x; if (Math.abs(dx) > 3) drag.moved = true;
      var span = st.x1 - st.x0, rect = canvas.getBoundingClientRect();
      st.x0 = Math.max(0, Math.min(N - span, drag.x0 - dx / rect.width * span)); st.x1 = st.x0 + span; draw();
    });
    canvas.addEventListener("pointerup", function (ev) {
      if (drag && !drag.moved) {
        if (D.layout === "blocks" && canvas === over) {
          var rect = over.getBoundingClientRect(), nb = layerData(st.layer).rows, cell = Math.min(over.width, over.height) / nb;
          var r = Math.floor((ev.clientY - rect.top) / cell);
          if (r >= 0 && r < nb) select({ token: Math.min(N - 1, r * D.block_size) });
        } else select({ token: Math.floor(tokenAt(ev, canvas)) });
      }
      drag = null;
    });
  });

  draw();
  window.attnviz = {
    select: select,
    state: function () {
      var cw = over.width, pool = D.pool;
      return { layer: st.layer, token: st.token, x0: st.x0, x1: st.x1, decoded: decoded.slice(),
               overview: D.layout === "blocks" ? null : [Math.floor((st.x0 + 0.5 * (st.x1 - st.x0) / cw) / pool) * pool,
                          (Math.floor((st.x0 + (cw - 0.5) * (st.x1 - st.x0) / cw) / pool) + 1) * pool] };
    },
    row: function () { return row(st.layer, st.token); }
  };
})();
