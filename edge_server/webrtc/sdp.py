"""SDP checks for WHIP/WHEP, pure: text in, values or SdpError out; no aiortc, no I/O.

aiortc parses the offer again when it applies it; these checks run first so that a bad
offer gets a clear 400 before a session goes live or a peer connection is built.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MAX_SDP_BYTES = 64 * 1024
PUBLISH_VIDEO_CODECS = ("h264", "vp8")  # what the ingest can decode (aiortc's decoders)
SEND_DIRECTIONS = ("sendonly", "sendrecv")
RECEIVE_DIRECTIONS = ("recvonly", "sendrecv")


class SdpError(ValueError):
    """The offer or fragment cannot be used; the message is safe to return in a 400."""


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str  # lower case, e.g. "h264", "vp8", "opus", "rtx"
    clock_rate: int
    fmtp: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MediaSection:
    kind: str  # audio | video | application | ...
    port: int
    protocol: str
    direction: str
    mid: str | None
    codecs: tuple[Codec, ...]
    rtcp_mux: bool
    ice_ufrag: str | None
    ice_pwd: str | None

    @property
    def rejected(self) -> bool:
        return self.port == 0

    def codec_names(self) -> set[str]:
        return {c.name for c in self.codecs}

    def has_h264_mode1(self) -> bool:
        return any(c.name == "h264" and c.fmtp.get("packetization-mode") == "1" for c in self.codecs)


@dataclass(frozen=True)
class Offer:
    media: tuple[MediaSection, ...]
    bundle: tuple[str, ...]
    ice_ufrag: str | None  # session level, or the first media section's
    ice_pwd: str | None

    def first(self, kind: str) -> MediaSection | None:
        return next((m for m in self.media if m.kind == kind and not m.rejected), None)


@dataclass(frozen=True)
class FragCandidate:
    mid: str | None
    mline_index: int  # index of the m= line within the fragment (0 when it has none)
    value: str  # "candidate:..." as in the a= line


@dataclass(frozen=True)
class SdpFrag:
    """An application/trickle-ice-sdpfrag body (RFC 8840)."""

    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: tuple[FragCandidate, ...]
    end_of_candidates: bool


def _lines(text: str) -> list[str]:
    if len(text.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError("SDP too large")
    if "\x00" in text:
        raise SdpError("SDP contains NUL bytes")
    return [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def _attr(line: str) -> tuple[str, str]:
    name, _, value = line[2:].partition(":")
    return name, value


def parse_offer(text: str) -> Offer:
    """Parse the parts of an offer that decide whether it can be served. Raises SdpError."""
    lines = _lines(text)
    if not lines or lines[0] != "v=0":
        raise SdpError("not an SDP offer (must start with v=0)")
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"malformed SDP line {line[:40]!r}")
    session_ufrag = session_pwd = None
    session_direction = "sendrecv"
    bundle: tuple[str, ...] = ()
    sections: list[list[str]] = []
    for line in lines[1:]:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        elif line.startswith("a="):
            name, value = _attr(line)
            if name == "ice-ufrag":
                session_ufrag = value
            elif name == "ice-pwd":
                session_pwd = value
            elif name == "group" and value.startswith("BUNDLE"):
                bundle = tuple(value.split()[1:])
            elif name in ("sendonly", "recvonly", "sendrecv", "inactive"):
                session_direction = name
    if not sections:
        raise SdpError("offer has no media sections")
    media = tuple(_parse_media(section, session_direction, session_ufrag, session_pwd) for section in sections)
    first = next((m for m in media if not m.rejected), media[0])
    return Offer(media, bundle, session_ufrag or first.ice_ufrag, session_pwd or first.ice_pwd)


def _parse_media(section: list[str], direction: str, ufrag: str | None, pwd: str | None) -> MediaSection:
    parts = section[0][2:].split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line {section[0][:60]!r}")
    kind, port_text, protocol = parts[0], parts[1].split("/")[0], parts[2]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError(f"bad port in m= line {section[0][:60]!r}")
    formats = parts[3:]
    mid = None
    rtcp_mux = False
    rtpmap: dict[int, tuple[str, int]] = {}
    fmtp: dict[int, dict[str, str]] = {}
    for line in section[1:]:
        if not line.startswith("a="):
            continue
        name, value = _attr(line)
        if name == "mid":
            mid = value
        elif name == "rtcp-mux":
            rtcp_mux = True
        elif name in ("sendonly", "recvonly", "sendrecv", "inactive"):
            direction = name
        elif name == "ice-ufrag":
            ufrag = value
        elif name == "ice-pwd":
            pwd = value
        elif name == "rtpmap":
            match = re.fullmatch(r"(\d+)\s+([^/\s]+)/(\d+)(?:/\d+)?", value.strip())
            if match is None:
                raise SdpError(f"malformed rtpmap {value[:60]!r}")
            rtpmap[int(match.group(1))] = (match.group(2).lower(), int(match.group(3)))
        elif name == "fmtp":
            pt, _, params = value.partition(" ")
            if pt.isdigit():
                fmtp[int(pt)] = _parse_fmtp(params)
    codecs = []
    for fmt in formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        if pt in rtpmap:
            name, rate = rtpmap[pt]
            codecs.append(Codec(pt, name, rate, fmtp.get(pt, {})))
        elif pt < 35:  # static payload types need no rtpmap
            codecs.append(Codec(pt, {0: "pcmu", 8: "pcma", 9: "g722"}.get(pt, f"static{pt}"), 8000))
    return MediaSection(kind, int(port_text), protocol, direction, mid, tuple(codecs), rtcp_mux, ufrag, pwd)


def _parse_fmtp(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params.split(";"):
        key, sep, value = item.strip().partition("=")
        if key:
            out[key.strip().lower()] = value.strip() if sep else ""
    return out


def _common_checks(offer: Offer) -> None:
    if offer.ice_ufrag is None or offer.ice_pwd is None:
        raise SdpError("offer has no ICE credentials (ice-ufrag/ice-pwd)")
    for m in offer.media:
        if m.kind in ("audio", "video") and not m.rejected and not m.rtcp_mux:
            raise SdpError(f"{m.kind} section must use rtcp-mux")


def check_publish_offer(text: str) -> Offer:
    """A WHIP offer: at least one video section we can receive, in H.264 or VP8."""
    offer = parse_offer(text)
    _common_checks(offer)
    video = [m for m in offer.media if m.kind == "video" and not m.rejected and m.direction in SEND_DIRECTIONS]
    if not video:
        raise SdpError("offer sends no video")
    if not any(m.codec_names() & set(PUBLISH_VIDEO_CODECS) for m in video):
        raise SdpError("video must be H.264 or VP8")
    return offer


def check_play_offer(text: str) -> Offer:
    """A WHEP offer: a video section that receives H.264 (packetization-mode 1): the session's
    one encoder makes H.264, and viewers get its packets as they are."""
    offer = parse_offer(text)
    _common_checks(offer)
    video = [m for m in offer.media if m.kind == "video" and not m.rejected and m.direction in RECEIVE_DIRECTIONS]
    if not video:
        raise SdpError("offer receives no video")
    if not any(m.has_h264_mode1() for m in video):
        raise SdpError("viewer must accept H.264 (packetization-mode=1)")
    return offer


def parse_sdpfrag(text: str) -> SdpFrag:
    """Parse a trickle ICE fragment. Raises SdpError on anything that is not one."""
    ufrag = pwd = None
    candidates: list[FragCandidate] = []
    end = False
    mid: str | None = None
    index = -1
    for line in _lines(text):
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed fragment line {line[:40]!r}")
        if line.startswith("m="):
            index += 1
            mid = None
            continue
        if not line.startswith("a="):
            continue
        name, value = _attr(line)
        if name == "ice-ufrag":
            ufrag = value
        elif name == "ice-pwd":
            pwd = value
        elif name == "mid":
            mid = value
            # a=mid follows its m= line; re-tag candidates of this section seen before it
            candidates = [FragCandidate(mid, c.mline_index, c.value) if c.mline_index == max(index, 0) and c.mid is None else c
                          for c in candidates]
        elif name == "candidate":
            if len(value.split()) < 8:
                raise SdpError("malformed candidate line")
            candidates.append(FragCandidate(mid, max(index, 0), "candidate:" + value))
        elif name == "end-of-candidates":
            end = True
    return SdpFrag(ufrag, pwd, tuple(candidates), end)


def is_ice_restart(frag: SdpFrag, remote_ufrag: str | None, remote_pwd: str | None) -> bool:
    """A fragment carrying ICE credentials other than the current ones asks for an ICE restart."""
    return (frag.ice_ufrag is not None and frag.ice_ufrag != remote_ufrag) or (
        frag.ice_pwd is not None and frag.ice_pwd != remote_pwd
    )


def advertise_public_ip(sdp: str, public_ip: str) -> str:
    """Add, next to every IPv4 host candidate, the same port at the node's public address (1:1 NAT).

    The node's ICE agent answers checks on the private socket whatever address the peer
    used to reach it, so the added candidates need nothing else."""
    try:
        public = ipaddress.ip_address(public_ip)
    except ValueError:
        raise ValueError(f"public_ip {public_ip!r} is not an IP address") from None
    out: list[str] = []
    eol = "\r\n" if "\r\n" in sdp else "\n"
    for line in sdp.split(eol):
        out.append(line)
        if not line.startswith("a=candidate:"):
            continue
        bits = line[len("a=candidate:"):].split()
        if len(bits) < 8 or bits[6:8] != ["typ", "host"] or bits[2].lower() != "udp":
            continue
        try:
            address = ipaddress.ip_address(bits[4])
        except ValueError:
            continue
        if address == public or address.version != public.version:
            continue
        priority = max(1, int(bits[3]) - 1) if bits[3].isdigit() else 1
        out.append(f"a=candidate:{bits[0]}n {bits[1]} {bits[2]} {priority} {public} {bits[5]} typ host")
    return eol.join(out)

