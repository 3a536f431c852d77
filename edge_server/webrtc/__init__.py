"""WebRTC for the media plane: WHIP ingest peers, WHEP viewer peers fed the session's
encoded packets (encode once), SDP checks, ICE settings and the Opus/AAC transcoders."""
