// defectscan console: overlay controls, mask painting with undo, review saving, keyboard keys.
// Loaded from /static (CSP script-src 'self'): no inline script anywhere.
"use strict";

(function () {
  function csrfToken() {
    var raw = document.body.getAttribute("hx-headers");
    if (!raw) return "";
    try { return JSON.parse(raw)["X-CSRF-Token"] || ""; } catch (e) { return ""; }
  }

  // ------------------------------------------------------------ detail page overlay
  function setupOverlay() {
    var overlay = document.getElementById("overlay-image");
    var toggle = document.getElementById("overlay-toggle");
    var opacity = document.getElementById("overlay-opacity");
    if (!overlay || !toggle || !opacity) return;
    function apply() {
      overlay.hidden = !toggle.checked;
      overlay.style.opacity = String(Number(opacity.value) / 100);
    }
    toggle.addEventListener("change", apply);
    opacity.addEventListener("input", apply);
    apply();
  }

  // ------------------------------------------------------------ review page
  function hexToRgb(hex) {
    var n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function decodeRle(rle, size) {
    var out = new Uint8Array(size);
    var pos = 0;
    for (var i = 0; i < rle.length; i += 2) {
      out.fill(rle[i], pos, pos + rle[i + 1]);
      pos += rle[i + 1];
    }
    return out;
  }

  function encodeRle(mask) {
    var out = [];
    if (!mask.length) return out;
    var value = mask[0], count = 0;
    for (var i = 0; i < mask.length; i++) {
      if (mask[i] === value) { count++; } else { out.push(value, count); value = mask[i]; count = 1; }
    }
    out.push(value, count);
    return out;
  }

  function setupReview() {
    var root = document.getElementById("review");
    if (!root) return;
    var id = root.dataset.id;
    var width = Number(root.dataset.width), height = Number(root.dataset.height);
    var inQueue = root.dataset.queue === "1";
    var canReview = root.dataset.can === "1";
    var colors = (root.dataset.colors || "").split(",").filter(Boolean).map(hexToRgb);
    var canvas = document.getElementById("paint");
    var mask = null, original = null, undo = [], painted = false, tool = "brush", alpha = 0.55;
    var ctx = canvas ? canvas.getContext("2d") : null;
    var image = ctx ? ctx.createImageData(width, height) : null;
    var brushSize = document.getElementById("brush-size");
    var brushOut = document.getElementById("brush-size-out");
    var brushClass = document.getElementById("brush-class");
    var state = document.getElementById("paint-state");

    function render() {
      if (!ctx || !mask) return;
      var d = image.data;
      for (var i = 0, j = 0; i < mask.length; i++, j += 4) {
        var v = mask[i];
        if (v === 0) { d[j + 3] = 0; continue; }
        var c = colors[v - 1] || [255, 255, 255];
        d[j] = c[0]; d[j + 1] = c[1]; d[j + 2] = c[2]; d[j + 3] = 255;
      }
      ctx.putImageData(image, 0, 0);
      canvas.style.opacity = String(alpha);
    }

    function markPainted() {
      painted = undo.length > 0;
      if (state) state.textContent = painted ? "painted (" + undo.length + " strokes)" : "unchanged";
    }

    function stamp(cx, cy) {
      var r = Number(brushSize ? brushSize.value : 8) / 2;
      var value = tool === "eraser" ? 0 : Number(brushClass ? brushClass.value : 1);
      var x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(width - 1, Math.ceil(cx + r));
      var y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(height - 1, Math.ceil(cy + r));
      var r2 = Math.max(0.25, r * r);
      for (var y = y0; y <= y1; y++) {
        for (var x = x0; x <= x1; x++) {
          var dx = x + 0.5 - cx, dy = y + 0.5 - cy;
          if (dx * dx + dy * dy <= r2) mask[y * width + x] = value;
        }
      }
    }

    function toImage(ev) {
      var rect = canvas.getBoundingClientRect();
      return [(ev.clientX - rect.left) * width / rect.width, (ev.clientY - rect.top) * height / rect.height];
    }

    if (canvas && canReview) {
      var drawing = false, last = null;
      canvas.addEventListener("pointerdown", function (ev) {
        if (!mask) return;
        drawing = true;
        canvas.setPointerCapture(ev.pointerId);
        undo.push(mask.slice());
        if (undo.length > 50) undo.shift();
        last = toImage(ev);
        stamp(last[0], last[1]);
        render();
        markPainted();
      });
      canvas.addEventListener("pointermove", function (ev) {
        if (!drawing) return;
        var p = toImage(ev);
        var steps = Math.max(1, Math.ceil(Math.hypot(p[0] - last[0], p[1] - last[1])));
        for (var s = 1; s <= steps; s++) {
          stamp(last[0] + (p[0] - last[0]) * s / steps, last[1] + (p[1] - last[1]) * s / steps);
        }
        last = p;
        render();
      });
      function stop() { drawing = false; }
      canvas.addEventListener("pointerup", stop);
      canvas.addEventListener("pointercancel", stop);
    }

    function setTool(name) {
      tool = name;
      var b = document.getElementById("tool-brush"), e = document.getElementById("tool-eraser");
      if (b) b.classList.toggle("active", name === "brush");
      if (e) e.classList.toggle("active", name === "eraser");
    }
    function doUndo() {
      if (!undo.length) return;
      mask = undo.pop();
      render();
      markPainted();
    }
    function bump(delta) {
      if (!brushSize) return;
      brushSize.value = String(Math.min(64, Math.max(1, Number(brushSize.value) + delta)));
      if (brushOut) brushOut.textContent = brushSize.value;
    }

    var el;
    if ((el = document.getElementById("tool-brush"))) el.addEventListener("click", function () { setTool("brush"); });
    if ((el = document.getElementById("tool-eraser"))) el.addEventListener("click", function () { setTool("eraser"); });
    if ((el = document.getElementById("undo"))) el.addEventListener("click", doUndo);
    if (brushSize) brushSize.addEventListener("input", function () { if (brushOut) brushOut.textContent = brushSize.value; });
    if ((el = document.getElementById("mask-opacity"))) el.addEventListener("input", function (ev) { alpha = Number(ev.target.value) / 100; render(); });

    if (canvas) {
      fetch("/review/" + id + "/mask", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (m) {
          mask = decodeRle(m.rle, width * height);
          original = mask.slice();
          render();
          root.dataset.ready = "1";
        });
    } else {
      root.dataset.ready = "1";
    }

    var saving = false;
    function save(action) {
      if (!canReview || saving) return;
      saving = true;
      var classes = {};
      document.querySelectorAll(".defect-class").forEach(function (s) { classes[s.dataset.defect] = s.value; });
      var comment = document.getElementById("comment");
      var body = {
        action: action,
        classes: classes,
        mask: painted && mask ? encodeRle(mask) : null,
        comment: comment ? comment.value : "",
        queue: inQueue,
      };
      fetch("/review/" + id, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify(body),
      }).then(function (r) {
        return r.json().then(function (j) { return [r.ok, j]; });
      }).then(function (res) {
        saving = false;
        if (res[0]) { window.location.assign(res[1].next); return; }
        var err = document.getElementById("save-error");
        if (err) { err.textContent = res[1].error || res[1].detail || "not saved"; err.hidden = false; }
      }).catch(function () { saving = false; });
    }
    if ((el = document.getElementById("accept"))) el.addEventListener("click", function () { save("accept"); });
    if ((el = document.getElementById("overrule"))) el.addEventListener("click", function () { save("overrule"); });

    document.addEventListener("keydown", function (ev) {
      var t = ev.target;
      if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT")) return;
      if (ev.ctrlKey || ev.metaKey || ev.altKey) {
        if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); doUndo(); }
        return;
      }
      var k = ev.key;
      if (k === "a") { ev.preventDefault(); save("accept"); }
      else if (k === "o") { ev.preventDefault(); save("overrule"); }
      else if (k === "n" && inQueue) { ev.preventDefault(); window.location.assign("/queue/next?after=" + id); }
      else if (k === "b") setTool("brush");
      else if (k === "e") setTool("eraser");
      else if (k === "u") doUndo();
      else if (k === "[") bump(-2);
      else if (k === "]") bump(2);
      else if (/^[1-9]$/.test(k) && brushClass && Number(k) <= brushClass.options.length) brushClass.value = k;
    });
  }

  // ------------------------------------------------------------ queue page
  function setupQueue() {
    var start = document.getElementById("start-queue");
    if (!start) return;
    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && document.activeElement === document.body) {
        ev.preventDefault();
        window.location.assign(start.getAttribute("href"));
      }
    });
  }

  // ------------------------------------------------------------ trend legends
  function setupLegends() {
    document.querySelectorAll(".legend .key[data-color]").forEach(function (k) {
      k.style.borderLeft = "12px solid " + k.dataset.color;
      k.style.paddingLeft = "6px";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupOverlay();
    setupReview();
    setupQueue();
    setupLegends();
  });
})();
