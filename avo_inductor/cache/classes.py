"""Class records: which record, tuned at another shape of a site's class, may serve a site with no exact record.

A kernel is shape-generic at launch (batch, heads and lengths are runtime arguments), but its tiles were tuned
for one shape bucket. A site's class is everything of its store key but batch, head count and lengths: the
hardware, dtype, head dims (qk and v), scale, mask kind, causal and window, dropout and training-ness, plus the
GQA ratio and prefill vs decode. Within a class, a record serves a neighbouring shape when it is near enough and
its margin over the fallback at its own shape leaves room for the loss a shape change may cost; the backend
then verifies it once at the site's shape before first use (docs/CACHE.md "Class records"). Everything here is
read from store keys, so choosing a neighbour loads no record but the chosen one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..spec import AttentionSpec, HardwareKey, store_key

# Length buckets (q and kv each) at most this far apart: a tile tuned for 2048 keys still suits 512-8192, while
# across 16x the best block sizes, split counts and pipelining depth differ (benchmarks/attention.py sweeps).
MAX_LENGTH_RATIO = 4
# batch x q heads (programs per query tile) at most this far apart: it changes the grid size, not what a program
# does, so it is allowed further than length.
MAX_WIDTH_RATIO = 16
# The record's speedup over the fallback at its tuned shape must be at least this: a record that only just beats
# the fallback where it was tuned may lose to it at another shape. 1.10 is about the H100 round-to-round spread of
# one timing round (9-12 %, search/evaluate.py), so a record that clears it won by more than noise where measured.
MIN_MARGIN = 1.10

_KEY = re.compile(r"^(?P<hw>[^/]+)/b(?P<b>\d+)-h(?P<h>\d+)-kv(?P<kv>\d+)-q(?P<q>\d+)-k(?P<k>\d+)-(?P<rest>.+)$")


@dataclass(frozen=True)
class KeyShape:
    """A store key split into its class and its (bucketed) shape."""

    klass: str
    batch: int
    q_heads: int
    q_len: int
    kv_len: int

    @property
    def width(self) -> int:
        return self.batch * self.q_heads


def parse_key(key: str) -> KeyShape | None:
    """The class and shape of a store key (``spec.store_key``), None for a key of another form."""
    m = _KEY.match(key)
    if m is None:
        return None
    b, h, kv, q, k = (int(m.group(g)) for g in ("b", "h", "kv", "q", "k"))
    if min(b, h, kv, q, k) < 1 or h % kv:
        return None
    phase = "decode" if q <= 16 else "prefill"  # seq_bucket keeps 1..16 exact, so the bucket tells
    return KeyShape(f"{m.group('hw')}/g{h // kv}-{phase}-{m.group('rest')}", b, h, q, k)


def class_of(spec: AttentionSpec, hardware: HardwareKey) -> KeyShape:
    """``parse_key`` of the spec's own store key: one definition of the class for records and sites alike."""
    shape = parse_key(store_key(spec, hardware))
    if shape is None:
        raise ValueError(f"store key of {spec.to_text()} on {hardware.slug} does not parse as a class key")
    return shape


def _dist(a: int, b: int) -> float:
    return abs(math.log2(a) - math.log2(b))


def within_reach(site: KeyShape, tuned: KeyShape) -> bool:
    """Whether a record tuned at ``tuned`` is near enough to serve ``site`` (same class assumed)."""
    return (_dist(site.q_len, tuned.q_len) <= math.log2(MAX_LENGTH_RATIO)
            and _dist(site.kv_len, tuned.kv_len) <= math.log2(MAX_LENGTH_RATIO)
            and _dist(site.width, tuned.width) <= math.log2(MAX_WIDTH_RATIO))


def neighbour_rank(site: KeyShape, tuned: KeyShape) -> tuple[bool, float, float]:
    """Sort key, best first: the same kv-length bucket (the key loop, most of the work, is then the tuned one),
    then the nearest in log2 of the lengths, then in log2 of batch x heads."""
    return (site.kv_len != tuned.kv_len, _dist(site.q_len, tuned.q_len) + _dist(site.kv_len, tuned.kv_len),
            _dist(site.width, tuned.width))
