/* attnviz interactive report. Hand-written, no dependencies, no network.
 * Data: the JSON in #attnviz-data (see attnviz/html/payload.py for the encoding).
 * Scripting API: window.attnviz.select({...}), .state(), .links(). */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");

  // ---------------------------------------------------------------- helpers
  var el = attnvizKit.el, bytes = attnvizKit.bytes, iso = attnvizKit.iso, put = attnvizKit.put, shortWeight = attnvizKit.shortWeight;
  function u8(b64) { return bytes(b64); }
  function u16(b64) { var b = bytes(b64); return new Uint16Array(b.buffer, 0, b.length / 2); }
  function f32(b64) { var b = bytes(b64); return new Float32Array(b.buffer, 0, b.length / 4); }
  function fmt(w) { return w.toFixed(3); }
  function precise(w) { return w > 0 && w < 0.0005 ? w.toExponential(2) : w.toFixed(3); }  // readouts: never "0.000" for a weight > 0
  function quoted(label) { return ["'", iso(label), "'"]; }
  // a perceptual-ish sequential map (white -> blue -> dark navy) for matrices
  var BLUES = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  // inferno-like for overlays on photos
  var HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  function cmap(stops, t) {
    t = Math.max(0, Math.min(1, t || 0)) * (stops.length - 1);
    var i = Math.min(stops.length - 2, Math.floor(t)), f = t - i, a = stops[i], b = stops[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function headColour(h, H) { return "hsl(" + Math.round(h * 360 / Math.max(H, 1)) + ",70%,42%)"; }
  function option(sel, value, text, selected) {
    var o = el("option", { value: String(value), text: text });
    if (selected) o.selected = true;
    sel.appendChild(o);
  }
  function errorOut(e) { app.appendChild(el("p", { cls: "note", text: "attnviz: " + e })); }

  if (DATA.type === "text") textApp(); else imageApp();

  // ================================================================ text
  function textApp() {
    var kinds = DATA.kinds, order = DATA.kind_order, focus = DATA.focus;
    var S = {
      kind: DATA.initial.kind, layer: DATA.initial.layer, heads: DATA.initial.heads.slice(),
      words: DATA.initial.words, hide: DATA.initial.hide_special, hover: null, hoverSide: "from",
      pinned: null, pinnedSide: "from", drawn: []
    };
    var cache = {};

    function vkey() { return (S.words ? "1" : "0") + (S.hide ? "1" : "0"); }
    function variant(kind, key) {
      var vs = kinds[kind].variants, v = vs[key];
      while (typeof v === "string") v = vs[v];
      return v;
    }
    function decoded(kind, key) {
      var v = variant(kind, key), id = kind + ":" + key;
      if (!v || v.error) return null;
      if (!cache[id]) {
        var K = kinds[kind], d = {
          v: v, L: K.num_layers, H: K.num_heads, Q: v.query.labels.length, K: v.key.labels.length,
          q: u8(v.q), peak: f32(v.peak), idx: v.idx ? u16(v.idx) : null, k: v.k || 0, focus: null
        };
        if (v.focus_rows) d.focus = { unit: v.focus_rows.unit, q: u8(v.focus_rows.q), peak: f32(v.focus_rows.peak) };
        cache[id] = d;
      }
      return cache[id];
    }
    function cur() { return decoded(S.kind, vkey()); }
    // links of one query row: [{to, w}] with w > 0, weights as embedded (dequantised)
    function row(d, l, h, qi) {
      var out = [], base, p, j;
      if (d.focus && d.focus.unit === qi) {
        p = d.focus.peak[l * d.H + h] / 255; base = (l * d.H + h) * d.K;
        for (j = 0; j < d.K; j++) if (d.focus.q[base + j]) out.push({ to: j, w: d.focus.q[base + j] * p });
        return out;
      }
      var r = (l * d.H + h) * d.Q + qi;
      p = d.peak[r] / 255;
      if (!d.idx) {
        base = r * d.K;
        for (j = 0; j < d.K; j++) if (d.q[base + j]) out.push({ to: j, w: d.q[base + j] * p });
      } else {
        base = r * d.k;
        for (j = 0; j < d.k; j++) if (d.q[base + j]) out.push({ to: d.idx[base + j], w: d.q[base + j] * p });
      }
      return out;
    }
    function denseRow(d, l, h, qi) {
      var a = new Float32Array(d.K);
      row(d, l, h, qi).forEach(function (x) { a[x.to] = x.w; });
      return a;
    }
    function focusUnit(d) {
      if (!focus || focus.kind !== S.kind) return null;
      var t = focus.token_indices[0], g = d.v.query.groups;
      for (var i = 0; i < g.length; i++) if (g[i].indexOf(t) >= 0) return i;
      return null;
    }
    function remapUnit(dOld, dNew, u) {  // the unit of the new view that holds the old unit's first token
      if (u == null || !dOld || !dNew) return null;
      var t = dOld.v.query.groups[u][0], g = dNew.v.query.groups;
      for (var i = 0; i < g.length; i++) if (g[i].indexOf(t) >= 0) return i;
      return null;
    }

    // ------------------------------------------------ layout
    app.innerHTML = "";
    app.appendChild(el("h1", null, ["attnviz · ", iso(DATA.label || DATA.model)]));
    app.appendChild(el("p", { cls: "meta", text: DATA.model_type + " · backend " + DATA.backend + " · kinds: " + order.join(", ") +
      (DATA.dropped_tokens ? " · " + DATA.dropped_tokens + " tokens cut off by truncation" : "") }));
    var inputText = "Input: " + DATA.text + (DATA.target != null ? "  ·  target: " + DATA.target : "");
    function inputParts() { return ["Input: ", iso(DATA.text)].concat(DATA.target != null ? ["  ·  target: ", iso(DATA.target)] : []); }
    if (inputText.length <= 400) app.appendChild(el("p", { cls: "meta" }, inputParts()));
    else app.appendChild(el("details", { cls: "meta" }, [el("summary", null, [iso(inputText.slice(0, 300)), "… (" + DATA.text.length + " characters; open to read all)"]), el("p", null, inputParts())]));
    app.appendChild(el("p", { cls: "note", id: "av-data-note", text: "Data: " + DATA.quantisation + ". " + (DATA.mode === "full"
      ? "Full maps of every layer and head (inputs up to " + DATA.full_tokens + " tokens embed full maps)."
      : "This input is longer than " + DATA.full_tokens + " tokens: the page holds the strongest " + DATA.top_k +
        " links of every query row (per layer and head), plus the focus token's full rows.") }));

    var ctl = el("div", { cls: "controls" });
    var kindSel = el("select", { id: "av-kind", "aria-label": "attention kind" });
    order.forEach(function (k) { option(kindSel, k, k + (k === "cross" ? " (target → source)" : ""), k === S.kind); });
    kindSel.addEventListener("change", function () { select({ kind: kindSel.value }); });
    var layerSel = el("select", { id: "av-layer", "aria-label": "layer" });
    layerSel.addEventListener("change", function () { select({ layer: +layerSel.value }); });
    var headBox = el("span", { cls: "heads", id: "av-heads" });
    var wordsBox = el("input", { type: "checkbox", id: "av-words" });
    wordsBox.addEventListener("change", function () { select({ words: wordsBox.checked }); });
    var hideBox = el("input", { type: "checkbox", id: "av-hide" });
    hideBox.addEventListener("change", function () { select({ hide_special: hideBox.checked }); });
    if (order.length > 1) ctl.appendChild(el("label", null, ["attention ", kindSel]));
    ctl.appendChild(el("label", null, ["layer ", layerSel]));
    ctl.appendChild(el("span", null, ["heads ", headBox,
      el("button", { text: "all", style: "margin-left:6px", onclick: function () { select({ heads: "all" }); } })]));
    ctl.appendChild(el("label", null, [wordsBox, " words (merge word pieces)"]));
    ctl.appendChild(el("label", null, [hideBox, " hide special tokens"]));
    app.appendChild(ctl);
    var viewNote = el("p", { cls: "note", id: "av-view-note" });
    app.appendChild(viewNote);

    app.appendChild(el("h2", { text: "Head view" }));
    app.appendChild(el("p", { cls: "note", text: "Queries left, keys right; a line per link, its width and opacity proportional to the weight, one colour per head. Hover a token to see its links (left: where it looks; right: who looks at it), click to pin it." }));
    var status = el("div", { cls: "status", id: "av-status" });
    app.appendChild(status);
    var hv = el("div", { cls: "headview", id: "av-headview" });
    var colQ = el("div", { cls: "col q" }), colK = el("div", { cls: "col k" });
    var linkCanvas = el("canvas", { id: "av-links", width: 260, height: 20 });
    hv.appendChild(colQ); hv.appendChild(linkCanvas); hv.appendChild(colK);
    app.appendChild(hv);

    var focusSec = el("div", { id: "av-focus" });
    app.appendChild(focusSec);

    app.appendChild(el("h2", { text: "Attention matrix" }));
    var matNote = el("p", { cls: "note", id: "av-matrix-note" });
    app.appendChild(matNote);
    var readout = el("div", { cls: "status", id: "av-readout", text: "Point at a cell to read its weight." });
    app.appendChild(readout);
    var matBox = el("div", { cls: "matrix", id: "av-matrix" });
    app.appendChild(matBox);

    app.appendChild(el("h2", { text: "Model view" }));
    app.appendChild(el("p", { cls: "note", text: "Every layer (rows) and head (columns) as a small attention map (queries down, keys across; colour: weight 0 white to 1 dark blue; beyond 128 tokens each cell shows the largest weight it covers). Click one to open it in the head view." }));
    var mv = el("div", { cls: "modelview", id: "av-modelview" });
    app.appendChild(mv);

    // ------------------------------------------------ rendering
    var ROW = 20, mvDrawn = null;

    function renderControls() {
      var K = kinds[S.kind];
      layerSel.innerHTML = "";
      for (var l = 0; l < K.num_layers; l++) option(layerSel, l, String(l), l === S.layer);
      headBox.innerHTML = "";
      for (var h = 0; h < K.num_heads; h++) (function (h) {
        var on = S.heads.indexOf(h) >= 0;
        var b = el("button", { text: String(h), cls: on ? "on" : "", "data-head": h, title: "head " + h + " (shift-click: add/remove)",
          onclick: function (ev) {
            if (ev.shiftKey || ev.ctrlKey || ev.metaKey) {
              var hs = S.heads.slice(), i = hs.indexOf(h);
              if (i >= 0) { if (hs.length > 1) hs.splice(i, 1); } else hs.push(h);
              select({ heads: hs });
            } else select({ heads: [h] });
          } });
        if (on) b.style.background = headColour(h, K.num_heads);
        headBox.appendChild(b);
      })(h);
      wordsBox.checked = S.words; hideBox.checked = S.hide;
      hideBox.disabled = !!(variant(S.kind, (S.words ? "1" : "0") + "1") || {}).error;
    }

    function active() { return S.hover != null ? { u: S.hover, side: S.hoverSide } : (S.pinned != null ? { u: S.pinned, side: S.pinnedSide } : null); }

    function renderHeadView() {
      var d = cur();
      colQ.innerHTML = ""; colK.innerHTML = "";
      if (!d) return;
      var fu = focusUnit(d);
      // rows of 20 px; smaller for very long inputs (a canvas is at most ~32,000 px tall)
      ROW = Math.max(4, Math.min(20, Math.floor(30000 / Math.max(d.Q, d.K, 1))));
      var rowStyle = ROW < 20 ? "height:" + ROW + "px;line-height:" + ROW + "px;font-size:" + Math.max(4, ROW - 3) + "px" : "";
      function tok(side, i, label, special) {
        var t = el("div", { cls: "tok" + (special ? " special" : "") + (side === "from" && i === fu ? " focus" : ""),
          "data-side": side, "data-index": i, text: label, style: rowStyle });
        t.addEventListener("mouseenter", function () { S.hover = i; S.hoverSide = side; drawLinks(); });
        t.addEventListener("mouseleave", function () { S.hover = null; drawLinks(); });
        t.addEventListener("click", function () {
          if (S.pinned === i && S.pinnedSide === side) S.pinned = null; else { S.pinned = i; S.pinnedSide = side; }
          drawLinks();
        });
        return t;
      }
      d.v.query.labels.forEach(function (lab, i) { colQ.appendChild(tok("from", i, lab, d.v.query.special[i])); });
      d.v.key.labels.forEach(function (lab, i) { colK.appendChild(tok("to", i, lab, d.v.key.special[i])); });
      linkCanvas.height = Math.max(d.Q, d.K) * ROW;
      linkCanvas.style.height = linkCanvas.height + "px";
      drawLinks();
    }

    function computeLinks() {
      var d = cur(), out = [];
      if (!d) return out;
      var a = active(), l = Math.min(S.layer, d.L - 1);
      S.heads.forEach(function (h) {
        if (h >= d.H) return;
        if (a && a.side === "from") {
          row(d, l, h, a.u).forEach(function (x) { out.push({ from: a.u, to: x.to, weight: x.w, head: h }); });
        } else {
          for (var qi = 0; qi < d.Q; qi++) row(d, l, h, qi).forEach(function (x) {
            if (a ? x.to === a.u : x.w >= 0.01) out.push({ from: qi, to: x.to, weight: x.w, head: h });
          });
        }
      });
      return out;
    }

    function drawLinks() {
      var d = cur(), ctx = linkCanvas.getContext("2d");
      ctx.clearRect(0, 0, linkCanvas.width, linkCanvas.height);
      S.drawn = computeLinks();
      if (!d) return;
      var W = linkCanvas.width, H = kinds[S.kind].num_heads, a = active();
      S.drawn.forEach(function (x) {
        ctx.strokeStyle = headColour(x.head, H);
        ctx.globalAlpha = Math.min(1, 0.08 + x.weight * (a ? 1.1 : 0.9));
        ctx.lineWidth = Math.max(0.6, 4 * x.weight);
        ctx.beginPath();
        ctx.moveTo(0, x.from * ROW + ROW / 2);
        ctx.lineTo(W, x.to * ROW + ROW / 2);
        ctx.stroke();
      });
      ctx.globalAlpha = 1;
      [colQ, colK].forEach(function (col, ci) {
        var side = ci === 0 ? "from" : "to";
        Array.prototype.forEach.call(col.children, function (t, i) {
          t.classList.toggle("active", !!a && a.side === side && a.u === i);
          t.classList.toggle("pinned", S.pinned === i && S.pinnedSide === side);
        });
      });
      var parts = ["layer " + S.layer + " · head" + (S.heads.length > 1 ? "s " : " ") + S.heads.join(", ")];
      if (a) {
        var lab = a.side === "from" ? d.v.query.labels[a.u] : d.v.key.labels[a.u];
        var best = S.drawn.slice().sort(function (p, q) { return q.weight - p.weight; }).slice(0, 3);
        parts = parts.concat(a.side === "from" ? [" · "].concat(quoted(lab), [" looks at: "]) : [" · looking at "].concat(quoted(lab), [": "]));
        best.forEach(function (x, i) {
          parts = parts.concat(i ? [", "] : [], quoted(a.side === "from" ? d.v.key.labels[x.to] : d.v.query.labels[x.from]),
            [" " + fmt(x.weight) + (S.heads.length > 1 ? " (h" + x.head + ")" : "")]);
        });
        if (S.pinned != null && S.hover == null) parts.push(" · pinned (click again to release)");
      } else parts.push(" · links of weight ≥ 0.01 drawn; hover a token");
      put(status, parts);
    }

    // the head mean of the selected heads, binned to at most MAXPX x MAXPX cells (max per bin; exact when not binned)
    var MAXPX = 620;
    function matrixValues(d) {
      var l = Math.min(S.layer, d.L - 1), hs = S.heads.filter(function (h) { return h < d.H; });
      var RQ = Math.min(d.Q, MAXPX), RK = Math.min(d.K, MAXPX), m = new Float32Array(RQ * RK), acc = new Float32Array(d.K);
      for (var qi = 0; qi < d.Q; qi++) {
        var touched = [];
        hs.forEach(function (h) {
          row(d, l, h, qi).forEach(function (x) { if (!acc[x.to]) touched.push(x.to); acc[x.to] += x.w / hs.length; });
        });
        var bq = Math.floor(qi * RQ / d.Q);
        touched.forEach(function (k) {
          var o = bq * RK + Math.floor(k * RK / d.K);
          if (acc[k] > m[o]) m[o] = acc[k];
          acc[k] = 0;
        });
      }
      return { m: m, RQ: RQ, RK: RK, binned: RQ < d.Q || RK < d.K };
    }

    function renderMatrix() {
      var d = cur();
      matBox.innerHTML = "";
      if (!d) return;
      var mv = matrixValues(d), m = mv.m, RQ = mv.RQ, RK = mv.RK, max = 0;
      for (var i = 0; i < m.length; i++) if (m[i] > max) max = m[i];
      var cell = Math.max(1, Math.min(22, Math.floor(MAXPX / Math.max(RQ, RK))));
      var showLabels = !mv.binned && cell >= 8, padL = 0, padT = 0;
      if (showLabels) { padL = 8 + 7 * Math.max.apply(null, d.v.query.labels.map(function (s) { return Math.min(s.length, 18); })); padT = 4 + 6 * Math.max.apply(null, d.v.key.labels.map(function (s) { return Math.min(s.length, 18); })); }
      var cv = el("canvas", { width: RK, height: RQ, style: "width:" + RK * cell + "px;height:" + RQ * cell + "px;margin-left:" + padL + "px;margin-top:" + padT + "px" });
      var ctx = cv.getContext("2d"), img = ctx.createImageData(RK, RQ);
      for (i = 0; i < m.length; i++) {
        var c = cmap(BLUES, max > 0 ? m[i] / max : 0);
        img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      matBox.appendChild(cv);
      matBox.style.width = "";
      if (showLabels) {
        var labs = el("div", { cls: "mlabels" });
        d.v.query.labels.forEach(function (s, i) {
          labs.appendChild(el("div", { cls: "ylab", text: s, style: "right:" + (RK * cell + 4) + "px;top:" + (padT + i * cell) + "px;line-height:" + cell + "px;font-size:" + Math.min(11, cell) + "px;left:auto" }));
        });
        d.v.key.labels.forEach(function (s, i) {
          labs.appendChild(el("div", { cls: "xlab", text: s, style: "left:" + (padL + i * cell + cell * 0.3) + "px;top:" + (padT - 2) + "px;font-size:" + Math.min(11, cell) + "px" }));
        });
        matBox.appendChild(labs);
        matBox.style.width = (padL + RK * cell) + "px";
      }
      cv.addEventListener("mousemove", function (ev) {
        var r = cv.getBoundingClientRect(), bk = Math.floor((ev.clientX - r.left) / cell), bq = Math.floor((ev.clientY - r.top) / cell);
        if (bq < 0 || bk < 0 || bq >= RQ || bk >= RK) return;
        if (!mv.binned) {
          put(readout, ["query " + bq + " "].concat(quoted(d.v.query.labels[bq]), [" → key " + bk + " "], quoted(d.v.key.labels[bk]),
            [": " + fmt(m[bq * RK + bk])]));
        } else {
          var q0 = Math.ceil(bq * d.Q / RQ), q1 = Math.ceil((bq + 1) * d.Q / RQ) - 1, k0 = Math.ceil(bk * d.K / RK), k1 = Math.ceil((bk + 1) * d.K / RK) - 1;
          put(readout, ["queries " + q0 + "–" + q1 + " ("].concat(quoted(d.v.query.labels[q0]), ["…) → keys " + k0 + "–" + k1 + " ("],
            quoted(d.v.key.labels[k0]), ["…): largest " + fmt(m[bq * RK + bk])]));
        }
      });
      matNote.textContent = S.kind + " attention, layer " + S.layer + ", " + (S.heads.length > 1 ? "mean of heads " + S.heads.join(", ") : "head " + S.heads[0]) +
        "; rows: queries, columns: keys; colour: 0 (white) to " + fmt(max) + " (the largest value shown)" +
        (d.idx ? "; only the strongest " + d.k + " links per row are embedded (others show as 0)" : "") +
        (mv.binned ? "; " + d.Q + " x " + d.K + " shown as " + RQ + " x " + RK + " cells, each the largest weight it covers" : "") +
        (showLabels ? "" : "; labels left out at this size: point at a cell to read them");
    }

    function renderModelView() {
      var d = cur(), id = S.kind + ":" + vkey();
      if (!d) { mv.innerHTML = ""; mvDrawn = null; return; }
      if (mvDrawn !== id) {
        mvDrawn = id;
        mv.innerHTML = "";
        mv.style.gridTemplateColumns = "40px repeat(" + d.H + ", auto)";
        var size = Math.max(36, Math.min(72, Math.floor(1100 / d.H) - 6));
        mv.appendChild(el("div"));
        for (var h = 0; h < d.H; h++) mv.appendChild(el("div", { cls: "lab", text: "head " + h }));
        // thumbnails of at most 128 x 128 cells, each the largest weight it covers
        var RQ = Math.min(d.Q, 128), RK = Math.min(d.K, 128), acc = new Float32Array(RQ * RK);
        var off = document.createElement("canvas");
        off.width = RK; off.height = RQ;
        var octx = off.getContext("2d");
        for (var l = 0; l < d.L; l++) {
          mv.appendChild(el("div", { cls: "lab", text: "layer " + l }));
          for (h = 0; h < d.H; h++) {
            var img = octx.createImageData(RK, RQ), px = img.data;
            acc.fill(0);
            for (var qi = 0; qi < d.Q; qi++) {
              var bq = Math.floor(qi * RQ / d.Q) * RK;
              row(d, l, h, qi).forEach(function (x) { var o = bq + Math.floor(x.to * RK / d.K); if (x.w > acc[o]) acc[o] = x.w; });
            }
            for (var p = 0; p < acc.length; p++) {
              var c = cmap(BLUES, acc[p]);
              px[4 * p] = c[0]; px[4 * p + 1] = c[1]; px[4 * p + 2] = c[2]; px[4 * p + 3] = 255;
            }
            octx.putImageData(img, 0, 0);
            var cv = el("canvas", { width: size, height: size, "data-layer": l, "data-head": h, title: "layer " + l + ", head " + h + ": open in the head view" });
            var c2 = cv.getContext("2d");
            c2.imageSmoothingEnabled = RQ > size;
            c2.drawImage(off, 0, 0, size, size);
            (function (l, h) { cv.addEventListener("click", function () { select({ layer: l, heads: [h] }); document.getElementById("av-headview").scrollIntoView(); }); })(l, h);
            mv.appendChild(cv);
          }
        }
      }
      Array.prototype.forEach.call(mv.querySelectorAll("canvas"), function (c) {
        c.classList.toggle("on", +c.getAttribute("data-layer") === S.layer && S.heads.indexOf(+c.getAttribute("data-head")) >= 0);
      });
    }

    function renderFocus() {
      focusSec.innerHTML = "";
      if (!focus) return;
      var g = focus.grids[vkey()];
      focusSec.appendChild(el("h2", null, ["Focus view: "].concat(quoted(focus.text))));
      if (focus.fallback) focusSec.appendChild(el("p", { cls: "note", id: "av-focus-fallback" }, [iso(focus.fallback)]));
      if (!g) { focusSec.appendChild(el("p", { cls: "note", text: "The focus token has no grid in this view (e.g. it is a hidden special token)." })); return; }
      focusSec.appendChild(el("p", { cls: "note" }, ["For each layer (rows) and head (columns): the weight "].concat(quoted(g.text), [" (" + focus.kind +
        " attention) puts on its link target, the " + g.rule + ", with the target written in the cell (weights as in the figures: " +
        "two decimals, <.01 below 0.005). Click a cell to open that head."])));
      var t = el("table", { cls: "grid", id: "av-focus-grid" }), tr = el("tr", null, [el("th")]);
      var H = g.weights[0].length;
      for (var h = 0; h < H; h++) tr.appendChild(el("th", { text: "h" + h }));
      t.appendChild(tr);
      g.weights.forEach(function (ws, l) {
        var r = el("tr", null, [el("th", { text: "L" + l })]);
        ws.forEach(function (w, h) {
          var c = cmap(BLUES, w), dark = w > 0.55;
          var td = el("td", { "data-layer": l, "data-head": h, title: "layer " + l + " head " + h + ": '" + g.targets[l][h] + "' " + precise(w),
            style: "background:rgb(" + c.map(Math.round).join(",") + ");color:" + (dark ? "#fff" : "#222") }, [iso(g.targets[l][h]), el("br"), shortWeight(w)]);
          if (l === S.layer && S.heads.length === 1 && S.heads[0] === h && S.kind === focus.kind) td.className = "on";
          td.addEventListener("click", function () {
            var d = decoded(focus.kind, vkey());
            select({ kind: focus.kind, layer: l, heads: [h], token: d ? focusUnit(d) : null });
            document.getElementById("av-headview").scrollIntoView();
          });
          r.appendChild(td);
        });
        t.appendChild(r);
      });
      focusSec.appendChild(t);
    }

    function renderAll() {
      var d = cur();
      renderControls();
      var v = variant(S.kind, vkey());
      viewNote.textContent = d ? "View: " + d.v.describe + " — exactly as attnviz text " + (S.words ? "--words" : "--subwords") +
        (S.hide ? " --hide-special" : "") + " computes it." : "This view is not available: " + (v && v.error);
      renderHeadView(); renderMatrix(); renderModelView(); renderFocus();
    }

    function select(o) {
      o = o || {};
      var before = cur();
      if (o.kind != null) {
        if (!kinds[o.kind]) throw new Error("no attention kind '" + o.kind + "' (have " + order.join(", ") + ")");
        if (o.kind !== S.kind) { S.kind = o.kind; S.pinned = null; S.hover = null; }
      }
      var K = kinds[S.kind];
      if (o.words != null) S.words = !!o.words;
      if (o.hide_special != null) S.hide = !!o.hide_special;
      if (o.words != null || o.hide_special != null) { S.pinned = remapUnit(before, cur(), S.pinned); S.hover = null; }
      if (o.layer != null) S.layer = ((+o.layer % K.num_layers) + K.num_layers) % K.num_layers;
      S.layer = Math.min(S.layer, K.num_layers - 1);
      var hs = o.heads != null ? o.heads : o.head;
      if (hs === "all" || hs === "mean") hs = Array.from({ length: K.num_heads }, function (_, i) { return i; });
      if (hs != null) S.heads = (Array.isArray(hs) ? hs : [hs]).map(Number).filter(function (h) { return h >= 0 && h < K.num_heads; });
      S.heads = S.heads.filter(function (h) { return h < K.num_heads; });
      if (!S.heads.length) S.heads = [0];
      if (o.token !== undefined) { S.pinned = o.token; S.pinnedSide = o.side || "from"; S.hover = null; }
      renderAll();
      return state();
    }
    function state() {
      var d = cur();
      return { type: "text", kind: S.kind, layer: S.layer, heads: S.heads.slice(), head: S.heads.length === 1 ? S.heads[0] : null,
        token: S.hover != null ? S.hover : S.pinned, pinned: S.pinned, side: S.hover != null ? S.hoverSide : S.pinnedSide,
        words: S.words, hide_special: S.hide, mode: DATA.mode,
        query_labels: d ? d.v.query.labels.slice() : [], key_labels: d ? d.v.key.labels.slice() : [] };
    }
    function links() { return S.drawn.map(function (x) { return { from: x.from, to: x.to, weight: x.weight, head: x.head }; }); }

    var d0 = cur();
    S.pinned = d0 ? focusUnit(d0) : null;
    window.attnviz = { select: select, state: state, links: links, data: DATA };
    renderAll();
  }

  // ================================================================ image
  function imageApp() {
    var D = DATA, T = D.tokens, rows = D.grid[0], cols = D.grid[1], P = D.prefix_tokens, H = D.num_heads;
    var q = u8(D.q), peak = f32(D.peak);
    var S = { layer: D.initial.layer, head: D.initial.head, query: null, hover: null, sinks: true, leaveOut: false, map: [] };
    var meanCache = {};
    var DW = 440, scale = DW / D.photo_size[0], DH = Math.round(D.photo_size[1] * scale);
    var box = D.crop_box.map(function (v) { return v * scale; });

    function li() { return D.layers.indexOf(S.layer); }
    function rowOf(l, h, t) {  // dequantised attention row of token t
      var r = (l * H + h) * T + t, p = peak[r] / 255, base = r * T, out = new Float32Array(T);
      for (var j = 0; j < T; j++) out[j] = q[base + j] * p;
      return out;
    }
    function queryRow(l, h, t) {  // t null: [CLS], or the mean of all query rows without [CLS]
      if (t != null) return rowOf(l, h, t);
      if (D.cls_index != null) return rowOf(l, h, D.cls_index);
      var key = l + ":" + h;
      if (!meanCache[key]) {
        var acc = new Float32Array(T);
        for (var i = 0; i < T; i++) { var r = rowOf(l, h, i); for (var j = 0; j < T; j++) acc[j] += r[j] / T; }
        meanCache[key] = acc;
      }
      return meanCache[key];
    }
    function currentRow() {
      var l = li(), t = S.hover != null ? S.hover : S.query;
      if (S.head != null) return queryRow(l, S.head, t);
      var acc = new Float32Array(T);
      for (var h = 0; h < H; h++) { var r = queryRow(l, h, t); for (var j = 0; j < T; j++) acc[j] += r[j] / H; }
      return acc;
    }
    function isSink(r, c) { return D.sinks.some(function (s) { return s.row === r && s.col === c; }); }
    function tokenName(t) {
      if (t == null) return D.query_label;
      if (t < P) return "prefix token " + t;
      var k = t - P; return "patch (row " + Math.floor(k / cols) + ", col " + (k % cols) + ")";
    }

    function panel(id) {
      var wrap = el("div", { cls: "photo", id: id, style: "width:" + DW + "px;height:" + DH + "px" });
      wrap.appendChild(el("img", { src: D.photo, width: DW, height: DH, alt: "the photo" }));
      var cv = el("canvas", { width: cols, height: rows, style: "left:" + box[0] + "px;top:" + box[1] + "px;width:" + (box[2] - box[0]) +
        "px;height:" + (box[3] - box[1]) + "px;opacity:0.62;image-rendering:pixelated" });
      wrap.appendChild(cv);
      var marks = el("div", { style: "position:absolute;left:0;top:0;pointer-events:none" });
      wrap.appendChild(marks);
      return { wrap: wrap, cv: cv, marks: marks };
    }
    // grid: Float32Array rows*cols. Colour scale over the patches shown (sinks left out when leaveOut): from 0 to
    // the max (attention), or from the min to the max with fromMin (rollout, as the PNG: "scale: min to max, not from 0").
    function paint(pn, grid, leaveOut, fromMin) {
      var max = -Infinity, min = Infinity, i, ctx = pn.cv.getContext("2d"), img = ctx.createImageData(cols, rows);
      for (i = 0; i < grid.length; i++) if (!(leaveOut && isSink(Math.floor(i / cols), i % cols)) && isFinite(grid[i])) {
        if (grid[i] > max) max = grid[i];
        if (grid[i] < min) min = grid[i];
      }
      if (!(max > -Infinity)) { max = 0; min = 0; }
      var lo = fromMin ? min : 0, span = max - lo;
      for (i = 0; i < grid.length; i++) {
        var out = leaveOut && isSink(Math.floor(i / cols), i % cols), c = out ? [128, 128, 128] : cmap(HEAT, span > 0 ? (grid[i] - lo) / span : 0);
        img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      return { min: lo, max: max };
    }
    function mark(pn, r, c, colour, widthPx) {
      var w = (box[2] - box[0]) / cols, h = (box[3] - box[1]) / rows;
      pn.marks.appendChild(el("div", { style: "position:absolute;left:" + (box[0] + c * w) + "px;top:" + (box[1] + r * h) + "px;width:" + w +
        "px;height:" + h + "px;box-sizing:border-box;border:" + widthPx + "px solid " + colour }));
    }

    app.innerHTML = "";
    app.appendChild(el("h1", null, ["attnviz · ", iso(D.label || D.model)]));
    app.appendChild(el("p", { cls: "meta", text: D.model_type + " · " + D.num_layers + " layers × " + H + " heads · patch grid " + rows + "×" + cols +
      " · " + P + " prefix token" + (P === 1 ? "" : "s") + " · backend " + D.backend }));
    app.appendChild(el("p", { cls: "note", text: "Data: " + D.quantisation + ". " + (D.layers.length === D.num_layers
      ? "Every layer and head in full." : "Only layer" + (D.layers.length > 1 ? "s " : " ") + D.layers.join(", ") + " embedded (the full model would be too large).") }));
    var ctl = el("div", { cls: "controls" });
    var layerSel = el("select", { id: "av-layer", "aria-label": "layer" });
    D.layers.forEach(function (l) { option(layerSel, l, String(l), l === S.layer); });
    layerSel.addEventListener("change", function () { select({ layer: +layerSel.value }); });
    var headSel = el("select", { id: "av-head", "aria-label": "head" });
    option(headSel, "mean", "mean of heads", S.head == null);
    for (var h = 0; h < H; h++) option(headSel, h, String(h), S.head === h);
    headSel.addEventListener("change", function () { select({ head: headSel.value === "mean" ? null : +headSel.value }); });
    var sinkBox = el("input", { type: "checkbox", id: "av-sinks" }); sinkBox.checked = S.sinks;
    sinkBox.addEventListener("change", function () { select({ sinks: sinkBox.checked }); });
    var leaveBox = el("input", { type: "checkbox", id: "av-leave-out" });
    leaveBox.addEventListener("change", function () { select({ leave_out_sinks: leaveBox.checked }); });
    ctl.appendChild(el("label", null, ["layer ", layerSel]));
    ctl.appendChild(el("label", null, ["head ", headSel]));
    ctl.appendChild(el("button", { text: D.query_label, id: "av-cls", onclick: function () { select({ token: null }); } }));
    ctl.appendChild(el("label", null, [sinkBox, " outline sink patches (" + D.sinks.length + ")"]));
    ctl.appendChild(el("label", null, [leaveBox, " leave sink patches out of the colour scale"]));
    app.appendChild(ctl);

    var A = panel("av-attn"), R = panel("av-rollout");
    var capA = el("div", { cls: "cap", id: "av-attn-cap" }), capR = el("div", { cls: "cap", id: "av-rollout-cap" });
    var row1 = el("div");
    row1.appendChild(el("div", { style: "display:inline-block;vertical-align:top" }, [A.wrap, capA]));
    row1.appendChild(el("div", { style: "display:inline-block;vertical-align:top" }, [R.wrap, capR]));
    app.appendChild(el("h2", { text: "Attention over the photo · rollout" }));
    app.appendChild(el("p", { cls: "note", text: "Left: where the query attends (the " + D.query_label + " until you hover a patch; click a patch to pin it, the " +
      D.query_label + " button to go back). Right: attention rollout. The region the model saw is the coloured area." }));
    app.appendChild(row1);
    if (D.predictions.length) {
      app.appendChild(el("h2", { text: "Predictions" }));
      var t = el("table", { cls: "preds", id: "av-preds" });
      D.predictions.forEach(function (p) {
        t.appendChild(el("tr", null, [el("td", { text: p.label }), el("td", { text: p.score.toFixed(3) }),
          el("td", null, [el("span", { cls: "bar", style: "width:" + Math.round(200 * p.score) + "px" })])]));
      });
      app.appendChild(t);
    }

    function patchAt(ev) {
      var r = A.cv.getBoundingClientRect(), x = (ev.clientX - r.left) / r.width, y = (ev.clientY - r.top) / r.height;
      if (x < 0 || y < 0 || x >= 1 || y >= 1) return null;
      return P + Math.floor(y * rows) * cols + Math.floor(x * cols);
    }
    A.cv.addEventListener("mousemove", function (ev) { var t = patchAt(ev); if (t !== S.hover) { S.hover = t; render(); } });
    A.cv.addEventListener("mouseleave", function () { S.hover = null; render(); });
    A.cv.addEventListener("click", function (ev) { var t = patchAt(ev); select({ token: t === S.query ? null : t }); });

    function render() {
      var full = currentRow(), grid = full.slice(P, P + rows * cols);
      S.map = full;
      var max = paint(A, grid, S.leaveOut, false).max, t = S.hover != null ? S.hover : S.query;
      A.marks.innerHTML = ""; R.marks.innerHTML = "";
      if (t != null && t >= P) mark(A, Math.floor((t - P) / cols), (t - P) % cols, "#fff", 2);
      if (S.sinks) D.sinks.forEach(function (s) { mark(A, s.row, s.col, "cyan", 2); mark(R, s.row, s.col, "cyan", 2); });
      var prefixShare = 0; for (var i = 0; i < P; i++) prefixShare += full[i];
      capA.textContent = "Attention of " + tokenName(t) + (S.query != null && S.hover == null ? " (pinned)" : "") + ", layer " + S.layer + ", " +
        (S.head == null ? "mean of " + H + " heads" : "head " + S.head) + ". Colour: 0 to " + max.toFixed(4) + " (the largest patch weight shown)" +
        (S.leaveOut && D.sinks.length ? ", sink patches left out (grey)" : "") + "; " + (P ? fmt(prefixShare) + " of the weight goes to the prefix tokens." : "");
      var rg = [].concat.apply([], D.rollout), rs = paint(R, rg, S.leaveOut, true);
      S.rolloutScale = [rs.min, rs.max];
      capR.textContent = "Attention rollout (Abnar & Zuidema 2020), row: " + D.rollout_settings.row + ", head fusion " + D.rollout_settings.head_fusion +
        ", discard ratio " + D.rollout_settings.discard_ratio + ", A' = norm(0.5 A + 0.5 I). Colour: " + rs.min.toPrecision(3) + " to " +
        rs.max.toPrecision(3) + " (scale: min to max, not from 0)" +
        (S.leaveOut && D.sinks.length ? " (sink patches left out, grey)" : "") + "." +
        (D.sinks.length ? " Sink patches: " + D.sinks.map(function (s) { return "(row " + s.row + ", col " + s.col + ") " + (100 * s.share).toFixed(0) + "% of the " + s.signal; }).join("; ") + "." : " No attention sinks found.");
      layerSel.value = String(S.layer); headSel.value = S.head == null ? "mean" : String(S.head);
      sinkBox.checked = S.sinks; leaveBox.checked = S.leaveOut;
    }
    function select(o) {
      o = o || {};
      if (o.layer != null) { var l = ((+o.layer % D.num_layers) + D.num_layers) % D.num_layers; if (D.layers.indexOf(l) < 0) throw new Error("layer " + l + " is not embedded (have " + D.layers.join(", ") + ")"); S.layer = l; }
      if (o.head !== undefined) S.head = o.head === "mean" ? null : o.head;
      if (o.token !== undefined) { S.query = o.token === "cls" ? null : o.token; S.hover = null; }
      if (o.patch) { S.query = P + o.patch[0] * cols + o.patch[1]; S.hover = null; }
      if (o.sinks != null) S.sinks = !!o.sinks;
      if (o.leave_out_sinks != null) S.leaveOut = !!o.leave_out_sinks;
      render();
      return state();
    }
    function state() {
      return { type: "image", layer: S.layer, head: S.head, token: S.hover != null ? S.hover : S.query, pinned: S.query,
        sinks: S.sinks, leave_out_sinks: S.leaveOut, grid: D.grid.slice(), prefix_tokens: P,
        rollout_scale: S.rolloutScale ? S.rolloutScale.slice() : null };
    }
    function links() {
      var t = S.hover != null ? S.hover : S.query, from = t != null ? t : (D.cls_index != null ? D.cls_index : -1), out = [];
      for (var j = 0; j < T; j++) if (S.map[j] > 0) out.push({ from: from, to: j, weight: S.map[j], head: S.head });
      return out;
    }
    window.attnviz = { select: select, state: state, links: links, data: D };
    render();
  }
})();
