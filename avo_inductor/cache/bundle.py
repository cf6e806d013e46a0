"""Bundles: export a store's records to a folder or .tar.gz, verify, sign, and import them atomically.

Import trusts nothing in the bundle: tar members are extracted by hand (no links, devices or escaping paths;
capped counts and sizes), every file is checked against the manifest sha256, the signature against the trusted
keys, every record against the kernel-source grammar, and each kernel for this device is compiled and checked for
correctness in a sandboxed child process (never in the importing process). Only when every check passes is
anything written, in one store transaction.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from ..settings import Settings, get_settings
from ..spec import HardwareKey, store_key
from .manifest import (MANIFEST_NAME, MAX_FILE_BYTES, MAX_FILES, MAX_MANIFEST_BYTES, MAX_TOTAL_BYTES, SIGNATURE_NAME,
                       BundleError, FileEntry, Manifest, RecordEntry, check_signature, default_creator, read_capped,
                       read_manifest, record_bytes, record_filename, safe_relpath, sha256_bytes, validate_record)
from ..artifact import KernelRecord
from .signing import fingerprint, load_private_key, load_trusted_keys, sign_bytes
from .layers import CacheWarning
from .store import KernelStore

Verifier = Callable[[KernelRecord], Any]  # returns an object with .ok and .problems (VerificationReport)
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class BundleRefused(BundleError):
    """Import refused; ``report`` lists every problem found. The store was not changed."""

    def __init__(self, report: BundleReport) -> None:
        self.report = report
        super().__init__(f"bundle {report.path} refused: " + "; ".join(report.problems))


@dataclass
class BundleReport:
    """Outcome of verifying one bundle. ``unverified``: keys for other hardware, to be verified on first use."""

    path: str
    problems: list[str] = field(default_factory=list)
    signer: str | None = None
    manifest: Manifest | None = None
    records: dict[str, KernelRecord] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_tar(path: Path) -> bool:
    return path.name.endswith(TAR_SUFFIXES)


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract ``tar_path`` into ``dest`` member by member, refusing anything that is not a plain file/folder
    inside ``dest`` or breaks the count/size caps. BundleError names the member."""
    if tar_path.stat().st_size > MAX_TOTAL_BYTES:
        raise BundleError(f"{tar_path} is larger than {MAX_TOTAL_BYTES} bytes")
    count = total = 0
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            for member in tf:
                count += 1
                if count > MAX_FILES + 64:
                    raise BundleError(f"{tar_path} holds more than {MAX_FILES} members")
                rel = safe_relpath(member.name)
                if member.issym() or member.islnk():
                    raise BundleError(f"tar member {member.name!r} is a link (to {member.linkname!r}); "
                                      "links are refused")
                target = dest / rel
                if not target.resolve().is_relative_to(dest.resolve()):
                    raise BundleError(f"tar member {member.name!r} escapes the bundle folder")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    raise BundleError(f"tar member {member.name!r} is not a regular file (device, fifo, ...)")
                cap = MAX_MANIFEST_BYTES if rel.name == MANIFEST_NAME else MAX_FILE_BYTES
                if member.size > cap:
                    raise BundleError(f"tar member {member.name!r} is {member.size} bytes, over the {cap}-byte limit")
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise BundleError(f"{tar_path} unpacks to more than {MAX_TOTAL_BYTES} bytes")
                if target.exists():
                    raise BundleError(f"tar member {member.name!r} appears twice")
                fh = tf.extractfile(member)
                data = fh.read(member.size + 1) if fh is not None else b""
                if len(data) != member.size:
                    raise BundleError(f"tar member {member.name!r} is truncated ({len(data)} of {member.size} bytes)")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(f"cannot read {tar_path} ({type(exc).__name__}: {exc}); "
                          "truncated or not a tar archive") from None


def _bundle_root(folder: Path) -> Path:
    if (folder / MANIFEST_NAME).is_file():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_NAME).is_file():
        return subdirs[0]
    raise BundleError(f"no {MANIFEST_NAME} at the top of the bundle (or in its single top-level folder)")


