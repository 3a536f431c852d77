// The studio page: API key -> session -> camera over WHIP -> masked result over WHEP, with figures.
// Secrets (API key, publish token, play tokens, the targets' stream keys) live in variables
// and, for the API key only, in this tab's sessionStorage. They are never written to the
// console or into the page.

import { HttpError, deleteResource, errorFrom, summarizeStats, whepPlay, whipPublish } from "./rtc.js";

const KEY_STORAGE = "hikariedge.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  apiKey: null,
  personas: [],
  preview: null, // {id, url}: the shown persona texture (a blob: URL of our own fetch)
  targets: [], // [{name, url}]: RTMP targets; the URLs hold stream keys (memory only, never shown)
  session: null, // the session JSON (without tokens)
  publishToken: null,
  publisher: null, // {pc, location, videoSender}
  viewer: null, // {pc, location, stream}
  stream: null,
  timers: [],
  prevPub: null,
  prevPlay: null,
  busy: false,
};

// -- messages -----------------------------------------------------------------------------

function showError(err) {
  const box = $("error");
  let text = typeof err === "string" ? err : err && err.message ? err.message : String(err);
  if (err instanceof HttpError) text = `${text} (HTTP ${err.status})`;
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function setState(name, label) {
  const pill = $("state");
  pill.dataset.state = name;
  pill.textContent = label || name;
}

// -- API ------------------------------------------------------------------------------------

// body: a JSON value, or FormData (sent as multipart, the browser sets its boundary).
// raw: answer the Response itself (for a binary body) instead of its JSON.
async function api(method, path, body, { raw = false } = {}) {
  const headers = { "Authorization": "Bearer " + state.apiKey };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error("the node did not answer: " + err.message);
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (error.status === 401) {
      forgetKey();
      error.message = "the API key was refused: " + error.message;
    }
    throw error;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

// -- API key ----------------------------------------------------------------------------------

function forgetKey() {
  state.apiKey = null;
  try { sessionStorage.removeItem(KEY_STORAGE); } catch (_) { /* storage off */ }
  $("api-key").placeholder = "hk_...";
  $("forget").hidden = true;
  $("live-form").disabled = true;
  $("persona-form").disabled = true;
  showPersona();
  setState("offline", "offline");
}

async function connect(key) {
  state.apiKey = key;
  const body = await api("GET", "/v1/personas");
  try { sessionStorage.setItem(KEY_STORAGE, key); } catch (_) { /* storage off: keep it in memory */ }
  $("api-key").value = "";
  $("api-key").placeholder = "connected (key kept in this tab)";
  $("api-key").required = false;
  $("forget").hidden = false;
  takePersonas(body);
  $("live-form").disabled = false;
  $("persona-form").disabled = false;
  setState("ready", "ready");
}

function takePersonas(body) {
  state.personas = body.personas || [];
  const styles = body.styles || [];
  if (styles.length) {
    const select = $("persona-style");
    const previous = select.value;
    select.replaceChildren(...styles.map((name) => {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      return option;
    }));
    if (styles.includes(previous)) select.value = previous;
  }
  fillFaces();
}

function fillFaces() {
  const select = $("face");
  const previous = select.value;
  select.replaceChildren();
  const add = (parent, value, label) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    parent.appendChild(option);
  };
  add(select, "anonymize", "Anonymize: a fresh face of nobody");
  const own = state.personas.filter((p) => !p.builtin);
  const builtin = state.personas.filter((p) => p.builtin);
  for (const [label, list] of [["Your personas", own], ["Built-in personas", builtin]]) {
    if (!list.length) continue;
    const group = document.createElement("optgroup");
    group.label = label;
    for (const p of list) add(group, "persona:" + p.id, p.name || p.id);
    select.appendChild(group);
  }
  const other = document.createElement("optgroup");
  other.label = "Cover only";
  add(other, "blur", "Blur every face");
  add(other, "pixelate", "Pixelate every face");
  select.appendChild(other);
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  describeFace();
}

function selectedPersona() {
  const value = $("face").value;
  if (!value.startsWith("persona:")) return null;
  const id = value.slice("persona:".length);
  return state.personas.find((p) => p.id === id) || null;
}

// The preview of the chosen persona: its texture, fetched with the API key (an <img src>
// could not send it) and shown from a blob: URL, freed when another one replaces it.
async function showPersona() {
  const persona = state.apiKey ? selectedPersona() : null;
  const card = $("persona-card");
  if (!persona) {
    card.hidden = true;
    dropPreview();
    return;
  }
  $("persona-caption").textContent = personaLabel(persona);
  $("delete-persona").hidden = !!persona.builtin;
  card.hidden = false;
  if (state.preview && state.preview.id === persona.id) return;
  dropPreview();
  try {
    const response = await api("GET", persona.texture_url || `/v1/personas/${encodeURIComponent(persona.id)}/texture.png`, undefined, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    if (!selectedPersona() || selectedPersona().id !== persona.id) {
      URL.revokeObjectURL(url); // the choice moved on meanwhile
      return;
    }
    dropPreview();
    state.preview = { id: persona.id, url };
    $("persona-preview").src = url;
  } catch (err) {
    showError(err);
  }
}

function dropPreview() {
  if (state.preview) URL.revokeObjectURL(state.preview.url);
  state.preview = null;
  $("persona-preview").removeAttribute("src");
}

function personaLabel(p) {
  const name = p.name || p.id;
  if (p.builtin) return `${name} (built-in, ${p.style})`;
  if (p.kind === "procedural") return `${name} (painted, ${p.style}, seed ${p.seed})`;
  return `${name} (from a photo, ${p.width}\u00d7${p.height})`;
}

function describeFace() {
  showPersona();
  const value = $("face").value;
  const hint = $("face-hint");
  if (value.startsWith("persona:")) {
    hint.textContent = "The largest face wears this persona; any other face becomes a face of nobody.";
  } else if (value === "anonymize") {
    hint.textContent = "Every face becomes a fresh procedural face, chosen for this session and never stored.";
  } else {
    hint.textContent = "Every face is covered (" + value + ").";
  }
}

function sessionRequest() {
  const value = $("face").value;
  if (value.startsWith("persona:")) return { mode: "persona", persona: value.slice("persona:".length) };
  return { mode: value, persona: null };
}

// -- targets ------------------------------------------------------------------------------------

// What the page shows of a target URL: scheme, host and app; the last segment (the key) hidden.
function redactTarget(url) {
  const bare = url.split("?")[0].replace(/\/+$/, "");
  const cut = bare.lastIndexOf("/");
  return cut > bare.indexOf("//") + 1 ? bare.slice(0, cut) + "/***" : bare;
}

let shownTargets = "";

function renderTargets(live) {
  const list = $("target-list");
  const shown = JSON.stringify([state.targets.map((t) => [t.name, redactTarget(t.url)]), live || null]);
  if (shown === shownTargets) return; // unchanged: keep the buttons under the pointer
  shownTargets = shown;
  list.replaceChildren();
  if (!state.targets.length) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.id = "no-targets";
    empty.textContent = "none yet";
    list.appendChild(empty);
    return;
  }
  state.targets.forEach((target, i) => {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `${target.name || "target " + (i + 1)}: ${redactTarget(target.url)}`;
    const status = document.createElement("span");
    status.className = "state";
    const figures = live && live[i];
    if (figures) {
      status.dataset.ok = String(!!figures.connected);
      status.textContent = figures.connected ? "connected" : `connecting (${figures.reconnects} retries)`;
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => changeTargets(state.targets.filter((_, k) => k !== i), "Target removed."));
    item.append(label, status, remove);
    list.appendChild(item);
  });
}

async function addTarget() {
  clearError();
  const server = $("target-server").value.trim();
  const key = $("target-key").value.trim();
  if (!/^rtmps?:\/\/[^/]+/i.test(server)) {
    showError("the server must be an rtmp:// or rtmps:// URL, as the platform gives it");
    return;
  }
  const url = key ? server.replace(/\/+$/, "") + "/" + key : server;
  const target = { url };
  const name = $("target-name").value.trim();
  if (name) target.name = name;
  if (await changeTargets([...state.targets, target], "Target added.")) {
    $("target-key").value = "";
    $("target-name").value = "";
  }
}

// A session already made (idle or live) gets the new list at once (PATCH; live, a target
// that stays keeps its connection); otherwise the list goes with the session when it is made.
async function changeTargets(targets, done) {
  if (state.busy) return false;
  const session = state.session && state.session.state !== "ended" ? state.session : null;
  if (session) {
    state.busy = true;
    try {
      const updated = await api("PATCH", `/v1/sessions/${encodeURIComponent(session.id)}`, { targets });
      state.targets = targets.map((t, i) => ({ url: t.url, name: updated.targets[i] ? updated.targets[i].name : t.name }));
    } catch (err) {
      showError(err);
      return false;
    } finally {
      state.busy = false;
    }
  } else {
    state.targets = targets;
  }
  renderTargets();
  notice(done + (session && state.publisher ? " The stream goes on." : ""));
  return true;
}

function faceOf(session) {
  return session.mode === "persona" && session.persona ? "persona:" + session.persona : session.mode;
}

// While live, a new choice of face is switched on the running stream (PATCH): the node
// builds the new face's pipeline and hands it over between two frames.
async function switchLive() {
  if (!state.publisher || !state.session || state.busy) return;
  const request = sessionRequest();
  if (sameRequest(state.session, request)) return;
  state.busy = true;
  clearError();
  $("face").disabled = true;
  notice("Switching the face\u2026");
  try {
    const updated = await api("PATCH", `/v1/sessions/${encodeURIComponent(state.session.id)}`, request);
    state.session.mode = updated.mode;
    state.session.persona = updated.persona;
    showSession();
    notice("Face switched on the live stream.");
  } catch (err) {
    notice("");
    showError(err);
    $("face").value = faceOf(state.session); // the stream keeps its face
    describeFace();
  } finally {
    state.busy = false;
    $("face").disabled = false;
  }
}

// -- going live -----------------------------------------------------------------------------

async function openCamera() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("the browser allows the camera only on a secure page: open this page over https, or as http://localhost / http://127.0.0.1 on the node's machine");
  }
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30, max: 30 } };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: $("mic").checked });
  } catch (err) {
    if (err && err.name === "NotAllowedError") throw new Error("camera access was refused: allow it in the browser's site settings");
    if (err && err.name === "NotFoundError") throw new Error("no camera found");
    throw new Error("cannot open the camera: " + (err && err.message ? err.message : err));
  }
}

