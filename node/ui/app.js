// The peerchat chat window. Plain JavaScript, no dependencies, served by the node itself.
// Text from the network only ever reaches the page through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  current: null, // the open conversation: a username, or "#" and a group id
  contacts: new Map(), // username -> contact view
  groups: new Map(), // group id -> group view
  presence: new Map(), // username -> true / false
  events: null,
  older: [], // messages of the open conversation loaded by scrolling up, oldest first
  exhausted: false, // nothing older is left to load
  loadingOlder: false,
  shown: new Map(), // id -> message of the open conversation, as rendered
  replyTo: null, // the message the composer replies to
  editing: null, // our message the composer edits
  typingSentAt: 0, // when we last told the others we are typing
  typingTimer: null, // hides "… is typing" when no news comes
  profiles: 0, // counts profile changes, so a changed avatar is fetched again
  unread: 0, // over every conversation, for the tab's title
};

// Reactions offered in a message's menu.
const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
// How long "… is typing" shows without news, and how often typing is told while typing.
const TYPING_SHOWN_MS = 6000;
const TYPING_EVERY_MS = 3000;

// Messages per page: the latest page is loaded on every refresh, older pages on scroll.
const PAGE = 50;

const STATUS_LABELS = {
  pending: "sending…",
  sent: "sent",
  delivered: "delivered",
  read: "read",
  failed: "not sent",
  held: "held: key changed",
  received: "",
  undecryptable: "could not be decrypted",
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `request failed (${status})`);
    this.status = status;
    this.code = code;
  }
}

// Calls the node's API. Writes carry the CSRF header; the session cookie goes along by itself.
async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") options.headers["X-Peerchat-CSRF"] = "1";
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new ApiError(0, "offline", "The node is not answering. Is `peerchat daemon` running?");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, data && data.error, data && data.message);
  }
  return data;
}

const peerPath = (peer) => encodeURIComponent(peer);

// A conversation's key is its peer's username, or "#" and the group's id (as the node names it).
const isGroup = (key) => typeof key === "string" && key.startsWith("#");
const groupOf = (key) => (isGroup(key) ? state.groups.get(key.slice(1)) : undefined);
const titleOf = (key) => (isGroup(key) ? (groupOf(key) ? groupOf(key).name : "Group") : key);
const historyPath = (key) =>
  isGroup(key) ? `/api/v1/groups/${key.slice(1)}/messages` : `/api/v1/conversations/${peerPath(key)}`;
const readPath = (key) =>
  isGroup(key) ? `/api/v1/groups/${key.slice(1)}/read` : `/api/v1/conversations/${peerPath(key)}/read`;

function newMessageId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- errors -------------------------------------------------------------------------------

function showError(error) {
  const messages = {
    no_such_user: "There is no user with that name.",
    bad_credentials: "Wrong username or password.",
    username_taken: "That username is taken.",
    totp_invalid: "That code is not valid. Try the current one.",
    rate_limited: "Too many attempts. Wait a minute and try again.",
    rendezvous_unavailable: "The rendezvous server cannot be reached right now.",
    own_account: "That is you. Type the username of the person to chat with.",
    not_member: "You are not a member of this group any more.",
    not_allowed: "Only the group's admins may do that (and admins remove only admins junior to them).",
    bad_group_change: (error && error.message) || "That change does not apply to this group.",
    member_unreachable: (error && error.message) || "A member could not be reached.",
  };
  const text = (error && error.code && messages[error.code]) || (error && error.message) || String(error);
  $("error-text").textContent = text;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

async function guarded(action) {
  try {
    await action();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && e.code === "bad_token") {
      show("signed-out");
      return;
    }
    showError(e);
  }
}

// ---- screens ------------------------------------------------------------------------------

function show(screen) {
  for (const id of ["signed-out", "welcome", "chat"]) $(id).hidden = id !== screen;
}

async function start() {
  let status;
  try {
    status = await api("GET", "/api/v1/status");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      show("signed-out");
    } else {
      showError(e);
    }
    return;
  }
  if (!status.username) {
    show("welcome");
    $("account-username").focus();
    return;
  }
  await enterChat(status.username);
}

async function enterChat(me) {
  state.me = me;
  $("me").textContent = me;
  updateTitle();
  show("chat");
  listen();
  await refreshAll();
  $("search-input").focus();
}

/** The tab's title: the unread count first, when there is one. */
function updateTitle() {
  const base = state.me ? `peerchat — ${state.me}` : "peerchat";
  document.title = state.unread > 0 ? `(${state.unread}) ${base}` : base;
}

async function refreshAll() {
  await refreshContacts();
  await refreshGroups();
  await refreshConversations();
  if (state.current) await refreshConversation();
}

// ---- account ------------------------------------------------------------------------------

let accountAction = "register";

