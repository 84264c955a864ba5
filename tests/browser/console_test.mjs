// The console in a real browser (Debian's chromium, headless), driven by
// puppeteer-core. Run by tests/browser/console_test.cc, which owns the Keel
// processes; the two talk through files in --dir:
//
//   this script                              the C++ test
//   page open, live numbers shown -> page-ready
//                                            makes an interaction in doubt -> seq (its NODE:COUNTER)
//   its row seen within 2 s       -> row-seen (ms it took)
//                                            brings the participant back -> retry-go
//   clicks "Retry now", answers the prompts; waits for the row to leave
//   and the audit log to show the retry   -> exit 0 (screenshots in --dir)
//
// Any step that does not happen in time: a message on stderr, exit 1.

import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, "").split(/=(.*)/s).slice(0, 2)));
const url = args.url, dir = args.dir, chromium = args.chromium || "/usr/bin/chromium";
if (!url || !dir) {
  console.error("usage: node console_test.mjs --url=http://127.0.0.1:PORT/ --dir=DIR [--chromium=PATH]");
  process.exit(2);
}

function fail(msg) {
  console.error("console test: " + msg);
  process.exit(1);
}

async function waitForFile(name, ms) {
  const file = path.join(dir, name);
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (fs.existsSync(file)) return fs.readFileSync(file, "utf8").trim();
    await new Promise((r) => setTimeout(r, 20));
  }
  fail("no " + name + " from the C++ test within " + ms + " ms");
}

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
  args: ["--no-sandbox", "--disable-gpu", "--window-size=1400,1100"],
  defaultViewport: { width: 1400, height: 1100 },
});
let code = 1;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("dialog", async (d) => {
    // The retry's two prompts: who, then why (both go to the audit log).
    await d.accept(d.message().startsWith("Your name") ? "browser-test" : "bank-b is back (console browser test)");
  });
  const resp = await page.goto(url, { waitUntil: "load" });
  if (!resp || resp.status() !== 200) fail("the console answered " + (resp ? resp.status() : "nothing"));
  const csp = resp.headers()["content-security-policy"] || "";
  if (!csp.includes("connect-src 'self'")) fail("no Content-Security-Policy on the page: " + csp);

  // Live numbers: the status says live and the throughput is a number
  // (the C++ test keeps transfers going while the page is open).
  await page.waitForFunction(() => document.querySelector("#status").textContent === "live" &&
    /^\d+$/.test(document.querySelector("#tps").textContent) && Number(document.querySelector("#tps").textContent) > 0,
    { timeout: 15000 }).catch(() => fail("the page never showed live numbers with transfers going: status '" +
      "' (see console-live.png)"));
  await page.waitForSelector('#participants tr[data-name="bank-a"]', { timeout: 5000 });
  await page.screenshot({ path: path.join(dir, "console-live.png") });
  fs.writeFileSync(path.join(dir, "page-ready"), "1");

  // The in-doubt interaction appears within 2 s of being made.
  const seq = await waitForFile("seq", 60000);
  const t0 = Date.now();
  const row = `#unfinished tr[data-seq="${seq}"]`;
  await page.waitForSelector(row, { timeout: 2000 }).catch(async () => {
    await page.screenshot({ path: path.join(dir, "console-missing-row.png") });
    fail("the in-doubt interaction " + seq + " did not appear within 2 s");
  });
  const took = Date.now() - t0;
  const state = await page.$eval(row + " td:nth-child(2)", (e) => e.textContent);
  if (!state.includes("in doubt")) fail("row " + seq + " is not marked in doubt: " + state);
  const waits = await page.$eval(row + " td:nth-child(4)", (e) => e.textContent);
  if (!waits.includes("bank-b")) fail("row " + seq + " does not say it waits on bank-b: " + waits);
  await page.waitForFunction(() => document.querySelector('#participants tr[data-name="bank-b"] td:nth-child(3)')
    .textContent.startsWith("down"), { timeout: 3000 }).catch(() => fail("bank-b is not shown down"));
  // Its story, through the search box.
  await page.type("#search", seq);
  await page.click("#search-go");
  await page.waitForFunction((s) => document.querySelector("#story").textContent.includes(s + " — committing"),
    { timeout: 3000 }, seq).catch(() => fail("the search did not show " + seq + "'s story"));
  await page.screenshot({ path: path.join(dir, "console-in-doubt.png") });
  fs.writeFileSync(path.join(dir, "row-seen"), String(took));

  // Retry from the page once the participant is back.
  await waitForFile("retry-go", 60000);
  await page.click(row + " button.retry");
  await page.waitForFunction((s) => document.querySelector("#action-result").textContent.startsWith("retried " + s + ": 1"),
    { timeout: 5000 }, seq).catch(async () => {
    fail("the retry was not answered: '" + (await page.$eval("#action-result", (e) => e.textContent)) + "'");
  });
  await page.waitForFunction((r) => !document.querySelector(r), { timeout: 10000 }, row)
    .catch(() => fail("interaction " + seq + " stayed unfinished after the retry"));
  await page.waitForSelector('#audit tr[data-action="retry"]', { timeout: 7000 })
    .catch(() => fail("the audit log on the page shows no retry"));
  const audit = await page.$eval('#audit tr[data-action="retry"]', (e) => e.textContent);
  if (!audit.includes(seq) || !audit.includes("browser-test") || !audit.includes("bank-b is back")) {
    fail("the audit row does not name the seq, who and why: " + audit);
  }
  await page.screenshot({ path: path.join(dir, "console-after-retry.png") });
  if (errors.length) fail("the page logged errors: " + errors.join(" | "));
  console.log("console test: row of " + seq + " seen after " + took + " ms; retried from the page; audited");
  code = 0;
} catch (e) {
  console.error("console test: " + (e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
process.exit(code);