function sameRequest(session, request) {
  return session && session.state !== "ended" && session.mode === request.mode && (session.persona || null) === (request.persona || null);
}

async function goLive() {
  if (state.busy) return;
  state.busy = true;
  clearError();
  $("start").disabled = true;
  try {
    setState("starting", "starting");
    state.stream = await openCamera();
    $("local").srcObject = state.stream;
    $("local-placeholder").hidden = true;
    const request = sessionRequest();
    if (!sameRequest(state.session, request) || !state.publishToken) {
      notice("Creating a session\u2026");
      const created = await api("POST", "/v1/sessions", { ...request, targets: state.targets });
      state.targets = state.targets.map((t, i) => ({ url: t.url, name: created.targets[i] ? created.targets[i].name : t.name }));
      renderTargets();
      if (!created.whip || !created.whip.bearer_token) throw new Error("this node has WebRTC turned off (no WHIP URL in the session)");
      state.publishToken = created.whip.bearer_token;
      delete created.whip.bearer_token; // keep only what the page shows
      delete created.publish_token;
      if (created.rtmp) delete created.rtmp.stream_key;
      state.session = created;
    }
    showSession();
    notice("Publishing over WHIP\u2026");
    state.publisher = await whipPublish(state.session.whip.url, state.publishToken, state.stream);
    watchPeer(state.publisher.pc, "publish");
    notice("Starting the viewer\u2026");
    await startViewer();
    notice("");
    setState("live", "live");
    $("stop").disabled = false;
    $("end").disabled = false;
    $("copy-embed").disabled = false;
    startStats();
  } catch (err) {
    notice("");
    showError(err);
    await stop({ quiet: true });
  } finally {
    state.busy = false;
    $("start").disabled = !!state.publisher;
  }
}

