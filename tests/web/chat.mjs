// Browser test of the web chat page: headless Debian Chromium driven by playwright-core.
//
//   node tests/web/chat.mjs <server base URL without /v1> <screenshot dir> [<keyed base URL> <key>]
//
// The optional second server runs with `--api-key <key> --dms rule`: the page asks for the key and then
// sends it as a Bearer token.
// playwright-core is resolved from NODE_PATH (tests/web.rs points it at the node_modules that
// scripts/deps installs). Exits 0 when every check passes, 1 with the failed check otherwise.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const [base, outDir, keyedBase, apiKey] = process.argv.slice(2);
if (!base || !outDir) {
  console.error("usage: node tests/web/chat.mjs <base url> <screenshot dir>");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const redPng = join(repo, "examples", "red.png");
const started = Date.now();

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok   ${message}`);
}

// The `dms` object and the text of an SSE body of /v1/chat/completions.
function parseSse(body) {
  let dms = null;
  let text = "";
  let error = null;
  for (const line of body.split("\n")) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (data === "[DONE]") continue;
    const chunk = JSON.parse(data);
    if (chunk.error) error = chunk.error;
    if (chunk.dms) dms = chunk.dms;
    const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
    if (delta && delta.content) text += delta.content;
  }
  return { dms, text, error };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) {
      pageErrors.push(`console error: ${m.text()}`);
    }
  });
  const conversation = () => page.evaluate(() => window.llamaDms.conversation);
  const lastReplyDone = () =>
    page.waitForFunction(
      () => {
        const m = window.llamaDms.conversation.messages.at(-1);
        return m && m.role === "assistant" && !m.streaming;
      },
      null,
      { timeout: 45000 },
    );

  // ---- the page loads, finds the model and the schedulers
  await page.goto(`${base}/`);
  await page.waitForSelector('#status-dot[data-state="ok"]', { timeout: 15000 });
  const models = await (await page.request.get(`${base}/v1/models`)).json();
  check(
    (await page.textContent("#model-name")).trim() === models.data[0].id,
    "the header names the model from /v1/models",
  );
  await page.waitForFunction(() => document.querySelectorAll("#dms-scheduler option").length > 1);
  const schedulers = await (await page.request.get(`${base}/v1/dms/schedulers`)).json();
  const options = await page.$$eval("#dms-scheduler option", (os) => os.map((o) => o.value));
  check(
    schedulers.data.filter((s) => s.id !== "off").every((s) => options.includes(s.id)),
    "the scheduler list comes from /v1/dms/schedulers",
  );
  check(
    (await page.inputValue("#dms-mode")) === schedulers.default_mode &&
      (await page.evaluate(() => window.llamaDms.settings.mode)) === "",
    `the mode follows the server's default_mode (${schedulers.default_mode}) until one is picked`,
  );
  check(
    (await page.textContent(`#dms-mode option[value="${schedulers.default_mode}"]`)).includes("server default"),
    "the mode list marks the server's default",
  );

  // ---- settings drawer by keyboard: open, set mode and sampling, Escape closes
  await page.focus("#open-settings");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#settings:not([hidden])");
  check(
    (await page.evaluate(() => document.activeElement.id)) === "dms-mode",
    "the drawer opens by keyboard and focuses its first control",
  );
  await page.selectOption("#dms-mode", "fixed");
  check(await page.isVisible("#w-image"), "fixed mode shows the two weight sliders");
  await page.selectOption("#dms-mode", "rule");
  check(!(await page.isVisible("#w-image")), "other modes hide the sliders");
  await page.fill("#temperature", "0");
  await page.fill("#max-tokens", "24");
  await page.fill("#seed", "7");
  await page.keyboard.press("Escape");
  await page.waitForSelector("#settings", { state: "hidden" });
  check(
    (await page.evaluate(() => document.activeElement.id)) === "open-settings",
    "Escape closes the drawer and gives the focus back",
  );

  // ---- attachments: button (file input), drag-and-drop and paste; remove buttons
  await page.setInputFiles("#file-input", redPng);
  await page.waitForSelector(".thumb img");
  await page.evaluate(async () => {
    const blobOf = (rgb) =>
      new Promise((resolve) => {
        const c = document.createElement("canvas");
        c.width = c.height = 32;
        const g = c.getContext("2d");
        g.fillStyle = rgb;
        g.fillRect(0, 0, 32, 32);
        c.toBlob(resolve, "image/png");
      });
    const drop = new DataTransfer();
    drop.items.add(new File([await blobOf("#00f")], "blue.png", { type: "image/png" }));
    for (const type of ["dragenter", "dragover", "drop"]) {
      window.dispatchEvent(new DragEvent(type, { dataTransfer: drop, bubbles: true, cancelable: true }));
    }
    const paste = new DataTransfer();
    paste.items.add(new File([await blobOf("#0f0")], "green.png", { type: "image/png" }));
    document.getElementById("prompt").dispatchEvent(
      new ClipboardEvent("paste", { clipboardData: paste, bubbles: true, cancelable: true }),
    );
  });
  await page.waitForFunction(() => document.querySelectorAll(".thumb").length === 3);
  check(true, "images attach by button, drag-and-drop and paste (3 thumbnails)");
  check(await page.isHidden("#drop-overlay"), "the drop overlay goes away after the drop");
  await page.click('.thumb-remove[aria-label="Remove green.png"]');
  await page.click('.thumb-remove[aria-label="Remove blue.png"]');
  await page.waitForFunction(() => document.querySelectorAll(".thumb").length === 1);
  check(
    (await page.getAttribute(".thumb img", "alt")) === "red.png",
    "remove buttons drop thumbnails (red.png stays)",
  );

  // ---- Shift+Enter is a new line, Enter sends
  await page.focus("#prompt");
  await page.keyboard.type("What is the main color");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("of this image?");
  check(
    (await page.inputValue("#prompt")) === "What is the main color\nof this image?",
    "Shift+Enter adds a new line without sending",
  );
  const responsePromise = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions"));
  await page.keyboard.press("Enter");
  const response = await responsePromise;
  await lastReplyDone();
  const api = parseSse(await response.text());
  const requestBody = JSON.parse(response.request().postData());
  check(requestBody.stream === true && requestBody.dms.mode === "rule", "the request streams with dms mode rule");
  check(
    requestBody.temperature === 0 && requestBody.max_tokens === 24 && requestBody.seed === 7,
    "temperature, max tokens and seed from the drawer are sent",
  );
  check(
    requestBody.messages[0].content[0].image_url.url.startsWith("data:image/png;base64,"),
    "the image is sent as a data: URI",
  );
  check(await page.isHidden("#stop"), "after the reply the Stop button is hidden again");
  const replyText = (await page.textContent(".msg.assistant .bubble")).trim();
  check(replyText.length > 0, `the streamed reply is shown: ${JSON.stringify(replyText.slice(0, 60))}`);
  check(api.text.trim().length > 0 && api.dms && api.dms.weights, "the API answered with text and dms.weights");
  const shown = await page.$$eval(".msg.assistant .bar-value", (vs) => vs.map((v) => v.textContent));
  const expected = api.dms.weights.images.concat([api.dms.weights.text]).map((w) => w.toFixed(2));
  check(
    JSON.stringify(shown) === JSON.stringify(expected),
    `the DMS bars show dms.weights: ${shown.join(", ")} (API ${expected.join(", ")})`,
  );
  const labels = await page.$$eval(".msg.assistant .bar-label", (ls) => ls.map((l) => l.textContent.trim()));
  check(JSON.stringify(labels) === JSON.stringify(["Image 1", "Text"]), "one bar per image and one for the text");
  const downs = await page.$$eval(".msg.assistant .bar-row", (rs) => rs.map((r) => r.classList.contains("down")));
  check(
    JSON.stringify(downs) === JSON.stringify(expected.map((w) => Number(w) < 0.95)),
    `exactly the inputs with a weight below 0.95 carry the down-weighted marker (${expected.join(", ")})`,
  );
  const chips = await page.textContent(".msg.assistant .dms-info");
  check(chips.includes(api.dms.scheduler), `the panel names the scheduler (${api.dms.scheduler})`);
  check(/DMS \d/.test(chips), "the panel shows the DMS time");
  const title = await page.getAttribute(".msg.assistant .bar-row.image", "title");
  check(/confidence \d/.test(title) && /uncertainty \d/.test(title), "hovering a bar shows its signals");
  await page.click(".msg.assistant .signals summary");
  const confidence = await page.textContent(".msg.assistant .signals tbody tr td");
  check(
    confidence === api.dms.signals.images[0].confidence.toFixed(3),
    `the expanded signals table shows the image's confidence (${confidence})`,
  );
  await page.screenshot({ path: join(outDir, "desktop.png") });
  console.log(`     screenshot ${join(outDir, "desktop.png")}`);
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: join(outDir, "desktop-dark.png") });
  await page.emulateMedia({ colorScheme: "light" });

  // ---- a refused request (the test server loads no learned scheduler) becomes an error bubble
  const hasLearned = schedulers.data.some((s) => s.kind === "learned");
  check(!hasLearned, "the test server lists no learned scheduler");
  {
    await page.click("#open-settings");
    await page.selectOption("#dms-mode", "learned");
    await page.keyboard.press("Escape");
    await page.fill("#prompt", "Hello?");
    await page.keyboard.press("Enter");
    await lastReplyDone();
    const error = await page.textContent(".msg.assistant:last-child .error");
    check(/learned scheduler/.test(error), `a server error shows as an error bubble: ${error.trim().slice(0, 70)}`);
    await page.click("#open-settings");
    await page.selectOption("#dms-mode", "rule");
    await page.keyboard.press("Escape");
  }

  // ---- fixed mode: the sliders' weights go to every image of the conversation
  await page.click("#open-settings");
  await page.selectOption("#dms-mode", "fixed");
  for (const [id, value] of [["#w-image", "0.5"], ["#w-text", "1.5"]]) {
    await page.$eval(
      id,
      (range, v) => {
        range.value = v;
        range.dispatchEvent(new Event("input", { bubbles: true }));
      },
      value,
    );
  }
  check((await page.textContent("#w-image-out")) === "0.50", "the image slider shows its value");
  await page.keyboard.press("Escape");
  const fixedPromise = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions"));
  await page.fill("#prompt", "And with fixed weights?");
  await page.keyboard.press("Enter");
  const fixedRequest = JSON.parse((await fixedPromise).request().postData());
  await lastReplyDone();
  check(
    JSON.stringify(fixedRequest.dms) === JSON.stringify({ mode: "fixed", weights: { images: [0.5], text: 1.5 } }),
    `fixed mode sends one image weight per image of the conversation: ${JSON.stringify(fixedRequest.dms)}`,
  );
  const fixedBars = await page.$$eval(".msg.assistant:last-child .bar-value", (vs) => vs.map((v) => v.textContent));
  check(JSON.stringify(fixedBars) === '["0.50","1.50"]', `the fixed weights are shown (${fixedBars.join(", ")})`);
  check(
    (await page.$$(".msg.assistant:last-child .bar-row.image.down .badge")).length === 1,
    "the image at 0.50 is marked down-weighted",
  );
  await page.click("#open-settings");
  await page.selectOption("#dms-mode", "rule");
  await page.keyboard.press("Escape");

  // ---- Stop aborts a long generation; the partial reply stays
  await page.click("#open-settings");
  await page.fill("#max-tokens", "2000");
  await page.fill("#temperature", "1");
  await page.keyboard.press("Escape");
  // A reply may end by itself before any text arrives (a sampled end of text): ask again.
  let stopped = null;
  for (let attempt = 0; attempt < 4 && !(stopped && stopped.stopped); attempt++) {
    await page.fill("#prompt", `Tell me a very long story about colours, with ${attempt + 5} chapters.`);
    await page.keyboard.press("Enter");
    await page.waitForFunction(
      () => {
        const m = window.llamaDms.conversation.messages.at(-1);
        return m.role === "assistant" && (m.text.length > 0 || !m.streaming);
      },
      null,
      { timeout: 30000 },
    );
    if (await page.isVisible("#stop")) await page.click("#stop");
    await lastReplyDone();
    stopped = (await conversation()).messages.at(-1);
  }
  check(stopped.stopped === true, "Stop aborted the stream");
  check(stopped.text.length > 0, `the partial reply stays (${stopped.text.length} characters)`);
  check(
    (await page.isVisible("#send")) && (await page.isHidden("#stop")),
    "the page is idle again after Stop",
  );
  check(
    (await page.textContent(".msg.assistant:last-child .meta")).includes("stopped"),
    "the stopped reply is marked as stopped",
  );

  // ---- reload: the conversation is still there
  const before = await conversation();
  const count = await page.$$eval(".messages .msg", (ms) => ms.length);
  await page.reload();
  await page.waitForSelector('#status-dot[data-state="ok"]');
  const after = await conversation();
  check(
    JSON.stringify(after.messages.map((m) => m.text)) === JSON.stringify(before.messages.map((m) => m.text)),
    `the conversation survives a reload (${after.messages.length} messages)`,
  );
  check((await page.$$eval(".messages .msg", (ms) => ms.length)) === count, "all messages are shown again");
  check((await page.$$(".msg.user .msg-images img")).length === 1, "the image is shown again");
  const shownAgain = await page.$$eval(".msg.assistant .bar-value", (vs) => vs.slice(0, 2).map((v) => v.textContent));
  check(JSON.stringify(shownAgain) === JSON.stringify(expected), "the DMS bars are shown again");
  check(
    (await page.evaluate(() => window.llamaDms.settings.maxTokens)) === 2000,
    "the settings survive a reload",
  );
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#dms-mode option")].some((o) => o.textContent.includes("server default")),
  );
  check(
    (await page.inputValue("#dms-mode")) === "rule" && schedulers.default_mode !== "rule",
    `a picked mode (rule) wins over the server's default (${schedulers.default_mode}) after a reload`,
  );

  // ---- phone width: no horizontal overflow, drawer usable
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => {
    document.getElementById("chat").scrollTop = 0;
  });
  const overflow = await page.evaluate(() => ({
    doc: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    chat: document.getElementById("chat").scrollWidth,
  }));
  check(
    overflow.doc <= 390 && overflow.body <= 390 && overflow.chat <= 390,
    `no horizontal overflow at 390 px (${JSON.stringify(overflow)})`,
  );
  await page.screenshot({ path: join(outDir, "phone.png") });
  console.log(`     screenshot ${join(outDir, "phone.png")}`);
  await page.click("#open-settings");
  await page.waitForSelector("#settings:not([hidden])");
  await page.waitForTimeout(300); // the drawer's slide-in
  const drawer = await page.$eval("#settings", (d) => d.getBoundingClientRect().width);
  check(drawer <= 390, "the settings drawer fits the phone screen");
  await page.screenshot({ path: join(outDir, "phone-settings.png") });
  await page.click("#close-settings");
  await page.setViewportSize({ width: 1280, height: 860 });

  // ---- model output containing HTML renders as text
  const hostile =
    '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"> **bold** ' +
    "[x](javascript:window.__pwned=1)\n\n```html\n<script>window.__pwned=1</script>\n```\n";
  await page.evaluate((text) => {
    localStorage.setItem(
      "llama-dms.chat.v1",
      JSON.stringify({
        messages: [
          { role: "user", text: "<b>hi</b>", images: [] },
          { role: "assistant", text },
        ],
      }),
    );
  }, hostile);
  await page.reload();
  await page.waitForSelector(".msg.assistant .bubble");
  const bubble = await page.$(".msg.assistant .bubble");
  const html = await bubble.evaluate((b) => ({
    text: b.textContent,
    scripts: b.querySelectorAll("script").length,
    imgs: b.querySelectorAll("img").length,
    links: [...b.querySelectorAll("a")].map((a) => a.getAttribute("href")),
    code: b.querySelector("pre code") ? b.querySelector("pre code").textContent : null,
    strong: b.querySelector("strong") ? b.querySelector("strong").textContent : null,
  }));
  check(html.text.includes("<script>window.__pwned=1</script>"), "a <script> in model output shows as text");
  check(html.text.includes('<img src=x onerror="window.__pwned=1">'), "an <img onerror> shows as text");
  check(html.scripts === 0 && html.imgs === 0, "no script or img element comes from model output");
  check(html.links.length === 0, "javascript: links are not made links");
  check(html.code === "<script>window.__pwned=1</script>", "code blocks render their text");
  check(html.strong === "bold", "Markdown still renders (bold)");
  check(
    (await page.textContent(".msg.user .bubble")) === "<b>hi</b>",
    "user text shows as typed",
  );
  check((await page.evaluate(() => window.__pwned)) === undefined, "window.__pwned stays undefined");

  // ---- the down-weighted marker: only below 0.95, compared as shown (two decimals)
  await page.evaluate(() => {
    const weights = { images: [0.99, 0.96, 0.949, 0.9449, 0.5], text: 1.2 };
    localStorage.setItem(
      "llama-dms.chat.v1",
      JSON.stringify({
        messages: [
          { role: "user", text: "five images", images: [] },
          { role: "assistant", text: "ok", dms: { mode: "fixed", scheduler: "fixed", weights } },
        ],
      }),
    );
  });
  await page.reload();
  await page.waitForSelector(".msg.assistant .bar-row");
  const marks = await page.$$eval(".msg.assistant .bar-row", (rs) =>
    rs.map((r) => `${r.querySelector(".bar-value").textContent}${r.classList.contains("down") ? " down" : ""}`),
  );
  check(
    JSON.stringify(marks) === JSON.stringify(["0.99", "0.96", "0.95", "0.94 down", "0.50 down", "1.20"]),
    `weights within 1 ± 0.05 are not marked down-weighted: ${marks.join(", ")}`,
  );

  // ---- New chat clears the conversation and the stored copy
  await page.click("#new-chat");
  check((await page.$$(".messages .msg")).length === 0, "New chat empties the message list");
  await page.reload();
  await page.waitForSelector("#empty:not([hidden])");
  check((await conversation()).messages.length === 0, "and the stored conversation");

  // ---- a full localStorage: the page warns and keeps working
  await page.evaluate(() => {
    for (let size = 1 << 20, n = 0; size > 64; ) {
      try {
        localStorage.setItem(`filler${n++}`, "x".repeat(size));
      } catch (_) {
        size >>= 1;
      }
    }
  });
  await page.setInputFiles("#file-input", redPng);
  await page.fill("#prompt", "What is the main color of this image?");
  await page.keyboard.press("Enter");
  await lastReplyDone();
  check(/storage/.test(await page.textContent("#banner")), "a full localStorage shows a warning");
  check(
    (await conversation()).messages.at(-1).dms !== undefined,
    "and the reply still streams with its DMS panel",
  );
  await page.evaluate(() => localStorage.clear());

  check(pageErrors.length === 0, `no script errors on the page ${pageErrors.join("; ")}`);
  await context.close();

  // ---- a server with an API key: the page asks for it, keeps it in the browser, sends it
  if (keyedBase) {
    const keyed = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const kp = await keyed.newPage();
    await kp.goto(`${keyedBase}/`);
    await kp.waitForSelector('#status-dot[data-state="warn"]', { timeout: 15000 });
    check(/API key/.test(await kp.textContent("#banner")), "a keyed server: the page asks for the API key");
    await kp.click("#open-settings");
    await kp.fill("#api-key", apiKey);
    await kp.keyboard.press("Escape");
    await kp.waitForSelector('#status-dot[data-state="ok"]');
    check(await kp.isHidden("#banner"), "with the key the model loads and the message goes away");
    await kp.waitForFunction(() => document.getElementById("mode-summary").textContent.startsWith("rule"));
    check(
      (await kp.inputValue("#dms-mode")) === "rule",
      "a server started with --dms rule: the mode setting follows it",
    );
    const sent = kp.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
    await kp.fill("#prompt", "Hello");
    await kp.keyboard.press("Enter");
    const sentRequest = await sent;
    const auth = sentRequest.headers()["authorization"];
    check(auth === `Bearer ${apiKey}`, "chat requests carry Authorization: Bearer <key>");
    check(
      !("mode" in JSON.parse(sentRequest.postData()).dms),
      "without a picked mode the request leaves the mode to the server",
    );
    await kp.waitForFunction(() => !window.llamaDms.conversation.messages.at(-1).streaming, null, {
      timeout: 45000,
    });
    const last = (await kp.evaluate(() => window.llamaDms.conversation)).messages.at(-1);
    check(!last.error, `the keyed request is answered ${last.error || ""}`);
    check(
      (await kp.evaluate(() => document.cookie)) === "" &&
        (await kp.evaluate(() => JSON.parse(localStorage.getItem("llama-dms.settings.v1")).apiKey)) === apiKey,
      "the key is kept in localStorage only (no cookie)",
    );
    await keyed.close();
  }
} catch (e) {
  failed = true;
  console.error(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
console.log(`${failed ? "FAILED" : "passed"} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
