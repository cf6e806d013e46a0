"""``avo-cache`` / ``python -m avo_inductor.cache``: inspect, ship and maintain kernel stores and bundles.

Thin: parses arguments, calls library functions, prints rich tables (or JSON with --json, before or after the
subcommand). Exit codes (``cli_support``): 0 ok, 1 verification failed / refused / not found, 2 usage error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from ..cli_support import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_common_flags, add_json_flag, error_line, guarded,
                           print_json, prog_name)
from ..spec import SPEC_TEXT_HELP

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]


def _days(text: str) -> float:
    """``--unused-days``: a finite age >= 0 (a negative one matched, and deleted, every record)."""
    from ..parsing import finite_float

    try:
        return finite_float("--unused-days", text, minimum=0.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or prog_name("avo_inductor.cache", "avo-cache"),
                                description="Inspect, ship and maintain kernel stores and bundles. "
                                            "Exit codes: 0 ok, 1 refused, failed or not found, 2 usage.")
    add_common_flags(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list records (spec, hardware, software, speedup, kernel id, layer)")
    ls.add_argument("--all", action="store_true", help="also records shadowed by an earlier layer")
    ls.add_argument("--hardware", help="hardware slug substring")
    ls.add_argument("--spec-filter", help="substring of the store key or spec text")
    sub.add_parser("show", help="one record and its source").add_argument("ref", metavar="KEY|ID")
    ex = sub.add_parser("export", help="write records as a bundle folder or .tar.gz")
    ex.add_argument("-o", "--out", required=True, help="DIR or FILE.tar.gz")
    ex.add_argument("--hardware", help="hardware slug (substring), e.g. nvidia-h100")
    ex.add_argument("--spec-filter", help="substring of the store key or spec text")
    ex.add_argument("--key", help="sign with this private key (from keygen)")
    me = sub.add_parser("merge", help="merge bundles into one (the best record per key), e.g. one folder per GPU")
    me.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders or archives")
    me.add_argument("-o", "--out", required=True, help="new DIR or FILE.tar.gz")
    me.add_argument("--key", help="sign the merged bundle with this private key (from keygen)")
    me.add_argument("--require-signed", action="store_true", default=None)
    me.add_argument("--trusted-key", action="append", help="trusted public key (hex or file); repeatable")
    rs = sub.add_parser("restamp", help="re-stamp template records to the installed template where sm_90 code "
                                         "digests (benchmarks/probes/ptx_digest.py --records) show it unchanged")
    rs.add_argument("bundle", help="bundle folder or archive")
    rs.add_argument("--before", required=True, help="digest file from a checkout with the records' template")
    rs.add_argument("--after", required=True, help="digest file from the installed template (same Triton)")
    rs.add_argument("-o", "--out", required=True, help="new DIR or FILE.tar.gz")
    rs.add_argument("--trusted-key", action="append", help="trusted public key (hex or file); repeatable")
    im = sub.add_parser("import", help="verify a bundle and admit its records")
    im.add_argument("bundle")
    im.add_argument("--require-signed", action="store_true", default=None)
    im.add_argument("--trusted-key", action="append", help="trusted public key (hex or file); repeatable")
    ve = sub.add_parser("verify", help="check a bundle (or every configured bundle) without importing")
    ve.add_argument("bundle", nargs="?")
    ve.add_argument("--all", action="store_true", help="every layer the store reads, plus local entries")
    ve.add_argument("--correctness", action="store_true", help="also compile + check kernels for this device")
    ve.add_argument("--require-signed", action="store_true", default=None)
    ve.add_argument("--trusted-key", action="append")
    sub.add_parser("rm", help="remove a record from the writable store").add_argument("key")
    pr = sub.add_parser("prune", help="remove stale or unused local records")
    pr.add_argument("--stale-software", action="store_true")
    pr.add_argument("--unused-days", type=_days, metavar="N", help="not looked up for N days (N >= 0)")
    pr.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    sub.add_parser("stats", help="layers, counts, generation")
    pe = sub.add_parser("pending", help="specs that missed, most frequent first")
    pe.add_argument("--clear", action="store_true")
    sub.add_parser("keygen", help="create an Ed25519 signing key pair").add_argument("dir")
    sg = sub.add_parser("sign", help="sign a bundle's manifest")
    sg.add_argument("bundle")
    sg.add_argument("--key", required=True, help="private key file from keygen")
    sub.add_parser("trust", help="add a public key to the trusted set").add_argument("pubkey")
    ba = sub.add_parser("baseline", help="store a plain untuned record for a spec")
    ba.add_argument("--spec", required=True, help="spec text (the form `ls` prints): " + SPEC_TEXT_HELP)
    for sp in sub.choices.values():  # --json is accepted after every subcommand as well as before it
        add_json_flag(sp)
    return p


def _store() -> Any:
    from .store import KernelStore

    return KernelStore.from_settings()


def _records_table(hits: list[Any]) -> Any:
    from rich.table import Table

    t = Table("spec", "hardware", "software", "vs fallback", "vs best built-in", "kernel id", "layer",
              title=f"{len(hits)} record(s)")
    for h in hits:
        r = h.record
        sw = f"triton {r.software.triton} / torch {r.software.torch}" + (" (reverify)" if h.needs_reverify else "")
        speed = [f"{x:.2f}x" if x else "-" for x in (r.metrics.speedup_vs_fallback, r.metrics.speedup)]
        t.add_row(r.spec.short(), r.hardware.slug, sw, *speed, r.kernel_id, h.layer)
    return t


def _report_out(console: Any, reports: list[Any], as_json: bool) -> int:
    from rich.markup import escape

    if as_json:
        print_json([{"path": r.path, "ok": r.ok, "problems": r.problems, "notes": r.notes,
                     "records": sorted(r.records), "unverified": r.unverified} for r in reports])
    for r in reports if not as_json else ():
        status = "[green]OK[/green]" if r.ok else "[red]REFUSED[/red]"
        notes = escape("".join(f"; {n}" for n in r.notes))
        console.print(f"{status} {escape(r.path)}: {len(r.records)} record(s)" + notes)
        for problem in r.problems:
            console.print(f"  [red]-[/red] {escape(problem)}", highlight=False)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED


def _merge_out(console: Any, args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .merge import merge_bundles

    report = merge_bundles(args.bundles, args.out, trusted_keys=args.trusted_key, require_signed=args.require_signed,
                           sign_key=args.key)
    if args.json:
        print_json({"out": report.out, "signed": bool(args.key), "records": [
            {"key": c.key, "kernel_id": c.kernel_id, "source": c.source, "speedup": c.speedup,
             "replaced": list(c.replaced)} for c in report.choices]})
        return EXIT_OK
    replaced = sum(len(c.replaced) for c in report.choices)
    signed = " (signed)" if args.key else ""
    console.print(f"merged {len(report.sources)} bundle(s) into {escape(report.out)}: {len(report.choices)} "
                  f"record(s), {replaced} replaced by a faster one for the same key{signed}")
    for choice in report.choices:
        for old in choice.replaced:
            console.print(f"  {escape(choice.key)}: kept {choice.kernel_id}, not {escape(old)}", highlight=False)
    return EXIT_OK


def _restamp_out(console: Any, args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .restamp import CodeDigests, restamp_bundle

    report = restamp_bundle(args.bundle, args.out, CodeDigests.load(args.before), CodeDigests.load(args.after),
                            trusted_keys=args.trusted_key)
    if args.json:
        print_json({"out": report.out, "records": [dataclasses.asdict(o) for o in report.outcomes]})
        return EXIT_OK
    console.print(f"wrote {escape(report.out)}: {report.restamped} of {len(report.outcomes)} record(s) re-stamped")
    for o in report.outcomes:
        console.print(f"  {'re-stamped' if o.restamped else 'kept'} {escape(o.key)}: {escape(o.why)}", highlight=False)
    return EXIT_OK


def _run(args: argparse.Namespace, console: Any) -> int:
    from . import admin, bundle, signing
    from ..settings import get_settings

    if args.cmd == "ls":
        hits = [h for h in _store().iter_records(include_shadowed=args.all)
                if (not args.hardware or args.hardware in h.record.hardware.slug)
                and (not args.spec_filter or args.spec_filter in h.key or args.spec_filter in h.record.spec.short())]
        if args.json:
            print_json([{"key": h.key, "layer": h.layer, "kernel_id": h.record.kernel_id,
                         "needs_reverify": h.needs_reverify, "spec": h.record.spec.short(),
                         "speedup": h.record.metrics.speedup,
                         "speedup_vs_fallback": h.record.metrics.speedup_vs_fallback} for h in hits])
        else:
            console.print(_records_table(hits))
    elif args.cmd == "show":
        hit = admin.find_record(_store(), args.ref)
        data = {k: v for k, v in hit.record.to_dict().items() if k != "source"}
        if args.json:
            print_json({"key": hit.key, "layer": hit.layer, "kernel_id": hit.record.kernel_id,
                        "needs_reverify": hit.needs_reverify, "record": hit.record.to_dict()})
            return EXIT_OK
        from rich.syntax import Syntax

        console.print(f"[bold]{hit.key}[/bold]  kernel {hit.record.kernel_id}  layer {hit.layer}"
                      + ("  (needs re-verification)" if hit.needs_reverify else ""))
        console.print_json(json.dumps(data))
        from ..kernels.tiers import kernel_for_record, stale_note  # template records show what they render to

        if stale_note(hit.record):
            console.print(f"[yellow]{stale_note(hit.record)}[/yellow]")
        console.print(Syntax(kernel_for_record(hit.record).source, "python", line_numbers=True))
    elif args.cmd == "export":
        manifest = bundle.export_bundle(_store(), args.out, args.hardware, args.spec_filter, sign_key=args.key)
        if args.json:
            print_json({"out": args.out, "records": sorted(r.key for r in manifest.records), "signed": bool(args.key)})
            return EXIT_OK
        console.print(f"exported {len(manifest.records)} record(s) to {args.out}"
                      + (" (signed)" if args.key else ""))
    elif args.cmd == "merge":
        return _merge_out(console, args)
    elif args.cmd == "restamp":
        return _restamp_out(console, args)
    elif args.cmd == "import":
        report = bundle.import_bundle(_store(), args.bundle, trusted_keys=args.trusted_key,
                                      require_signed=args.require_signed)
        report.notes.append(f"admitted {len(report.records)}, {len(report.unverified)} to verify on first use")
        return _report_out(console, [report], args.json)
    elif args.cmd == "verify":
        if bool(args.bundle) == bool(args.all):
            raise ValueError("verify: give a BUNDLE or --all (not both)")
        reports = admin.verify_all(_store(), correctness=args.correctness) if args.all else [
            bundle.verify_bundle(args.bundle, args.trusted_key, args.require_signed, correctness=args.correctness)]
        return _report_out(console, reports, args.json)
    elif args.cmd == "rm":
        if not _store().remove(args.key):
            raise KeyError(f"no local record under {args.key!r}")
        if args.json:
            print_json({"removed": [args.key]})
            return EXIT_OK
        console.print(f"removed {args.key}")
    elif args.cmd == "prune":
        if not args.stale_software and args.unused_days is None:
            raise ValueError("prune needs --stale-software and/or --unused-days N")
        removed = admin.prune(_store(), stale_software=args.stale_software, unused_days=args.unused_days,
                              dry_run=args.dry_run)
        if args.json:
            print_json({"dry_run": args.dry_run, "removed": [] if args.dry_run else removed,
                        "would_remove": removed if args.dry_run else []})
            return EXIT_OK
        verb = "would prune" if args.dry_run else "pruned"
        console.print(f"{verb} {len(removed)} record(s)" + "".join(f"\n  {k}" for k in removed), highlight=False)
    elif args.cmd == "stats":
        info = admin.stats(_store())
        if args.json:
            print_json(info)
            return EXIT_OK
        from rich.table import Table

        t = Table("layer", "records", "status", "path", title=f"generation {info['generation']} on {info['hardware']}")
        for layer in info["layers"]:
            t.add_row(layer["layer"], str(layer["records"]), layer["status"], layer["path"])
        console.print(t)
        console.print(f"pending: {info['pending_specs']} spec(s), {info['pending_misses']} miss(es)")
    elif args.cmd == "pending":
        store = _store()
        entries = store.pending()
        if args.clear:
            cleared = store.clear_pending()
            if args.json:
                print_json({"cleared": cleared})
            else:
                console.print(f"cleared {cleared} pending spec(s)")
        elif args.json:
            print_json([e.to_dict() for e in entries])
        else:
            from rich.table import Table

            t = Table("count", "spec", "hardware", "origins", title=f"{len(entries)} pending spec(s)")
            for e in entries:
                t.add_row(str(e.count), e.spec.short(), e.hardware.slug, ", ".join(e.origins))
            console.print(t)
    elif args.cmd == "keygen":
        priv, pub, hex_key = signing.keygen(args.dir)
        if args.json:
            print_json({"private_key": str(priv), "public_key": str(pub), "public_key_hex": hex_key})
            return EXIT_OK
        console.print(f"private key: {priv} (keep secret)\npublic key:  {pub}\n{hex_key}", highlight=False)
    elif args.cmd == "sign":
        signer = bundle.sign_bundle(args.bundle, args.key)
        if args.json:
            print_json({"bundle": args.bundle, "key": signing.fingerprint(signer)})
            return EXIT_OK
        console.print(f"signed {args.bundle} with key {signing.fingerprint(signer)}")
    elif args.cmd == "trust":
        path = signing.trust(args.pubkey, get_settings().cache_dir)
        if args.json:
            print_json({"trusted": path.stem, "path": str(path)})
            return EXIT_OK
        console.print(f"trusted {path.stem} ({path})")
    elif args.cmd == "baseline":
        key = admin.add_baseline(_store(), admin.parse_spec_text(args.spec))
        if args.json:
            print_json({"stored": key})
            return EXIT_OK
        console.print(f"stored baseline record {key}", highlight=False)
    return EXIT_OK


def _main(args: argparse.Namespace, prog: str) -> int:
    from rich.console import Console

    from .manifest import BundleError

    # Piped output (CI logs, grep) gets wide tables instead of rich's 80-column default, so ids aren't cut.
    width = None if sys.stdout.isatty() else 200
    console, err = Console(soft_wrap=True, width=width), Console(stderr=True, soft_wrap=True, width=width)
    try:
        return _run(args, console)
    except BundleError as exc:
        if hasattr(exc, "report"):  # the report goes where the output goes: JSON on stdout, text on stderr
            return _report_out(console if args.json else err, [exc.report], args.json)
        error_line(prog, str(exc))
        return EXIT_FAILED


# Exception -> exit code, first match wins: a missing or refused thing is 1, bad input (ValueError) is 2.
_ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (KeyError, EXIT_FAILED), (RuntimeError, EXIT_FAILED), (OSError, EXIT_FAILED), (sqlite3.Error, EXIT_FAILED),
    (ValueError, EXIT_USAGE))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: _main(args, parser.prog), _ERRORS)


if __name__ == "__main__":
    sys.exit(main())
