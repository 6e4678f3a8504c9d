/* attnviz generation report. Hand-written, no dependencies, no network.
 * Data: the JSON in #attnviz-data (see attnviz/html/generation.py for the encoding).
 * Scripting API: window.attnviz.select({kind, layer, head, step}), .state(), .links(). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");

  var el = attnvizKit.el, bytes = attnvizKit.bytes, iso = attnvizKit.iso, put = attnvizKit.put;
  function f32(b64) { var b = bytes(b64); return new Float32Array(b.buffer, 0, b.length / 4); }
  var BLUES = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  function cmap(t) {
    t = Math.max(0, Math.min(1, t || 0)) * (BLUES.length - 1);
    var i = Math.min(BLUES.length - 2, Math.floor(t)), f = t - i, a = BLUES[i], b = BLUES[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function show(label) { return JSON.stringify(label).slice(1, -1); }
  function quoted(label) { return ["'", iso(show(label)), "'"]; }

  var L = D.num_layers, H = D.num_heads, G = D.num_generated, TOP = 10;
  var kinds = {};
  Object.keys(D.kinds).forEach(function (k) {
    var d = D.kinds[k];
    kinds[k] = { keys: d.keys, special: d.key_special, boundary: d.boundary, K: d.num_keys, q: bytes(d.q), peak: f32(d.peak) };
  });
  var S = { kind: D.initial.kind, layer: D.initial.layer, head: D.initial.head, step: D.initial.step };

  // weights of generated token `step` over the keys (dequantised: byte / 255 * row max)
  function row(kind, layer, head, step) {
    var d = kinds[kind], h = head == null ? H : head, r = (layer * (H + 1) + h) * G + step, K = d.K;
    var p = d.peak[r], out = new Float32Array(K);
    for (var j = 0; j < K; j++) out[j] = d.q[r * K + j] / 255 * p;
    return out;
  }
  // keys step `step` could see: the context and the generated tokens up to itself (self); every source token (cross)
  function visible(kind, step) { var d = kinds[kind]; return d.boundary == null ? d.K : Math.min(d.K, d.boundary + step + 1); }
  // keys the "strongest earlier tokens" may list (attnviz.analysis.generation.eligible; the rule is D.rules[kind]):
  // self: strictly earlier than the step itself, not the first key position (attention sink), not special;
  // cross: every source token that is not special
  function eligible(kind, step, j) {
    var d = kinds[kind];
    if (d.special[j]) return false;
    return d.boundary == null || (j > 0 && j < d.boundary + step);
  }

  // ------------------------------------------------------------ layout
  app.textContent = "";
  app.appendChild(el("h1", null, ["attnviz · ", iso(D.label || D.model), " · generation"]));
  app.appendChild(el("p", { cls: "meta", text: D.model_type + " · " + L + " layers × " + H + " heads · prompt " + D.prompt_length +
    " tokens · " + G + " generated" + (D.stopped_at_eos ? " (stopped at EOS)" : "") + " · backend " + D.backend }));
  if (D.notice) app.appendChild(el("p", { cls: "note", text: D.notice }));
  app.appendChild(el("p", { cls: "note", text: "Weights: " + D.quantisation + ". Map colours: each row scaled to its own maximum." }));

  app.appendChild(el("h2", { text: "Generated text" }));
  var gentext = el("div", { cls: "gentext" }, [el("span", { cls: "prompt", text: D.prompt }), " "]);
  var chips = D.generated.map(function (t, i) {
    var c = el("span", { cls: "tok gen" + (D.generated_special[i] ? " special" : ""), text: show(t), "data-step": String(i),
      title: "step " + i + " · p = " + D.probabilities[i].toFixed(3), onclick: function () { select({ step: i }); } });
    gentext.appendChild(c);
    return c;
  });
  app.appendChild(gentext);

  var controls = el("div", { cls: "controls" });
  var tabs = null;
  if (kinds.cross) {
    tabs = el("span", { cls: "tabs" });
    ["self", "cross"].forEach(function (k) {
      tabs.appendChild(el("button", { "data-kind": k, text: k === "self" ? "self-attention" : "cross-attention (source)",
        onclick: function () { select({ kind: k }); } }));
    });
    controls.appendChild(tabs);
  }
  var layerSel = el("select", { onchange: function () { select({ layer: +layerSel.value }); } });
  for (var l = 0; l < L; l++) layerSel.appendChild(el("option", { value: String(l), text: String(l) }));
  var headSel = el("select", { onchange: function () { select({ head: headSel.value === "mean" ? null : +headSel.value }); } });
  headSel.appendChild(el("option", { value: "mean", text: "mean of heads" }));
  for (var h = 0; h < H; h++) headSel.appendChild(el("option", { value: String(h), text: String(h) }));
  controls.appendChild(el("label", {}, ["layer ", layerSel]));
  controls.appendChild(el("label", {}, ["head ", headSel]));
  app.appendChild(controls);

  var mapTitle = el("h2", { text: "Generation map" });
  app.appendChild(mapTitle);
  var status = el("div", { cls: "status", text: "point at the map for a weight; click a generated token for its strongest earlier tokens" });
  app.appendChild(status);
  var ylabels = el("div", { cls: "col q" });
  var canvas = el("canvas");
  var xlabels = el("div", { cls: "gxlabels" });
  var plot = el("div", { cls: "plot" }, [canvas, xlabels]);
  app.appendChild(el("div", { cls: "gmap" }, [ylabels, plot]));
  var rows = D.generated.map(function (t, i) {
    var c = el("div", { cls: "tok" + (D.generated_special[i] ? " special" : ""), text: show(t), "data-step": String(i),
      onclick: function () { select({ step: i }); } });
    ylabels.appendChild(c);
    return c;
  });
  app.appendChild(el("h2", { id: "top-title", text: "Strongest earlier tokens" }));
  var topRule = el("p", { cls: "note", id: "top-rule" });
  app.appendChild(topRule);
  var topBox = el("div");
  app.appendChild(topBox);

  var RH = 20, cw = 8;
  function draw() {
    var d = kinds[S.kind], K = d.K;
    cw = Math.max(4, Math.min(22, Math.floor(1000 / Math.max(K, 1))));
    canvas.width = K * cw; canvas.height = G * RH;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(K * cw, G * RH), px = img.data;
    for (var i = 0; i < G; i++) {
      var w = row(S.kind, S.layer, S.head, i), m = 0;
      for (var j = 0; j < K; j++) if (w[j] > m) m = w[j];
      for (j = 0; j < K; j++) {
        var c = cmap(m > 0 ? w[j] / m : 0);
        for (var y = i * RH; y < (i + 1) * RH; y++) for (var x = j * cw; x < (j + 1) * cw; x++) {
          var o = (y * K * cw + x) * 4;
          px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = 255;
        }
      }
    }
    ctx.putImageData(img, 0, 0);
    if (d.boundary != null) {  // prompt | generated
      ctx.fillStyle = "#d62728";
      ctx.fillRect(d.boundary * cw - 1, 0, 2, G * RH);
    }
    if (S.step != null) {
      ctx.strokeStyle = "#d08a00"; ctx.lineWidth = 2;
      ctx.strokeRect(1, S.step * RH + 1, K * cw - 2, RH - 2);
    }
    xlabels.textContent = "";
    xlabels.style.width = K * cw + "px";
    var every = Math.max(1, Math.ceil(12 / cw));
    for (var k = 0; k < K; k += every) {
      xlabels.appendChild(el("span", { cls: "gxlab" + (d.boundary != null && k < d.boundary ? " ctx" : ""), text: show(d.keys[k]),
        style: "left:" + (k * cw + cw / 2 - 3) + "px" }));
    }
    mapTitle.textContent = (S.kind === "cross" ? "Cross-attention map (generated × source tokens)" : "Generation map (generated × earlier tokens)") +
      " · layer " + S.layer + " · " + (S.head == null ? "mean of heads" : "head " + S.head) +
      (d.boundary != null ? " · red line: end of the prompt" : "");
  }
  function links() {
    if (S.step == null) return [];
    var w = row(S.kind, S.layer, S.head, S.step), n = visible(S.kind, S.step), out = [];
    for (var j = 0; j < n; j++) out.push({ from: S.step, to: j, weight: w[j] });
    out.sort(function (a, b) { return b.weight - a.weight || a.to - b.to; });
    return out;
  }
  // the table's rows: the step's eligible keys by decreasing weight (ties: earlier key first), at most TOP
  function top() {
    return links().filter(function (x) { return eligible(S.kind, S.step, x.to); }).slice(0, TOP);
  }
  function drawTop() {
    topBox.textContent = "";
    if (S.step == null) return;
    var d = kinds[S.kind], ls = top(), best = ls.length ? ls[0].weight : 0;
    put(document.getElementById("top-title"), ["Strongest " + (S.kind === "cross" ? "source" : "earlier") + " tokens of step " +
      S.step + " "].concat(quoted(D.generated[S.step])));
    topRule.textContent = "Listed: the " + D.rules[S.kind] + ", by weight in the layer and head shown" +
      (S.kind === "cross" ? "." : " (the token itself is not an earlier token).");
    if (!ls.length) { topBox.appendChild(el("p", { cls: "note", text: "No key is eligible at this step." })); return; }
    var t = el("table", { cls: "top" });
    ls.forEach(function (k) {
      t.appendChild(el("tr", {}, [
        el("td", { text: String(k.to) }), el("td", { cls: "tk", text: show(d.keys[k.to]) }),
        el("td", { text: k.weight.toFixed(3) }),
        el("td", {}, [el("span", { cls: "bar", style: "width:" + Math.round(160 * (best > 0 ? k.weight / best : 0)) + "px" })])
      ]));
    });
    topBox.appendChild(t);
  }
  function refresh() {
    layerSel.value = String(S.layer);
    headSel.value = S.head == null ? "mean" : String(S.head);
    if (tabs) Array.prototype.forEach.call(tabs.children, function (b) { b.className = b.getAttribute("data-kind") === S.kind ? "on" : ""; });
    chips.concat(rows).forEach(function (c) { c.classList.toggle("pinned", +c.getAttribute("data-step") === S.step); });
    draw(); drawTop();
  }
  canvas.addEventListener("mousemove", function (ev) {
    var r = canvas.getBoundingClientRect(), j = Math.floor((ev.clientX - r.left) / cw), i = Math.floor((ev.clientY - r.top) / RH);
    var d = kinds[S.kind];
    if (i < 0 || i >= G || j < 0 || j >= d.K) return;
    var w = row(S.kind, S.layer, S.head, i)[j];
    put(status, ["step " + i + " "].concat(quoted(D.generated[i]), [" → key " + j + " "], quoted(d.keys[j]),
      [(d.boundary != null ? (j < d.boundary ? " (prompt)" : " (generated)") : " (source)") + ": " + w.toFixed(4)]));
  });
  canvas.addEventListener("click", function (ev) {
    var r = canvas.getBoundingClientRect(), i = Math.floor((ev.clientY - r.top) / RH);
    if (i >= 0 && i < G) select({ step: i });
  });

  function norm(v, n) { v = Math.trunc(+v); if (!(v >= -n && v < n)) throw new Error("out of range: " + v); return (v + n) % n; }
  function select(o) {
    o = o || {};
    if (o.kind != null) { if (!kinds[o.kind]) throw new Error("no attention kind '" + o.kind + "'"); S.kind = o.kind; }
    if (o.layer != null) S.layer = norm(o.layer, L);
    if ("head" in o) S.head = o.head == null || o.head === "mean" ? null : norm(o.head, H);
    if (o.step != null) S.step = norm(o.step, G);
    refresh();
    return state();
  }
  function state() { return { kind: S.kind, layer: S.layer, head: S.head, step: S.step }; }
  window.attnviz = { select: select, state: state, links: links, top: top, data: D };
  if (G) refresh(); else status.textContent = "nothing was generated";
})();
