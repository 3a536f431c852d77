"""The pure SDP checks: offers as OBS and browsers send them, fragments, public-IP candidates."""

from __future__ import annotations

import pytest

from edge_server.webrtc.sdp import (
    SdpError,
    advertise_public_ip,
    check_play_offer,
    check_publish_offer,
    is_ice_restart,
    parse_offer,
    parse_sdpfrag,
)

# What OBS 30+ (libdatachannel) posts: session-level ICE/DTLS, Opus then H.264, bundle, rtcp-mux.
OBS_OFFER = """v=0
o=rtc 3767197920 0 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=group:LS 0 1
a=msid-semantic:WMS *
a=setup:actpass
a=ice-ufrag:EsAw
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR
a=ice-options:ice2,trickle
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E
m=audio 4557 UDP/TLS/RTP/SAVPF 111
c=IN IP4 192.168.1.2
a=mid:0
a=sendonly
a=ssrc:1215 cname:3yQ4b1bR
a=msid:obs audio
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1
a=candidate:1 1 UDP 2122317823 192.168.1.2 4557 typ host
a=end-of-candidates
m=video 4557 UDP/TLS/RTP/SAVPF 96
c=IN IP4 192.168.1.2
a=mid:1
a=sendonly
a=ssrc:1216 cname:3yQ4b1bR
a=msid:obs video
a=rtcp-mux
a=rtpmap:96 H264/90000
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtcp-fb:96 goog-remb
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1
""".replace("\n", "\r\n")

# A browser's WHEP offer: receive-only, VP8 first, H.264 among others.
BROWSER_PLAY_OFFER = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E
a=setup:actpass
a=mid:0
a=recvonly
a=rtcp-mux
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=mid:1
a=recvonly
a=rtcp-mux
a=rtpmap:111 opus/48000/2
"""


def test_obs_offer_is_a_valid_publish() -> None:
    offer = check_publish_offer(OBS_OFFER)
    assert offer.bundle == ("0", "1") and (offer.ice_ufrag, offer.ice_pwd) == ("EsAw", "bP+XJMM09aR8AiX1jdukzR")
    video, audio = offer.first("video"), offer.first("audio")
    assert video is not None and video.has_h264_mode1() and video.direction == "sendonly" and video.mid == "1"
    assert audio is not None and audio.codec_names() == {"opus"} and audio.codecs[0].fmtp["stereo"] == "1"


def test_browser_offer_is_a_valid_play_but_not_a_publish() -> None:
    offer = check_play_offer(BROWSER_PLAY_OFFER)
    assert offer.first("video").codec_names() == {"vp8", "rtx", "h264"}
    with pytest.raises(SdpError, match="sends no video"):
        check_publish_offer(BROWSER_PLAY_OFFER)
    with pytest.raises(SdpError, match="receives no video"):
        check_play_offer(OBS_OFFER)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "v=0"),
        ("hello", "v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", "no media"),
        ("v=0\nm=video\n", "malformed m= line"),
        ("v=0\nm=video abc UDP/TLS/RTP/SAVPF 96\n", "bad port"),
        ("v=0\nthis is not sdp\n", "malformed SDP line"),
        ("v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=rtpmap:96\n", "malformed rtpmap"),
        ("v=0\x00", "NUL"),
        ("v=0\n" + "a=x\n" * 20000, "too large"),
    ],
)
def test_garbage_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_offer(text)


def test_offers_the_ingest_cannot_serve() -> None:
    audio_only = OBS_OFFER.split("m=video")[0]
    with pytest.raises(SdpError, match="sends no video"):
        check_publish_offer(audio_only)
    h265 = OBS_OFFER.replace("H264/90000", "H265/90000")
    with pytest.raises(SdpError, match="H.264 or VP8"):
        check_publish_offer(h265)
    rejected = OBS_OFFER.replace("m=video 4557", "m=video 0")
    with pytest.raises(SdpError, match="sends no video"):
        check_publish_offer(rejected)
    no_mux = OBS_OFFER.replace("a=rtcp-mux\r\na=rtpmap:96", "a=rtpmap:96")
    with pytest.raises(SdpError, match="rtcp-mux"):
        check_publish_offer(no_mux)
    no_ice = OBS_OFFER.replace("a=ice-pwd:bP+XJMM09aR8AiX1jdukzR\r\n", "")
    with pytest.raises(SdpError, match="ICE credentials"):
        check_publish_offer(no_ice)
    vp8_only = BROWSER_PLAY_OFFER.replace("a=rtpmap:102 H264/90000", "a=rtpmap:102 VP9/90000")
    with pytest.raises(SdpError, match="H.264"):
        check_play_offer(vp8_only)
    mode0 = BROWSER_PLAY_OFFER.replace("packetization-mode=1", "packetization-mode=0")
    with pytest.raises(SdpError, match="packetization-mode"):
        check_play_offer(mode0)


def test_sdpfrag_with_and_without_m_lines() -> None:
    frag = parse_sdpfrag(
        "a=ice-options:trickle ice2\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
        "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n"
        "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n"
        "a=end-of-candidates\r\n"
    )
    assert frag.ice_ufrag == "EsAw" and frag.end_of_candidates and len(frag.candidates) == 2
    assert frag.candidates[0].mid == "0" and frag.candidates[0].value.startswith("candidate:1387637174 1 udp")
    bare = parse_sdpfrag("a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\n")
    assert bare.candidates[0].mid is None and bare.candidates[0].mline_index == 0 and not bare.end_of_candidates
    # a=mid may come after the candidates of its section
    late_mid = parse_sdpfrag("m=audio 9 RTP/AVP 0\na=candidate:1 1 udp 1 192.0.2.1 1 typ host\na=mid:7\n")
    assert late_mid.candidates[0].mid == "7"
    with pytest.raises(SdpError):
        parse_sdpfrag("a=candidate:1 1 udp\n")
    with pytest.raises(SdpError):
        parse_sdpfrag("garbage line\n")


def test_ice_restart_is_new_credentials() -> None:
    same = parse_sdpfrag("a=ice-ufrag:EsAw\na=ice-pwd:secret\n")
    assert not is_ice_restart(same, "EsAw", "secret")
    assert is_ice_restart(same, "other", "secret") and is_ice_restart(same, "EsAw", "other")
    assert not is_ice_restart(parse_sdpfrag("a=end-of-candidates\n"), "EsAw", "secret")


def test_public_ip_is_added_next_to_host_candidates() -> None:
    answer = (
        "v=0\r\nm=video 5000 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:abc 1 udp 2130706431 10.0.0.5 5000 typ host\r\n"
        "a=candidate:def 1 udp 2130706431 fd00::2 5002 typ host\r\n"
        "a=candidate:ghi 1 udp 1694498815 203.0.113.9 5000 typ srflx raddr 10.0.0.5 rport 5000\r\n"
        "a=end-of-candidates\r\n"
    )
    out = advertise_public_ip(answer, "198.51.100.7")
    lines = out.split("\r\n")
    added = [line for line in lines if "198.51.100.7" in line]
    assert added == ["a=candidate:abcn 1 udp 2130706430 198.51.100.7 5000 typ host"]
    assert lines.index(added[0]) == lines.index("a=candidate:abc 1 udp 2130706431 10.0.0.5 5000 typ host") + 1
    with pytest.raises(ValueError):
        advertise_public_ip(answer, "not-an-ip")
