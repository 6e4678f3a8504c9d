/* attnviz detect report: boxes over the photo; a click shows that object's attention. Hand-written, no network.
 * Data: the JSON in #attnviz-data (see attnviz/html/detect.py; the numbers are those of --json).
 * Scripting API: window.attnviz.select(index), .state(). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("attnviz-data").textContent);
  var app = document.getElementById("app");
  var SVG = "http://www.w3.org/2000/svg";
  var el = attnvizKit.el, iso = attnvizKit.iso;
  var COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
  function sv(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }
  function px(v) { return Math.round(v); }
  var objects = {};
  D.objects.forEach(function (o) { objects[o.index] = o; });
  var state = { selected: D.objects.length ? D.objects[0].index : null };

  app.textContent = "";
  app.appendChild(el("h1", {}, ["attnviz · ", iso(D.label), " · detect"]));
  var levels = D.feature_levels.map(function (l) { return l.grid[0] + "×" + l.grid[1] + " (stride " + l.stride + ")"; }).join(", ");
  app.appendChild(el("p", { cls: "meta", text: D.model_type + " · " + D.attention + " attention · " + D.num_queries +
    " object queries · feature levels " + levels + " · decoder layer " + D.layer + " · photo " + D.image.width + "×" + D.image.height + " px" }));
  if (D.random_weights) app.appendChild(el("p", { cls: "banner", text: D.random_weights }));
  (D.notes || []).forEach(function (n) { app.appendChild(el("p", { cls: "note", text: n })); });

  var W = D.photo_size[0], H = D.photo_size[1];
  var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, id: "photo" });
  svg.appendChild(sv("image", { href: D.photo, x: 0, y: 0, width: W, height: H }));
  var rects = {}, rows = {};
  D.detections.forEach(function (d) {
    var c = COLOURS[d.index % COLOURS.length], b = d.box;
    var r = sv("rect", { x: b[0], y: b[1], width: Math.max(1, b[2] - b[0]), height: Math.max(1, b[3] - b[1]),
      stroke: c, "class": "box" + (d.below_threshold ? " below" : ""), "data-index": d.index });
    r.appendChild(sv("title", {})).textContent = d.index + ": " + d.label + " " + d.score.toFixed(2);
    r.addEventListener("click", function () { select(d.index); });
    rects[d.index] = r;
    svg.appendChild(r);
    var fs = Math.max(10, Math.round(W / 45));
    var t = sv("text", { x: b[0] + 3, y: Math.max(fs, b[1] - 4), "class": "lab", style: "font-size:" + fs + "px;fill:" + c });
    t.textContent = d.index + ": " + d.label + " " + d.score.toFixed(2);
    svg.appendChild(t);
  });

  var table = el("table", { cls: "dets", id: "detections" });
  table.appendChild(el("tr", {}, ["#", "query", "label", "score", "box x0, y0, x1, y1 (px)", "tightest head"].map(function (h) { return el("th", { text: h }); })));
  D.detections.forEach(function (d) {
    var o = objects[d.index];
    var tight = o ? "head " + o.tightest_head + " (" + o.tightest_spread_px.toFixed(0) + " px)" : "-";
    var tr = el("tr", { cls: o ? "pick" : "", "data-index": d.index }, [
      el("td", { text: String(d.index) }), el("td", { text: String(d.query) }), el("td", {}, [iso(d.label)]),
      el("td", { text: d.score.toFixed(3) }), el("td", { text: d.box.map(px).join(", ") }), el("td", { text: tight })]);
    if (o) tr.addEventListener("click", function () { select(d.index); });
    rows[d.index] = tr;
    table.appendChild(tr);
  });

  var caption = el("p", { cls: "status", id: "caption" });
  var figure = el("div", { cls: "figure", id: "figure" });
  var side = el("div", { cls: "side" }, [
    el("h2", { text: D.detections.length ? (D.found ? "Detections (score ≥ " + D.threshold + ")" : "Top-scoring queries (none reached " + D.threshold + ")") : "No boxes (a base model without a detection head)" }),
    D.detections.length ? table : null,
    el("p", { cls: "note", text: "Click a box or a row to see where its object query looks." })]);
  app.appendChild(el("div", { cls: "detect" }, [el("div", { cls: "photo" }, [svg]), side]));
  app.appendChild(el("h2", { text: "Attention of the selected object" }));
  app.appendChild(caption);
  app.appendChild(figure);
  if (D.point) {
    app.appendChild(el("h2", { text: "Encoder attention of pixel (" + D.point.x + ", " + D.point.y + ")" }));
    app.appendChild(el("p", { cls: "status", text: "cell (row " + D.point.cell[0] + ", col " + D.point.cell[1] + ") of the " +
      D.point.grid[0] + "×" + D.point.grid[1] + " map, encoder layer " + D.point.layer + "; tightest head " + D.point.tightest_head +
      " (" + D.point.tightest_spread_px.toFixed(0) + " px spread)" }));
    if (D.point.figure) app.appendChild(el("div", { cls: "figure" }, [el("img", { src: D.point.figure, alt: "encoder attention of the pixel", id: "point-figure" })]));
  }

  function select(index) {
    var o = objects[index];
    if (!o) return;
    state.selected = index;
    Object.keys(rects).forEach(function (k) { rects[k].classList.toggle("on", +k === index); });
    Object.keys(rows).forEach(function (k) { rows[k].classList.toggle("on", +k === index); });
    caption.textContent = "object " + o.index + ": " + o.label + " " + o.score.toFixed(3) + ", query " + o.query +
      ", decoder layer " + o.layer + "; tightest head " + o.tightest_head + " (" + o.tightest_spread_px.toFixed(1) +
      " px spread); spread per head: " + o.spread_px.map(function (s) { return s.toFixed(0); }).join(", ") + " px";
    figure.textContent = "";
    if (o.figure) figure.appendChild(el("img", { src: o.figure, alt: "attention of object " + o.index, "data-index": o.index }));
  }
  if (state.selected != null) select(state.selected);
  else caption.textContent = D.objects.length ? "" : "No object to show.";

  window.attnviz = { select: select, state: function () { return { selected: state.selected }; } };
})();
