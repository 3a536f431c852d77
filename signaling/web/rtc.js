// WHIP / WHEP helpers shared by the studio and the embed player. Non-trickle: the offer is
// posted once ICE gathering is complete, so a single POST carries every candidate.
// Tokens are passed in, used in an Authorization header and never logged or shown.

export class HttpError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// The node answers errors as {"error": {"status", "code", "message", "field"}}.
export async function errorFrom(response) {
  let code = "http_" + response.status;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      if (body.error.field) message += " (" + body.error.field + ")";
    }
  } catch (_) { /* not JSON */ }
  const retry = parseInt(response.headers.get("Retry-After") || "", 10);
  return new HttpError(response.status, code, message, Number.isFinite(retry) ? retry : undefined);
}

// Only the path of a URL the node hands out: the page talks to the node that served it
// (the CSP allows connect-src 'self'), whatever public host the node advertises.
export function samePath(url) {
  try {
    const u = new URL(url, window.location.href);
    return u.pathname + u.search;
  } catch (_) {
    return url;
  }
}

export function waitForIceGathering(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Gathering can hang on an unreachable interface: go with the candidates found so far.
    const timer = setTimeout(() => { pc.removeEventListener("icegatheringstatechange", done); resolve(); }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

async function exchange(url, token, pc) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await waitForIceGathering(pc);
  const response = await fetch(samePath(url), {
    method: "POST",
    headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + token },
    body: pc.localDescription.sdp,
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (response.status !== 201) throw await errorFrom(response);
  const location = response.headers.get("Location");
  const answer = await response.text();
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  return location ? samePath(new URL(location, new URL(url, window.location.href)).href) : null;
}

// H.264 first (the node decodes it without a transcode; packetization-mode=1, constrained
// baseline first, as OBS sends), then VP8, then the rest (rtx, red, ulpfec).
export function preferPublishCodecs(transceiver) {
  if (!window.RTCRtpSender || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const codecs = RTCRtpSender.getCapabilities("video").codecs;
  const rank = (c) => {
    const mime = c.mimeType.toLowerCase();
    const fmtp = c.sdpFmtpLine || "";
    if (mime === "video/h264") {
      let r = 0;
      if (!/packetization-mode=1/.test(fmtp)) r += 4;
      if (!/profile-level-id=42e0/.test(fmtp)) r += 1;
      if (!/profile-level-id=42/.test(fmtp)) r += 1;
      return r;
    }
    if (mime === "video/vp8") return 10;
    if (mime === "video/rtx" || mime === "video/red" || mime === "video/ulpfec") return 20;
    return 100; // VP9, AV1...: the node does not take them
  };
  const ordered = codecs.filter((c) => rank(c) < 100).sort((a, b) => rank(a) - rank(b));
  try { transceiver.setCodecPreferences(ordered); } catch (_) { /* keep the browser's order */ }
}

export function preferPlayCodecs(transceiver) {
  if (!window.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities || !transceiver.setCodecPreferences) return;
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const h264 = codecs.filter((c) => c.mimeType.toLowerCase() === "video/h264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""));
  const rest = codecs.filter((c) => ["video/rtx", "video/red", "video/ulpfec"].includes(c.mimeType.toLowerCase()));
  if (h264.length) {
    try { transceiver.setCodecPreferences([...h264, ...rest]); } catch (_) { /* browser order */ }
  }
}

// Publish a MediaStream over WHIP. Returns {pc, location, videoSender}.
export async function whipPublish(url, token, stream) {
  const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
  try {
    let videoSender = null;
    for (const track of stream.getTracks()) {
      const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      if (track.kind === "video") {
        preferPublishCodecs(transceiver);
        videoSender = transceiver.sender;
      }
    }
    const location = await exchange(url, token, pc);
    return { pc, location, videoSender };
  } catch (err) {
    pc.close();
    throw err;
  }
}

// Play a session over WHEP. onStream(MediaStream) is called when the tracks arrive.
export async function whepPlay(url, token, onStream, { audio = true } = {}) {
  const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => {
    stream.addTrack(event.track);
    onStream(stream);
  });
  try {
    preferPlayCodecs(pc.addTransceiver("video", { direction: "recvonly" }));
    if (audio) pc.addTransceiver("audio", { direction: "recvonly" });
    const location = await exchange(url, token, pc);
    return { pc, location, stream };
  } catch (err) {
    pc.close();
    throw err;
  }
}

// End a WHIP/WHEP resource (its URL is the capability; no token needed). keepalive lets it
// go out while the page unloads.
export async function deleteResource(location, { keepalive = false } = {}) {
  if (!location) return;
  try {
    await fetch(location, { method: "DELETE", keepalive, cache: "no-store", credentials: "omit" });
  } catch (_) { /* the node drops idle peers on its own */ }
}

// One getStats() snapshot reduced to what the pages show; `prev` gives rates.
export async function summarizeStats(pc, prev) {
  const report = await pc.getStats();
  const now = performance.now();
  const out = { at: now };
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      out.out = s;
    } else if (s.type === "inbound-rtp" && s.kind === "video") {
      out.in = s;
    } else if (s.type === "remote-inbound-rtp" && s.kind === "video") {
      out.remoteIn = s;
    } else if (s.type === "candidate-pair" && (s.nominated || s.selected) && s.state === "succeeded") {
      out.pair = s;
    }
  });
  const codecId = (out.out || out.in || {}).codecId;
  if (codecId && report.get(codecId)) out.codec = report.get(codecId).mimeType;
  const bytes = out.out ? out.out.bytesSent : out.in ? out.in.bytesReceived : undefined;
  out.bytes = bytes;
  if (prev && bytes !== undefined && prev.bytes !== undefined && now > prev.at) {
    out.kbps = ((bytes - prev.bytes) * 8) / (now - prev.at);
  }
  const rtt = out.remoteIn && out.remoteIn.roundTripTime !== undefined ? out.remoteIn.roundTripTime
    : out.pair && out.pair.currentRoundTripTime !== undefined ? out.pair.currentRoundTripTime : undefined;
  out.rttMs = rtt !== undefined ? rtt * 1000 : undefined;
  if (out.in) {
    const i = out.in;
    if (prev && prev.in && i.jitterBufferEmittedCount > prev.in.jitterBufferEmittedCount) {
      out.jitterMs = (1000 * (i.jitterBufferDelay - prev.in.jitterBufferDelay)) / (i.jitterBufferEmittedCount - prev.in.jitterBufferEmittedCount);
    } else if (i.jitterBufferEmittedCount) {
      out.jitterMs = (1000 * i.jitterBufferDelay) / i.jitterBufferEmittedCount;
    }
    if (prev && prev.in && i.framesDecoded > prev.in.framesDecoded && i.totalDecodeTime !== undefined) {
      out.decodeMs = (1000 * (i.totalDecodeTime - prev.in.totalDecodeTime)) / (i.framesDecoded - prev.in.framesDecoded);
    }
  }
  return out;
}
