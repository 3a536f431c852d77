// The embeddable player: /embed/{session}?token=<play token>. WHEP, muted autoplay, click to unmute.
// The token is read from the URL, sent in an Authorization header and never logged or shown.

import { HttpError, deleteResource, summarizeStats, whepPlay } from "./rtc.js";

const RETRY_S = 4; // session not reachable, node busy, connection lost: try again this often
const STALL_S = 6; // no new frame this long: say the stream is paused
const DISCONNECTED_S = 5; // a connection "disconnected" this long is started over
const CHECK_S = 5; // while no frames come, ask the node this often whether it still holds this viewer

const video = document.getElementById("video");
const box = document.getElementById("message");
const text = document.getElementById("message-text");
const unmute = document.getElementById("unmute");

let viewer = null;
let retryTimer = null;
let watchTimer = null;
let stopped = false;

function say(message, { spinner = true, kind = "info" } = {}) {
  text.textContent = message;
  box.dataset.kind = kind;
  box.classList.toggle("busy", spinner);
  box.hidden = false;
  document.body.dataset.status = kind;
}

function quiet() {
  box.hidden = true;
  document.body.dataset.status = "playing";
}

function fatal(message) {
  stopped = true;
  say(message, { spinner: false, kind: "error" });
  teardown();
}

function teardown() {
  clearInterval(watchTimer);
  watchTimer = null;
  if (viewer) {
    const old = viewer;
    viewer = null;
    deleteResource(old.location);
    old.pc.close();
  }
}

function retry(seconds, message) {
  teardown();
  if (stopped) return;
  say(message);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, Math.max(0.5, Math.min(seconds, 30)) * 1000);
}

function params() {
  const parts = window.location.pathname.split("/").filter(Boolean);
  const session = parts.length >= 2 ? decodeURIComponent(parts[1]) : "";
  const token = new URLSearchParams(window.location.search).get("token") || "";
  return { session, token };
}

async function connect() {
  const { session, token } = params();
  if (!token) return fatal("This player link has no play token. Ask the streamer for a new link.");
  if (!/^[A-Za-z0-9_-]+$/.test(session)) return fatal("This player link is not valid.");
  say("Connecting\u2026");
  try {
    viewer = await whepPlay(`/whep/${encodeURIComponent(session)}`, token, (stream) => {
      if (video.srcObject !== stream) video.srcObject = stream;
      video.play().catch(() => {});
    });
  } catch (err) {
    viewer = null;
    if (err instanceof HttpError) {
      if (err.status === 401) return fatal("This link is invalid or has expired. Ask the streamer for a new one.");
      if (err.status === 404) return fatal("This stream has ended.");
      if (err.status === 503) return retry(err.retryAfter || RETRY_S, "The stream is full right now. Retrying\u2026");
      if (err.status >= 400 && err.status < 500) return fatal("This player cannot play the stream (" + err.message + ").");
      return retry(RETRY_S, "The stream is not reachable. Retrying\u2026");
    }
    return retry(RETRY_S, "The stream is not reachable. Retrying\u2026");
  }
  say("Waiting for the stream to go live\u2026");
  const pc = viewer.pc;
  let disconnectedTimer = null;
  pc.addEventListener("connectionstatechange", () => {
    if (!viewer || viewer.pc !== pc) return;
    clearTimeout(disconnectedTimer);
    if (pc.connectionState === "failed" || pc.connectionState === "closed") {
      retry(RETRY_S, "Connection lost. Reconnecting\u2026");
    } else if (pc.connectionState === "disconnected") {
      // often recovers by itself; if it does not, start over (the node may have ended the stream)
      disconnectedTimer = setTimeout(() => {
        if (viewer && viewer.pc === pc && pc.connectionState === "disconnected") retry(0, "Connection lost. Reconnecting\u2026");
      }, DISCONNECTED_S * 1000);
    }
  });
  watch(pc);
}

// The node accepts viewers before the creator goes live; frames arrive once they do.
function watch(pc) {
  let prev = null;
  let lastDecoded = 0;
  let lastProgress = performance.now();
  let everPlayed = false;
  let lastCheck = performance.now();
  clearInterval(watchTimer);
  watchTimer = setInterval(async () => {
    if (!viewer || viewer.pc !== pc) return;
    const stats = await summarizeStats(pc, prev).catch(() => null);
    if (!stats || !viewer || viewer.pc !== pc) return;
    prev = stats;
    const decoded = stats.in ? stats.in.framesDecoded || 0 : 0;
    const now = performance.now();
    if (decoded > lastDecoded) {
      lastDecoded = decoded;
      lastProgress = now;
      if (!everPlayed || !box.hidden) quiet();
      everPlayed = true;
      document.body.dataset.framesDecoded = String(decoded);
    } else if (now - lastProgress > STALL_S * 1000) {
      say(everPlayed ? "The stream is paused. Waiting for it to come back\u2026" : "Waiting for the stream to go live\u2026");
      if (now - lastCheck > CHECK_S * 1000) {
        lastCheck = now;
        const gone = !(await resourceExists(viewer.location));
        if (gone && viewer && viewer.pc === pc) retry(0, "Reconnecting\u2026"); // e.g. the session ended
      }
    }
  }, 1000);
}

// Whether the node still holds this viewer: PATCH answers 404 for a resource it dropped
// (session ended, viewer timed out) before it looks at the body, and 415 for an empty one,
// so this changes nothing on the node. Network trouble counts as "still there".
async function resourceExists(location) {
  if (!location) return true;
  try {
    const response = await fetch(location, { method: "PATCH", headers: { "Content-Type": "text/plain" }, body: "", cache: "no-store", credentials: "omit" });
    return response.status !== 404;
  } catch (_) {
    return true;
  }
}

function showUnmute() {
  unmute.hidden = !video.muted;
}

unmute.addEventListener("click", () => {
  video.muted = false;
  video.play().catch(() => { video.muted = true; });
  showUnmute();
});
video.addEventListener("click", () => { if (video.muted) unmute.click(); });
video.addEventListener("volumechange", showUnmute);
video.addEventListener("playing", showUnmute);
window.addEventListener("pagehide", () => {
  stopped = true;
  if (viewer) deleteResource(viewer.location, { keepalive: true });
});

if (!window.RTCPeerConnection) {
  fatal("This browser cannot play live streams (no WebRTC).");
} else {
  connect();
}