async function submitAccount(event) {
  event.preventDefault();
  const action = (event.submitter && event.submitter.value) || accountAction;
  accountAction = action;
  const username = $("account-username").value.trim().toLowerCase();
  const password = $("account-password").value;
  if (!username || !password) {
    showError(new Error("Enter a username and a password."));
    return;
  }
  clearError();
  const body = { username, password };
  const totp = $("account-totp").value.trim();
  if (action === "login" && totp) body.totp = totp;
  for (const b of ["signup-button", "login-button"]) $(b).disabled = true;
  try {
    await api("POST", action === "login" ? "/api/v1/login" : "/api/v1/register", body);
    $("account-password").value = "";
    $("account-totp").value = "";
    await enterChat(username);
  } catch (e) {
    if (e instanceof ApiError && e.code === "totp_required") {
      $("totp-row").hidden = false;
      $("account-totp").focus();
      showError(new Error("This account has two-factor login: enter the code from your app."));
    } else {
      showError(e);
    }
  } finally {
    for (const b of ["signup-button", "login-button"]) $(b).disabled = false;
  }
}

// ---- contacts and conversations -----------------------------------------------------------

async function refreshContacts() {
  const contacts = await api("GET", "/api/v1/contacts");
  state.contacts = new Map(contacts.map((c) => [c.username, c]));
}

async function refreshGroups() {
  const groups = await api("GET", "/api/v1/groups");
  state.groups = new Map(groups.map((g) => [g.id, g]));
}

async function refreshPresence(peer) {
  try {
    const answer = await api("GET", `/api/v1/contacts/${peerPath(peer)}/presence`);
    state.presence.set(peer, answer.online);
  } catch (e) {
    state.presence.delete(peer);
  }
  renderPresence();
}

function presenceLabel(peer) {
  const online = state.presence.get(peer);
  if (online === true) return "online";
  if (online === false) return "offline";
  return "";
}

async function refreshConversations() {
  const conversations = (await api("GET", "/api/v1/conversations")).map((c) => ({
    ...c,
    key: c.group ? `#${c.group.id}` : c.peer,
  }));
  const list = $("conversations");
  list.replaceChildren();
  $("requests").replaceChildren();
  state.unread = conversations.reduce((n, c) => n + (c.unread || 0), 0);
  updateTitle();
  const listed = new Set(conversations.map((c) => c.key));
  // Contacts and groups without messages yet are listed too.
  for (const contact of state.contacts.values()) {
    if (!listed.has(contact.username) && !contact.request) {
      conversations.push({ key: contact.username, peer: contact.username, unread: 0, messages: 0, last: null });
    }
  }
  for (const group of state.groups.values()) {
    if (!listed.has(`#${group.id}`)) {
      conversations.push({ key: `#${group.id}`, group, unread: 0, messages: 0, last: null });
    }
  }
  for (const c of conversations) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "conversation" + (c.key === state.current ? " current" : "");
    if (c.group) {
      button.dataset.group = c.group.id;
    } else {
      button.dataset.peer = c.peer;
    }
    if (c.key === state.current) button.setAttribute("aria-current", "true");

    const top = document.createElement("span");
    top.className = "top";
    const name = document.createElement("span");
    name.className = "name";
    if (c.group) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "group";
      name.textContent = c.group.name;
      top.append(tag, name);
    } else {
      const dot = document.createElement("span");
      dot.className = "dot " + presenceLabel(c.peer);
      dot.dataset.presenceOf = c.peer;
      dot.setAttribute("aria-hidden", "true");
      name.textContent = c.peer;
      top.append(dot, name);
      const contact = state.contacts.get(c.peer);
      if (contact && contact.avatar) {
        const avatar = document.createElement("img");
        avatar.className = "avatar";
        avatar.alt = "";
        avatar.src = `/api/v1/contacts/${peerPath(c.peer)}/avatar?v=${state.profiles}`;
        top.prepend(avatar);
      }
      const display = c.display_name || (contact && contact.display_name);
      if (display) {
        const shown = document.createElement("span");
        shown.className = "display";
        shown.textContent = display;
        top.append(shown);
      }
    }
    if (c.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(c.unread);
      badge.setAttribute("aria-label", `${c.unread} unread`);
      top.append(badge);
    }
    const last = document.createElement("span");
    last.className = "last";
    const by = !c.last ? "" : c.last.direction === "outgoing" ? "You: " : c.group ? `${c.last.author}: ` : "";
    last.textContent = c.last ? by + (c.last.deleted ? "This message was deleted" : c.last.text) : "No messages yet";
    button.append(top, last);
    button.addEventListener("click", () => guarded(() => openConversation(c.key)));
    item.append(button);
    (c.request ? $("requests") : list).append(item);
  }
  $("requests-nav").hidden = $("requests").children.length === 0;
}

async function openConversation(key) {
  clearError();
  state.current = key;
  // The header names the conversation from the moment the pane shows (never the previous one's
  // name, nor none), with the notes of this conversation, not the last one's; both are rendered
  // again below once contacts and groups are fresh.
  renderHeader();
  renderNotes(key);
  $("messages").replaceChildren();
  state.older = [];
  state.exhausted = false;
  $("empty").hidden = true;
  $("pane").hidden = false;
  await refreshContacts();
  await refreshGroups();
  renderHeader();
  await refreshConversation();
  await refreshConversations();
  if (!isGroup(key)) refreshPresence(key);
  $("message-input").focus();
}

