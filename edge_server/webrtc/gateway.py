"""The node's WebRTC plane behind signaling/whip.py: builds WHIP publishers and WHEP viewers.

Order of checks for an offer: token (401) -> SDP (400) -> session state and limits
(404/409/503) -> peer connection. A publish is marked live only once its offer has been
accepted by aiortc, and every failure after that ends it again, so a bad offer never
leaves a session stuck live.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from edge_server.config import WebRtcConfig
from edge_server.live import LiveManager
from edge_server.metrics import MediaMetrics
from edge_server.webrtc import ice
from edge_server.webrtc.peers import WhepViewer, WhipPublisher, _Peer
from edge_server.webrtc.sdp import Offer, SdpError, advertise_public_ip, check_play_offer, check_publish_offer, is_ice_restart, parse_sdpfrag
from edge_server.webrtc.tracks import EncodedAudioTrack, EncodedVideoTrack, route_keyframe_requests
from signaling.service import PublishDenied, SessionService
from signaling.whip import PeerAnswer, WebRtcError, WebRtcHttpSettings

log = logging.getLogger(__name__)

DELETE_WAIT_S = 3.0  # a WHIP/WHEP DELETE is answered within this even while the peer still closes


def _h264_preferences() -> list:
    codecs = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in codecs if c.mimeType.lower() in ("video/h264", "video/rtx")]


def _opus_preferences() -> list:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


class WebRtcGateway:
    def __init__(self, live: LiveManager, service: SessionService, config: WebRtcConfig, metrics: MediaMetrics,
                 settings: WebRtcHttpSettings) -> None:
        self.live = live
        self.service = service
        self.config = config
        self.metrics = metrics
        self.settings = settings
        self._peers: dict[str, _Peer] = {}
        self._policy = ice.HostPolicy(tuple(config.host_addresses), config.allow_loopback)
        self._links = tuple(ice.link_headers(config.ice_servers, config.ice_username, config.ice_credential))
        if config.public_ip:
            ice.validate_address(config.public_ip)
        ice.install()

    # -- signaling.whip.WebRtcPlane ----------------------------------------------------------

    def count_request(self, protocol: str, method: str, status: int) -> None:
        self.metrics.webrtc_requests.labels(protocol, method, str(status)).inc()

    def etag(self, protocol: str, session_id: str, resource_id: str) -> str | None:
        peer = self._find(protocol, session_id, resource_id)
        return peer.etag if peer is not None else None

    async def publish(self, session_id: str, token: str, offer_sdp: str, peer: str) -> PeerAnswer:
        self._check_token(token, "publish", session_id, "WHIP publish", peer)
        offer = self._parse(check_publish_offer, offer_sdp)
        pc = self._new_pc()
        publisher = WhipPublisher(
            *self._peer_args(session_id, pc, offer),
            idle_timeout_s=self.config.idle_timeout_s,
            publisher_gone=self.live.publisher_gone,
            frame_on_marker=self.config.frame_on_marker,
        )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            tracks = publisher.prepare()
        except Exception as exc:
            await self._abandon(publisher)
            raise WebRtcError(400, "invalid_sdp", f"offer cannot be served: {exc}") from None
        if not any(kind == "video" for kind, _ in tracks):
            await self._abandon(publisher)
            raise WebRtcError(400, "invalid_sdp", "offer sends no usable video")
        try:
            runtime = await self.live.begin_webrtc_publish(token, session_id, publisher.close, peer)
        except PublishDenied:
            await self._abandon(publisher)
            raise
        publisher.runtime = runtime  # from here on, closing the publisher ends the publish
        try:
            answer = await self._answer(pc)
        except Exception:
            await self._abandon(publisher)
            raise
        publisher.attach(runtime, tracks)
        self._peers[publisher.resource_id] = publisher
        log.info("WHIP %s: session %s publishing from %s", publisher.resource_id[:6], session_id, peer)
        return PeerAnswer(publisher.resource_id, answer, publisher.etag, self._links)

    async def play(self, session_id: str, token: str, offer_sdp: str, peer: str) -> PeerAnswer:
        try:
            await self.service.authorize_play(token, session_id)
        except PublishDenied as denied:
            log.warning("WHEP play refused from %s: %s", peer, denied.reason)  # never the token itself
            raise
        offer = self._parse(check_play_offer, offer_sdp)
        if self.live.viewer_count(session_id) >= self.config.max_viewers_per_session:
            raise WebRtcError(503, "viewers_full", "this session has all the viewers it may have", {"Retry-After": "30"})
        if self.live.viewer_count() >= self.config.max_viewers:
            raise WebRtcError(503, "node_full", "this node has all the viewers it may have", {"Retry-After": "30"})
        hub = self.live.viewer_hub(session_id)
        pc = self._new_pc()
        video = EncodedVideoTrack(hub.request_keyframe)
        wants_audio = any(m.kind == "audio" and not m.rejected and m.direction in ("recvonly", "sendrecv") for m in offer.media)
        audio = EncodedAudioTrack() if wants_audio else None
        viewer = WhepViewer(*self._peer_args(session_id, pc, offer), hub=hub, video=video, audio=audio, viewer_left=self.live.viewer_left)
        hub.add(viewer)  # counts against the limits from now on (no await since they were checked)
        try:
            video_transceiver = pc.addTransceiver(video, direction="sendonly")
            video_transceiver.setCodecPreferences(_h264_preferences())
            route_keyframe_requests(video_transceiver.sender, hub.request_keyframe)
            if audio is not None:
                pc.addTransceiver(audio, direction="sendonly").setCodecPreferences(_opus_preferences())
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except Exception as exc:
            await self._abandon(viewer)
            raise WebRtcError(400, "invalid_sdp", f"offer cannot be served: {exc}") from None
        try:
            answer = await self._answer(pc)
        except Exception:
            await self._abandon(viewer)
            raise
        self._peers[viewer.resource_id] = viewer
        log.info("WHEP %s: viewer of session %s from %s", viewer.resource_id[:6], session_id, peer)
        return PeerAnswer(viewer.resource_id, answer, viewer.etag, self._links)

    async def trickle(self, protocol: str, session_id: str, resource_id: str, fragment: str) -> None:
        peer = self._find(protocol, session_id, resource_id)
        if peer is None:
            raise WebRtcError(404, "not_found", f"no such {protocol.upper()} session")
        try:
            frag = parse_sdpfrag(fragment)
        except SdpError as exc:
            raise WebRtcError(400, "invalid_sdpfrag", str(exc)) from None
        if is_ice_restart(frag, peer.remote_ufrag, peer.remote_pwd):
            raise WebRtcError(422, "ice_restart_unsupported", "ICE restarts are not supported; start a new session")
        for item in frag.candidates:
            try:
                candidate = candidate_from_sdp(item.value.split(":", 1)[1])
            except (AssertionError, ValueError, IndexError):
                raise WebRtcError(400, "invalid_sdpfrag", "malformed candidate") from None
            candidate.sdpMid = peer.primary_mid if peer.primary_mid is not None else item.mid
            candidate.sdpMLineIndex = None if candidate.sdpMid is not None else item.mline_index
            await peer.pc.addIceCandidate(candidate)
        if frag.end_of_candidates:
            await peer.pc.addIceCandidate(None)

    async def delete(self, protocol: str, session_id: str, resource_id: str) -> bool:
        peer = self._find(protocol, session_id, resource_id)
        if peer is None:
            return False
        peer.close("DELETE")
        try:  # answer once the peer is down, or after DELETE_WAIT_S while it finishes closing
            await asyncio.wait_for(peer.wait_closed(), DELETE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("%s %s of session %s still closing after %.0f s; DELETE answered", protocol.upper(), resource_id[:6], session_id, DELETE_WAIT_S)
        return True

    # -- life cycle -----------------------------------------------------------------------------

    async def close_all(self) -> None:
        peers = list(self._peers.values())
        for peer in peers:
            peer.close("server shutting down")
        for peer in peers:
            await peer.wait_closed()

    def peers(self, protocol: str | None = None) -> list[_Peer]:
        return [p for p in self._peers.values() if protocol is None or p.protocol == protocol]

    # -- helpers ------------------------------------------------------------------------------------

    def _find(self, protocol: str, session_id: str, resource_id: str) -> _Peer | None:
        peer = self._peers.get(resource_id)
        if peer is None or peer.protocol != protocol or peer.session_id != session_id or peer.closed:
            return None
        return peer

    def _check_token(self, token: str, scope: str, session_id: str, what: str, peer: str) -> None:
        try:
            self.service.check_token(token, scope, session_id)
        except PublishDenied as denied:
            self.metrics.rejected_publishes.labels("401").inc()
            log.warning("%s refused from %s: %s", what, peer, denied.reason)  # never the token itself
            raise

    @staticmethod
    def _parse(check, offer_sdp: str) -> Offer:
        try:
            return check(offer_sdp)
        except SdpError as exc:
            raise WebRtcError(400, "invalid_sdp", str(exc)) from None

    def _new_pc(self) -> RTCPeerConnection:
        return RTCPeerConnection(ice.rtc_configuration(self.config.ice_servers, self.config.ice_username, self.config.ice_credential))

    def _peer_args(self, session_id: str, pc: RTCPeerConnection, offer: Offer) -> tuple:
        resource_id = secrets.token_urlsafe(24)  # 192 bits: the capability for PATCH and DELETE
        etag = f'"{secrets.token_hex(8)}"'
        primary = offer.bundle[0] if offer.bundle else next((m.mid for m in offer.media if not m.rejected), None)
        return (resource_id, session_id, pc, etag, (offer.ice_ufrag, offer.ice_pwd), primary, self.config.connect_timeout_s,
                self._forget)

    def _forget(self, peer: _Peer) -> None:
        if self._peers.get(peer.resource_id) is peer:
            del self._peers[peer.resource_id]

    async def _answer(self, pc: RTCPeerConnection) -> str:
        answer = await pc.createAnswer()
        with ice.host_policy(self._policy):
            await pc.setLocalDescription(answer)  # gathers every candidate: the answer is complete
        sdp = pc.localDescription.sdp
        if self.config.public_ip:
            sdp = advertise_public_ip(sdp, self.config.public_ip)
        return sdp

    @staticmethod
    async def _abandon(peer: _Peer) -> None:
        peer.close("offer refused")
        await peer.wait_closed()