@contextlib.contextmanager
def opened_bundle(path: str | Path) -> Iterator[Path]:
    """The bundle's root folder: the folder itself, or a private safe extraction of a tar archive."""
    path = Path(path)
    if path.is_dir():
        yield _bundle_root(path.resolve())
    elif path.is_file() and _is_tar(path):
        with tempfile.TemporaryDirectory(prefix="avo-bundle-") as tmp:
            safe_extract(path, Path(tmp))
            yield _bundle_root(Path(tmp))
    else:
        raise BundleError(f"{path} is neither a bundle folder nor a {'/'.join(TAR_SUFFIXES)} archive")


def _check_files(root: Path, manifest: Manifest) -> tuple[list[str], dict[str, bytes]]:
    """Every listed file present with its sha256 and size, nothing unlisted, no link leaving the bundle."""
    problems: list[str] = []
    contents: dict[str, bytes] = {}
    listed = {str(safe_relpath(f.path)) for f in manifest.files} | {MANIFEST_NAME, SIGNATURE_NAME}
    escaping: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() and not p.resolve().is_relative_to(root.resolve()):
                problems.append(f"{rel} is a symlink escaping the bundle (to {os.readlink(p)})")
                escaping.add(rel)
            elif rel not in listed:
                problems.append(f"{rel} is not listed in the manifest")
    for entry in manifest.files:
        rel = str(safe_relpath(entry.path))
        if rel in escaping:
            continue
        try:
            data = read_capped(root / rel, root)
        except FileNotFoundError:
            problems.append(f"{rel} is listed in the manifest but missing")
            continue
        except (BundleError, OSError) as exc:
            problems.append(f"{rel}: {exc}")
            continue
        if len(data) != entry.size:
            problems.append(f"{rel} is {len(data)} bytes, the manifest says {entry.size} (truncated or tampered)")
        elif sha256_bytes(data) != entry.sha256:
            problems.append(f"{rel} sha256 {sha256_bytes(data)[:12]}… does not match the manifest's "
                            f"{entry.sha256[:12]}… (tampered)")
        else:
            contents[rel] = data
    return problems, contents


def _policy(settings: Settings, trusted_keys: Any, require_signed: bool | None) -> tuple[frozenset[str], bool]:
    keys = load_trusted_keys(settings.trusted_keys, settings.cache_dir) if trusted_keys is None \
        else load_trusted_keys(trusted_keys)
    return keys, settings.require_signed if require_signed is None else require_signed


def check_bundle_root(root: Path, report: BundleReport, trusted: frozenset[str], require_signed: bool) -> None:
    """Static checks of an opened bundle into ``report``: manifest, files, signature, records."""
    try:
        manifest, sig = read_manifest(root)
    except (BundleError, OSError) as exc:
        report.problems.append(str(exc))
        return
    report.manifest = manifest
    problems, contents = _check_files(root, manifest)
    report.problems += problems
    try:
        report.signer = check_signature(manifest, sig, trusted, require_signed)
    except BundleError as exc:
        report.problems.append(str(exc))
    if report.signer:
        report.notes.append(f"signed by {fingerprint(report.signer)}"
                            + ("" if report.signer in trusted else " (not in the trusted keys)"))
    for entry in manifest.records:
        data = contents.get(str(safe_relpath(entry.file)))
        if data is None:
            continue  # its file problem is already reported
        try:
            record = validate_record(data, entry.key,
                                     source_needs_signature=bool(trusted) and report.signer not in trusted)
        except BundleError as exc:
            report.problems.append(f"{entry.file} ({entry.key}): {exc}")
            continue
        if manifest.hardware and record.hardware not in manifest.hardware:
            report.problems.append(f"{entry.file}: hardware {record.hardware.slug} is not in the manifest's list")
        report.records[entry.key] = record


@dataclass(frozen=True)
class IsolatedVerdict:
    """What ``isolated_verifier`` returns: the Verifier protocol's ``ok`` and ``problems``."""

    ok: bool
    problems: tuple[str, ...] = ()