async function startViewer() {
  const issued = await api("POST", `/v1/sessions/${encodeURIComponent(state.session.id)}/play-tokens`, { ttl_s: 60 });
  const remote = $("remote");
  state.viewer = await whepPlay(issued.whep_url || state.session.whep.url, issued.token, (stream) => {
    if (remote.srcObject !== stream) remote.srcObject = stream;
    $("remote-placeholder").hidden = true;
  });
  watchPeer(state.viewer.pc, "play");
}

function watchPeer(pc, which) {
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed") {
      showError(which === "publish" ? "the connection to the node failed (WHIP); press Go live to try again"
        : "the viewer's connection failed (WHEP)");
      if (which === "publish") stop({ quiet: true });
    }
  });
}

function showSession() {
  const s = state.session;
  $("session-id").textContent = s ? s.id : "none";
  $("session-mode").textContent = s ? (s.mode + (s.persona ? " \u00b7 " + s.persona : "")) : "\u2013";
}

async function stop({ quiet = false } = {}) {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  const { publisher, viewer } = state;
  state.publisher = state.viewer = null;
  await Promise.all([publisher && deleteResource(publisher.location), viewer && deleteResource(viewer.location)]);
  if (publisher) publisher.pc.close();
  if (viewer) viewer.pc.close();
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("local").srcObject = null;
  $("remote").srcObject = null;
  $("local-placeholder").hidden = false;
  $("remote-placeholder").hidden = false;
  $("stop").disabled = true;
  $("start").disabled = false;
  $("copy-embed").disabled = !state.session;
  state.prevPub = state.prevPlay = null;
  renderTargets(); // no live figures any more
  if (state.apiKey) setState("ready", state.session ? "stopped" : "ready");
  if (!quiet) notice("Stopped. The session stays open: Go live again, or end it.");
}

