/* attnviz audio report: the clip, its words; hovering a word draws what it reads over time. Hand-written, no network.
 * Data: the JSON in #attnviz-data (see attnviz/html/audio.py; the numbers are those of --json).
 * Scripting API: window.attnviz.select(index), .state(). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");
  var el = attnvizKit.el, iso = attnvizKit.iso;
  var state = { selected: null };
  app.textContent = "";
  var root = el("div", { cls: "audio" });
  app.appendChild(root);
  root.appendChild(el("h1", {}, ["attnviz · ", iso(D.label), " · audio"]));
  root.appendChild(el("p", { cls: "meta", text: D.model_type + " · " + D.duration_s.toFixed(2) + " s at " + D.sample_rate +
    " Hz · " + D.frames + " frames of " + (D.frame_s * 1000) + " ms · " + D.encoder_layers + " encoder layers × " + D.heads + " heads" }));
  if (D.random_weights) root.appendChild(el("p", { cls: "banner", text: D.random_weights }));
  (D.notes || []).forEach(function (n) { root.appendChild(el("p", { cls: "note", text: n })); });
  var player = el("audio", { controls: "controls", src: D.clip, id: "clip" });
  root.appendChild(player);
  if (D.text) root.appendChild(el("p", { cls: "text" }, ["Transcript: ", iso(D.text)]));
  var words = el("div", { cls: "words", id: "words" });
  root.appendChild(words);
  var canvas = el("canvas", { id: "curve", width: 900, height: 160 });
  var caption = el("p", { cls: "status", id: "caption" });
  if (D.words.length) {
    root.appendChild(canvas);
    root.appendChild(caption);
  }
  var spans = [];
  D.words.forEach(function (w, i) {
    var s = el("span", { cls: "word", "data-index": i }, [iso(w.text)]);
    s.addEventListener("mouseenter", function () { select(i); });
    s.addEventListener("click", function () { select(i); player.currentTime = w.start_s; player.play(); });
    spans.push(s);
    words.appendChild(s);
  });
  function draw(w) {
    var ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 22;
    ctx.clearRect(0, 0, W, H);
    var dur = D.duration_s, c = w.curve || [];
    ctx.fillStyle = "rgba(255, 200, 0, 0.35)";
    ctx.fillRect(pad + (W - 2 * pad) * w.start_s / dur, 0, Math.max(2, (W - 2 * pad) * (w.end_s - w.start_s) / dur), H - pad);
    var top = Math.max.apply(null, c.concat([1e-9]));
    ctx.strokeStyle = "#1f4e99"; ctx.lineWidth = 1.5; ctx.beginPath();
    c.forEach(function (v, k) {
      var x = pad + (W - 2 * pad) * (k + 0.5) * D.frame_s / dur, y = (H - pad) - (H - 2 * pad) * v / top;
      if (k) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = "#333"; ctx.font = "11px system-ui, sans-serif";
    for (var t = 0; t <= dur; t += dur > 10 ? 2 : dur > 4 ? 1 : 0.25) ctx.fillText(t.toFixed(2) + " s", pad + (W - 2 * pad) * t / dur - 12, H - 6);
  }
  function select(i) {
    state.selected = i;
    spans.forEach(function (s, k) { s.className = "word" + (k === i ? " on" : ""); });
    var w = D.words[i];
    draw(w);
    attnvizKit.put(caption, ["“", iso(w.text), "” " + w.start_s.toFixed(2) + "–" + w.end_s.toFixed(2) +
      " s: the alignment heads' mean cross-attention of its tokens over the clip (peak " +
      (w.curve ? Math.max.apply(null, w.curve).toFixed(3) : "–") + ")"]);
  }
  if (D.head_ranking && D.head_ranking.length) {
    root.appendChild(el("h2", { text: "Cross-attention heads ranked as alignment heads" }));
    root.appendChild(el("p", { cls: "note", text: "score = monotonic × focus × on_audio (README, Audio); marked: the heads the word times used" }));
    var used = {};
    (D.alignment_heads || []).forEach(function (h) { used[h[0] + ":" + h[1]] = true; });
    var table = el("table", { cls: "dets", id: "ranking" });
    table.appendChild(el("tr", {}, ["rank", "layer:head", "score", "monotonic", "focus", "on audio", ""].map(function (h) { return el("th", { text: h }); })));
    D.head_ranking.forEach(function (r, k) {
      var key = r.layer + ":" + r.head;
      table.appendChild(el("tr", {}, [String(k + 1), key, r.score.toFixed(3), r.monotonic.toFixed(3), r.focus.toFixed(3),
        r.on_audio.toFixed(3), used[key] ? "used" : ""].map(function (t) { return el("td", { text: t }); })));
    });
    root.appendChild(table);
  }
  if (D.words.length) select(0);
  window.attnviz = { select: select, state: function () { return { selected: state.selected, words: D.words.length }; } };
})();
