"""Read-only store layers: bundle folders from AVO_CACHE_PATH and the ones shipped with the package.

Layers are only ever opened for reading (they may live on a read-only filesystem or inside a wheel). The
manifest and its signature are checked once when a layer is first used; each record file is checked against
the manifest sha256 and the static gates when it is looked up, so a bad file costs one miss, not the layer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator

from .manifest import (MANIFEST_NAME, BundleError, Manifest, read_capped, read_manifest, check_signature,
                       sha256_bytes, validate_record)
from ..artifact import KernelRecord

SHIPPED_PACKAGE_DIR = "shipped"
REPO_CACHE_DIR = "cache"
_WARNED: set[tuple[str, str]] = set()


class CacheWarning(UserWarning):
    """A store entry or layer was skipped (corrupt, tampered, untrusted) or the store is read-only."""


def warn_once(scope: str, key: str, message: str) -> None:
    """One CacheWarning per (scope, key) per process: a corrupt entry looked up on every compile warns once."""
    if (scope, key) in _WARNED:
        return
    _WARNED.add((scope, key))
    warnings.warn(message, CacheWarning, stacklevel=3)


def discover_bundles(path: Path) -> list[Path]:
    """``path`` if it is a bundle folder, else its immediate sub-folders that are bundles (sorted by name)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())


def shipped_roots() -> list[Path]:
    """Where bundles shipped with avo_inductor live: package data, and the repo's ``cache/`` in a checkout."""
    pkg = Path(__file__).resolve().parent.parent  # avo_inductor/
    roots = [pkg / SHIPPED_PACKAGE_DIR]
    repo = pkg.parent
    # Only a source checkout has pyproject.toml beside the package; in site-packages a sibling `cache/`
    # folder belongs to someone else and must not be read as kernels.
    if (repo / "pyproject.toml").is_file():
        roots.append(repo / REPO_CACHE_DIR)
    return [r for r in roots if r.is_dir()]


@dataclass
class BundleLayer:
    """One read-only bundle folder. ``label`` names it in StoreHit.layer and in warnings."""

    root: Path
    label: str
    trusted_keys: frozenset[str] = frozenset()
    require_signed: bool = False
    shipped: bool = False  # inside the installed package (or the checkout's cache/): verified where it was made
    _manifest: Manifest | None = field(default=None, init=False, repr=False)
    _index: dict[str, tuple[str, str, int]] | None = field(default=None, init=False, repr=False)
    _parsed: dict[str, KernelRecord] = field(default_factory=dict, init=False, repr=False)
    _signer: str | None = field(default=None, init=False, repr=False)
    error: str | None = field(default=None, init=False)

    def _load(self) -> dict[str, tuple[str, str, int]]:
        """Index key -> (file, sha256, size); an unreadable or untrusted bundle becomes an empty layer."""
        if self._index is not None:
            return self._index
        self._index = {}
        if not self.root.is_dir():
            what = "an archive; AVO_CACHE_PATH takes unpacked bundle folders" if self.root.is_file() else "missing"
            self.error = f"bundle {self.root} skipped: it is {what}"
            return self._index
        try:
            manifest, sig = read_manifest(self.root)
            self._signer = check_signature(manifest, sig, self.trusted_keys, self.require_signed)
        except (BundleError, OSError) as exc:
            self.error = f"bundle {self.root} skipped: {exc}"
        if self.error:  # never a silently empty layer: say which bundle and why, once
            warn_once(self.label, "", self.error)
            return self._index
        self._manifest = manifest
        files = {f.path: f for f in manifest.files}
        for rec in manifest.records:
            entry = files.get(rec.file)
            if entry is not None:
                self._index[rec.key] = (rec.file, entry.sha256, entry.size)
        return self._index

    @property
    def manifest(self) -> Manifest | None:
        self._load()
        return self._manifest

    def keys(self) -> list[str]:
        return sorted(self._load())

    def __contains__(self, key: str) -> bool:
        return key in self._load()

    def get(self, key: str) -> KernelRecord | None:
        """The record under ``key``, None if absent; BundleError if present but corrupt or tampered."""
        index = self._load()
        if key not in index:
            return None
        if key in self._parsed:
            return self._parsed[key]
        rel, sha, size = index[key]
        try:
            raw = read_capped(self.root / rel, self.root)
        except OSError as exc:
            raise BundleError(f"{rel}: cannot read: {exc}") from None
        record = admit_record_bytes(raw, rel, sha, size, key, trusted_keys=self.trusted_keys, signer=self._signer)
        self._parsed[key] = record
        return record


def admit_record_bytes(raw: bytes, rel: str, sha: str, size: int, key: str, *, trusted_keys: frozenset[str],
                       signer: str | None) -> KernelRecord:
    """One record of a signature-checked manifest: its bytes must be the listed size and sha256, then the static
    gates (``validate_record``); a source record needs a trusted signer when trusted keys are configured. Shared by
    bundle layers and the remote store, so a record from either passes the same checks. BundleError otherwise."""
    if len(raw) != size or sha256_bytes(raw) != sha:
        raise BundleError(f"{rel}: sha256/size do not match the manifest ({len(raw)} bytes vs {size}); "
                          "truncated or tampered")
    return validate_record(raw, key, source_needs_signature=bool(trusted_keys) and signer not in trusted_keys)


def open_layers(paths: Iterable[Path], *, shipped: bool, trusted_keys: frozenset[str],
                require_signed: bool) -> list[BundleLayer]:
    """Layers in lookup order: each AVO_CACHE_PATH entry (bundle or folder of bundles), then shipped ones."""
    layers: list[BundleLayer] = []
    for path in paths:
        # A configured path with no bundle (typo, an unpacked .tar.gz, empty folder) becomes an empty layer whose
        # error is warned on first lookup, instead of silently serving nothing.
        for root in discover_bundles(Path(path)) or [Path(path)]:
            layers.append(BundleLayer(root, str(root), trusted_keys, require_signed))
    if shipped:
        for base in shipped_roots():
            for root in discover_bundles(base):
                layers.append(BundleLayer(root, f"shipped:{root.name}", trusted_keys, require_signed, shipped=True))
    return layers


def iter_layer_records(layer: BundleLayer) -> Iterator[tuple[str, KernelRecord | None, str | None]]:
    """(key, record or None, error or None) for every key a layer lists."""
    for key in layer.keys():
        try:
            yield key, layer.get(key), None
        except BundleError as exc:
            yield key, None, str(exc)