/** The pane's header: a person (presence, safety number) or a group (members, membership). */
function renderHeader() {
  const key = state.current;
  if (!key) return;
  const group = groupOf(key);
  $("peer-name").textContent = titleOf(key);
  const contact = isGroup(key) ? null : state.contacts.get(key);
  $("peer-display").textContent = contact && contact.display_name ? contact.display_name : "";
  $("safety-button").hidden = isGroup(key);
  $("members-button").hidden = !isGroup(key);
  $("peer-presence").textContent = isGroup(key)
    ? group
      ? `${group.members.length} members`
      : ""
    : presenceText(key);
  const note = $("group-note");
  const outside = isGroup(key) && group && !group.member;
  note.hidden = !outside;
  note.textContent = outside ? "You are no longer a member of this group: nothing new reaches you, and you cannot write here." : "";
  $("message-input").disabled = Boolean(outside);
  $("send-button").disabled = Boolean(outside);
}

async function refreshConversation() {
  const peer = state.current;
  if (!peer) return;
  renderNotes(peer);
  await refreshMessages(peer);
}

/** The notes above conversation `key`'s messages: request, blocked, verified, key change. */
function renderNotes(key) {
  if (isGroup(key)) {
    $("peer-verified").hidden = true;
    $("key-warning").hidden = true;
    $("request-note").hidden = true;
    $("blocked-note").hidden = true;
    renderHeader();
    return;
  }
  const peer = key;
  const contact = state.contacts.get(peer);
  const request = Boolean(contact && contact.request);
  $("request-note").hidden = !request;
  $("request-text").textContent = request
    ? `${peer} wrote to you first. Until you accept or answer, they are not told when you read, and do not get your profile.`
    : "";
  const blocked = Boolean(contact && contact.blocked);
  $("blocked-note").hidden = !blocked;
  $("blocked-text").textContent = blocked ? `You blocked ${peer}: their messages are dropped.` : "";
  // "Verified" speaks of the pinned key; a new key waiting to be accepted is not verified.
  $("peer-verified").hidden = !(contact && contact.verified && !contact.key_changed);
  const warning = $("key-warning");
  if (contact && contact.key_changed) {
    $("key-warning-text").textContent =
      `${peer}'s security key changed (a new device, or someone in between). ` +
      `Messages to ${peer} are held until you accept the new key. Compare safety numbers first.`;
    warning.hidden = false;
  } else {
    warning.hidden = true;
  }
}

/** The files of conversation `key`: offered in it, by either side. */
async function filesOf(key) {
  const files = await api("GET", "/api/v1/files");
  return files.filter((f) => (isGroup(key) ? `#${f.group}` === key : !f.group && f.peer === key));
}

/** The latest page of the open conversation (with older pages already loaded kept). */
async function refreshMessages(peer) {
  const latest = await api("GET", `${historyPath(peer)}?limit=${PAGE}`);
  const files = await filesOf(peer);
  if (state.current !== peer) return;
  // Until older pages were loaded, whether there are any follows from the latest page.
  if (state.older.length === 0) state.exhausted = latest.length < PAGE;
  const shown = new Set(latest.map((m) => m.id));
  const messages = state.older.filter((m) => !shown.has(m.id)).concat(latest);
  // Files among the messages, by when they were offered (those older than the oldest message
  // shown wait until that page is loaded).
  const since = state.exhausted || messages.length === 0 ? 0 : messages[0].sent_at_ms;
  renderMessages(messages, files.filter((f) => f.at_ms >= since));
  if (messages.some((m) => m.direction === "incoming" && m.status === "received") && document.visibilityState === "visible") {
    await api("POST", readPath(peer));
  }
}

/** Loads the page before the oldest message shown, keeping the view where it is. */
async function loadOlder() {
  const peer = state.current;
  const list = $("messages");
  const first = list.querySelector(".message:not(.file)");
  if (!peer || !first || state.exhausted || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const page = await api("GET", `${historyPath(peer)}?before=${first.dataset.id}&limit=${PAGE}`);
    if (state.current !== peer) return;
    if (page.length < PAGE) state.exhausted = true;
    if (page.length === 0) return;
    state.older = page.concat(state.older);
    const fromBottom = list.scrollHeight - list.scrollTop;
    list.prepend(...page.map(messageItem));
    list.scrollTop = list.scrollHeight - fromBottom;
  } finally {
    state.loadingOlder = false;
  }
}

function renderMessages(messages, files = []) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  state.shown = new Map(messages.map((m) => [m.id, m]));
  const items = messages
    .map((m) => ({ at: m.sent_at_ms, item: () => messageItem(m) }))
    .concat(files.map((f) => ({ at: f.at_ms, item: () => fileItem(f) })))
    .sort((a, b) => a.at - b.at);
  // A separator before the first item of each day.
  const withDays = [];
  let day = null;
  for (const i of items) {
    const date = new Date(i.at);
    const label = date.toDateString();
    if (label !== day) {
      day = label;
      const separator = document.createElement("li");
      separator.className = "day";
      separator.setAttribute("role", "separator");
      separator.textContent = date.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
      withDays.push(() => separator);
    }
    withDays.push(i.item);
  }
  list.replaceChildren(...withDays.map((make) => make()));
  if (atBottom || items.length) list.scrollTop = list.scrollHeight;
}