def isolated_verifier(record: KernelRecord) -> IsolatedVerdict:
    """The default Verifier: compile + correctness in a sandboxed child process (``verify_isolated``, shared with
    the search's promotion), never in this one. A bundle is untrusted input, and the importing process holds the
    writable store: a hostile kernel that crashes, hangs or misbehaves there must cost only its own admission.
    (Imported lazily: only importing or verifying a bundle needs the sandbox.)"""
    from ..check.isolated import verify_isolated

    ok, problems = verify_isolated(record)
    return IsolatedVerdict(ok, (problems,) if problems else ())


def check_correctness(report: BundleReport, verifier: Verifier | None = None,
                      hardware: HardwareKey | None = None) -> None:
    """Compile + correctness-check every record tuned for this device (``verifier``, default the sandboxed
    ``isolated_verifier``); others are listed as unverified."""
    here = hardware or HardwareKey.current()
    verifier = verifier or isolated_verifier
    for key, record in report.records.items():
        if record.hardware != here:
            report.unverified.append(key)
            continue
        try:
            result = verifier(record)
        except Exception as exc:
            report.problems.append(f"kernel {record.kernel_id} ({key}) crashed during verification: "
                                   f"{type(exc).__name__}: {exc}")
            continue
        if not getattr(result, "ok", False):
            details = "; ".join(str(p) for p in getattr(result, "problems", ()) or ["no details"])
            report.problems.append(f"kernel {record.kernel_id} ({key}) failed verification on {here.slug}: {details}")


def verify_bundle(path: str | Path, trusted_keys: Any = None, require_signed: bool | None = None, *,
                  correctness: bool = False, verifier: Verifier | None = None,
                  settings: Settings | None = None) -> BundleReport:
    """Check a bundle without importing it. ``trusted_keys``/``require_signed`` default to the settings."""
    settings = settings or get_settings()
    trusted, required = _policy(settings, trusted_keys, require_signed)
    report = BundleReport(str(path))
    try:
        with opened_bundle(path) as root:
            check_bundle_root(root, report, trusted, required)
    except (BundleError, OSError) as exc:
        report.problems.append(str(exc))
    if correctness and report.ok:
        check_correctness(report, verifier)
    return report


def import_bundle(store: KernelStore, path: str | Path, *, trusted_keys: Any = None,
                  require_signed: bool | None = None, verifier: Verifier | None = None,
                  settings: Settings | None = None) -> BundleReport:
    """Verify everything, then admit every record in one transaction; BundleRefused leaves the store unchanged.

    Records for this device are verified now (and marked verified on this software); records for other
    hardware are admitted flagged unverified and re-verified on first use.
    """
    report = verify_bundle(path, trusted_keys, require_signed, settings=settings)
    if report.ok and not report.records:
        report.problems.append("bundle holds no records")
    if report.ok:
        check_correctness(report, verifier)
    if not report.ok:
        raise BundleRefused(report)
    here_sw = store.software
    admitted = []
    for key, record in report.records.items():
        if key not in report.unverified and here_sw != record.software and here_sw not in record.verified_software:
            record = record.with_changes(verified_software=(*record.verified_software, here_sw))
        admitted.append(record)
    store.put_many(admitted, unverified_keys=report.unverified)
    return report


def _write_bundle(root: Path, records: list[KernelRecord], creator: str | None,
                  sign_key: str | Path | None) -> Manifest:
    files: list[FileEntry] = []
    entries: list[RecordEntry] = []
    for record in sorted(records, key=lambda r: r.kernel_id):
        key = store_key(record.spec, record.hardware)
        rel, data = record_filename(key), record_bytes(record)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files.append(FileEntry(rel, sha256_bytes(data), len(data)))
        entries.append(RecordEntry(key, rel, record.kernel_id))
    hardware = sorted({r.hardware for r in records}, key=lambda h: h.slug)
    software = sorted({r.software for r in records}, key=lambda s: (s.triton, s.torch))
    manifest = Manifest(files=tuple(files), records=tuple(entries), hardware=tuple(hardware),
                        software=tuple(software), creator=creator or default_creator())
    _write_manifest(root, manifest)
    if sign_key is not None:
        _sign_root(root, sign_key)
    return manifest


def _write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=1, sort_keys=True) + "\n")


