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
};

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
  document.title = `peerchat — ${me}`;
  show("chat");
  listen();
  await refreshAll();
  $("search-input").focus();
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
  const listed = new Set(conversations.map((c) => c.key));
  // Contacts and groups without messages yet are listed too.
  for (const contact of state.contacts.values()) {
    if (!listed.has(contact.username)) {
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
    last.textContent = c.last ? by + c.last.text : "No messages yet";
    button.append(top, last);
    button.addEventListener("click", () => guarded(() => openConversation(c.key)));
    item.append(button);
    list.append(item);
  }
}

async function openConversation(key) {
  clearError();
  state.current = key;
  $("empty").hidden = true;
  $("pane").hidden = false;
  $("messages").replaceChildren();
  state.older = [];
  state.exhausted = false;
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
  if (isGroup(peer)) {
    $("peer-verified").hidden = true;
    $("key-warning").hidden = true;
    renderHeader();
    return refreshMessages(peer);
  }
  const contact = state.contacts.get(peer);
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
  await refreshMessages(peer);
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
  const items = messages
    .map((m) => ({ at: m.sent_at_ms, item: () => messageItem(m) }))
    .concat(files.map((f) => ({ at: f.at_ms, item: () => fileItem(f) })))
    .sort((a, b) => a.at - b.at);
  list.replaceChildren(...items.map((i) => i.item()));
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
    author.textContent = m.author;
    item.append(author);
  }
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = m.status === "undecryptable" ? "This message could not be decrypted." : m.text;
  if (m.status === "undecryptable") text.classList.add("undecryptable");
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
  item.append(text, meta);
  return item;
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
  const id = newMessageId();
  input.value = "";
  // Shown at once as "sending…"; the node's answer and later events move it on.
  $("messages").append(
    messageItem({ id, direction: "outgoing", text, sent_at_ms: Date.now(), status: "pending" }),
  );
  $("messages").scrollTop = $("messages").scrollHeight;
  try {
    if (isGroup(peer)) {
      await api("POST", `/api/v1/groups/${peer.slice(1)}/messages`, { text, id });
    } else {
      await api("POST", "/api/v1/messages", { to: peer, text, id });
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
      if (event.peer === state.current) await refreshConversation();
      await refreshConversations();
    }),
  );
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