const FILE_STATES = {
  offered: "offered",
  downloading: "downloading…",
  complete: "complete",
  failed: "failed: it did not match what was sent",
  cancelled: "cancelled",
};
const PREVIEWED = ["image/png", "image/jpeg", "image/gif", "image/webp"];

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A file in the conversation: name, size, progress, and what can be done with it. */
function fileItem(f) {
  const item = document.createElement("li");
  item.className = `message file ${f.direction}`;
  item.dataset.file = f.id;
  item.dataset.state = f.state;
  if (f.group && f.direction === "incoming") {
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = f.peer;
    item.append(author);
  }
  const name = document.createElement("p");
  name.className = "text file-name";
  name.textContent = `${f.name} (${sizeText(f.size)})`;
  item.append(name);
  const here = f.direction === "outgoing" || f.state === "complete";
  if (here && PREVIEWED.includes(f.media_type)) {
    const preview = document.createElement("img");
    preview.className = "preview";
    preview.alt = f.name;
    preview.src = `/api/v1/files/${f.id}/content`;
    item.append(preview);
  }
  const progress = document.createElement("progress");
  progress.max = Math.max(f.size, 1);
  progress.value = f.state === "complete" ? progress.max : f.bytes_done;
  progress.setAttribute("aria-label", `${f.name}: transferred`);
  const meta = document.createElement("span");
  meta.className = "meta";
  const status = document.createElement("span");
  status.className = "status";
  status.textContent = FILE_STATES[f.state] || f.state;
  meta.append(status);
  if (f.state !== "complete" && f.state !== "cancelled") item.append(progress);
  if (f.direction === "incoming" && ["offered", "failed", "cancelled"].includes(f.state)) {
    const accept = document.createElement("button");
    accept.type = "button";
    accept.className = "link";
    accept.textContent = "Download";
    accept.addEventListener("click", () =>
      guarded(async () => {
        await api("POST", `/api/v1/files/${f.id}/accept`);
        await refreshConversation();
      }),
    );
    meta.append(accept);
  }
  if (here && f.state !== "cancelled") {
    const save = document.createElement("a");
    save.className = "save";
    save.href = `/api/v1/files/${f.id}/content?download=1`;
    save.download = f.name;
    save.textContent = "Save";
    meta.append(save);
  }
  item.append(meta);
  return item;
}

