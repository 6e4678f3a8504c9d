/* attnviz report pages: helpers shared by every page's script (inlined first). No dependencies, no network. */
var attnvizKit = (function () {
  "use strict";
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k === "style") e.style.cssText = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  // Text from the input (a token, a word, the sentence, a model label) in its own bidi isolate: a right-to-left
  // override or embedding inside it cannot reorder the page's text around it.
  function iso(text) { return el("bdi", { text: String(text) }); }
  // Replace the children of `node` with `parts` (strings and nodes, e.g. iso(label)).
  function put(node, parts) {
    node.textContent = "";
    parts.forEach(function (c) { if (c != null) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function bytes(b64) {
    var s = atob(b64), n = s.length, out = new Uint8Array(n);
    for (var i = 0; i < n; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  // A probability as the figures write it (attnviz.render.common.short_weight, the same rule):
  // two decimals without the leading zero, ".68"; "1.0" from 0.995; "<.01" below 0.005; "–" for NaN.
  // Python rounds an exact tie (x = k/8) half to even where toFixed rounds it up: done here as Python does.
  function shortWeight(v) {
    v = +v;
    if (v !== v) return "–";
    if (v >= 0.995) return "1.0";
    if (v > 0 && v < 0.005) return "<.01";
    if (v === -Infinity) return "-inf";
    var neg = v < 0 || (v === 0 && 1 / v < 0), a = Math.abs(v), s;
    if (a * 8 === Math.floor(a * 8) && (a * 8) % 2 === 1) {  // an exact tie at the third decimal
      var n = a * 100, lo = Math.floor(n);
      s = ((lo % 2 === 0 ? lo : lo + 1) / 100).toFixed(2);
    } else s = a.toFixed(2);
    s = (neg ? "-" : "") + s;
    return s.charAt(0) === "0" ? s.slice(1) : s;
  }
  return { el: el, iso: iso, put: put, bytes: bytes, shortWeight: shortWeight };
})();