async function endSession() {
  clearError();
  await stop({ quiet: true });
  if (!state.session) return;
  try {
    await api("DELETE", `/v1/sessions/${encodeURIComponent(state.session.id)}`);
    notice("Session ended.");
  } catch (err) {
    showError(err);
  }
  state.session = null;
  state.publishToken = null;
  showSession();
  $("end").disabled = true;
  $("copy-embed").disabled = true;
}

async function copyEmbedLink() {
  clearError();
  if (!state.session) return;
  try {
    const ttl = parseInt($("embed-ttl").value, 10);
    const issued = await api("POST", `/v1/sessions/${encodeURIComponent(state.session.id)}/play-tokens`, { ttl_s: ttl });
    const link = new URL(`/embed/${encodeURIComponent(state.session.id)}`, window.location.href);
    link.searchParams.set("token", issued.token);
    if (!navigator.clipboard || !navigator.clipboard.writeText) throw new Error("the clipboard is not available on this page (it needs https or localhost)");
    await navigator.clipboard.writeText(link.href);
    const until = new Date(issued.expires_at * 1000).toLocaleTimeString();
    notice(`Embed link copied to the clipboard (one viewer, valid until ${until}). Put it in an <iframe allow="autoplay">.`);
  } catch (err) {
    showError(err);
  }
}

