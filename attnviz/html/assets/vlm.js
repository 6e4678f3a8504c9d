/* attnviz report of a vision-language model's answer. Hand-written, no dependencies, no network.
 * Data: the JSON in #attnviz-data (see attnviz/html/vlm.py for the encoding).
 * Scripting API: window.attnviz.select({step, layer}) (layer: null or "mean" for the mean over layers),
 * .state(), .weights() (the drawn weights, per image token), .regions(), .others(). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");
  var SVG = "http://www.w3.org/2000/svg";
  var el = attnvizKit.el, bytes = attnvizKit.bytes, iso = attnvizKit.iso, put = attnvizKit.put;

  function f32(b64) { var b = bytes(b64); return new Float32Array(b.buffer, 0, b.length / 4); }
  function sv(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }
  function show(label) { return JSON.stringify(label).slice(1, -1); }
  function quoted(label) { return ["'", iso(show(label)), "'"]; }
  function fix(v, d) { return (+v).toFixed(d == null ? 3 : d); }

  // the figures' colour map (D.cmap_name), as evenly spaced RGB stops
  var STOPS = D.cmap;
  function cmap(t) {
    t = Math.max(0, Math.min(1, t || 0)) * (STOPS.length - 1);
    var i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i, a = STOPS[i], b = STOPS[i + 1];
    return [Math.round(a[0] + (b[0] - a[0]) * f), Math.round(a[1] + (b[1] - a[1]) * f), Math.round(a[2] + (b[2] - a[2]) * f)];
  }
  function rgb(c) { return "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")"; }
  function gradient() {
    return "linear-gradient(to right, " + STOPS.map(function (c, i) { return rgb(c) + " " + (100 * i / (STOPS.length - 1)).toFixed(1) + "%"; }).join(", ") + ")";
  }
  // fill opacity of a box at relative weight t (0..1): faint at 0, nearly opaque at the step's maximum
  var OPACITY_MIN = D.opacity[0], OPACITY_MAX = D.opacity[1];
  function opacity(t) { return OPACITY_MIN + (OPACITY_MAX - OPACITY_MIN) * Math.max(0, Math.min(1, t || 0)); }

  var L = D.num_layers, T = D.num_generated, N = D.num_image_tokens, W = D.image_size[0], H = D.image_size[1];
  var maps = bytes(D.maps), peaks = f32(D.peaks), boxes = f32(D.boxes), tokenView = bytes(D.token_view);
  var placed = new Uint8Array(N), tileOf = new Array(N);
  for (var j = 0; j < N; j++) placed[j] = isFinite(boxes[4 * j]) && isFinite(boxes[4 * j + 1]) && isFinite(boxes[4 * j + 2]) && isFinite(boxes[4 * j + 3]) ? 1 : 0;
  D.tiles.forEach(function (tile) { for (var j = tile.token_range[0]; j < tile.token_range[1]; j++) tileOf[j] = tile.name; });
  var GROUP_NAMES = { image: "image", prompt: "prompt text", generated: "answer", first: "first token" };
  var S = { step: D.initial.step, layer: D.initial.layer };

  // the image-token weights of `step` in `layer` (null: the mean over layers), head mean; byte / 255 * row max
  function weights(step, layer) {
    var li = layer == null ? L : layer, r = step * (L + 1) + li, p = peaks[r], out = new Float32Array(N);
    for (var j = 0; j < N; j++) out[j] = maps[r * N + j] / 255 * p;
    return out;
  }
  function scaleMax(w) { var m = 0; for (var j = 0; j < N; j++) if (placed[j] && w[j] > m) m = w[j]; return m; }
  // the step's strongest image regions: exact from Python for the mean over layers, from the 8-bit data for a layer
  function regions() {
    if (S.step == null) return [];
    if (S.layer == null) return D.regions[S.step];
    var w = weights(S.step, S.layer), idx = [];
    for (var j = 0; j < N; j++) if (placed[j]) idx.push(j);
    idx.sort(function (a, b) { return w[b] - w[a] || a - b; });
    return idx.slice(0, D.top_regions).map(function (j) {
      return { token: j, tile: tileOf[j], box: [0, 1, 2, 3].map(function (k) { return Math.round(boxes[4 * j + k] * 10) / 10; }), weight: w[j] };
    });
  }

  // ------------------------------------------------------------ layout
  app.textContent = "";
  app.appendChild(el("h1", null, ["attnviz · ", iso(D.label || D.model), " · image answer"]));
  app.appendChild(el("p", { cls: "meta", text: D.model_type + " · " + L + " layers × " + D.num_heads + " heads · prompt " +
    D.prompt_length + " tokens, " + N + " of them image tokens · " + T + " generated" + (D.stopped_at_eos ? " (stopped at EOS)" : "") +
    " · photo " + W + "×" + H + " px" + (D.photo_name ? " (" + D.photo_name + ")" : "") + " · backend " + D.backend }));
  if (D.notice) app.appendChild(el("p", { cls: "note", text: D.notice }));
  app.appendChild(el("p", { cls: "vprompt" }, [el("b", { text: "Prompt: " }), el("span", { cls: "prompt" }, [iso(D.prompt.replace(/\s+$/, ""))])]));
  app.appendChild(el("p", { cls: "vprompt" }, [el("b", { text: "Answer: " }), el("span", { cls: "prompt", id: "answer-text" }, [iso(D.text)])]));
  app.appendChild(el("p", { cls: "note", id: "share-rule", text: "Share: " + D.share_rule + "." }));
  app.appendChild(el("p", { cls: "note", text: "Weights: " + D.quantisation + ". Heads are averaged (single heads are not embedded)." }));

  var maxShare = 0;
  D.image_share.forEach(function (v) { if (v > maxShare) maxShare = v; });
  app.appendChild(el("h2", { text: "The answer, each token shaded by its share of attention on the image" }));
  var answer = el("div", { cls: "vanswer", id: "answer" });
  var chips = D.generated.map(function (t, i) {
    var c = cmap(maxShare > 0 ? D.image_share[i] / maxShare : 0), light = (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) > 140;
    var chip = el("span", { cls: "vtok" + (D.generated_special[i] ? " special" : ""), "data-step": String(i), tabindex: "0",
      title: "step " + i + " · image share " + fix(D.image_share[i]) + " · p = " + fix(D.probabilities[i]),
      style: "background:" + rgb(c) + ";color:" + (light ? "#111" : "#fff"),
      onclick: function () { select({ step: i }); } }, [el("span", { cls: "tx", text: show(t) }), el("span", { cls: "n", text: String(i) })]);
    answer.appendChild(chip);
    return chip;
  });
  app.appendChild(answer);
  app.appendChild(el("div", { cls: "legend" }, ["image share  0 ", el("span", { cls: "ramp", style: "background:" + gradient() }),
    " " + fix(maxShare) + " (the largest of the answer)"]));
  app.appendChild(el("p", { cls: "note", text: "Click a token (or use the ← → keys) to draw that step's attention over the photo." }));

  var layerSel = el("select", { id: "layer", onchange: function () { select({ layer: layerSel.value === "mean" ? null : +layerSel.value }); } });
  layerSel.appendChild(el("option", { value: "mean", text: "mean over layers" }));
  for (var l = 0; l < L; l++) layerSel.appendChild(el("option", { value: String(l), text: "layer " + l }));
  var stepLab = el("span", { cls: "steplab", id: "step-label" });
  var prev = el("button", { text: "←", title: "previous token", onclick: function () { move(-1); } });
  var next = el("button", { text: "→", title: "next token", onclick: function () { move(1); } });
  app.appendChild(el("div", { cls: "controls" }, [el("span", { cls: "tabs" }, [prev, next]), stepLab,
    el("label", {}, ["layer ", layerSel, " (head mean)"])]));

  var title = el("h2", { id: "step-title" });
  app.appendChild(title);
  var scaleMaxLab = el("span", { id: "scale-max" });
  app.appendChild(el("div", { cls: "legend" }, ["weight  0 ", el("span", { cls: "ramp", style: "background:" + gradient() }), " ", scaleMaxLab]));
  app.appendChild(el("p", { cls: "note", id: "box-rule", text: D.box_rule + "; the opacity rises with the weight as well. Numbered outlines: the strongest regions." }));

  var viewsBox = el("div", { cls: "vviews" }), panels = [];
  D.views.forEach(function (view, v) {
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, "data-view": view, "class": "vphoto" });
    svg.appendChild(sv("image", { href: D.photo, x: 0, y: 0, width: W, height: H, preserveAspectRatio: "none" }));
    var g = sv("g", { "class": "boxes" }), marks = sv("g", { "class": "marks" }), rects = {};
    for (var j = 0; j < N; j++) {
      if (tokenView[j] !== v || !placed[j]) continue;
      var x0 = boxes[4 * j], y0 = boxes[4 * j + 1], x1 = boxes[4 * j + 2], y1 = boxes[4 * j + 3];
      var r = sv("rect", { x: x0, y: y0, width: Math.max(0, x1 - x0), height: Math.max(0, y1 - y0), "data-token": j });
      rects[j] = r;
      g.appendChild(r);
    }
    svg.appendChild(g);
    svg.appendChild(marks);
    var count = Object.keys(rects).length;
    var cap = el("figcaption", {}, [el("b", { text: D.view_titles[view] || view }), " · " + count + " image tokens · ",
      el("span", { cls: "vsum" })]);
    var fig = el("figure", { cls: "vview", "data-view": view }, [svg, cap]);
    viewsBox.appendChild(fig);
    panels.push({ view: view, index: v, svg: svg, rects: rects, marks: marks, sum: cap.querySelector(".vsum") });
    svg.addEventListener("mouseover", function (ev) {
      var t = ev.target.getAttribute && ev.target.getAttribute("data-token");
      if (t == null || S.step == null) return;
      var k = +t, w = weights(S.step, S.layer)[k];
      status.textContent = "image token " + k + " (" + tileOf[k] + ") · box " + [0, 1, 2, 3].map(function (q) { return Math.round(boxes[4 * k + q]); }).join(", ") +
        " px · weight " + fix(w, 4);
    });
  });
  var status = el("div", { cls: "status", id: "status", text: "point at a box for its token and weight" });
  var unplacedNote = el("p", { cls: "note", id: "unplaced" });
  var sharesBox = el("div", { cls: "vcard" }), regionsBox = el("div", { cls: "vcard" }), othersBox = el("div", { cls: "vcard" });
  app.appendChild(el("div", { cls: "vmain" + (D.views.length > 1 ? " multi" : "") }, [
    el("div", { cls: "vleft" }, [viewsBox, status, unplacedNote]),
    el("div", { cls: "vcards" }, [sharesBox, regionsBox, othersBox])]));

  function bar(v, best) { return el("span", { cls: "bar", style: "width:" + Math.round(110 * (best > 0 ? v / best : 0)) + "px" }); }
  function drawShares() {
    var vals = S.layer == null ? D.groups.map(function (g, k) {
      var s = 0; for (var l = 0; l < L; l++) s += D.shares[S.step][l][k]; return s / L;
    }) : D.shares[S.step][S.layer];
    sharesBox.textContent = "";
    sharesBox.appendChild(el("h3", { text: "Shares of step " + S.step + " (" + (S.layer == null ? "mean over layers" : "layer " + S.layer) + ")" }));
    var t = el("table", { cls: "vt", id: "shares" });
    D.groups.forEach(function (g, k) {
      t.appendChild(el("tr", { "data-group": g }, [el("td", { text: GROUP_NAMES[g] || g }), el("td", { cls: "num", text: fix(vals[k]) }),
        el("td", {}, [bar(vals[k], 1)])]));
    });
    sharesBox.appendChild(t);
    sharesBox.appendChild(el("p", { cls: "note", text: "Each layer's head-mean row summed over the group; the four sum to 1." }));
  }
  function drawRegions(rs) {
    regionsBox.textContent = "";
    regionsBox.appendChild(el("h3", { text: "Strongest image regions" }));
    var t = el("table", { cls: "vt", id: "regions" });
    t.appendChild(el("tr", {}, ["#", "token", "tile", "box x0, y0, x1, y1 (px)", "weight"].map(function (h) { return el("th", { text: h }); })));
    rs.forEach(function (r, i) {
      var tr = el("tr", { "data-token": String(r.token) }, [el("td", { text: String(i + 1) }), el("td", { text: String(r.token) }),
        el("td", {}, [iso(r.tile)]), el("td", { text: r.box.map(function (v) { return Math.round(v); }).join(", ") }),
        el("td", { cls: "num", text: fix(r.weight, 4) })]);
      tr.addEventListener("mouseenter", function () { hilite(r.token, true); });
      tr.addEventListener("mouseleave", function () { hilite(r.token, false); });
      t.appendChild(tr);
    });
    regionsBox.appendChild(t);
    regionsBox.appendChild(el("p", { cls: "note", text: S.layer == null
      ? "Head mean, mean over layers: exact weights (as --json)."
      : "Head mean of layer " + S.layer + ", read back from the 8-bit data." }));
  }
  function drawOthers() {
    othersBox.textContent = "";
    othersBox.appendChild(el("h3", { text: "Where the rest went: strongest keys outside the image" }));
    var ks = D.other_keys[S.step], best = ks.length ? ks[0].weight : 0;
    var t = el("table", { cls: "vt", id: "others" });
    t.appendChild(el("tr", {}, ["key", "token", "group", "weight", ""].map(function (h) { return el("th", { text: h }); })));
    ks.forEach(function (k) {
      t.appendChild(el("tr", { "data-key": String(k.key) }, [el("td", { text: String(k.key) }), el("td", { cls: "tk" }, [iso(show(k.label))]),
        el("td", { text: (GROUP_NAMES[k.group] || k.group) + (k.self ? " (this token)" : "") }), el("td", { cls: "num", text: fix(k.weight, 4) }),
        el("td", {}, [bar(k.weight, best)])]));
    });
    othersBox.appendChild(t);
    othersBox.appendChild(el("p", { cls: "note", text: "Head mean, mean over layers, over the keys this step could see (itself included)." }));
  }
  function hilite(token, on) {
    panels.forEach(function (p) { if (p.rects[token]) p.rects[token].classList.toggle("hl", on); });
  }

  function draw() {
    var w = weights(S.step, S.layer), m = scaleMax(w), rs = regions(), unplaced = 0, total = 0;
    for (var j = 0; j < N; j++) { total += w[j]; if (!placed[j]) unplaced += w[j]; }
    panels.forEach(function (p) {
      var sum = 0;
      for (var k in p.rects) {
        var t = m > 0 ? w[k] / m : 0, r = p.rects[k];
        sum += w[k];
        r.setAttribute("fill", rgb(cmap(t)));
        r.setAttribute("fill-opacity", opacity(t).toFixed(3));
        r.setAttribute("data-weight", String(w[k]));
        r.setAttribute("class", "");
      }
      p.sum.textContent = fix(sum) + " of the step's attention";
      p.marks.textContent = "";
      var fs = Math.max(8, Math.round(Math.max(W, H) / 28));
      rs.forEach(function (reg, i) {
        var r = p.rects[reg.token];
        if (!r) return;
        r.setAttribute("class", "top");
        var x = +r.getAttribute("x"), y = +r.getAttribute("y");
        var tx = sv("text", { x: x + fs * 0.2, y: y + fs * 0.95, "class": "rank", style: "font-size:" + fs + "px" });
        tx.textContent = String(i + 1);
        p.marks.appendChild(tx);
      });
    });
    put(title, ["Step " + S.step + " "].concat(quoted(D.generated[S.step]), [" over the photo · " +
      (S.layer == null ? "mean over layers" : "layer " + S.layer) + ", head mean"]));
    put(stepLab, ["step " + S.step + " of " + T + ": "].concat(quoted(D.generated[S.step]), [" · image share " + fix(D.image_share[S.step])]));
    scaleMaxLab.textContent = fix(m, 4) + " (the step's largest image-token weight here) · image tokens hold " + fix(total) + " of the row";
    unplacedNote.textContent = unplaced > 0 ? fix(unplaced, 4) + " of this row is on image tokens that cover no pixels (row-end tokens), not drawn." : "";
    drawShares(); drawRegions(rs); drawOthers();
  }
  function refresh() {
    layerSel.value = S.layer == null ? "mean" : String(S.layer);
    chips.forEach(function (c) { c.classList.toggle("on", +c.getAttribute("data-step") === S.step); });
    if (S.step != null) draw();
  }

  function norm(v, n) { v = Math.trunc(+v); if (!(v >= -n && v < n)) throw new Error("out of range: " + v); return (v + n) % n; }
  function select(o) {
    o = o || {};
    if (o.step != null) S.step = norm(o.step, T);
    if ("layer" in o) S.layer = o.layer == null || o.layer === "mean" ? null : norm(o.layer, L);
    refresh();
    return state();
  }
  function move(d) { if (T) select({ step: Math.max(0, Math.min(T - 1, (S.step == null ? 0 : S.step) + d)) }); }
  document.addEventListener("keydown", function (ev) {
    var tag = ev.target && ev.target.tagName;
    if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.key === "ArrowLeft") { move(-1); ev.preventDefault(); }
    else if (ev.key === "ArrowRight") { move(1); ev.preventDefault(); }
  });
  function state() {
    var w = S.step == null ? null : weights(S.step, S.layer);
    return { step: S.step, layer: S.layer, max: w ? scaleMax(w) : null };
  }
  window.attnviz = {
    select: select, state: state, data: D, regions: regions,
    weights: function () { return S.step == null ? [] : Array.prototype.slice.call(weights(S.step, S.layer)); },
    others: function () { return S.step == null ? [] : D.other_keys[S.step]; }
  };
  if (T) refresh(); else put(title, ["nothing was generated"]);
})();
