// llama-dms web chat. Plain JavaScript, no dependencies, nothing loaded from elsewhere.
//
// The conversation and the settings live in localStorage. Replies stream from
// /v1/chat/completions (SSE over fetch); the final chunk carries the `dms` object whose weights
// and signals the panel under each reply shows. Model output is always escaped before the
// small Markdown renderer below adds its own tags.
"use strict";

(() => {
  const CHAT_KEY = "llama-dms.chat.v1";
  const SETTINGS_KEY = "llama-dms.settings.v1";
  // localStorage holds about 5 M characters per origin; stay well below.
  const STORE_LIMIT = 3500000;
  const MAX_IMAGE_SIDE = 2048;
  const MAX_IMAGE_BYTES = 3 << 20;
  const SERVER_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];
  // Clean inputs get weights within 1 ± 0.05: only a weight below this is marked down-weighted.
  const DOWN_WEIGHTED_BELOW = 0.95;
  // The modes a server may use by default (`serve --dms`).
  const SERVER_MODES = ["off", "rule", "learned"];

  const DEFAULTS = {
    // Settings format: 2 = `mode` "" follows the server's default mode.
    v: 2,
    // "" until the user picks a mode: then the server's default_mode applies.
    mode: "",
    scheduler: "",
    imageWeight: 1,
    textWeight: 1,
    temperature: 0.7,
    maxTokens: 512,
    seed: "",
    system: "",
    apiKey: "",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    messages: $("messages"),
    empty: $("empty"),
    chat: $("chat"),
    composer: $("composer"),
    prompt: $("prompt"),
    send: $("send"),
    stop: $("stop"),
    attach: $("attach"),
    fileInput: $("file-input"),
    attachments: $("attachments"),
    banner: $("banner"),
    statusDot: $("status-dot"),
    modelName: $("model-name"),
    newChat: $("new-chat"),
    openSettings: $("open-settings"),
    closeSettings: $("close-settings"),
    drawer: $("settings"),
    scrim: $("scrim"),
    form: $("settings-form"),
    mode: $("dms-mode"),
    scheduler: $("dms-scheduler"),
    schedulerHelp: $("scheduler-help"),
    fixedWeights: $("fixed-weights"),
    wImage: $("w-image"),
    wText: $("w-text"),
    wImageOut: $("w-image-out"),
    wTextOut: $("w-text-out"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    seed: $("seed"),
    system: $("system"),
    apiKey: $("api-key"),
    resetSettings: $("reset-settings"),
    serverInfo: $("server-info"),
    dropOverlay: $("drop-overlay"),
    modeSummary: $("mode-summary"),
    modeLink: $("mode-link"),
    modeHelp: $("mode-help"),
  };

  // ---------------------------------------------------------------- state

  let settings = loadSettings();
  let chat = loadChat();
  let pending = []; // images attached to the next message: {url, name}
  let streaming = null; // {controller, message, node}
  let serverReady = false;
  let modelId = "";
  let storageWarned = false;
  let serverDefaultMode = null; // default_mode from /v1/dms/schedulers, once known

  function loadSettings() {
    try {
      let saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
      saved = saved && typeof saved === "object" ? saved : {};
      // Before format 2 every save stored the old default mode "rule": it was no choice.
      if (saved.v === undefined && saved.mode === "rule") saved.mode = "";
      return Object.assign({}, DEFAULTS, saved, { v: DEFAULTS.v });
    } catch (_) {
      return Object.assign({}, DEFAULTS);
    }
  }

  function saveSettings() {
    try {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
    } catch (_) {
      /* the page keeps working with the settings in memory */
    }
  }

  function loadChat() {
    try {
      const saved = JSON.parse(localStorage.getItem(CHAT_KEY) || "null");
      if (saved && Array.isArray(saved.messages)) {
        saved.messages = saved.messages.filter(
          (m) => m && (m.role === "user" || m.role === "assistant"),
        );
        return saved;
      }
    } catch (_) {
      /* a broken entry starts a new conversation */
    }
    return { messages: [] };
  }

  // Saves the conversation. When it is too large for localStorage, images of the oldest
  // messages are left out of the stored copy (the page still shows them until a reload).
  function saveChat() {
    const copy = { messages: chat.messages.map((m) => Object.assign({}, m)) };
    let dropped = 0;
    for (let i = 0; i <= copy.messages.length; i++) {
      let text;
      try {
        text = JSON.stringify(copy);
      } catch (_) {
        return;
      }
      if (text.length <= STORE_LIMIT) {
        try {
          localStorage.setItem(CHAT_KEY, text);
          if (dropped && !storageWarned) {
            storageWarned = true;
            showBanner(
              `The browser's storage is full: ${dropped} older image(s) will not be kept after a reload.`,
              "warn",
            );
          }
          return;
        } catch (_) {
          /* quota exceeded: drop more below */
        }
      }
      const m = copy.messages[i];
      if (m && m.images && m.images.length) {
        dropped += m.images.length;
        m.imagesOmitted = (m.imagesOmitted || 0) + m.images.length;
        m.images = [];
      }
    }
    if (!storageWarned) {
      storageWarned = true;
      showBanner("This conversation is too large to keep in the browser's storage.", "warn");
    }
    try {
      localStorage.removeItem(CHAT_KEY);
    } catch (_) {
      /* nothing more to do */
    }
  }

  // ---------------------------------------------------------------- markdown

  function escapeHtml(s) {
    return String(s)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Inline Markdown on already escaped text: `code`, **bold**, *italic*, _italic_,
  // [links](http(s) only), bare http(s) URLs.
  function inline(escaped) {
    const codes = [];
    let s = escaped.replace(/`([^`\n]+)`/g, (_, c) => {
      codes.push(c);
      return `\u0000${codes.length - 1}\u0000`;
    });
    const links = [];
    s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, (_, text, url) => {
      links.push(`<a href="${url}" target="_blank" rel="noopener noreferrer">${text}</a>`);
      return `\u0001${links.length - 1}\u0001`;
    });
    s = s.replace(/(^|[\s(])(https?:\/\/[^\s<)]+[^\s<).,;:!?])/g, (_, pre, url) => {
      links.push(`<a href="${url}" target="_blank" rel="noopener noreferrer">${url}</a>`);
      return `${pre}\u0001${links.length - 1}\u0001`;
    });
    s = s
      .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__([^_\s][^_\n]*?)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/(^|[^*\w])\*([^*\s][^*\n]*?)\*(?!\w)/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_([^_\s][^_\n]*?)_(?!\w)/g, "$1<em>$2</em>");
    s = s.replace(/\u0001(\d+)\u0001/g, (_, i) => links[Number(i)]);
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
  }

  // A small, safe Markdown renderer: the text is escaped first, then fenced code blocks,
  // headings, lists, quotes and paragraphs get their tags. An unclosed fence (a reply still
  // streaming) runs to the end.
  function renderMarkdown(text) {
    // The placeholders of `inline` cannot come from the text itself.
    const lines = escapeHtml(String(text).replace(/[\u0000\u0001]/g, "")).split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*```\s*([\w+#.-]*)\s*$/);
      if (fence) {
        const lang = fence[1];
        const body = [];
        i++;
        while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
        i++;
        out.push(
          `<div class="code"><div class="code-head"><span>${lang || "code"}</span>` +
            `<button type="button" class="copy" data-copy>Copy</button></div>` +
            `<pre><code>${body.join("\n")}</code></pre></div>`,
        );
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) {
        const level = Math.min(6, heading[1].length + 2);
        out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
        i++;
        continue;
      }
      if (/^\s*[-*+]\s+/.test(line) || /^\s*\d+[.)]\s+/.test(line)) {
        const ordered = /^\s*\d+[.)]\s+/.test(line);
        const item = ordered ? /^\s*\d+[.)]\s+(.*)$/ : /^\s*[-*+]\s+(.*)$/;
        const items = [];
        while (i < lines.length && item.test(lines[i])) {
          items.push(`<li>${inline(lines[i].match(item)[1])}</li>`);
          i++;
        }
        out.push(ordered ? `<ol>${items.join("")}</ol>` : `<ul>${items.join("")}</ul>`);
        continue;
      }
      if (/^&gt;\s?/.test(line)) {
        const quoted = [];
        while (i < lines.length && /^&gt;\s?/.test(lines[i])) {
          quoted.push(inline(lines[i].replace(/^&gt;\s?/, "")));
          i++;
        }
        out.push(`<blockquote>${quoted.join("<br>")}</blockquote>`);
        continue;
      }
      if (!line.trim()) {
        i++;
        continue;
      }
      const para = [];
      while (
        i < lines.length &&
        lines[i].trim() &&
        !/^\s*```/.test(lines[i]) &&
        !/^(#{1,6})\s+/.test(lines[i]) &&
        !/^\s*([-*+]|\d+[.)])\s+/.test(lines[i]) &&
        !/^&gt;/.test(lines[i])
      ) {
        para.push(inline(lines[i]));
        i++;
      }
      out.push(`<p>${para.join("<br>")}</p>`);
    }
    return out.join("");
  }

  // ---------------------------------------------------------------- helpers

  function fmt(x, digits = 2) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }

  function fmtMs(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "–";
    return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (settings.apiKey) h.Authorization = `Bearer ${settings.apiKey}`;
    return h;
  }

  async function errorMessage(resp) {
    let text = "";
    try {
      text = await resp.text();
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
    } catch (_) {
      /* not JSON */
    }
    return `${resp.status} ${resp.statusText || ""}`.trim() + (text ? `: ${text.slice(0, 200)}` : "");
  }

  function showBanner(text, kind = "error") {
    el.banner.textContent = text;
    el.banner.dataset.kind = kind;
    el.banner.hidden = false;
  }

  function hideBanner() {
    el.banner.hidden = true;
  }

  // ---------------------------------------------------------------- server status

  let healthTimer = null;

  function setStatus(state, text) {
    el.statusDot.dataset.state = state;
    el.modelName.textContent = text;
  }

  async function checkHealth() {
    clearTimeout(healthTimer);
    let next = 15000;
    try {
      const resp = await fetch("/health", { cache: "no-store" });
      if (resp.status === 503) {
        serverReady = false;
        setStatus("loading", "loading the model…");
        showBanner("The server is still loading the model. The page will connect when it is ready.", "info");
        next = 1500;
      } else if (resp.ok) {
        const body = await resp.json();
        if (!serverReady) {
          serverReady = true;
          if (el.banner.dataset.kind === "info" || el.banner.dataset.kind === "offline") hideBanner();
          modelId = body.model || "";
          setStatus("ok", modelId || "ready");
          loadModelAndSchedulers();
        }
      } else {
        serverReady = false;
        setStatus("error", `health: ${resp.status}`);
        next = 3000;
      }
    } catch (_) {
      serverReady = false;
      setStatus("error", "server unreachable");
      showBanner("Cannot reach the server. Is `llama-dms serve` running?", "offline");
      next = 3000;
    }
    healthTimer = setTimeout(checkHealth, next);
  }

  async function loadModelAndSchedulers() {
    try {
      const resp = await fetch("/v1/models", { headers: headers(), cache: "no-store" });
      if (resp.status === 401) {
        setStatus("warn", "API key needed");
        showBanner("This server needs an API key: enter it in Settings.", "auth");
        return;
      }
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const body = await resp.json();
      const card = body.data && body.data[0];
      if (card) {
        modelId = card.id;
        setStatus("ok", card.id);
        el.modelName.title = `${card.description || ""}${card.vision ? " · images" : " · text only"} · context ${card.context_length}`;
        el.serverInfo.replaceChildren();
        for (const [k, v] of [
          ["Model", card.id],
          ["Description", card.description || "–"],
          ["Images", card.vision ? "yes" : "no (text only)"],
          ["Context", String(card.context_length)],
        ]) {
          el.serverInfo.append(make("dt", "", k), make("dd", "", v));
        }
      }
      if (el.banner.dataset.kind === "auth") hideBanner();
    } catch (e) {
      showBanner(`Cannot read the model list: ${e.message}`);
    }
    try {
      const resp = await fetch("/v1/dms/schedulers", { headers: headers(), cache: "no-store" });
      if (!resp.ok) return;
      const body = await resp.json();
      const keep = settings.scheduler;
      el.scheduler.replaceChildren(make("option", "", "default for the mode"));
      el.scheduler.firstChild.value = "";
      for (const s of body.data || []) {
        if (s.id === "off") continue;
        const opt = make("option", "", `${s.id} (${s.kind})`);
        opt.value = s.id;
        el.scheduler.append(opt);
      }
      el.scheduler.value = keep;
      if (el.scheduler.value !== keep) el.scheduler.value = "";
      serverDefaultMode = SERVER_MODES.includes(body.default_mode) ? body.default_mode : null;
      el.mode.value = currentMode();
      syncSettingsView();
    } catch (_) {
      /* the default scheduler still works */
    }
  }

  // ---------------------------------------------------------------- settings drawer

  // The mode requests use: the user's choice, else the server's default.
  function currentMode() {
    return settings.mode || serverDefaultMode || "off";
  }

  // Notes the server's default mode in the mode list and its help line.
  function showServerDefault() {
    for (const opt of el.mode.options) {
      if (!opt.dataset.label) opt.dataset.label = opt.textContent;
      opt.textContent = opt.dataset.label + (opt.value === serverDefaultMode ? " (server default)" : "");
    }
    if (!serverDefaultMode) return;
    el.modeHelp.textContent = settings.mode
      ? `Your choice, kept in this browser. The server's default is ${serverDefaultMode}; Reset to defaults follows it again.`
      : `The server's default (serve --dms ${serverDefaultMode}) until you pick a mode.`;
  }

  function fillSettings() {
    el.mode.value = currentMode();
    el.scheduler.value = settings.scheduler;
    el.wImage.value = settings.imageWeight;
    el.wText.value = settings.textWeight;
    el.temperature.value = settings.temperature;
    el.maxTokens.value = settings.maxTokens;
    el.seed.value = settings.seed;
    el.system.value = settings.system;
    el.apiKey.value = settings.apiKey;
    syncSettingsView();
  }

  function syncSettingsView() {
    const mode = currentMode();
    const fixed = mode === "fixed";
    el.fixedWeights.hidden = !fixed;
    const usesScheduler = mode === "rule" || mode === "learned";
    el.scheduler.disabled = !usesScheduler;
    el.schedulerHelp.textContent = usesScheduler
      ? "Used by the rule and learned modes."
      : "Only the rule and learned modes use a scheduler.";
    el.wImageOut.textContent = fmt(Number(settings.imageWeight));
    el.wTextOut.textContent = fmt(Number(settings.textWeight));
    showServerDefault();
    let summary = mode;
    if (fixed) summary += ` (image ${fmt(Number(settings.imageWeight))}, text ${fmt(Number(settings.textWeight))})`;
    else if (usesScheduler && settings.scheduler) summary += ` · ${settings.scheduler}`;
    if (!settings.mode) summary += " (server default)";
    el.modeSummary.textContent = summary;
  }

  function readSettings(e) {
    const oldKey = settings.apiKey;
    // Only picking a mode makes it the user's choice (other fields leave it following the server).
    if (e && e.target === el.mode) settings.mode = el.mode.value;
    settings.scheduler = el.scheduler.value;
    settings.imageWeight = Number(el.wImage.value);
    settings.textWeight = Number(el.wText.value);
    const t = parseFloat(el.temperature.value);
    settings.temperature = isFinite(t) ? Math.min(2, Math.max(0, t)) : DEFAULTS.temperature;
    const n = parseInt(el.maxTokens.value, 10);
    settings.maxTokens = isFinite(n) && n > 0 ? n : DEFAULTS.maxTokens;
    settings.seed = el.seed.value.trim();
    settings.system = el.system.value;
    settings.apiKey = el.apiKey.value.trim();
    saveSettings();
    syncSettingsView();
    if (settings.apiKey !== oldKey) {
      clearTimeout(keyTimer);
      keyTimer = setTimeout(() => serverReady && loadModelAndSchedulers(), 300);
    }
  }

  let keyTimer = null;

  let lastFocus = null;

  function openDrawer(focusId) {
    lastFocus = document.activeElement;
    el.drawer.hidden = false;
    el.scrim.hidden = false;
    document.body.classList.add("drawer-open");
    el.openSettings.setAttribute("aria-expanded", "true");
    requestAnimationFrame(() => {
      el.drawer.classList.add("open");
      (focusId ? $(focusId) : el.mode).focus();
    });
  }

  function closeDrawer() {
    if (el.drawer.hidden) return;
    el.drawer.classList.remove("open");
    el.drawer.hidden = true;
    el.scrim.hidden = true;
    document.body.classList.remove("drawer-open");
    el.openSettings.setAttribute("aria-expanded", "false");
    (lastFocus && document.contains(lastFocus) ? lastFocus : el.prompt).focus();
  }

  function trapFocus(e) {
    if (e.key !== "Tab" || el.drawer.hidden) return;
    const focusable = [...el.drawer.querySelectorAll("button, input, select, textarea")].filter(
      (n) => !n.disabled && n.offsetParent !== null,
    );
    if (!focusable.length) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (e.shiftKey && document.activeElement === first) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && document.activeElement === last) {
      e.preventDefault();
      first.focus();
    }
  }

  // ---------------------------------------------------------------- attachments

  function readAsDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("not an image the browser can read"));
      img.src = url;
    });
  }

  // A data: URL the server accepts: PNG/JPEG/WebP/GIF as they are when not too large;
  // anything else, or very large images, redrawn (at most MAX_IMAGE_SIDE pixels a side).
  async function toDataUrl(file) {
    const url = await readAsDataUrl(file);
    const img = await loadImage(url);
    const big = Math.max(img.naturalWidth, img.naturalHeight) > MAX_IMAGE_SIDE;
    if (SERVER_TYPES.includes(file.type) && !big && file.size <= MAX_IMAGE_BYTES) return url;
    const scale = Math.min(1, MAX_IMAGE_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    return file.type === "image/png" && !big
      ? canvas.toDataURL("image/png")
      : canvas.toDataURL("image/jpeg", 0.9);
  }

  async function addFiles(files) {
    for (const file of files) {
      if (!file || !file.type.startsWith("image/")) {
        showBanner(`${file ? file.name : "That"} is not an image.`, "warn");
        continue;
      }
      try {
        const url = await toDataUrl(file);
        pending.push({ url, name: file.name || "pasted image" });
      } catch (e) {
        showBanner(`Cannot attach ${file.name}: ${e.message}`, "warn");
      }
    }
    renderAttachments();
  }

  function renderAttachments() {
    el.attachments.replaceChildren();
    pending.forEach((att, i) => {
      const item = make("div", "thumb");
      const img = make("img");
      img.src = att.url;
      img.alt = att.name;
      const remove = make("button", "thumb-remove");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${att.name}`);
      remove.title = `Remove ${att.name}`;
      remove.textContent = "×";
      remove.addEventListener("click", () => {
        pending.splice(i, 1);
        renderAttachments();
        el.prompt.focus();
      });
      item.append(img, remove);
      el.attachments.append(item);
    });
    el.attachments.hidden = pending.length === 0;
  }

  // ---------------------------------------------------------------- rendering messages

  function renderAll() {
    el.messages.replaceChildren();
    chat.messages.forEach((m, i) => el.messages.append(renderMessage(m, i)));
    el.empty.hidden = chat.messages.length > 0;
    scrollToEnd(true);
  }

  function renderMessage(m, index) {
    const node = make("article", `msg ${m.role}`);
    node.dataset.index = String(index);
    node.setAttribute("aria-label", m.role === "user" ? "You" : "Assistant");
    if (m.role === "user") {
      if ((m.images && m.images.length) || m.imagesOmitted) {
        const imgs = make("div", "msg-images");
        (m.images || []).forEach((url, k) => {
          const img = make("img");
          img.src = url;
          img.alt = `Image ${k + 1}`;
          imgs.append(img);
        });
        if (m.imagesOmitted) {
          imgs.append(make("span", "omitted", `${m.imagesOmitted} image(s) not kept (storage full)`));
        }
        node.append(imgs);
      }
      if (m.text) node.append(make("div", "bubble", m.text));
      return node;
    }
    const bubble = make("div", "bubble markdown");
    node.append(bubble);
    updateAssistant(node, m);
    return node;
  }

  // Fills an assistant message node: text, error, status line and the DMS panel.
  function updateAssistant(node, m) {
    const bubble = node.querySelector(".bubble");
    if (m.text) {
      bubble.innerHTML = renderMarkdown(m.text);
    } else if (m.streaming) {
      bubble.innerHTML = '<span class="typing" aria-label="waiting for the reply"><i></i><i></i><i></i></span>';
    } else {
      bubble.textContent = "";
    }
    bubble.hidden = !m.text && !m.streaming;
    node.setAttribute("aria-busy", m.streaming ? "true" : "false");
    node.classList.toggle("streaming", !!m.streaming);

    let err = node.querySelector(".error");
    if (m.error) {
      if (!err) {
        err = make("div", "error");
        err.setAttribute("role", "alert");
        bubble.after(err);
      }
      err.textContent = m.error;
    } else if (err) {
      err.remove();
    }

    let meta = node.querySelector(".meta");
    if (!meta) {
      meta = make("div", "meta");
      node.append(meta);
    }
    const parts = [];
    if (m.stopped) parts.push("stopped");
    if (m.finish === "length") parts.push("cut at max tokens");
    if (m.usage && m.usage.completion_tokens !== undefined) parts.push(`${m.usage.completion_tokens} tokens`);
    if (m.elapsedMs) parts.push(fmtMs(m.elapsedMs));
    meta.textContent = parts.join(" · ");
    meta.hidden = parts.length === 0;

    const old = node.querySelector(".dms");
    if (m.dms && !old) node.insertBefore(renderDms(m), meta);
    else if (!m.dms && old) old.remove();
  }

  function imageUrlsFor(m) {
    const urls = [];
    for (const ref of m.imageRefs || []) {
      const msg = chat.messages[ref[0]];
      urls.push(msg && msg.images ? msg.images[ref[1]] || null : null);
    }
    return urls;
  }

  // The DMS panel: one bar per image and one for the text, the scheduler and the DMS time;
  // the signals on hover (title) and in an expandable table.
  function renderDms(m) {
    const dms = m.dms;
    const weights = dms.weights || { images: [], text: 1 };
    const signals = dms.signals || null;
    const images = weights.images || [];
    const all = images.concat([weights.text]);
    const scale = Math.max(2, ...all.filter((w) => typeof w === "number"));
    const urls = imageUrlsFor(m);

    const panel = make("section", "dms");
    panel.setAttribute("aria-label", "Modality weights (DMS)");
    const head = make("div", "dms-head");
    const title = make("span", "dms-title", "Modality weights");
    const info = make("span", "dms-info");
    info.append(
      make("span", "chip", dms.scheduler || dms.mode || "dms"),
      make("span", "chip subtle", `DMS ${fmtMs(dms.timings_ms && dms.timings_ms.total_ms)}`),
    );
    if (dms.image_cache_hits) {
      const cached = make("span", "chip subtle", "signals cached");
      cached.title = `The signals of ${dms.image_cache_hits} image(s) came from the server's cache.`;
      info.append(cached);
    }
    head.append(title, info);
    panel.append(head);

    const rows = make("div", "bars");
    const row = (label, w, sig, kind, url) => {
      const r = make("div", `bar-row ${kind}`);
      const name = make("span", "bar-label");
      if (url) {
        const img = make("img", "bar-thumb");
        img.src = url;
        img.alt = "";
        name.append(img);
      }
      name.append(make("span", "", label));
      const bar = make("div", "bar");
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-label", `${label} weight`);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", String(scale));
      bar.setAttribute("aria-valuenow", fmt(w));
      const fill = make("div", "fill");
      fill.style.width = `${Math.max(0, Math.min(100, (100 * w) / scale))}%`;
      const one = make("div", "one");
      one.style.left = `${100 / scale}%`;
      one.title = "1.00 = plain fusion";
      bar.append(fill, one);
      const value = make("span", "bar-value", fmt(w));
      r.append(name, bar, value);
      // Compared as shown (two decimals), so that a bar reading 0.95 is never marked.
      const down = typeof w === "number" && Number(w.toFixed(2)) < DOWN_WEIGHTED_BELOW;
      if (down) {
        r.classList.add("down");
        const badge = make("span", "badge", "↓ down-weighted");
        badge.title = `Weight below ${DOWN_WEIGHTED_BELOW}: DMS trusted this input less than plain fusion would and scaled its embedding rows down (clean inputs stay within 1 ± 0.05).`;
        r.append(badge);
      }
      const tip = [`${label}: weight ${fmt(w, 3)}`];
      if (sig) tip.push(`confidence ${fmt(sig.confidence, 3)}`, `uncertainty ${fmt(sig.uncertainty, 4)}`);
      if (down) tip.push(`down-weighted (below ${DOWN_WEIGHTED_BELOW})`);
      r.title = tip.join(" · ");
      rows.append(r);
    };
    images.forEach((w, i) => {
      const sig = signals && signals.images ? signals.images[i] : null;
      row(`Image ${i + 1}`, w, sig, "image", urls[i]);
    });
    row("Text", weights.text, signals ? signals.text : null, "text", null);
    panel.append(rows);

    const details = make("details", "signals");
    details.append(make("summary", "", signals ? "Signals" : "Signals: none measured"));
    if (signals) {
      const table = make("table");
      const thead = make("thead");
      const hr = make("tr");
      for (const h of ["", "confidence", "uncertainty", "consistency"]) hr.append(make("th", "", h));
      thead.append(hr);
      table.append(thead);
      const body = make("tbody");
      const cons = signals.consistency || [];
      (signals.images || []).forEach((s, i) => {
        const tr = make("tr");
        tr.append(
          make("th", "", `Image ${i + 1}`),
          make("td", "", fmt(s.confidence, 3)),
          make("td", "", fmt(s.uncertainty, 4)),
          make("td", "", fmt(cons[i], 3)),
        );
        body.append(tr);
      });
      if (signals.text) {
        const tr = make("tr");
        tr.append(
          make("th", "", "Text"),
          make("td", "", fmt(signals.text.confidence, 3)),
          make("td", "", fmt(signals.text.uncertainty, 4)),
          make("td", "", ""),
        );
        body.append(tr);
      }
      table.append(body);
      details.append(table);
      const t = dms.timings_ms || {};
      const note = make(
        "p",
        "help",
        `Consistency compares each image with the text (input rows). Time: encode ${fmtMs(t.encode_ms)}, image passes ${fmtMs(t.image_passes_ms)}, text passes ${fmtMs(t.text_passes_ms)}.`,
      );
      details.append(note);
    } else {
      details.append(
        make(
          "p",
          "help",
          dms.mode === "fixed" || dms.mode === "off"
            ? `Mode ${dms.mode}: the weights were not computed from signals.`
            : "No image in the request, so no signal passes ran.",
        ),
      );
    }
    panel.append(details);
    return panel;
  }

  function scrollToEnd(force) {
    const c = el.chat;
    const near = c.scrollHeight - c.scrollTop - c.clientHeight < 120;
    if (force || near) c.scrollTop = c.scrollHeight;
  }

  // ---------------------------------------------------------------- sending

  function buildRequest() {
    const messages = [];
    if (settings.system.trim()) messages.push({ role: "system", content: settings.system });
    let nImages = 0;
    const imageRefs = [];
    chat.messages.forEach((m, index) => {
      if (m.role === "user") {
        const images = m.images || [];
        if (!images.length) {
          messages.push({ role: "user", content: m.text || "" });
          return;
        }
        const content = images.map((url, k) => {
          imageRefs.push([index, k]);
          return { type: "image_url", image_url: { url } };
        });
        nImages += images.length;
        if (m.text) content.push({ type: "text", text: m.text });
        messages.push({ role: "user", content });
      } else if (m.text && !m.streaming) {
        messages.push({ role: "assistant", content: m.text });
      }
    });
    const body = {
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: settings.temperature,
      max_tokens: settings.maxTokens,
    };
    if (modelId) body.model = modelId;
    if (settings.seed !== "" && isFinite(Number(settings.seed))) body.seed = Math.trunc(Number(settings.seed));
    // Without a chosen mode the server's default applies (no `mode` sent).
    const mode = currentMode();
    const dms = settings.mode ? { mode } : {};
    if ((mode === "rule" || mode === "learned") && settings.scheduler) {
      dms.scheduler = settings.scheduler;
    }
    if (mode === "fixed") {
      dms.weights = {
        images: new Array(nImages).fill(Number(settings.imageWeight)),
        text: Number(settings.textWeight),
      };
    }
    body.dms = dms;
    return { body, imageRefs };
  }

  function setBusy(busy) {
    el.send.hidden = busy;
    el.stop.hidden = !busy;
    el.composer.classList.toggle("busy", busy);
    document.body.dataset.state = busy ? "streaming" : "idle";
  }

  async function send() {
    if (streaming) return;
    const text = el.prompt.value.trim();
    if (!text && !pending.length) return;
    hideBannerIfTransient();
    chat.messages.push({
      role: "user",
      text,
      images: pending.map((p) => p.url),
      time: Date.now(),
    });
    pending = [];
    renderAttachments();
    el.prompt.value = "";
    autoGrow();

    const { body, imageRefs } = buildRequest();
    const reply = { role: "assistant", text: "", streaming: true, imageRefs, time: Date.now() };
    chat.messages.push(reply);
    saveChat();
    renderAll();
    const node = el.messages.lastElementChild;
    const controller = new AbortController();
    streaming = { controller, message: reply, node };
    setBusy(true);
    const started = performance.now();

    let frame = 0;
    const paint = () => {
      frame = 0;
      updateAssistant(node, reply);
      scrollToEnd(false);
    };
    const schedulePaint = () => {
      if (!frame) frame = requestAnimationFrame(paint);
    };

    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      await readStream(resp, reply, schedulePaint);
    } catch (e) {
      if (e && e.name === "AbortError") reply.stopped = true;
      else reply.error = `Error: ${e && e.message ? e.message : e}`;
    } finally {
      if (frame) cancelAnimationFrame(frame);
      reply.streaming = false;
      reply.elapsedMs = performance.now() - started;
      streaming = null;
      setBusy(false);
      updateAssistant(node, reply);
      scrollToEnd(false);
      saveChat();
      if (reply.error && /\b401\b/.test(reply.error)) {
        showBanner("The server refused the API key: set it in Settings.", "auth");
      }
    }
  }

  function hideBannerIfTransient() {
    if (!el.banner.hidden && el.banner.dataset.kind === "warn") hideBanner();
  }

  // Reads an SSE body: `data:` lines with chunks, an error object, or [DONE].
  async function readStream(resp, reply, repaint) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    const handle = (data) => {
      if (data === "[DONE]") {
        done = true;
        return;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (_) {
        return;
      }
      if (chunk.error) {
        throw new Error(chunk.error.message || "the server reported an error");
      }
      const choice = chunk.choices && chunk.choices[0];
      if (choice) {
        if (choice.delta && typeof choice.delta.content === "string") reply.text += choice.delta.content;
        if (choice.finish_reason) reply.finish = choice.finish_reason;
      }
      if (chunk.dms) reply.dms = chunk.dms;
      if (chunk.usage) reply.usage = chunk.usage;
      repaint();
    };
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/\r$/, "");
        buffer = buffer.slice(cut + 1);
        if (line.startsWith("data:")) handle(line.slice(5).trim());
        if (done) break;
      }
    }
    if (!done && buffer.startsWith("data:")) handle(buffer.slice(5).trim());
  }

  function stop() {
    if (streaming) streaming.controller.abort();
  }

  function newChat() {
    stop();
    chat = { messages: [] };
    storageWarned = false;
    pending = [];
    renderAttachments();
    saveChat();
    renderAll();
    hideBannerIfTransient();
    el.prompt.focus();
  }

  function autoGrow() {
    el.prompt.style.height = "auto";
    el.prompt.style.height = `${Math.min(el.prompt.scrollHeight, 200)}px`;
  }

  // ---------------------------------------------------------------- events

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  el.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  el.prompt.addEventListener("input", autoGrow);
  el.stop.addEventListener("click", () => {
    stop();
    el.prompt.focus();
  });
  el.newChat.addEventListener("click", newChat);
  el.attach.addEventListener("click", () => el.fileInput.click());
  el.fileInput.addEventListener("change", () => {
    addFiles([...el.fileInput.files]);
    el.fileInput.value = "";
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.items : [])]
      .filter((it) => it.kind === "file" && it.type.startsWith("image/"))
      .map((it) => it.getAsFile())
      .filter(Boolean);
    if (files.length) {
      e.preventDefault();
      addFiles(files);
    }
  });

  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    el.dropOverlay.hidden = false;
  });
  window.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  window.addEventListener("dragleave", (e) => {
    if (!hasFiles(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) el.dropOverlay.hidden = true;
  });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    el.dropOverlay.hidden = true;
    addFiles([...e.dataTransfer.files]);
  });

  el.messages.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-copy]");
    if (!button) return;
    const code = button.closest(".code").querySelector("code").textContent;
    try {
      await navigator.clipboard.writeText(code);
      button.textContent = "Copied";
    } catch (_) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });

  el.openSettings.addEventListener("click", () => openDrawer());
  el.modeLink.addEventListener("click", () => openDrawer("dms-mode"));
  el.closeSettings.addEventListener("click", closeDrawer);
  el.scrim.addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !el.drawer.hidden) {
      e.preventDefault();
      closeDrawer();
    } else if (e.key === "Escape" && streaming) {
      stop();
    }
    trapFocus(e);
  });
  el.form.addEventListener("input", readSettings);
  el.form.addEventListener("change", readSettings);
  el.form.addEventListener("submit", (e) => e.preventDefault());
  el.resetSettings.addEventListener("click", () => {
    const key = settings.apiKey;
    settings = Object.assign({}, DEFAULTS, { apiKey: key });
    saveSettings();
    fillSettings();
  });
  window.addEventListener("storage", (e) => {
    if (e.key === CHAT_KEY && !streaming) {
      chat = loadChat();
      renderAll();
    }
  });

  // ---------------------------------------------------------------- start

  // A reply that was streaming when the page went away keeps what had arrived.
  for (const m of chat.messages) {
    if (m.streaming) {
      m.streaming = false;
      m.stopped = true;
    }
  }
  fillSettings();
  renderAttachments();
  renderAll();
  setBusy(false);
  checkHealth();
  el.prompt.focus();

  // For tests and curious users: the page's state, read-only.
  window.llamaDms = Object.freeze({
    get conversation() {
      return JSON.parse(JSON.stringify(chat));
    },
    get settings() {
      return Object.assign({}, settings, { apiKey: settings.apiKey ? "(set)" : "" });
    },
    renderMarkdown,
  });
})();
