"""Build the FrameProcessor a session runs, from the node's pipeline config and the session's mode."""

from __future__ import annotations

from typing import Any, Callable

from pipeline.persona import Persona
from pipeline.stage import FrameProcessor, IdentityProcessor

PersonaLookup = Callable[[str], Persona | None]


def build_processor(config: Any, mode: str, persona: Persona | None = None, **options: Any) -> FrameProcessor:
    """``config``: edge_server.config.PipelineConfig (or anything with the same fields).

    ``mode``: persona | anonymize | blur | pixelate. ``processor: identity`` in the config
    turns masking off (relay tests only).
    """
    if config.processor == "identity":
        return IdentityProcessor()
    if config.processor != "mask":
        raise ValueError(f"unknown pipeline processor {config.processor!r} (mask | identity)")
    from pipeline.masker import FaceMasker  # imported late: loads onnxruntime and the models

    return FaceMasker(config, mode=mode, persona=persona, **options)