def _sign_root(root: Path, private_key_path: str | Path) -> str:
    manifest, _ = read_manifest(root)
    problems, _ = _check_files(root, manifest)
    if problems:
        raise BundleError(f"refusing to sign {root}: " + "; ".join(problems))
    sig = sign_bytes(manifest.signing_payload(), load_private_key(private_key_path))
    tmp = root / (SIGNATURE_NAME + ".tmp")
    tmp.write_bytes(sig.to_bytes())
    os.replace(tmp, root / SIGNATURE_NAME)
    return sig.public_key


def _pack(root: Path, out: Path) -> None:
    """Write ``root`` as a deterministic .tar.gz (plain files and folders, owner 0, fixed mtime) atomically."""
    tmp = out.with_name(out.name + ".tmp")
    name = out.name
    for suffix in TAR_SUFFIXES:
        name = name.removesuffix(suffix)
    with tarfile.open(tmp, "w:gz") as tf:
        for p in sorted(root.rglob("*")):
            info = tarfile.TarInfo(f"{name}/{p.relative_to(root).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                data = p.read_bytes()
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)


def export_bundle(store: KernelStore, out: str | Path, hardware: HardwareKey | str | None = None,
                  spec_filter: str | None = None, *, sign_key: str | Path | None = None,
                  creator: str | None = None) -> Manifest:
    """Write the store's visible records (optionally one hardware target, specs whose key or short text
    contains ``spec_filter``) as a bundle folder or, for ``*.tar.gz``, an archive. ``hardware`` may be a
    HardwareKey or a slug (substring match). Optionally signed with ``sign_key`` before packing.

    A signature says "checked here": a signed export leaves out records this host has not verified on its own
    software (read-through copies from a remote store, bundle records not yet used, records tuned elsewhere), with
    one warning naming them (a first use on this host verifies them). Unsigned bundles carry
    everything: their importer verifies every record anyway."""
    out = Path(out)
    records, unverified = [], []
    for hit in store.iter_records():
        r = hit.record
        if isinstance(hardware, HardwareKey) and r.hardware != hardware:
            continue
        if isinstance(hardware, str) and hardware not in r.hardware.slug:
            continue
        if spec_filter and spec_filter not in hit.key and spec_filter not in r.spec.short():
            continue
        if sign_key is not None and hit.needs_reverify:
            unverified.append(hit.key)
            continue
        records.append(r)
    if unverified:
        warnings.warn(f"signed export leaves out {len(unverified)} record(s) not verified on this host: "
                      f"{', '.join(unverified[:5])}{' ...' if len(unverified) > 5 else ''}", CacheWarning,
                      stacklevel=2)
    if not records:
        raise BundleError(f"no records match hardware={hardware!s} spec_filter={spec_filter!r}"
                          f"{' and are verified on this host' if unverified else ''}; nothing exported")
    return write_bundle_to(out, records, creator, sign_key)


def write_bundle_to(out: str | Path, records: list[KernelRecord], creator: str | None = None,
                    sign_key: str | Path | None = None) -> Manifest:
    """``records`` as a new bundle: a folder (absent or empty; written beside it, then renamed into place) or, for
    ``*.tar.gz``, an archive (written whole, then renamed). A failure leaves no half-written bundle."""
    out = Path(out)
    if _is_tar(out):
        with tempfile.TemporaryDirectory(prefix="avo-export-") as tmp:
            manifest = _write_bundle(Path(tmp), records, creator, sign_key)
            _pack(Path(tmp), out)
        return manifest
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"export target {out} exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _write_bundle(tmp_dir, records, creator, sign_key)
        if out.exists():
            out.rmdir()
        os.rename(tmp_dir, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return manifest


def sign_bundle(path: str | Path, private_key_path: str | Path) -> str:
    """Sign a bundle folder or archive in place (the archive is rewritten); returns the signer's public key."""
    path = Path(path)
    if path.is_dir():
        return _sign_root(_bundle_root(path), private_key_path)
    with opened_bundle(path) as root:
        signer = _sign_root(root, private_key_path)
        _pack(root, path)
    return signer