/** Uploads the file picked in the composer and offers it to the open conversation. */
async function sendFile() {
  const input = $("file-input");
  const file = input.files && input.files[0];
  input.value = "";
  const key = state.current;
  if (!file || !key) return;
  const target = isGroup(key) ? `group=${key.slice(1)}` : `to=${peerPath(key)}`;
  let response;
  try {
    response = await fetch(`/api/v1/files/upload?name=${encodeURIComponent(file.name)}&${target}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Peerchat-CSRF": "1", "Content-Type": "application/octet-stream" },
      body: file,
    });
  } catch (e) {
    throw new ApiError(0, "offline", "The node is not answering. Is `peerchat daemon` running?");
  }
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new ApiError(response.status, data && data.error, data && data.message);
  }
  await refreshConversation();
}

/** Moves a file's progress bar on, if it is shown. */
function showProgress(event) {
  const item = document.querySelector(`[data-file="${event.id}"]`);
  const bar = item && item.querySelector("progress");
  if (bar) bar.value = event.bytes_done;
}

function messageItem(m) {
  const item = document.createElement("li");
  item.className = `message ${m.direction}`;
  item.dataset.id = m.id;
  if (m.group && m.direction === "incoming") {
    const author = document.createElement("span");
    author.className = "author";
    author.dataset.author = m.author;
    const contact = state.contacts.get(m.author);
    author.textContent = contact && contact.display_name ? `${contact.display_name} (${m.author})` : m.author;
    item.append(author);
  }
  if (m.reply_to) {
    const quoted = state.shown.get(m.reply_to);
    const quote = document.createElement("button");
    quote.type = "button";
    quote.className = "quote";
    quote.textContent = quoted ? `${quoted.author}: ${quoted.deleted ? "deleted message" : quoted.text}` : "an earlier message";
    quote.setAttribute("aria-label", "Go to the message this replies to");
    quote.addEventListener("click", () => jumpTo(m.reply_to));
    item.append(quote);
  }
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = m.status === "undecryptable" ? "This message could not be decrypted." : m.text;
  if (m.status === "undecryptable") text.classList.add("undecryptable");
  if (m.deleted) {
    text.textContent = "This message was deleted";
    text.classList.add("deleted");
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = document.createElement("time");
  const sent = new Date(m.sent_at_ms);
  time.dateTime = sent.toISOString();
  time.textContent = sent.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  meta.append(time);
  if (m.direction === "outgoing") {
    const status = document.createElement("span");
    status.className = `status ${m.status}`;
    status.dataset.status = m.status;
    status.textContent = STATUS_LABELS[m.status] || m.status;
    meta.append(status);
    if (m.receipts) {
      const r = m.receipts;
      status.dataset.delivered = String(r.delivered);
      status.dataset.read = String(r.read);
      if (r.recipients > 0 && m.status !== "pending") {
        status.textContent =
          r.read === r.recipients ? "read by everyone" : `delivered to ${r.delivered} of ${r.recipients} · read by ${r.read}`;
      }
      const details = document.createElement("details");
      details.className = "receipts";
      const summary = document.createElement("summary");
      summary.textContent = "by member";
      const list = document.createElement("ul");
      for (const [member, memberStatus] of Object.entries(r.members)) {
        const line = document.createElement("li");
        line.dataset.member = member;
        line.dataset.status = memberStatus;
        line.textContent = `${member}: ${STATUS_LABELS[memberStatus] || memberStatus}`;
        list.append(line);
      }
      details.append(summary, list);
      meta.append(details);
    }
    if (m.status === "failed" && !m.group) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "link retry";
      retry.textContent = "Retry";
      retry.setAttribute("aria-label", "Send this message again");
      retry.addEventListener("click", () =>
        guarded(async () => {
          await api("POST", `/api/v1/conversations/${peerPath(state.current)}/messages/${m.id}/retry`);
          await refreshConversation();
        }),
      );
      meta.append(retry);
    }
  }
  if (m.edited && !m.deleted) {
    const edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = "edited";
    meta.append(edited);
  }
  const reactions = Object.entries(m.reactions || {});
  const chips = document.createElement("div");
  chips.className = "reactions";
  for (const [who, emoji] of reactions) {
    const chip = document.createElement("span");
    chip.dataset.by = who;
    chip.textContent = `${emoji} ${who}`;
    chips.append(chip);
  }
  item.append(text, meta);
  if (reactions.length) item.append(chips);
  if (!m.deleted && m.status !== "undecryptable" && m.status !== "pending") item.append(messageMenu(m));
  return item;
}

/** A message's menu: reply, react, and for our own messages edit and delete. */
function messageMenu(m) {
  const menu = document.createElement("details");
  menu.className = "menu";
  const summary = document.createElement("summary");
  summary.textContent = "⋯";
  summary.setAttribute("aria-label", "Message actions");
  const actions = document.createElement("div");
  actions.className = "actions";
  const action = (label, run) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "link";
    b.textContent = label;
    b.addEventListener("click", () => {
      menu.open = false;
      guarded(run);
    });
    actions.append(b);
    return b;
  };
  action("Reply", async () => startReply(m));
  const mine = m.direction === "outgoing";
  const recent = Date.now() - m.sent_at_ms < 24 * 3600 * 1000;
  if (mine && recent) {
    action("Edit", async () => startEdit(m));
    action("Delete for everyone", async () => {
      if (!confirm("Delete this message for everyone?")) return;
      await amend(m.id, { action: "delete" });
    });
  }
  const ours = (m.reactions || {})[state.me];
  for (const emoji of REACTIONS) {
    const b = action(emoji, async () => amend(m.id, { action: "react", emoji: ours === emoji ? null : emoji }));
    b.setAttribute("aria-label", ours === emoji ? `Take back ${emoji}` : `React ${emoji}`);
  }
  menu.append(summary, actions);
  return menu;
}

async function amend(id, body) {
  const key = state.current;
  const path = isGroup(key)
    ? `/api/v1/groups/${key.slice(1)}/messages/${id}/amend`
    : `/api/v1/conversations/${peerPath(key)}/messages/${id}/amend`;
  await api("POST", path, body);
  await refreshConversation();
  await refreshConversations();
}

function startReply(m) {
  state.editing = null;
  state.replyTo = m;
  $("reply-text").textContent = `Replying to ${m.author}: ${m.text}`;
  $("reply-bar").hidden = false;
  $("message-input").focus();
}

function startEdit(m) {
  state.replyTo = null;
  state.editing = m;
  $("reply-text").textContent = "Editing your message";
  $("reply-bar").hidden = false;
  $("message-input").value = m.text;
  $("message-input").focus();
}

function cancelComposerMode() {
  state.replyTo = null;
  state.editing = null;
  $("reply-bar").hidden = true;
  $("reply-text").textContent = "";
}

/** Scrolls to a message of the open conversation and marks it for a moment. */
function jumpTo(id) {
  const target = $("messages").querySelector(`.message[data-id="${CSS.escape(id)}"]`);
  if (!target) return false;
  target.scrollIntoView({ block: "center" });
  target.classList.add("highlight");
  setTimeout(() => target.classList.remove("highlight"), 2000);
  return true;
}

function renderPresence() {
  for (const dot of document.querySelectorAll("[data-presence-of]")) {
    dot.className = "dot " + presenceLabel(dot.dataset.presenceOf);
  }
  if (state.current && !isGroup(state.current)) $("peer-presence").textContent = presenceText(state.current);
}

/** "online · direct" or "online · relayed" while a connection is open, else the presence. */
function presenceText(peer) {
  const contact = state.contacts.get(peer);
  if (state.presence.get(peer) !== false && contact && contact.online && contact.path) {
    return `online · ${contact.path}`;
  }
  return presenceLabel(peer);
}

async function searchSubmit(event) {
  event.preventDefault();
  const username = $("search-input").value.trim().toLowerCase();
  if (!username) return;
  clearError();
  if (!state.contacts.has(username)) {
    await api("POST", "/api/v1/contacts", { username });
  }
  $("search-input").value = "";
  await openConversation(username);
}

// ---- sending ------------------------------------------------------------------------------

async function sendSubmit(event) {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value;
  if (!text.trim() || !state.current) return;
  const peer = state.current;
  if (state.editing) {
    const target = state.editing;
    input.value = "";
    cancelComposerMode();
    await amend(target.id, { action: "edit", text });
    return;
  }
  const replyTo = state.replyTo ? state.replyTo.id : undefined;
  cancelComposerMode();
  const id = newMessageId();
  input.value = "";
  state.typingSentAt = 0;
  // Shown at once as "sending…"; the node's answer and later events move it on.
  $("messages").append(
    messageItem({ id, direction: "outgoing", text, sent_at_ms: Date.now(), status: "pending" }),
  );
  $("messages").scrollTop = $("messages").scrollHeight;
  try {
    if (isGroup(peer)) {
      await api("POST", `/api/v1/groups/${peer.slice(1)}/messages`, { text, id, reply_to: replyTo });
    } else {
      await api("POST", "/api/v1/messages", { to: peer, text, id, reply_to: replyTo });
    }
  } finally {
    if (state.current === peer) await refreshConversation();
    await refreshConversations();
  }
}

function composerKeys(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

/** Tells the others we are typing, at most every few seconds; failures do not matter. */
function composerInput() {
  const key = state.current;
  if (!key || !$("message-input").value || Date.now() - state.typingSentAt < TYPING_EVERY_MS) return;
  state.typingSentAt = Date.now();
  const path = isGroup(key) ? `/api/v1/groups/${key.slice(1)}/typing` : `/api/v1/conversations/${peerPath(key)}/typing`;
  api("POST", path, { typing: true }).catch(() => {});
}

function showTyping(event) {
  const key = event.group ? `#${event.group}` : event.peer;
  if (key !== state.current) return;
  const note = $("typing");
  clearTimeout(state.typingTimer);
  if (!event.typing) {
    note.hidden = true;
    return;
  }
  const contact = state.contacts.get(event.peer);
  note.textContent = `${(contact && contact.display_name) || event.peer} is typing…`;
  note.hidden = false;
  state.typingTimer = setTimeout(() => (note.hidden = true), TYPING_SHOWN_MS);
}

function hideTyping(peer) {
  const contact = state.contacts.get(peer);
  if ($("typing").textContent.startsWith(`${(contact && contact.display_name) || peer} `)) $("typing").hidden = true;
}

/** A browser notification with the sender's name only, when asked for and not looking. */
function notify(peer) {
  if (localStorage.getItem("peerchat.notifications") !== "on") return;
  if (typeof Notification === "undefined" || Notification.permission !== "granted") return;
  if (document.visibilityState === "visible" && document.hasFocus()) return;
  const contact = state.contacts.get(peer);
  new Notification((contact && contact.display_name) || peer, { tag: "peerchat" });
}

async function acceptRequest() {
  await api("POST", `/api/v1/requests/${peerPath(state.current)}/accept`);
  await refreshContacts();
  await refreshConversation();
  await refreshConversations();
}

async function block(blocked) {
  const peer = state.current;
  if (blocked && !confirm(`Block ${peer}? Their messages will be dropped, and nothing of yours goes to them.`)) return;
  await api("POST", `/api/v1/contacts/${peerPath(peer)}/${blocked ? "block" : "unblock"}`);
  await refreshContacts();
  await refreshConversation();
  await refreshConversations();
}

async function messageSearch(event) {
  event.preventDefault();
  const q = $("message-search-input").value.trim();
  if (!q) return;
  const hits = await api("GET", `/api/v1/search?q=${encodeURIComponent(q)}&limit=50`);
  const list = $("search-results");
  list.replaceChildren();
  if (hits.length === 0) {
    const none = document.createElement("li");
    none.textContent = "Nothing found.";
    list.append(none);
  }
  for (const hit of hits) {
    const key = hit.group ? `#${hit.group}` : hit.peer;
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link hit";
    button.dataset.id = hit.message.id;
    const when = new Date(hit.message.sent_at_ms).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
    button.textContent = `${titleOf(key)} · ${when} · ${hit.message.author}: ${hit.message.text}`;
    button.addEventListener("click", () =>
      guarded(async () => {
        await openConversation(key);
        jumpTo(hit.message.id);
      }),
    );
    item.append(button);
    list.append(item);
  }
  list.hidden = false;
}

async function openSettings() {
  const [profile, settings] = await Promise.all([api("GET", "/api/v1/profile"), api("GET", "/api/v1/settings")]);
  $("settings-display-name").value = profile.display_name || "";
  $("settings-read-receipts").checked = settings.read_receipts;
  $("settings-typing").checked = settings.typing;
  $("settings-notifications").checked = localStorage.getItem("peerchat.notifications") === "on";
  $("settings-dialog").showModal();
}

async function saveSettings(event) {
  event.preventDefault();
  const name = $("settings-display-name").value.trim();
  const profile = await api("GET", "/api/v1/profile");
  if (name && name !== profile.display_name) {
    await api("PUT", "/api/v1/profile", { display_name: name, avatar: profile.avatar || null });
  }
  await api("PUT", "/api/v1/settings", {
    read_receipts: $("settings-read-receipts").checked,
    typing: $("settings-typing").checked,
  });
  const notifications = $("settings-notifications").checked;
  if (notifications && typeof Notification !== "undefined" && Notification.permission === "default") {
    await Notification.requestPermission();
  }
  localStorage.setItem("peerchat.notifications", notifications ? "on" : "off");
  $("settings-dialog").close();
}

async function signOut() {
  await api("POST", "/api/v1/ui/sign-out");
  if (state.events) state.events.close();
  state.events = null;
  show("signed-out");
}

// ---- groups -------------------------------------------------------------------------------

function openNewGroup() {
  $("group-name").value = "";
  $("group-members").value = "";
  $("group-dialog").showModal();
  $("group-name").focus();
}

async function createGroup(event) {
  event.preventDefault();
  const name = $("group-name").value.trim();
  const members = $("group-members")
    .value.split(",")
    .map((m) => m.trim().toLowerCase())
    .filter((m) => m);
  if (!name || members.length === 0) return;
  const group = await api("POST", "/api/v1/groups", { name, members });
  $("group-dialog").close();
  await openConversation(`#${group.id}`);
}

function renderMembers() {
  const group = groupOf(state.current);
  if (!group) return;
  const admin = group.admins.includes(state.me) && group.member;
  $("members-title").textContent = `Members of ${group.name}`;
  const list = $("members-list");
  list.replaceChildren();
  for (const member of group.members) {
    const line = document.createElement("li");
    line.dataset.member = member;
    const name = document.createElement("span");
    name.textContent = member === state.me ? `${member} (you)` : member;
    line.append(name);
    if (group.admins.includes(member)) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "admin";
      line.append(tag);
    }
    if (admin && member !== state.me) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${member}`);
      remove.addEventListener("click", () => guarded(() => changeGroup({ action: "remove", members: [member] })));
      line.append(remove);
    }
    list.append(line);
  }
  $("add-member-form").hidden = !admin;
  $("leave-button").hidden = !group.member;
}

async function changeGroup(change) {
  const key = state.current;
  await api("POST", `/api/v1/groups/${key.slice(1)}/changes`, change);
  await refreshGroups();
  renderMembers();
  renderHeader();
  await refreshConversations();
}

async function addMember(event) {
  event.preventDefault();
  const member = $("add-member-input").value.trim().toLowerCase();
  if (!member) return;
  await changeGroup({ action: "add", members: [member] });
  $("add-member-input").value = "";
}

// ---- trust --------------------------------------------------------------------------------

async function acceptKey() {
  const peer = state.current;
  await api("POST", `/api/v1/contacts/${peerPath(peer)}/accept-key`);
  await refreshContacts();
  await refreshConversation();
}

async function openSafety() {
  const peer = state.current;
  const number = await api("GET", `/api/v1/contacts/${peerPath(peer)}/safety-number`);
  const pending = number.key === "pending";
  $("safety-title").textContent = pending ? `Safety number of ${peer}'s new key` : `Safety number with ${peer}`;
  $("safety-note").hidden = !pending && number.key !== "certified";
  $("safety-note").textContent = pending
    ? `${peer}'s key has changed. These digits are of the NEW key, not accepted yet: compare them before you accept it.`
    : `${peer} is not a contact yet: these digits are of the key the rendezvous certifies for them.`;
  $("safety-digits").textContent = number.number;
  $("safety-previous").hidden = !number.previous;
  $("safety-previous").textContent = number.previous ? `The old key's number was: ${number.previous}` : "";
  $("safety-qr").src = `/api/v1/contacts/${peerPath(peer)}/safety-number/qr.svg?for=${number.scannable.slice(0, 16)}`;
  const contact = state.contacts.get(peer);
  const verified = Boolean(contact && contact.verified) && !pending;
  $("verify-button").hidden = number.key === "certified";
  $("verify-button").disabled = verified;
  $("verify-button").textContent = verified ? "Verified" : pending ? "They match: accept the new key and mark it verified" : "They match: mark as verified";
  $("safety-dialog").showModal();
  $("safety-close").focus();
}

async function verify() {
  const peer = state.current;
  await api("POST", `/api/v1/contacts/${peerPath(peer)}/verify`, { number: $("safety-digits").textContent });
  await refreshContacts();
  $("verify-button").disabled = true;
  $("verify-button").textContent = "Verified";
  await refreshConversation();
}

async function openTotp() {
  $("totp-secret").textContent = "";
  $("totp-code").value = "";
  const enrolment = await api("POST", "/api/v1/totp");
  $("totp-secret").textContent = enrolment.secret;
  $("totp-dialog").showModal();
  $("totp-code").focus();
}

async function confirmTotp(event) {
  event.preventDefault();
  await api("POST", "/api/v1/totp/confirm", { code: $("totp-code").value.trim() });
  $("totp-dialog").close();
  $("totp-button").textContent = "Two-factor login: on";
  $("totp-button").disabled = true;
}

// ---- live updates -------------------------------------------------------------------------

function listen() {
  if (state.events) return;
  const events = new EventSource("/api/v1/events");
  state.events = events;
  // After a reconnection, events may have been missed: read everything again.
  events.addEventListener("open", () => {
    clearError();
    guarded(refreshAll);
  });
  events.addEventListener("message_received", (e) =>
    guarded(async () => {
      const event = JSON.parse(e.data);
      hideTyping(event.peer);
      if (event.peer === state.current) await refreshConversation();
      await refreshContacts();
      await refreshConversations();
      notify(event.peer);
    }),
  );
  events.addEventListener("message_changed", (e) =>
    guarded(async () => {
      const event = JSON.parse(e.data);
      const key = event.group ? `#${event.group}` : event.peer;
      if (key === state.current) await refreshConversation();
      await refreshConversations();
    }),
  );
  events.addEventListener("person_changed", () =>
    guarded(async () => {
      state.profiles += 1;
      await refreshContacts();
      renderHeader();
      if (state.current) await refreshConversation();
      await refreshConversations();
    }),
  );
  events.addEventListener("typing", (e) => showTyping(JSON.parse(e.data)));
  events.addEventListener("status_changed", (e) =>
    guarded(async () => {
      const event = JSON.parse(e.data);
      if (event.peer === state.current) await refreshConversation();
      await refreshConversations();
    }),
  );
  events.addEventListener("key_changed", (e) =>
    guarded(async () => {
      const event = JSON.parse(e.data);
      await refreshContacts();
      if (event.peer === state.current) await refreshConversation();
    }),
  );
  for (const name of ["group_message_received", "group_status_changed"]) {
    events.addEventListener(name, (e) =>
      guarded(async () => {
        const event = JSON.parse(e.data);
        if (`#${event.group}` === state.current) await refreshConversation();
        await refreshConversations();
        if (name === "group_message_received") {
          hideTyping(event.author);
          notify(event.author);
        }
      }),
    );
  }
  events.addEventListener("group_changed", (e) =>
    guarded(async () => {
      const event = JSON.parse(e.data);
      await refreshGroups();
      if (`#${event.group}` === state.current) {
        renderHeader();
        if ($("members-dialog").open) renderMembers();
      }
      await refreshConversations();
    }),
  );
  events.addEventListener("file_progress", (e) => showProgress(JSON.parse(e.data)));
  for (const name of ["file_offered", "file_completed", "file_failed"]) {
    events.addEventListener(name, () => {
      if (state.current) guarded(refreshConversation);
    });
  }
  for (const [name, online] of [["peer_online", true], ["peer_offline", false]]) {
    events.addEventListener(name, (e) => {
      const event = JSON.parse(e.data);
      state.presence.set(event.peer, online);
      // The path of the connection comes with the contacts.
      guarded(async () => {
        await refreshContacts();
        renderPresence();
      });
    });
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.current) guarded(refreshConversation);
});

// ---- wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("error-close").addEventListener("click", clearError);
  $("account-form").addEventListener("submit", (e) => guarded(() => submitAccount(e)));
  $("search-form").addEventListener("submit", (e) => guarded(() => searchSubmit(e)));
  $("composer").addEventListener("submit", (e) => guarded(() => sendSubmit(e)));
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) guarded(loadOlder);
  });
  $("message-input").addEventListener("keydown", composerKeys);
  $("message-input").addEventListener("input", composerInput);
  $("reply-cancel").addEventListener("click", () => {
    if (state.editing) $("message-input").value = "";
    cancelComposerMode();
  });
  $("message-search-form").addEventListener("submit", (e) => guarded(() => messageSearch(e)));
  $("accept-request-button").addEventListener("click", () => guarded(acceptRequest));
  $("block-button").addEventListener("click", () => guarded(() => block(true)));
  $("unblock-button").addEventListener("click", () => guarded(() => block(false)));
  $("settings-button").addEventListener("click", () => guarded(openSettings));
  $("settings-form").addEventListener("submit", (e) => guarded(() => saveSettings(e)));
  $("settings-close").addEventListener("click", () => $("settings-dialog").close());
  $("sign-out-button").addEventListener("click", () => guarded(signOut));
  $("file-input").addEventListener("change", () => guarded(sendFile));
  $("accept-key-button").addEventListener("click", () => guarded(acceptKey));
  $("safety-button").addEventListener("click", () => guarded(openSafety));
  $("verify-button").addEventListener("click", () => guarded(verify));
  $("safety-close").addEventListener("click", () => $("safety-dialog").close());
  $("totp-button").addEventListener("click", () => guarded(openTotp));
  $("totp-form").addEventListener("submit", (e) => guarded(() => confirmTotp(e)));
  $("totp-close").addEventListener("click", () => $("totp-dialog").close());
  $("new-group-button").addEventListener("click", openNewGroup);
  $("group-form").addEventListener("submit", (e) => guarded(() => createGroup(e)));
  $("group-close").addEventListener("click", () => $("group-dialog").close());
  $("members-button").addEventListener("click", () => {
    renderMembers();
    $("members-dialog").showModal();
  });
  $("add-member-form").addEventListener("submit", (e) => guarded(() => addMember(e)));
  $("leave-button").addEventListener("click", () => guarded(() => changeGroup({ action: "leave" })));
  $("members-close").addEventListener("click", () => $("members-dialog").close());
  guarded(start);
});
