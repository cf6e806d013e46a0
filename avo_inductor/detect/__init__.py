"""Attention detection on the torch-level FX graph Dynamo hands a backend, and rewriting sites to SDPA / avo."""
from __future__ import annotations

from .match import AttentionMatch, SkippedSite, find_attention_sites
from .rewrite import rewrite_to_avo, rewrite_to_sdpa

__all__ = ["AttentionMatch", "SkippedSite", "find_attention_sites", "rewrite_to_avo", "rewrite_to_sdpa"]
