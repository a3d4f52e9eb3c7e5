// The chat window end to end: a real rendezvous and two real daemons on 127.0.0.1, and alice's
// and bob's windows in headless Chromium (Debian's `chromium`, driven by playwright-core).
//
//   cd tests/ui && npm ci && npm test
//
// Screenshots of both windows go to $PEERCHAT_UI_SCREENSHOTS (default: target/ui-screenshots).

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createHmac } from "node:crypto";
import { crc32, deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const root = resolve(import.meta.dirname, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR || join(root, "target");
const bin = (name) => join(targetDir, "debug", name);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const shots = process.env.PEERCHAT_UI_SCREENSHOTS || join(targetDir, "ui-screenshots");
const PASSWORD = "correct horse battery";

const started = Date.now();
const step = (what) => console.log(`ui test (${((Date.now() - started) / 1000).toFixed(1)} s): ${what}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, check, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Every process started, to stop at the end whatever happens. */
const children = new Set();

function launch(args, logName, work) {
  const child = spawn(args[0], args.slice(1), {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" },
  });
  children.add(child);
  child.output = "";
  child.stdout.on("data", (d) => (child.output += d));
  child.stderr.on("data", (d) => (child.log = (child.log || "") + d));
  child.on("exit", () => children.delete(child));
  child.logName = logName;
  return child;
}

async function stop(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

function cli(dir, args, env = {}) {
  return execFileSync(bin("peerchat"), ["--data-dir", dir, ...args], {
    env: { ...process.env, PEERCHAT_PASSWORD: PASSWORD, RUST_LOG: "off", ...env },
    encoding: "utf8",
  });
}

class Cluster {
  constructor() {
    this.work = mkdtempSync(join(tmpdir(), "peerchat-ui-"));
    this.ca = join(this.work, "ca.pem");
  }

  async startRendezvous(port = 0) {
    const child = launch(
      [bin("peerchat-rendezvous"), "--data-dir", join(this.work, "rendezvous"), "--listen", `127.0.0.1:${port}`, "--metrics-listen", "127.0.0.1:0", "--ca-cert-out", this.ca],
      "rendezvous",
    );
    const bound = await waitFor("the rendezvous", () => child.output.match(/https:\/\/127\.0\.0\.1:(\d+)/)?.[1]);
    this.url = `https://localhost:${bound}`;
    this.rendezvous = child;
  }

  /** A daemon on `dir`, its API on `port` (0: any); resolves once the API is up. */
  async startDaemon(dir, port = 0, extra = []) {
    const addr = join(dir, "api.addr");
    rmSync(addr, { force: true });
    // The store key wrapped under a passphrase, as on a desktop without a keyring.
    const passphrase = `${dir}.passphrase`;
    if (!existsSync(passphrase)) writeFileSync(passphrase, "a long window-test passphrase\n");
    const child = launch(
      [bin("peerchat"), "daemon", "--data-dir", dir, "--rendezvous", this.url, "--ca-cert", this.ca, "--api", `127.0.0.1:${port}`, "--passphrase-file", passphrase, ...extra],
      dir,
    );
    await waitFor(`the daemon in ${dir}`, () => existsSync(addr) && readFileSync(addr, "utf8").trim());
    const api = readFileSync(addr, "utf8").trim();
    return { child, dir, port: Number(api.split(":").pop()), api };
  }

  /** A one-time link into `daemon`'s window. */
  link(daemon) {
    const url = cli(daemon.dir, ["ui", "--print"]).trim().split("\n").pop();
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/ui\/open\?code=[0-9a-f]{64}$/);
    return url;
  }

  async close() {
    for (const child of [...children]) await stop(child);
    rmSync(this.work, { recursive: true, force: true });
  }
}

async function window(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/.test(m.text())) errors.push(m.text());
  });
  await page.goto(url);
  page.errors = errors;
  return page;
}

async function signUp(page, name) {
  await page.waitForSelector("#welcome:not([hidden])");
  // The one-time code is gone from the address bar.
  assert.equal(new URL(page.url()).pathname, "/");
  assert.equal(new URL(page.url()).search, "");
  await page.getByLabel("Username", { exact: true }).fill(name);
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.waitForSelector("#chat:not([hidden])");
  assert.equal(await page.textContent("#me"), name);
}