// -- personas ---------------------------------------------------------------------------------

async function reloadPersonas(selectId) {
  takePersonas(await api("GET", "/v1/personas"));
  if (selectId) {
    $("face").value = "persona:" + selectId;
    describeFace();
  }
}

async function makePersona(button, pending, request) {
  if (state.busy) return;
  state.busy = true;
  clearError();
  button.disabled = true;
  notice(pending);
  try {
    const made = await request();
    $("persona-name").value = "";
    await reloadPersonas(made.id);
    notice(`Persona \u201c${made.name || made.id}\u201d made and chosen: Go live to wear it.`);
    return made;
  } catch (err) {
    notice("");
    showError(err);
  } finally {
    state.busy = false;
    button.disabled = false;
  }
}

function personaName() {
  const name = $("persona-name").value.trim();
  return name || undefined;
}

async function paintPersona() {
  const text = $("persona-seed").value.trim();
  const body = { style: $("persona-style").value };
  if (text) {
    const seed = Number(text);
    if (!Number.isSafeInteger(seed) || seed < 0) {
      showError("the seed must be a whole number from 0 up");
      return;
    }
    body.seed = seed;
  }
  const name = personaName();
  if (name) body.name = name;
  const made = await makePersona($("paint-persona"), "Painting the face\u2026", () => api("POST", "/v1/personas", body));
  if (made) $("persona-seed").value = String(made.seed); // the node draws one when none is given
}

