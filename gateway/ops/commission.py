"""Commissioning aids for instrument technicians: ``browse`` (OPC UA nodes), ``scan`` (Modbus unit ids) and
``profile import`` (a register list to a device profile). The protocol work is in drivers/opcua_browse.py,
drivers/modbus_scan.py and gateway/profile_import.py; this module turns their results into the lines a person
reads (gateway.i18n) or JSON, and their failures into one line and an exit code: 0 done, 1 a device fault
(cannot connect, nothing answered where something must), 2 a usage error (bad option, endpoint, file, rows),
130 stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.i18n import gettext as _


def _err(msg: str) -> None:
    print(f"hazard-gateway: {msg}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, asyncio.TimeoutError) and not text:
        return _("timed out")
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------- browse

def browse_security(args: argparse.Namespace) -> dict | None:
    """The opcua security mapping of the browse options (the keys of a config's ``security:``), or None."""
    sec = {k: v for k, v in (("policy", args.policy), ("mode", args.mode), ("cert", args.cert), ("key", args.key),
                             ("server_cert", args.server_cert), ("username", args.username),
                             ("password_file", args.password_file)) if v}
    if sec.get("policy") and not sec.get("mode"):
        sec["mode"] = "SignAndEncrypt"
    return sec or None


def run_browse(args: argparse.Namespace) -> int:
    """`browse ENDPOINT`: one line per node (node id, browse name, node class, data type), indented by depth;
    --json one object (drivers.opcua_browse.BrowseResult.as_dict)."""
    from drivers import opcua_browse
    from drivers.opcua import quiet_asyncua_logging

    quiet_asyncua_logging()
    try:
        sec = browse_security(args)
        coro = opcua_browse.browse(args.endpoint, start=args.start, depth=args.depth, max_nodes=args.max_nodes,
                                   security=sec, timeout_s=args.timeout, nsu=args.nsu)
    except ValueError as exc:
        _err(_("browse: {error}").format(error=_one_line(exc)))
        return 2
    try:
        result = asyncio.run(coro)
    except (ValueError, LookupError) as exc:
        _err(_("browse: {error}").format(error=_one_line(exc)))
        return 2
    except KeyboardInterrupt:
        _err(_("browse: stopped (Ctrl-C)"))
        return 130
    except Exception as exc:  # noqa: BLE001 - asyncua raises many kinds for a server that is not there
        _err(_("browse {endpoint}: cannot browse: {error}").format(endpoint=args.endpoint, error=_one_line(exc)))
        return 1
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=1))
        return 0
    for node in result.nodes:
        print(node.line())
    summary = _("{n} nodes below {start}, depth {depth}").format(n=len(result.nodes), start=result.start,
                                                               depth=result.depth)
    if result.truncated:
        summary += "; " + _("stopped at --max-nodes {max}: there are more (narrow with --from NODEID)").format(
            max=result.max_nodes)
    print(summary, file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- scan

def _found_line(hit: object) -> str:
    """``unit 3  FC3 holding 0: 0x0069 (105)  vendor ...`` for one unit found."""
    table = _("holding") if hit.function == 3 else _("input")
    if hit.exception is not None:
        what = _("exception {code} {name} (the unit answers)").format(code=f"{hit.exception:02X}",
                                                                    name=hit.exception_name)
    else:
        value = hit.registers[0]
        what = f"0x{value:04X} ({value})"
    parts = [_("unit {unit}").format(unit=hit.unit), f"FC{hit.function} {table} {hit.address}: {what}"]
    ident = " ".join(v for v in (hit.vendor, hit.product, hit.revision) if v)
    if ident:
        parts.append(_("device id: {ident}").format(ident=ident))
    if hit.server_id:
        parts.append(_("server id: {hex}").format(hex=hit.server_id))
    return "  ".join(parts)


def run_scan(args: argparse.Namespace) -> int:
    """`scan --tcp HOST[:PORT] | --serial PORT`: the bound first (stderr), then one line per unit found as it
    answers; --json one object at the end: {"target", "units", "found": [...], "gateway_silent", "stopped",
    "bound_s"}. Exit 0 (also when nothing answered: that is the finding), 1 the port/host cannot be opened,
    2 a usage error, 130 Ctrl-C (what was found so far is still printed)."""
    from drivers import modbus_scan as ms

    try:
        if bool(args.tcp) == bool(args.serial):
            raise ValueError(_("give --tcp HOST[:PORT] or --serial PORT"))
        if args.tcp:
            host, port = ms.parse_host(args.tcp)
            target = ms.ScanTarget(host=host, port=port)
        else:
            target = ms.ScanTarget(serial=args.serial, baudrate=args.baud, parity=args.parity,
                                   stopbits=args.stopbits, bytesize=args.bytesize)
        units = ms.parse_units(args.units or "1-247", target.is_serial)
        timeout = args.timeout if args.timeout is not None else (
            ms.DEFAULT_SERIAL_TIMEOUT_S if target.is_serial else ms.DEFAULT_TCP_TIMEOUT_S)
        printed: list[str] = []

        def on_found(hit: object) -> None:
            if not args.json:
                line = _found_line(hit)
                printed.append(line)
                print(line, flush=True)

        scanner = ms.Scanner(target, units, function=args.function, address=args.address, timeout_s=timeout,
                             gap_s=args.gap_ms / 1000.0, ident=not args.no_ident, on_found=on_found)
    except ValueError as exc:
        _err(_("scan: {error}").format(error=_one_line(exc)))
        return 2
    print(_("scanning {n} unit ids ({first}-{last}) on {target}: FC{fc} at address {address}, timeout {timeout} s, "
            "{pace} ms between frames; at most {bound} s (+ {ident} s per unit found for its device "
            "id). Ctrl-C stops.").format(n=len(units), first=units[0], last=units[-1], target=target.describe(),
                                         fc=args.function, address=args.address, timeout=timeout,
                                         pace=round(scanner.pace_s * 1000, 2), bound=f"{scanner.bound_s():.0f}",
                                         ident=f"{scanner.ident_bound_s():.1f}"), file=sys.stderr, flush=True)
    stopped = False
    try:
        asyncio.run(scanner.run())
    except KeyboardInterrupt:
        stopped = True
    except (ConnectionError, OSError) as exc:
        what = _("cannot open the serial port") if target.is_serial else _("cannot connect")
        detail = _one_line(exc)
        if detail not in ("cannot open the serial port", "cannot connect"):   # the driver's own words: said above
            what += f" ({detail})"
        _err(_("scan {target}: {error}").format(target=target.describe(), error=what))
        return 1
    if args.json:
        print(json.dumps({"target": target.describe(), "units": [units[0], units[-1]], "count": len(units),
                          "function": args.function, "address": args.address, "timeout_s": timeout,
                          "bound_s": round(scanner.bound_s(), 3), "found": [h.as_dict() for h in scanner.found],
                          "gateway_silent": scanner.gateway_silent, "stopped": stopped,
                          "last_unit": scanner.last_unit}, ensure_ascii=False, indent=1))
    if scanner.gateway_silent:
        print(_("{n} unit ids answered by the TCP gateway with exception 0A/0B (nobody behind it): not "
                "present").format(n=len(scanner.gateway_silent)), file=sys.stderr)
    if stopped:
        print(_("stopped (Ctrl-C) after unit {unit}: {n} found so far").format(unit=scanner.last_unit,
                                                                             n=len(scanner.found)), file=sys.stderr)
        return 130
    print(_("{n} of {total} unit ids answered").format(n=len(scanner.found), total=len(units)), file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- profile import

def run_profile_import(args: argparse.Namespace) -> int:
    """`profile import FILE.csv [--out FILE.yaml] [--name NAME]`: the profile on stdout, or written to --out
    after it loaded through the profile loader; every bad row as FILE:LINE:COL on stderr, exit 2."""
    from gateway.config import ConfigError
    from gateway import profile_import as pi

    protocols = [args.protocol] if args.protocol else None
    try:
        res = pi.import_profile(args.file, name=args.name, device=args.device, encoding=args.encoding,
                                delimiter=args.delimiter, description=args.description, protocols=protocols)
        if args.out:
            out = Path(args.out)
            if out.exists() and not args.force:
                raise ValueError(_("{out} exists (give --force to replace it)").format(out=args.out))
            pi.write_checked(res.text, out)
        else:
            pi.check_text(res.text, "<stdout>")
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        _err(_("profile import: {error}").format(error=_one_line(exc)))
        return 2
    if args.out:
        assumed = sum(1 for t in res.tags if t.get("assumed"))
        print(_("{out}: profile with {n} tags from {file} ({encoding}, delimiter {delimiter!r}); {assumed} "
                "addresses assumed").format(out=args.out, n=len(res.tags), file=args.file, encoding=res.encoding,
                                            delimiter=res.delimiter, assumed=assumed))
    else:
        sys.stdout.write(res.text)
    return 0