const outgoingStatus = (page, text) =>
  page.locator("#messages .message.outgoing", { hasText: text }).locator(".status");

/** The code of a base32 TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s), `step` steps from now
 * (codes are single use: a second login takes the next step's). */
function totp(secret, step = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const key = [];
  for (const c of secret.replace(/=+$/, "").toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      key.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 30_000) + step));
  const mac = createHmac("sha1", Buffer.from(key)).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

/** A `width` × `height` PNG of a colour gradient (truecolour, no filter). */
function png(width, height) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const rows = [];
  for (let y = 0; y < height; y++) {
    rows.push(0);
    for (let x = 0; x < width; x++) rows.push((x * 255) / width, (y * 255) / height, 160);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(Buffer.from(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

async function screenshot(page, name) {
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `${name}.png`) });
}

test("alice and bob chat in their windows, live, offline and through a key change", { timeout: 240_000 }, async () => {
  execFileSync("cargo", ["build", "--locked", "-q", "--bin", "peerchat", "--bin", "peerchat-rendezvous"], {
    cwd: root,
    stdio: "inherit",
  });
  const cluster = new Cluster();
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  try {
    await cluster.startRendezvous();
    const aliceDir = join(cluster.work, "alice");
    let bobDir = join(cluster.work, "bob");
    // Alice gives up on undeliverable messages after 4 s instead of 7 days.
    const alice = await cluster.startDaemon(aliceDir, 0, ["--give-up-after-secs", "4"]);
    let bob = await cluster.startDaemon(bobDir);

    // Each signs up in their own window.
    const aliceLink = cluster.link(alice);
    const alicePage = await window(browser, aliceLink);
    await alicePage.waitForSelector("#welcome:not([hidden])");
    await screenshot(alicePage, "alice-welcome");
    await signUp(alicePage, "alice");
    const bobPage = await window(browser, cluster.link(bob));
    await signUp(bobPage, "bob");

    // A used link does not open the window a second time.
    step("A used link does not open the window a second time.");
    const again = await (await browser.newContext()).newPage();
    const refused = await again.goto(aliceLink);
    assert.equal(refused.status(), 403);
    await again.context().close();

    // Alice finds bob by his exact name and writes; Enter sends, Shift+Enter is a new line.
    step("Alice finds bob by his exact name and writes; Enter sends, Shift+Enter is a new line.");
    const search = alicePage.getByLabel("Start a chat with (exact username)");
    for (const [name, error] of [["nobody-here", /There is no user with that name/], ["alice", /That is you/]]) {
      await search.fill(name);
      await search.press("Enter");
      await alicePage.waitForSelector("#error:not([hidden])");
      assert.match(await alicePage.textContent("#error-text"), error);
      await alicePage.getByRole("button", { name: "Dismiss the error" }).click();
      await alicePage.waitForSelector("#error", { state: "hidden" });
    }
    assert.equal(await alicePage.locator("#conversations li").count(), 0, "nothing was added");
    await alicePage.getByLabel("Start a chat with (exact username)").fill("bob");
    await alicePage.getByLabel("Start a chat with (exact username)").press("Enter");
    await alicePage.waitForSelector("#pane:not([hidden])");
    assert.equal(await alicePage.textContent("#peer-name"), "bob");
    const input = alicePage.getByLabel("Message", { exact: true });
    await input.fill("Hello Bob, from my window");
    await input.press("Shift+Enter");
    await input.pressSequentially("second line");
    assert.equal(await input.inputValue(), "Hello Bob, from my window\nsecond line");
    await input.press("Enter");
    assert.equal(await input.inputValue(), "");

    // Bob's window shows it without a reload, as a message request (alice wrote first): an
    // unread badge, the count in the tab's title, then the message.
    step("Bob's window shows it without a reload, as a message request: an unread badge, then the message.");
    await bobPage.evaluate(() => (window.__sameDocument = true));
    const badge = bobPage.locator('#requests button[data-peer="alice"] .unread');
    await badge.waitFor();
    assert.equal(await badge.textContent(), "1");
    assert.match(await bobPage.title(), /^\(1\) peerchat — bob$/);
    assert.equal(await bobPage.locator('#conversations button[data-peer="alice"]').count(), 0, "requests are listed apart");
    const lastLine = await bobPage.textContent('#requests button[data-peer="alice"] .last');
    assert.match(lastLine, /Hello Bob, from my window/);
    await bobPage.click('#requests button[data-peer="alice"]');
    await bobPage.waitForSelector("#request-note:not([hidden])");
    assert.match(await bobPage.textContent("#request-text"), /alice wrote to you first/);
    // Nothing unread once shown: the title follows when the node has marked it read.
    await bobPage.waitForFunction(() => document.title === "peerchat — bob");
    // Read while a request: alice is not told until bob accepts.
    await bobPage.locator("#messages .message.incoming", { hasText: "Hello Bob" }).waitFor();
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await outgoingStatus(alicePage, "Hello Bob").textContent(), "delivered");
    await bobPage.getByRole("button", { name: "Accept" }).click();
    await bobPage.waitForSelector("#request-note", { state: "hidden" });
    await bobPage.waitForSelector('#conversations button[data-peer="alice"]');
    assert.equal(await bobPage.isVisible("#requests-nav"), false);
    const received = bobPage.locator("#messages .message.incoming", { hasText: "Hello Bob, from my window" });
    await received.waitFor();
    assert.equal(await received.locator(".text").textContent(), "Hello Bob, from my window\nsecond line");
    await bobPage.locator("#messages .message.incoming time").first().waitFor();
    await bobPage.waitForSelector('#conversations button[data-peer="alice"]:not(:has(.unread))');

    // Alice's status goes on to "read" by itself.
    await alicePage.waitForSelector('#messages .message.outgoing .status[data-status="read"]');
    assert.equal(await outgoingStatus(alicePage, "Hello Bob").textContent(), "read");
    await bobPage.getByLabel("Message", { exact: true }).fill("Hi Alice! Got it.");
    await bobPage.getByLabel("Message", { exact: true }).press("Enter");
    await alicePage.locator("#messages .message.incoming", { hasText: "Hi Alice! Got it." }).waitFor();
    await alicePage.waitForSelector('#peer-presence:text("online · direct")');
    for (const page of [alicePage, bobPage]) {
      assert.equal(await page.isVisible("#error"), false, "no error is shown");
      assert.equal(await page.isVisible("#key-warning"), false, "no key warning before a key change");
    }
    await screenshot(alicePage, "alice");
    await screenshot(bobPage, "bob");

    step("A day separator heads the conversation.");
    const day = alicePage.locator("#messages li.day").first();
    assert.equal(await day.getAttribute("role"), "separator");
    assert.match(await day.textContent(), new RegExp(String(new Date().getFullYear())));

    step("Typing shows in the other window, and goes when the message arrives.");
    await bobPage.getByLabel("Message", { exact: true }).pressSequentially("Let me think");
    await alicePage.waitForSelector('#typing:not([hidden]):text("bob is typing…")');
    await bobPage.getByLabel("Message", { exact: true }).press("Enter");
    await alicePage.locator("#messages .message.incoming", { hasText: "Let me think" }).waitFor();
    await alicePage.waitForSelector("#typing", { state: "hidden" });

    step("Bob replies to alice's first message from its menu; alice's window quotes it and jumps to it.");
    const menuOf = (page, direction, text) => page.locator(`#messages .message.${direction}`, { hasText: text }).locator("details.menu");
    await menuOf(bobPage, "incoming", "Hello Bob").locator("summary").click();
    await menuOf(bobPage, "incoming", "Hello Bob").getByRole("button", { name: "Reply" }).click();
    await bobPage.waitForSelector("#reply-bar:not([hidden])");
    await bobPage.getByLabel("Message", { exact: true }).fill("Replying to that");
    await bobPage.getByLabel("Message", { exact: true }).press("Enter");
    const reply = alicePage.locator("#messages .message.incoming", { hasText: "Replying to that" });
    await reply.waitFor();
    assert.match(await reply.locator(".quote").textContent(), /alice: Hello Bob, from my window/);
    await reply.locator(".quote").click();
    await alicePage.waitForSelector("#messages .message.outgoing.highlight");

    step("Alice edits a message; bob's window shows the new text, marked edited.");
    await alicePage.getByLabel("Message", { exact: true }).fill("See you at noon");
    await alicePage.getByLabel("Message", { exact: true }).press("Enter");
    await bobPage.locator("#messages .message.incoming", { hasText: "See you at noon" }).waitFor();
    await menuOf(alicePage, "outgoing", "See you at noon").locator("summary").click();
    await menuOf(alicePage, "outgoing", "See you at noon").getByRole("button", { name: "Edit" }).click();
    await alicePage.getByLabel("Message", { exact: true }).fill("See you at one");
    await alicePage.getByLabel("Message", { exact: true }).press("Enter");
    const edited = bobPage.locator("#messages .message.incoming", { hasText: "See you at one" });
    await edited.locator(".edited").waitFor();
    assert.equal(await bobPage.locator("#messages .message", { hasText: "See you at noon" }).count(), 0);

    step("Bob reacts; alice sees it.");
    await menuOf(bobPage, "incoming", "See you at one").locator("summary").click();
    await menuOf(bobPage, "incoming", "See you at one").getByRole("button", { name: "React 👍" }).click();
    const reaction = alicePage.locator("#messages .message.outgoing", { hasText: "See you at one" }).locator('.reactions span[data-by="bob"]');
    await reaction.waitFor();
    assert.equal(await reaction.textContent(), "👍 bob");

    step("Alice deletes it for everyone; bob's window says it was deleted.");
    alicePage.once("dialog", (d) => d.accept());
    await menuOf(alicePage, "outgoing", "See you at one").locator("summary").click();
    await menuOf(alicePage, "outgoing", "See you at one").getByRole("button", { name: "Delete for everyone" }).click();
    await bobPage.locator("#messages .message.incoming .text.deleted", { hasText: "This message was deleted" }).waitFor();
    assert.equal(await bobPage.locator("#messages .message", { hasText: "See you at one" }).count(), 0);

    step("Alice searches her messages and jumps to a hit.");
    await alicePage.getByLabel("Search messages").fill("REPLYING");
    await alicePage.getByLabel("Search messages").press("Enter");
    const hit = alicePage.locator("#search-results button.hit");
    await hit.first().waitFor();
    assert.equal(await hit.count(), 1);
    assert.match(await hit.textContent(), /bob: Replying to that/);
    await hit.click();
    await alicePage.waitForSelector("#messages .message.incoming.highlight");

    step("The settings panel: a display name bob's window shows, typing and notifications.");
    await alicePage.context().grantPermissions(["notifications"]);
    await alicePage.getByRole("button", { name: "Settings" }).click();
    await alicePage.waitForSelector("#settings-dialog[open]");
    assert.equal(await alicePage.getByLabel("Send read receipts").isChecked(), true);
    await alicePage.getByLabel(/Display name/).fill("Alice Liddell");
    await alicePage.getByLabel("Show others when I am typing").uncheck();
    await alicePage.getByLabel(/Notify me of new messages/).check();
    await alicePage.getByRole("button", { name: "Save" }).click();
    await alicePage.waitForSelector("#settings-dialog:not([open])", { state: "attached" });
    await bobPage.waitForSelector('#peer-display:text("Alice Liddell")');
    assert.deepEqual(JSON.parse(cli(aliceDir, ["profile", "show", "--json"])).display_name, "Alice Liddell");
    assert.equal(await alicePage.evaluate(() => localStorage.getItem("peerchat.notifications")), "on");
    await alicePage.getByRole("button", { name: "Settings" }).click();
    await alicePage.waitForSelector("#settings-dialog[open]");
    assert.equal(await alicePage.getByLabel("Show others when I am typing").isChecked(), false, "kept");
    await alicePage.getByLabel("Show others when I am typing").check();
    await alicePage.getByRole("button", { name: "Save" }).click();
    await alicePage.waitForSelector("#settings-dialog:not([open])", { state: "attached" });
    step("Bob shares an avatar from the CLI; alice's window shows it beside his name.");
    const avatarFile = join(cluster.work, "bob-avatar.png");
    writeFileSync(avatarFile, png(24, 24));
    cli(bobDir, ["profile", "set", "--display-name", "Bob Builder", "--avatar", avatarFile]);
    const avatar = alicePage.locator('#conversations button[data-peer="bob"] img.avatar');
    await avatar.waitFor();
    await waitFor("bob's avatar is drawn", async () => (await avatar.evaluate((img) => (img.complete ? img.naturalWidth : 0))) === 24);
    await alicePage.waitForSelector('#peer-display:text("Bob Builder")');
    await screenshot(alicePage, "alice-amended");

    step("Alice sends a picture from her window: both windows show it, bob's Save link serves it.");
    const picture = png(96, 64);
    await alicePage.setInputFiles("#file-input", { name: "sunset.png", mimeType: "image/png", buffer: picture });
    const naturalWidth = (page, direction) =>
      page
        .locator(`#messages .message.file.${direction}[data-state="complete"] img.preview`)
        .evaluate((img) => (img.complete ? img.naturalWidth : 0));
    await bobPage.locator('#messages .message.file.incoming[data-state="complete"] img.preview').waitFor();
    await waitFor("bob's preview is drawn", async () => (await naturalWidth(bobPage, "incoming")) === 96);
    assert.match(await bobPage.locator("#messages .message.file.incoming .file-name").textContent(), /sunset\.png/);
    await alicePage.locator('#messages .message.file.outgoing[data-state="complete"]').waitFor();
    await waitFor("alice's preview is drawn", async () => (await naturalWidth(alicePage, "outgoing")) === 96);
    const saved = await bobPage.evaluate(async () => {
      const link = document.querySelector("#messages .message.file.incoming a.save");
      const response = await fetch(link.href);
      const bytes = new Uint8Array(await response.arrayBuffer());
      return {
        status: response.status,
        disposition: response.headers.get("content-disposition"),
        policy: response.headers.get("content-security-policy"),
        bytes: Array.from(bytes),
      };
    });
    assert.equal(saved.status, 200);
    assert.match(saved.disposition, /^attachment; filename\*=UTF-8''sunset\.png$/);
    assert.match(saved.policy, /sandbox/);
    assert.deepEqual(Buffer.from(saved.bytes), picture, "the same bytes");
    // Without the window's session the file is not served.
    const stranger = await (await browser.newContext()).newPage();
    const href = await bobPage.locator("#messages .message.file.incoming a.save").getAttribute("href");
    const refusedFile = await stranger.goto(new URL(href, bobPage.url()).href);
    assert.equal(refusedFile.status(), 401);
    await stranger.context().close();
    await screenshot(alicePage, "alice-file");
    await screenshot(bobPage, "bob-file");

    step("A group: alice creates it with bob and carol, everyone writes, receipts per member, then");
    step("carol is removed and added back from the members dialog.");
    const carolDir = join(cluster.work, "carol");
    await cluster.startDaemon(carolDir);
    cli(carolDir, ["register", "carol"]);
    await alicePage.getByRole("button", { name: "New group" }).click();
    await alicePage.getByLabel("Group name").fill("Book club");
    await alicePage.getByLabel("Members (usernames, separated by commas)").fill("bob, carol");
    await alicePage.getByRole("button", { name: "Create" }).click();
    await alicePage.waitForSelector('#peer-name:text("Book club")');
    const groupButton = alicePage.locator("#conversations button[data-group]");
    const groupId = await groupButton.getAttribute("data-group");
    assert.match(groupId, /^[0-9a-f]{32}$/);
    await alicePage.getByLabel("Message", { exact: true }).fill("Welcome to the book club");
    await alicePage.getByLabel("Message", { exact: true }).press("Enter");
    const bobGroup = bobPage.locator(`#conversations button[data-group="${groupId}"]`);
    await bobGroup.locator(".unread").waitFor();
    await bobGroup.click();
    const fromAlice = bobPage.locator("#messages .message.incoming", { hasText: "Welcome to the book club" });
    await fromAlice.waitFor();
    assert.equal(await fromAlice.locator(".author").getAttribute("data-author"), "alice");
    assert.equal(await fromAlice.locator(".author").textContent(), "Alice Liddell (alice)", "her display name");
    await bobPage.getByLabel("Message", { exact: true }).fill("Count me in");
    await bobPage.getByLabel("Message", { exact: true }).press("Enter");
    const fromBob = alicePage.locator("#messages .message.incoming", { hasText: "Count me in" });
    await fromBob.waitFor();
    assert.equal(await fromBob.locator(".author").getAttribute("data-author"), "bob");
    assert.equal(await fromBob.locator(".author").textContent(), "Bob Builder (bob)", "his display name");
    // Carol reads it from the CLI; alice's message is then read by both, member by member.
    const carolSaw = cli(carolDir, ["history", "--group", groupId]);
    assert.match(carolSaw, /alice: Welcome to the book club/);
    const welcome = alicePage.locator("#messages .message.outgoing", { hasText: "Welcome to the book club" });
    await welcome.locator('.status[data-read="2"]').waitFor();
    assert.equal(await welcome.locator(".status").textContent(), "read by everyone");
    assert.equal(await welcome.locator('.receipts li[data-member="carol"]').getAttribute("data-status"), "read");
    await screenshot(alicePage, "alice-group");
    await screenshot(bobPage, "bob-group");
    await alicePage.getByRole("button", { name: "Members" }).click();
    await alicePage.getByRole("button", { name: "Remove carol" }).click();
    await alicePage.waitForSelector('#members-list li[data-member="carol"]', { state: "detached" });
    await waitFor("carol learns she was removed", () => !JSON.parse(cli(carolDir, ["group", "show", groupId, "--json"])).member);
    await alicePage.getByLabel("Add a member (username)").fill("carol");
    await alicePage.getByRole("button", { name: "Add", exact: true }).click();
    await alicePage.waitForSelector('#members-list li[data-member="carol"]');
    await waitFor("carol is back", () => JSON.parse(cli(carolDir, ["group", "show", groupId, "--json"])).member);
    await alicePage.getByRole("button", { name: "Close" }).click();
    await alicePage.click('#conversations button[data-peer="bob"]');
    await alicePage.waitForSelector('#peer-name:text-is("bob")');
    await bobPage.click('#conversations button[data-peer="alice"]');
    await bobPage.waitForSelector('#peer-name:text-is("alice")');

    // A long conversation: the window shows the latest page and loads older ones on scroll.
    step("A long conversation loads older messages on scroll.");
    for (let i = 1; i <= 60; i++) cli(bobDir, ["send", "alice", `backlog ${i}`]);
    await alicePage.locator("#messages .message.incoming .text", { hasText: /^backlog 60$/ }).waitFor();
    const firstPage = await alicePage.locator("#messages .message:not(.file)").count();
    assert.ok(firstPage <= 50, `one page at first, not ${firstPage}`);
    const oldest = alicePage.locator("#messages .message .text", { hasText: /^backlog 1$/ });
    assert.equal(await oldest.count(), 0, "the oldest messages wait until scrolled to");
    await alicePage.evaluate(() => {
      const list = document.getElementById("messages");
      list.scrollTop = 0;
      list.dispatchEvent(new Event("scroll"));
    });
    await oldest.waitFor();
    assert.equal(await alicePage.locator("#messages .message:not(.file)").count(), 5 + 60, "every message, each once");
    assert.ok(await alicePage.evaluate(() => document.getElementById("messages").scrollTop > 0), "the view stays where it was");

    // Bob goes offline; alice's message waits in the mailbox; bob comes back and sees it in the
    step("Bob goes offline; alice's message waits in the mailbox; bob comes back and sees it in the");
    // window he left open.
    step("window he left open.");
    await stop(bob.child);
    await alicePage.getByLabel("Message", { exact: true }).fill("Are you there? (sent while you were away)");
    await alicePage.getByLabel("Message", { exact: true }).press("Enter");
    await alicePage.waitForSelector('#messages .message.outgoing:has-text("sent while you were away") .status[data-status="sent"]');
    bob = await cluster.startDaemon(bobDir, bob.port);
    await bobPage
      .locator("#messages .message.incoming", { hasText: "sent while you were away" })
      .waitFor({ timeout: 45_000 });
    assert.equal(await bobPage.evaluate(() => window.__sameDocument), true, "bob's window was not reloaded");
    await alicePage.waitForSelector('#messages .message.outgoing:has-text("sent while you were away") .status[data-status="read"]');

    // Neither bob nor the rendezvous can be reached: the message is queued, then marked not
    // sent; Retry sends it once they are back.
    step("A message that cannot go out: not sent, then Retry");
    const rendezvousPort = Number(cluster.url.split(":").pop());
    await stop(bob.child);
    await stop(cluster.rendezvous);
    await alicePage.getByLabel("Message", { exact: true }).fill("This one has to wait");
    await alicePage.getByLabel("Message", { exact: true }).press("Enter");
    const waiting = alicePage.locator("#messages .message.outgoing", { hasText: "This one has to wait" });
    await waiting.locator('.status[data-status="failed"]').waitFor({ timeout: 30_000 });
    assert.equal(await waiting.locator(".status").textContent(), "not sent");
    await screenshot(alicePage, "alice-not-sent");
    await cluster.startRendezvous(rendezvousPort);
    bob = await cluster.startDaemon(bobDir, bob.port);
    await waitFor("bob back online", () => bob.child.output.includes("bob listening on"));
    await waiting.getByRole("button", { name: "Send this message again" }).click();
    await bobPage.locator("#messages .message.incoming", { hasText: "This one has to wait" }).waitFor();
    // Bob's window has the conversation open: the message goes on to "read".
    await waiting.locator('.status[data-status="read"]').waitFor();
    assert.equal(await alicePage.isVisible("#error"), false, "a queued message is no error");

    // The safety number screen: digits, a QR code, "mark as verified".
    await alicePage.getByRole("button", { name: "Safety number" }).click();
    await alicePage.waitForSelector("#safety-dialog[open]");
    const digits = await alicePage.textContent("#safety-digits");
    assert.match(digits, /^(\d{5} ){11}\d{5}$/);
    await alicePage.waitForFunction(() => document.getElementById("safety-qr").naturalWidth > 0);
    const bobDigits = cli(bob.dir, ["safety-number", "alice"]).trim();
    assert.equal(digits, bobDigits, "both sides show the same safety number");
    await screenshot(alicePage, "alice-safety-number");
    await alicePage.getByRole("button", { name: "They match: mark as verified" }).click();
    await alicePage.waitForSelector("#verify-button:disabled");
    await alicePage.getByRole("button", { name: "Close" }).first().click();
    await alicePage.waitForSelector("#peer-verified:not([hidden])");

    // Bob logs in on a new install (a new key): alice's window warns, holds her message, and
    step("Bob logs in on a new install (a new key): alice's window warns, holds her message, and");
    // sends it once she accepts the new key.
    step("sends it once she accepts the new key.");
    await stop(bob.child);
    bobDir = join(cluster.work, "bob-new-install");
    bob = await cluster.startDaemon(bobDir);
    cli(bobDir, ["login", "bob"]);
    await waitFor("bob's new network", () => bob.child.output.includes("bob listening on"));
    await alicePage.getByLabel("Message", { exact: true }).fill("Is this still you?");
    await alicePage.getByLabel("Message", { exact: true }).press("Enter");
    await alicePage.waitForSelector("#key-warning:not([hidden])");
    assert.match(await alicePage.textContent("#key-warning-text"), /bob's security key changed/);
    await alicePage.waitForSelector('#messages .message.outgoing:has-text("Is this still you?") .status[data-status="held"]');
    assert.equal(await alicePage.isVisible("#peer-verified"), false, "a new key is not verified");
    await screenshot(alicePage, "alice-key-changed");
    // Compare before accepting: the dialog shows the NEW key's number (the old one beside it),
    // the one bob's new install shows for alice.
    await alicePage.getByRole("button", { name: "Safety number" }).click();
    await alicePage.waitForSelector("#safety-dialog[open]");
    assert.match(await alicePage.textContent("#safety-note"), /NEW key, not accepted yet/);
    const newDigits = await alicePage.textContent("#safety-digits");
    assert.equal(newDigits, cli(bobDir, ["safety-number", "alice"]).trim(), "the new key's number matches bob's new install");
    assert.notEqual(newDigits, digits, "not the old key's number");
    assert.match(await alicePage.textContent("#safety-previous"), new RegExp(digits));
    await alicePage.getByRole("button", { name: "Close" }).first().click();
    await alicePage.getByRole("button", { name: "Accept the new key" }).click();
    await alicePage.waitForSelector("#key-warning", { state: "hidden" });
    await alicePage.waitForSelector(
      // Bob's new install has no window open: delivered, not read.
      '#messages .message.outgoing:has-text("Is this still you?") .status[data-status="delivered"]',
    );
    assert.equal(await alicePage.isVisible("#peer-verified"), false, "the accepted key is not verified yet");
    const history = JSON.parse(cli(bobDir, ["history", "alice", "--json"]));
    assert.ok(history.some((m) => m.text === "Is this still you?"), "bob's new install got the message");

    // Alice turns on two-factor login; logging in on a new install then asks for the code.
    step("Two-factor login");
    await alicePage.getByRole("button", { name: "Two-factor login" }).click();
    await alicePage.waitForSelector("#totp-dialog[open]");
    const secret = (await alicePage.textContent("#totp-secret")).trim();
    assert.match(secret, /^[A-Z2-7]+=*$/);
    await alicePage.getByLabel("Code", { exact: true }).fill(totp(secret));
    await alicePage.getByRole("button", { name: "Enable" }).click();
    await alicePage.waitForSelector("#totp-dialog:not([open])", { state: "attached" });
    assert.equal(await alicePage.textContent("#totp-button"), "Two-factor login: on");
    const newAlice = await cluster.startDaemon(join(cluster.work, "alice-new-install"));
    const newAlicePage = await window(browser, cluster.link(newAlice));
    await newAlicePage.waitForSelector("#welcome:not([hidden])");
    assert.equal(await newAlicePage.isVisible("#totp-row"), false);
    await newAlicePage.getByLabel("Username", { exact: true }).fill("alice");
    await newAlicePage.getByLabel("Password", { exact: true }).fill(PASSWORD);
    await newAlicePage.getByRole("button", { name: "Log in" }).click();
    await newAlicePage.waitForSelector("#totp-row:not([hidden])");
    assert.match(await newAlicePage.textContent("#error-text"), /two-factor/);
    await newAlicePage.getByLabel("Code from your authenticator app").fill(totp(secret, 1));
    await newAlicePage.getByRole("button", { name: "Log in" }).click();
    await newAlicePage.waitForSelector("#chat:not([hidden])");
    assert.equal(await newAlicePage.textContent("#me"), "alice");
    assert.deepEqual(newAlicePage.errors, []);

    step("Signing out ends the window's session, also after a reload.");
    await newAlicePage.getByRole("button", { name: "Sign out" }).click();
    await newAlicePage.waitForSelector("#signed-out:not([hidden])");
    await newAlicePage.reload();
    await newAlicePage.waitForSelector("#signed-out:not([hidden])");

    // No script error and no CSP violation in either window.
    step("No script error and no CSP violation in either window.");
    assert.deepEqual(alicePage.errors, []);
    assert.deepEqual(bobPage.errors, []);
  } catch (e) {
    for (const child of children) {
      if (child.log) console.error(`--- ${child.logName} ---\n${child.log.slice(-4000)}`);
    }
    throw e;
  } finally {
    await browser.close();
    await cluster.close();
  }
});