async function uploadPersona() {
  const file = $("persona-photo").files[0];
  if (!file) {
    showError("choose a photo first");
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  const name = personaName();
  if (name) form.append("name", name);
  const made = await makePersona($("upload-persona"), "Checking the photo for one frontal face\u2026", () => api("POST", "/v1/personas", form));
  if (made) $("persona-photo").value = "";
}

async function deletePersona() {
  const persona = selectedPersona();
  if (!persona || persona.builtin || state.busy) return;
  if (!window.confirm(`Delete the persona \u201c${persona.name || persona.id}\u201d? This cannot be undone.`)) return;
  clearError();
  state.busy = true;
  try {
    await api("DELETE", `/v1/personas/${encodeURIComponent(persona.id)}`);
    await reloadPersonas();
    notice("Persona deleted. A session that named it gives the face a fresh face of nobody when it next goes live.");
  } catch (err) {
    showError(err);
  } finally {
    state.busy = false;
  }
}

// -- figures --------------------------------------------------------------------------------

const fmt = {
  n: (v, digits = 0) => (v === undefined || v === null || Number.isNaN(v) ? "\u2013" : Number(v).toFixed(digits)),
  ms: (v) => (v === undefined || v === null || Number.isNaN(v) ? "\u2013" : `${Math.round(v)} ms`),
  kbps: (v) => (v === undefined ? "\u2013" : v >= 1000 ? `${(v / 1000).toFixed(2)} Mbit/s` : `${Math.round(v)} kbit/s`),
  res: (s) => (s && s.frameWidth ? `${s.frameWidth}\u00d7${s.frameHeight}` : "\u2013"),
};

function set(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

async function updatePeerStats() {
  const pub = state.publisher && (await summarizeStats(state.publisher.pc, state.prevPub).catch(() => null));
  const play = state.viewer && (await summarizeStats(state.viewer.pc, state.prevPlay).catch(() => null));
  if (pub) {
    state.prevPub = pub;
    const o = pub.out || {};
    set("pub-res", fmt.res(o));
    set("pub-fps", fmt.n(o.framesPerSecond));
    set("pub-rate", fmt.kbps(pub.kbps));
    set("pub-rtt", fmt.ms(pub.rttMs));
    set("pub-limit", o.qualityLimitationReason || "\u2013");
    set("pub-lost", pub.remoteIn ? fmt.n(pub.remoteIn.packetsLost) : "\u2013");
    if (pub.codec) set("pub-codec", pub.codec.replace("video/", ""));
  }
  if (play) {
    state.prevPlay = play;
    const i = play.in || {};
    set("play-res", fmt.res(i));
    set("play-fps", fmt.n(i.framesPerSecond));
    set("play-decoded", fmt.n(i.framesDecoded));
    set("play-dropped", fmt.n(i.framesDropped));
    set("play-jb", fmt.ms(play.jitterMs));
    set("play-rtt", fmt.ms(play.rttMs));
    set("play-rate", fmt.kbps(play.kbps));
    set("play-lost", fmt.n(i.packetsLost));
  }
  if (pub && play) {
    const parts = [pub.rttMs / 2, play.rttMs / 2, play.jitterMs, play.decodeMs].filter((v) => v !== undefined && !Number.isNaN(v));
    if (parts.length) set("est-latency", `about ${Math.round(parts.reduce((a, b) => a + b, 0))} ms (network ${fmt.ms((pub.rttMs || 0) / 2 + (play.rttMs || 0) / 2)}, jitter buffer ${fmt.ms(play.jitterMs)}, decode ${fmt.ms(play.decodeMs)})`);
  }
}

async function updateServerStats() {
  if (!state.session) return;
  try {
    const s = await api("GET", `/v1/sessions/${encodeURIComponent(state.session.id)}`);
    state.session.state = s.state;
    set("srv-state", s.state);
    const live = s.live || {};
    if (live.targets) renderTargets(live.targets);
    set("srv-fps", fmt.n(live.fps_out, 1));
    set("srv-viewers", fmt.n(live.viewers));
    set("srv-in", fmt.n(live.frames_in));
    set("srv-out", fmt.n(live.frames_out));
    const dropped = live.frames_dropped || {};
    const total = Object.values(dropped).reduce((a, b) => a + b, 0);
    const detail = Object.entries(dropped).map(([k, v]) => `${k} ${v}`).join(", ");
    set("srv-dropped", s.live ? `${total}${detail ? " (" + detail + ")" : ""}` : "\u2013");
    if (s.state === "ended") {
      showError(`the session ended (${s.end_reason || "ended"})`);
      await stop({ quiet: true });
      state.session = null;
      state.publishToken = null;
      showSession();
    }
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) showError(err);
  }
}

function startStats() {
  state.timers.push(setInterval(updatePeerStats, 1000));
  state.timers.push(setInterval(updateServerStats, 2000));
  updateServerStats();
}

// -- wiring ---------------------------------------------------------------------------------

function init() {
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const key = $("api-key").value.trim();
    if (!key) {
      if (!state.apiKey) showError("type an API key");
      return;
    }
    try {
      await connect(key);
    } catch (err) {
      showError(err);
    }
  });
  $("forget").addEventListener("click", () => { forgetKey(); notice("API key forgotten."); });
  $("face").addEventListener("change", () => { describeFace(); switchLive(); });
  $("start").addEventListener("click", goLive);
  $("stop").addEventListener("click", () => stop());
  $("end").addEventListener("click", endSession);
  $("copy-embed").addEventListener("click", copyEmbedLink);
  $("paint-persona").addEventListener("click", paintPersona);
  $("upload-persona").addEventListener("click", uploadPersona);
  $("delete-persona").addEventListener("click", deletePersona);
  $("add-target-button").addEventListener("click", addTarget);
  window.addEventListener("pagehide", () => {
    if (state.publisher) deleteResource(state.publisher.location, { keepalive: true });
    if (state.viewer) deleteResource(state.viewer.location, { keepalive: true });
  });
  let saved = null;
  try { saved = sessionStorage.getItem(KEY_STORAGE); } catch (_) { /* storage off */ }
  if (saved) connect(saved).catch(showError);
  if (!window.RTCPeerConnection) showError("this browser has no WebRTC");
}

init();
