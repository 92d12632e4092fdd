/* elastictok report: builds the page from the JSON in #report-data. Plain JavaScript, no libraries. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var COLOURS = ["#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777"];
  var players = [];

  // ---- small helpers ------------------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    (children || []).forEach(function (c) { if (c != null) node.append(c); });
    return node;
  }
  function sv(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    setAttrs(node, attrs);
    if (parent) parent.appendChild(node);
    return node;
  }
  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "class") node.setAttribute("class", attrs[k]);
      else if (attrs[k] != null) node.setAttribute(k, attrs[k]);
    });
  }
  function fixed(v, d) { return v == null ? "—" : Number(v).toFixed(d); }
  function pct(v) { return v == null ? "—" : (100 * v).toFixed(1) + "%"; }
  function niceTicks(lo, hi, n) {
    var span = hi - lo || 1, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    [1, 2, 2.5, 5, 10].some(function (m) { if (span / (step * m) <= n) { step *= m; return true; } return false; });
    var ticks = [];
    for (var t = Math.ceil(lo / step - 1e-9) * step; t <= hi + 1e-9; t += step) ticks.push(+t.toFixed(10));
    return ticks;
  }

  // A chart: axes, grid and scales in a viewBox; the caller draws into .g.
  function chart(opts) {
    var W = opts.width || 760, H = opts.height || 190, m = {l: 52, r: opts.right || 14, t: 12, b: 34};
    var svg = sv("svg", {"class": "plot " + (opts.cls || ""), viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": opts.label || ""});
    var x0 = opts.x[0], x1 = opts.x[1], y0 = opts.y[0], y1 = opts.y[1];
    var c = {svg: svg, left: m.l, right: W - m.r, top: m.t, bottom: H - m.b};
    c.x = function (v) { return m.l + (v - x0) / (x1 - x0 || 1) * (W - m.l - m.r); };
    c.y = function (v) { return H - m.b - (v - y0) / (y1 - y0 || 1) * (H - m.t - m.b); };
    niceTicks(y0, y1, opts.yTicks || 4).forEach(function (t) {
      sv("line", {"class": "grid", x1: m.l, x2: W - m.r, y1: c.y(t), y2: c.y(t)}, svg);
      sv("text", {x: m.l - 6, y: c.y(t) + 4, "text-anchor": "end", text: opts.yFormat ? opts.yFormat(t) : t}, svg);
    });
    niceTicks(x0, x1, opts.xTicks || 8).forEach(function (t) {
      sv("line", {"class": "axis", x1: c.x(t), x2: c.x(t), y1: H - m.b, y2: H - m.b + 4}, svg);
      sv("text", {x: c.x(t), y: H - m.b + 16, "text-anchor": "middle", text: opts.xFormat ? opts.xFormat(t) : t}, svg);
    });
    sv("line", {"class": "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b}, svg);
    sv("text", {x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", text: opts.xLabel}, svg);
    sv("text", {x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
      transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")", text: opts.yLabel}, svg);
    c.g = sv("g", {}, svg);
    return c;
  }
  function path(points) {
    return points.map(function (p, i) { return (i ? "L" : "M") + p[0].toFixed(2) + " " + p[1].toFixed(2); }).join("");
  }

  // ---- header ----------------------------------------------------------------------------------------
  var app = document.getElementById("app");
  var mdl = data.model;
  app.append(el("h1", {text: mdl.family + " report"}));
  app.append(el("p", {"class": "sub", text: "model " + mdl.name + " · " + mdl.resolution[1] + "×" + mdl.resolution[0] +
    " · " + mdl.frames_per_block + "-frame blocks of up to " + mdl.tokens_per_block + " tokens (at least " +
    mdl.min_tokens + ") · shown " + mdl.scale + "× enlarged · " + data.generated}));

  // ---- one input ----------------------------------------------------------------------------------------
  function Player(entry, index) {
    var self = this;
    this.entry = entry;
    this.fps = entry.fps || 1;
    this.fpb = mdl.frames_per_block;
    this.target = data.selected;
    this.model = "elastic";
    this.frame = 0;
    var image = entry.is_image;
    var section = el("section", {"class": "card input", "data-index": index});
    var seconds = entry.frames / this.fps;
    section.append(el("div", {"class": "card-head"}, [
      el("h2", {text: entry.name}),
      el("span", {"class": "meta", text: image ? "image " + entry.source_size[1] + "×" + entry.source_size[0] :
        entry.frames + " frames at " + +this.fps.toFixed(3) + " fps (" + seconds.toFixed(1) + " s) · " +
        entry.blocks + " blocks · source " + entry.source_size[1] + "×" + entry.source_size[0]})]));

    // players
    function media(src, cls) {
      if (image) return el("img", {"class": "media", src: src, alt: cls});
      var v = el("video", {"class": "media", src: src, preload: "auto", playsinline: "", "aria-label": cls});
      v.muted = true;
      return v;
    }
    this.original = media(entry.original, "original");
    this.recon = media(this.current().media, "reconstruction");
    this.reconCaption = el("span", {"class": "badge"});
    this.origCaption = el("span", {"class": "badge"});
    var players = el("div", {"class": "players"}, [
      el("figure", {"class": "original"}, [this.original, el("figcaption", {}, [el("b", {text: "original"}),
        this.origCaption])]),
      el("figure", {"class": "recon"}, [this.recon, el("figcaption", {}, [el("b", {text: "reconstruction"}),
        this.reconCaption])])]);
    var left = el("div", {}, [players]);
    if (!image) {
      this.playButton = el("button", {"class": "play", title: "play / pause (space)", "aria-label": "play", text: "▶"});
      this.playButton.addEventListener("click", function () { self.toggle(); });
      this.clock = el("span", {"class": "clock"});
      var speed = el("select", {"aria-label": "speed"}, [0.25, 0.5, 1, 2].map(function (r) {
        var o = el("option", {value: r, text: r + "×"}); if (r === 1) o.selected = true; return o; }));
      speed.addEventListener("change", function () {
        self.original.playbackRate = self.recon.playbackRate = +speed.value; });
      left.append(el("div", {"class": "transport"}, [this.playButton, speed, this.clock]));
      this.original.loop = true;
      this.original.addEventListener("play", function () { self.playButton.textContent = "❚❚"; });
      this.original.addEventListener("pause", function () { self.playButton.textContent = "▶"; });
      this.recon.addEventListener("loadeddata", function () { self.follow(true); });
    }

    // controls and numbers
    var side = el("div", {"class": "side"});
    side.append(el("h3", {text: "target"}));
    this.targetButtons = el("div", {"class": "choices targets"}, data.targets.map(function (t, i) {
      var b = el("button", {"class": "choice target", "data-key": t.key}, [el("span", {"class": "k"}, [
        el("i", {"class": "swatch", style: "background:" + COLOURS[i % COLOURS.length]}), t.label]),
        el("span", {"class": "v"})]);
      b.addEventListener("click", function () { self.select(t.key, self.model); });
      return b;
    }));
    side.append(this.targetButtons);
    if (data.models.length > 1) {
      side.append(el("h3", {text: "tokenizer"}));
      this.modelButtons = el("div", {"class": "choices models"}, data.models.map(function (m) {
        var b = el("button", {"class": "choice model", "data-key": m.key, title: m.detail},
          [el("span", {"class": "k", text: m.label}), el("span", {"class": "v"})]);
        b.addEventListener("click", function () { self.select(self.target, m.key); });
        return b;
      }));
      side.append(this.modelButtons);
    }
    this.stats = el("div", {"class": "stats"});
    side.append(this.stats);
    section.append(el("div", {"class": "stage"}, [left, side]));

    // plots: tokens and PSNR per block over time; a click seeks
    if (!image) {
      section.append(el("h3", {text: "tokens per block" + " — click to seek"}));
      this.tokenPlot = this.timePlot("tokens", [0, mdl.tokens_per_block], "tokens", "tokens-plot");
      section.append(this.tokenPlot.svg);
      section.append(el("h3", {text: "PSNR per block (dB)"}));
      var all = [];
      Object.keys(entry.settings).forEach(function (k) { all = all.concat(entry.settings[k].psnr); });
      var lo = Math.floor(Math.min.apply(null, all) - 1), hi = Math.ceil(Math.max.apply(null, all) + 1);
      this.psnrPlot = this.timePlot("psnr", [lo, hi], "dB", "psnr-plot");
      section.append(this.psnrPlot.svg);
    }
    section.append(el("h3", {text: "per block"}));
    this.tbody = el("tbody");
    this.head = el("tr");
    section.append(el("div", {"class": "table-wrap"}, [el("table", {"class": "blocks"}, [el("thead", {}, [this.head]),
      this.tbody])]));
    this.section = section;
    this.select(this.target, this.model);
  }

  Player.prototype.current = function () { return this.entry.settings[this.target + "|" + this.model]; };
  Player.prototype.setting = function (target, model) { return this.entry.settings[target + "|" + model]; };
  Player.prototype.blockStart = function (k) { return k * this.fpb / this.fps; };

  Player.prototype.timePlot = function (metric, yDomain, yLabel, cls) {
    var self = this, seconds = this.entry.frames / this.fps;
    var c = chart({x: [0, seconds], y: yDomain, xLabel: "seconds", yLabel: yLabel, cls: cls, height: 170,
      label: metric + " per block over time"});
    c.lines = sv("g", {}, c.g);
    c.block = sv("rect", {"class": "curblock", y: c.top, height: c.bottom - c.top, x: c.left, width: 0}, c.g);
    c.head = sv("line", {"class": "playhead", y1: c.top, y2: c.bottom, x1: c.left, x2: c.left}, c.g);
    c.hit = sv("rect", {"class": "hit", x: c.left, y: c.top, width: c.right - c.left, height: c.bottom - c.top}, c.svg);
    c.hit.addEventListener("click", function (ev) {
      var r = c.hit.getBoundingClientRect();
      var f = Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width));
      self.seekFrame(Math.min(self.entry.frames - 1, Math.floor(f * self.entry.frames)));
    });
    c.metric = metric;
    c.key = metric === "tokens" ? "counts" : metric;
    return c;
  };

  Player.prototype.stepPoints = function (c, values) {
    var pts = [], self = this, frames = this.entry.frames;
    values.forEach(function (v, k) {
      var a = self.blockStart(k), b = Math.min((k + 1) * self.fpb, frames) / self.fps;
      pts.push([c.x(a), c.y(v)], [c.x(b), c.y(v)]);
    });
    return pts;
  };

  Player.prototype.drawTimePlot = function (c) {
    var self = this;
    while (c.lines.firstChild) c.lines.removeChild(c.lines.firstChild);
    if (c.metric === "tokens") sv("line", {"class": "grid", x1: c.left, x2: c.right, y1: c.y(mdl.tokens_per_block),
      y2: c.y(mdl.tokens_per_block), "stroke-dasharray": "3 3"}, c.lines);
    var target = data.targets.filter(function (t) { return t.key === self.target; })[0];
    if (c.metric === "psnr" && target.psnr_db != null) {
      sv("line", {x1: c.left, x2: c.right, y1: c.y(target.psnr_db), y2: c.y(target.psnr_db), stroke: "#98a2b3",
        "stroke-dasharray": "5 4"}, c.lines);
    }
    data.targets.forEach(function (t, i) {
      var s = self.setting(t.key, "elastic"), on = t.key === self.target && self.model === "elastic";
      sv("path", {d: path(self.stepPoints(c, s[c.key])), fill: "none", stroke: COLOURS[i % COLOURS.length],
        "stroke-width": on ? 2.2 : 1.2, "class": on ? "series on" : "series dim"}, c.lines);
    });
    if (this.model !== "elastic") {
      sv("path", {d: path(this.stepPoints(c, this.current()[c.key])), fill: "none", stroke: "#111",
        "stroke-width": 2, "stroke-dasharray": "6 3", "class": "series on"}, c.lines);
    }
  };

  Player.prototype.select = function (target, model) {
    var self = this, s;
    this.target = target;
    this.model = model;
    s = this.current();
    Array.prototype.forEach.call(this.targetButtons.children, function (b) {
      var t = self.setting(b.dataset.key, self.model);
      b.setAttribute("aria-pressed", String(b.dataset.key === target));
      b.querySelector(".v").textContent = fixed(t.mean_tokens, 1) + " tok · " + fixed(t.psnr_mean, 2) + " dB";
    });
    if (this.modelButtons) Array.prototype.forEach.call(this.modelButtons.children, function (b) {
      var t = self.setting(self.target, b.dataset.key);
      b.setAttribute("aria-pressed", String(b.dataset.key === model));
      b.querySelector(".v").textContent = fixed(t.mean_tokens, 1) + " tok · " + fixed(t.psnr_mean, 2) + " dB";
    });
    if (this.recon.getAttribute("src") !== s.media) {
      this.recon.setAttribute("src", s.media);
      if (this.recon.load) this.recon.load();
    }
    var cards = [
      ["mean_tokens", fixed(s.mean_tokens, 1), "tokens per block (of " + mdl.tokens_per_block + ")"],
      ["tokens", s.tokens.toLocaleString("en-US"), "tokens in all (" + pct(s.token_share) + ")"],
      ["psnr", fixed(s.psnr_mean, 2) + " dB", "PSNR, mean over blocks"],
      ["ssim", fixed(s.ssim_mean, 3), "SSIM, mean over blocks"]];
    if (s.meeting != null) cards.push(["meeting", pct(s.meeting), "blocks meeting the target"]);
    this.stats.replaceChildren.apply(this.stats, cards.map(function (c) {
      return el("div", {"class": "stat"}, [el("div", {"class": "v", "data-stat": c[0], text: c[1]}),
        el("div", {"class": "l", text: c[2]})]);
    }));
    if (this.tokenPlot) { this.drawTimePlot(this.tokenPlot); this.drawTimePlot(this.psnrPlot); }
    this.fillTable();
    this.show(this.frame, true);
  };

  Player.prototype.fillTable = function () {
    var self = this, s = this.current(), hasMeets = s.meets != null;
    var heads = ["block", this.entry.is_image ? null : "time (s)", "tokens", "PSNR (dB)", "SSIM", "MSE",
      hasMeets ? "meets target" : null].filter(function (h) { return h; });
    this.head.replaceChildren.apply(this.head, heads.map(function (h) { return el("th", {text: h}); }));
    this.rows = s.counts.map(function (n, k) {
      var cells = [el("td", {text: k})];
      if (!self.entry.is_image) cells.push(el("td", {text: self.blockStart(k).toFixed(2)}));
      cells.push(el("td", {}, [el("span", {"class": "bar", style: "width:" + (40 * n / mdl.tokens_per_block).toFixed(1) +
        "px"}), String(n)]));
      cells.push(el("td", {text: fixed(s.psnr[k], 2)}), el("td", {text: fixed(s.ssim[k], 3)}),
        el("td", {text: fixed(s.mse[k], 4)}));
      if (hasMeets) cells.push(el("td", {"class": s.meets[k] ? "yes" : "no", text: s.meets[k] ? "yes" : "no"}));
      var tr = el("tr", {"data-block": k}, cells);
      tr.addEventListener("click", function () { self.seekFrame(Math.min(k * self.fpb, self.entry.frames - 1)); });
      return tr;
    });
    this.tbody.replaceChildren.apply(this.tbody, this.rows);
    this.shownBlock = -1;
  };

  // ---- time: the original is the clock, the reconstruction follows ----------------------------------
  Player.prototype.toggle = function () {
    if (this.original.paused) this.play(); else this.pause();
  };
  Player.prototype.play = function () {
    var p = this.original.play();
    if (p && p.catch) p.catch(function () { /* autoplay refused: the play button still works */ });
    this.follow(true);
  };
  Player.prototype.pause = function () {
    this.original.pause();
    this.recon.pause();
    this.recon.currentTime = this.original.currentTime;
  };
  Player.prototype.seekFrame = function (frame) {
    var t = (frame + 0.5) / this.fps;
    if (this.entry.is_image) return;
    this.original.currentTime = t;
    if (this.recon.readyState >= 1) this.recon.currentTime = t;
    this.show(frame, false);
  };
  Player.prototype.follow = function (force) {
    var o = this.original, r = this.recon;
    if (this.entry.is_image || r.readyState < 1) return;
    if (r.playbackRate !== o.playbackRate) r.playbackRate = o.playbackRate;
    var drift = r.currentTime - o.currentTime, frame = 1 / this.fps;
    if (force || (!r.seeking && Math.abs(drift) > 0.4 * frame)) r.currentTime = o.currentTime;
    if (o.paused && !r.paused) r.pause();
    if (!o.paused && r.paused && !o.seeking) {
      var p = r.play();
      if (p && p.catch) p.catch(function () {});
    }
  };
  Player.prototype.show = function (frame, force) {
    if (this.entry.is_image) {
      var s0 = this.current();
      this.reconCaption.textContent = s0.counts[0] + " / " + mdl.tokens_per_block + " tokens · " +
        fixed(s0.psnr[0], 2) + " dB";
      return;
    }
    frame = Math.max(0, Math.min(this.entry.frames - 1, frame));
    var k = Math.floor(frame / this.fpb), s = this.current();
    if (frame === this.frame && !force && k === this.shownBlock) return;
    this.frame = frame;
    var t = frame / this.fps;
    this.clock.textContent = "frame " + (frame + 1) + " / " + this.entry.frames + " · " + t.toFixed(2) + " s · block " + k;
    this.origCaption.textContent = "frame " + (frame + 1);
    this.reconCaption.textContent = "block " + k + ": " + s.counts[k] + " / " + mdl.tokens_per_block + " tokens · " +
      fixed(s.psnr[k], 1) + " dB";
    var self = this;
    [this.tokenPlot, this.psnrPlot].forEach(function (c) {
      var x = c.x((frame + 0.5) / self.fps);
      c.head.setAttribute("x1", x); c.head.setAttribute("x2", x);
      var a = c.x(self.blockStart(k)), b = c.x(Math.min((k + 1) * self.fpb, self.entry.frames) / self.fps);
      c.block.setAttribute("x", a); c.block.setAttribute("width", Math.max(0, b - a));
    });
    if (k !== this.shownBlock) {
      if (this.rows[this.shownBlock]) this.rows[this.shownBlock].classList.remove("current");
      if (this.rows[k]) this.rows[k].classList.add("current");
      this.shownBlock = k;
    }
  };
  Player.prototype.tick = function () {
    if (this.entry.is_image) return;
    this.follow(false);
    this.show(Math.floor(this.original.currentTime * this.fps + 1e-3), false);
  };

  data.inputs.forEach(function (entry, i) {
    var p = new Player(entry, i);
    players.push(p);
    app.append(p.section);
  });
  function loop() { players.forEach(function (p) { p.tick(); }); window.requestAnimationFrame(loop); }
  window.requestAnimationFrame(loop);
  document.addEventListener("keydown", function (ev) {
    if (ev.code === "Space" && ev.target === document.body && players.length) { ev.preventDefault(); players[0].toggle(); }
  });

  // ---- the eval measurement -----------------------------------------------------------------------------
  function evalSection(ev) {
    var card = el("section", {"class": "card eval"});
    var against = ev.baselines.length ? "against " + ev.baselines.join(", ") + ", " : "";
    card.append(el("div", {"class": "card-head"}, [el("h2", {text: "At equal quality, how many fewer bits?"}),
      el("span", {"class": "meta", text: "elastictok eval " + against + "H.264 and JPEG · " + ev.summary.caption})]));
    ev.summary.tables.forEach(function (t) {
      card.append(el("div", {"class": "table-wrap", style: "max-height:none"}, [el("table", {"class": "summary"}, [
        el("thead", {}, [el("tr", {}, t.header.map(function (h) { return el("th", {text: h}); }))]),
        el("tbody", {}, t.rows.map(function (r) {
          return el("tr", {}, r.map(function (v) { return el("td", {text: v}); })); }))])]));
    });
    var plots = el("div", {"class": "plots"});
    ev.figures.forEach(function (svgText) {  // drawn by matplotlib, the same figures as eval's PNGs
      var fig = el("figure", {"class": "static"});
      fig.innerHTML = svgText;
      fig.firstElementChild.classList.add("plot");
      plots.append(fig);
    });
    card.append(plots);
    card.append(el("p", {"class": "note", text: "Bits are raw token bits (entropy-coded sizes in the table) and codec " +
      "payloads; every model and codec is scored on the same frames. Same numbers as elastictok eval."}));
    return card;
  }
  if (data.eval) app.append(evalSection(data.eval));

  app.append(el("p", {"class": "note", text: "Written by elastictok report in " + data.seconds + " s. Reconstructions are " +
    "precomputed; videos are re-encoded at near-lossless quality for display, numbers come from the decoded tokens."}));
  if (players.length && !players[0].entry.is_image) players[0].play();
  window.elastictokReport = {players: players, ready: true};
}());
