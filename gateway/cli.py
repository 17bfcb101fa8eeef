"""The `hazard-gateway` command line.

Exit codes: 0 success; 1 a fault the command found (a bad batch, a sentinel
value, a device that did not answer); 2 a usage or configuration error
(FILE:LINE:COL lines on stderr). A mistake a person can make never ends in a
traceback: it ends in one line naming the file, device or key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any
from pathlib import Path

from gateway.i18n import gettext as _
from gateway.shipped import version


def _err(msg: str) -> None:
    print(f"hazard-gateway: {msg}", file=sys.stderr)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse prints the one-line error and exits 2)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(_("{value!r} is not a whole number >= 1").format(value=text))
    return n


def _positive_minutes(text: str) -> float:
    """argparse type: minutes > 0 (a float)."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = 0.0
    if not minutes > 0 or minutes == float("inf"):
        raise argparse.ArgumentTypeError(_("{value!r} is not a number of minutes > 0").format(value=text))
    return minutes


CONFIG_ENV = "HAZARD_GATEWAY_CONFIG"


class NoConfigError(ValueError):
    """The chosen config file does not exist; main prints the one line and exits 2."""


def resolve_config(given: str | None) -> str:
    """The config file a command uses: ``given`` (--config or check's FILE), else $HAZARD_GATEWAY_CONFIG, else
    /etc/hazard-gateway/gateway.yaml (gateway.ops.install.DEFAULT_CONFIG, the one the unit runs). Raises
    NoConfigError, one line naming where the path came from, when that file does not exist."""
    from gateway.ops.install import DEFAULT_CONFIG

    if given:
        path, source = given, None  # load_config names a missing --config/FILE itself, as before
    elif os.environ.get(CONFIG_ENV):
        path, source = os.environ[CONFIG_ENV], _("from {variable}").format(variable=CONFIG_ENV)
    else:
        path, source = DEFAULT_CONFIG, _("the default; give --config or set {variable}").format(variable=CONFIG_ENV)
    if source and not Path(path).exists():
        raise NoConfigError(_("no config: {path} does not exist ({source})").format(path=path, source=source))
    return path


def cmd_check(args: argparse.Namespace) -> int:
    """`check FILE`: exit 0 and "FILE: ok (...)" with warnings on stderr, or exit 2 and one FILE:LINE:COL line per
    problem on stderr. With --json one object on stdout either way: {"file", "ok", "devices", "tags", "interlocks"
    (null when not ok), "problems": [{"file", "line", "col", "path", "message", "warning"}]}, the same exit code."""
    from dataclasses import asdict

    from gateway.config import ConfigError, check_secrets, check_state_dirs, load_config

    args.file = resolve_config(args.file)
    try:
        cfg = load_config(args.file)
        secrets = check_secrets(cfg)  # docs/design.md, Secrets: secret files exist and are readable by the owner only
        dirs = check_state_dirs(cfg)  # state_dir and the store directory can be created (run creates them)
        errors = secrets + [p for p in dirs if not p.warning]
        if errors:
            raise ConfigError(errors)
    except ConfigError as exc:
        if not args.json:
            raise
        print(json.dumps({"file": args.file, "ok": False, "devices": None, "tags": None, "interlocks": None,
                          "problems": [asdict(p) for p in exc.problems]}, ensure_ascii=False))
        return 2
    m = cfg.model
    ntags = sum(len(d.tags) for d in m.devices)
    warnings = [*cfg.warnings, *dirs]
    if args.json:
        print(json.dumps({"file": args.file, "ok": True, "devices": len(m.devices), "tags": ntags,
                          "interlocks": len(m.interlocks), "problems": [asdict(w) for w in warnings]},
                         ensure_ascii=False))
        return 0
    for w in warnings:
        print(w, file=sys.stderr)
    print(_("{file}: ok ({devices} devices, {tags} tags, {interlocks} interlocks)").format(
        file=args.file, devices=len(m.devices), tags=ntags, interlocks=len(m.interlocks)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.runtime.daemon import run_daemon

    from gateway.config import ConfigError, check_secrets

    cfg = load_config(resolve_config(args.config))
    secrets = check_secrets(cfg, used_only=True)  # the files the daemon will open
    if secrets:
        raise ConfigError(secrets)
    for w in cfg.warnings:
        print(w, file=sys.stderr)
    return run_daemon(cfg)


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.chain.signing import keygen

    kid = keygen(args.out)
    print(kid)
    return 0


def cmd_receiver(args: argparse.Namespace) -> int:
    from gateway.regulator import receiver

    if args.action == "export":
        if not args.store or not args.out:
            _err(_("receiver export needs --store PATH --out DIR"))
            return 2
        if args.since is not None:
            from gateway.regulator.storage import parse_since

            try:
                parse_since(args.since)
            except ValueError as exc:
                _err(str(exc))
                return 2
        n = receiver.export_batches(args.store, args.out, gateway_id=args.gateway, since=args.since)
        print(_("exported {n} batches to {out}").format(n=n, out=args.out))
        return 0
    if not ((args.listen or args.mqtt) and args.store and args.trust):
        _err(_("receiver needs --listen HOST:PORT and/or --mqtt URL, and --store PATH --trust DIR"))
        return 2
    if args.self_signed and (args.cert or args.key):
        _err(_("receiver: --self-signed DIR and --cert/--key exclude each other; give one"))
        return 2
    mqtt_flags = [f"--mqtt-{n.replace('_', '-')}" for n in ("group", "topic", "client_id", "ca", "cert", "key",
                                                            "answer_topic") if getattr(args, f"mqtt_{n}")]
    if args.leave:
        mqtt_flags.append("--mqtt-leave")
    if not args.mqtt and mqtt_flags:
        _err(_("receiver: {flag} needs --mqtt URL").format(flag=mqtt_flags[0]))
        return 2
    if args.mqtt and not args.mqtt_client_id:
        _err(_("receiver: --mqtt needs --mqtt-client-id ID, stable and different for each receiver process "
               "(its persistent session)"))
        return 2
    if not args.listen and (args.cert or args.key or args.self_signed):
        _err(_("receiver: --cert, --key and --self-signed are for --listen (HTTPS); the broker's TLS is "
               "--mqtt-ca, --mqtt-cert, --mqtt-key"))
        return 2
    missing = receiver.web_stack_missing() if args.listen else None
    if missing:
        _err(missing)
        return 2
    if args.self_signed:
        from gateway.tlsutil import make_self_signed

        d = Path(args.self_signed)
        args.cert, args.key = d / "server.crt", d / "server.key"
        if not (args.cert.is_file() and args.key.is_file()):  # reuse a pair already there
            args.cert, args.key = make_self_signed(d, ("127.0.0.1", "localhost"))
        print(_("receiver: self-signed certificate for 127.0.0.1/localhost; give the gateway "
                "uplink.ca_file: {path}").format(path=args.cert.resolve()), file=sys.stderr, flush=True)
    limits = receiver.ReceiverLimits()
    limits = dataclasses.replace(limits, max_body=args.max_body or limits.max_body,
                                 max_connections=args.max_connections or limits.max_connections)
    mqtt = None
    if args.mqtt:
        from gateway.regulator.mqtt_ingest import MqttIngestSettings

        given = {k: v for k, v in (("group", args.mqtt_group), ("topic", args.mqtt_topic),
                                   ("answer_topic", args.mqtt_answer_topic)) if v is not None}
        mqtt = MqttIngestSettings(url=args.mqtt, client_id=args.mqtt_client_id, ca_file=args.mqtt_ca,
                                  client_cert=args.mqtt_cert, client_key=args.mqtt_key, max_body=limits.max_body,
                                  leave=args.leave, **given)
    return receiver.run_receiver(args.listen, args.store, args.trust, certfile=args.cert, keyfile=args.key,
                                 signing_key=args.signing_key, require_binding=args.require_bound_keys,
                                 limits=limits, silent_after_s=args.silent_after * 60.0, mqtt=mqtt) or 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.regulator.verify import run_verify

    return run_verify(args.trust, args.files, as_json=args.json)


ALL_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")  # the four register/byte orders of 32/64-bit values (drivers.codec)


def cmd_decode(args: argparse.Namespace) -> int:
    """`decode`: registers (hex words) to a value; ``--order all`` prints one line per distinct order
    (``ORDER value`` or ``ORDER not a value: reason``) so a technician sees which order is plausible, and
    exits 0 when at least one order gives a value."""
    from drivers import codec

    try:
        regs = [int(h, 16) for group in args.hex for h in group.replace(",", " ").split()]
    except ValueError:
        _err(_("registers are hex words, e.g. 4148 0000"))
        return 2
    if any(not 0 <= r <= 0xFFFF for r in regs):
        _err(_("each register is one 16-bit hex word (0000-FFFF)"))
        return 2
    try:
        per = codec.register_count(args.type, 1, args.str_len)
        if per == 0 or len(regs) % per:
            _err(_("{type} takes {per} register(s) per value; {given} given").format(type=args.type, per=per,
                                                                                     given=len(regs)))
            return 2
        if args.order.strip().lower() == "all":
            orders: dict[str, str] = {}
            for order in ALL_ORDERS:  # 16-bit types and strings have no word order: CDAB is ABCD there
                orders.setdefault(codec.normalise_order(order, args.type), order)
            good = 0
            for order in orders.values():
                try:
                    vals, subnormal = _decode_values(codec, regs, per, args, order)
                except codec.CodecError as exc:
                    print(f"{order}  not a value: {exc}")
                    continue
                note = "  (subnormal: implausible)" if subnormal else ""
                print(f"{order}  {json.dumps(vals[0] if len(vals) == 1 else vals)}{note}")
                good += 1
            return 0 if good else 1
        values, _subnormal = _decode_values(codec, regs, per, args, args.order)
    except codec.CodecError as exc:
        _err(_("{registers} as {type} {order}: {error} (not a value: a gateway reading would be bad quality)").format(
            registers=" ".join(f"{r:04X}" for r in regs), type=args.type, order=args.order, error=exc))
        return 1
    except ValueError as exc:
        _err(str(exc))
        return 2
    print(json.dumps(values[0] if len(values) == 1 else values))
    return 0


def _decode_values(codec: Any, regs: list[int], per: int, args: argparse.Namespace,
                   order: str) -> tuple[list[Any], bool]:
    """(each value of ``per`` registers in ``order``, checked by codec.check_value and scaled; True when a raw
    float is subnormal, IEEE 754-2019 3.4). Raises codec.CodecError for a value that is not one (NaN,
    infinity), ValueError for a bad order."""
    scaling = codec.Scaling(scale=args.scale, offset=args.offset)
    values, subnormal = [], False
    for i in range(0, len(regs), per):
        raw = codec.decode(regs[i:i + per], args.type, order, 1)
        codec.check_value(raw)
        subnormal = subnormal or codec.is_subnormal(raw, args.type)
        if isinstance(raw, str) and args.str_len is not None:
            raw = raw[:args.str_len]
        values.append(scaling.to_eng(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else raw)
    return values, subnormal


def _parse_value(text: str, dtype: str, scaled: bool) -> object:
    """One command-line value for ``encode``: a string as given (quotes optional), true/false/1/0 for
    bool, an exact integer (decimal or 0x hex) for integer types unless --scale/--offset make it an
    engineering value, else a number. Raises ValueError with a one-line reason."""
    if dtype.startswith("string"):
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if dtype.startswith("bool") or dtype.startswith("bit"):
        low = text.strip().lower()
        if low in ("1", "true", "on"):
            return True
        if low in ("0", "false", "off"):
            return False
        raise ValueError(f"{text!r} is not a bool (true/false, 1/0)")
    if dtype.startswith(("int", "uint")) and not scaled:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer for {dtype} (give --scale to encode an engineering "
                             "value with a fraction)") from None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def cmd_encode(args: argparse.Namespace) -> int:
    from drivers import codec

    try:
        scaling = codec.Scaling(scale=args.scale, offset=args.offset)
        regs: list[int] = []
        for text in args.values:
            scaled = (args.scale, args.offset) != (1.0, 0.0)
            v = _parse_value(text, args.type, scaled)
            raw = scaling.to_raw(v, args.type) if scaled and isinstance(v, (int, float)) and not isinstance(v, bool) else v
            regs += codec.encode(raw, args.type, args.order, args.str_len)
    except (ValueError, codec.CodecError, OverflowError) as exc:
        _err(str(exc))
        return 2
    print(" ".join(f"{r:04X}" for r in regs))
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    """GB 18218-2018 identification (S) and grading (R) of one unit from quantities (docs/domain.md, GB 18218-2018)."""
    from gateway.hazard import grade_command

    return grade_command(args.people, args.substance)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the config's JSON Schema (config/schema.json is this output)."""
    from gateway.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    """Lay the systemd unit, sysusers/tmpfiles, the user, directories and a starter config (gateway.ops.install)."""
    from gateway.ops.install import InstallError, install_service

    try:
        lines = install_service(args.prefix, args.config_dir, dry_run=args.dry_run, exec_path=args.exec_path)
    except InstallError as exc:
        _err(f"install-service: {exc}")
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Read every configured tag once and print a table (gateway.ops.probe). Exit 0 all good, 1 any bad."""
    from gateway.config import ConfigError, check_secrets, load_config
    from gateway.ops.probe import run_probe

    cfg = load_config(resolve_config(args.config))
    # the device secrets probe opens (OPC UA key, password file) pass the same owner-only check as `run`
    secrets = [p for p in check_secrets(cfg, used_only=True) if p.path.startswith("devices")]
    if secrets:
        raise ConfigError(secrets)
    return run_probe(cfg, args.device, as_json=args.json, verbose=args.verbose)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.ops.demo import run_demo

    return run_demo(config=args.config, workdir=args.workdir, json_out=args.json, scenario=args.scenario)


def cmd_backup(args: argparse.Namespace) -> int:
    """`backup`: the archive a replaced PC restores (gateway.ops.backup.backup); it holds the private key."""
    from gateway.ops.backup import backup, backup_lines

    manifest = backup(resolve_config(args.config), args.out, with_store=args.with_store, live=args.live)
    for line in backup_lines(manifest):
        print(line)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """`restore`: verify, then write a backup archive (gateway.ops.backup.restore); exit 1 when the restored
    config does not pass `check`."""
    from gateway.ops.backup import restore, restore_lines

    result = restore(args.archive, config_dir=args.config_dir, state_dir=args.state_dir, force=args.force)
    for line in restore_lines(result):
        print(line)
    return 1 if result["problems"] else 0


def _control_socket_of(config: str) -> Path:
    """The control socket named by a config file. A daemon keeps running on its last good config when
    the file on disk is broken (a rejected SIGHUP), so the operator must still reach it: the socket
    path is then read from the raw YAML (control.socket, else gateway.state_dir/control.sock), and the
    config's errors are only mentioned. Raises ConfigError when not even that can be read."""
    from gateway.config import ConfigError, load_config, read_yaml
    from gateway.ops.control import SOCKET_NAME, socket_path

    try:
        return socket_path(load_config(config))
    except ConfigError as exc:
        root, _text = read_yaml(Path(config), config)
        base = Path(config).resolve().parent
        try:
            sock = (root.get("control") or {}).get("socket")
            state = (root.get("gateway") or {}).get("state_dir") or "state"
        except AttributeError:
            raise exc from None
        _err(_("{config} has errors (run `hazard-gateway check {config}`); using its control socket anyway").format(
            config=config))
        return base / sock if sock else base / state / SOCKET_NAME


def cmd_control(args: argparse.Namespace) -> int:
    """status | ack | reset | shelve | unshelve | bypass | silence over the daemon's control socket
    (gateway.ops.control). Exit 0 done, 1 refused (one line why), 2 daemon not running or usage error."""
    from gateway.ops.control import ControlError, render_status, request

    if args.socket:
        path = Path(args.socket)
    else:  # --config, else $HAZARD_GATEWAY_CONFIG, else the default config (resolve_config)
        path = _control_socket_of(resolve_config(args.config))
    req: dict = {"action": args.command}
    if args.command in ("ack", "shelve", "unshelve"):
        req["id"] = args.target
    elif args.command == "reset":
        req["target"] = args.target
    elif args.command == "bypass":
        req["interlock"] = args.target
        if args.end:
            req["end"] = True
    if getattr(args, "reason", None) is not None:
        req["reason"] = args.reason
    if args.command in ("shelve", "bypass") and not getattr(args, "end", False):
        if args.minutes is None or not args.reason or not args.reason.strip():
            _err(_("{command} needs --minutes N and --reason TEXT").format(command=args.command))
            return 2
        req["minutes"] = args.minutes
    try:
        ans = request(path, req)
    except ControlError as exc:
        _err(str(exc))
        return exc.exit_code
    if not ans.get("ok"):
        _err(_("refused: {error}").format(error=ans.get("error", _("no reason given"))))
        return 1
    if args.command == "status":
        print(json.dumps(ans["status"], indent=1, default=str) if args.json else render_status(ans["status"]))
    else:
        print(_("{message} (by {user})").format(message=ans.get("message", _("ok")), user=ans.get("user")))
    return 0


def cmd_browse(args: argparse.Namespace) -> int:
    """`browse ENDPOINT`: the OPC UA nodes below --from, with node ids to paste into a config (gateway.ops.commission)."""
    from gateway.ops.commission import run_browse

    return run_browse(args)


def cmd_scan(args: argparse.Namespace) -> int:
    """`scan --tcp HOST | --serial PORT`: the Modbus unit ids that answer, read-only (gateway.ops.commission)."""
    from gateway.ops.commission import run_scan

    return run_scan(args)


def cmd_profile(args: argparse.Namespace) -> int:
    """`profile import FILE.csv`: a register list to a device profile (gateway.ops.commission)."""
    from gateway.ops.commission import run_profile_import

    return run_profile_import(args)


def build_parser() -> argparse.ArgumentParser:
    from gateway.ops.install import DEFAULT_CONFIG

    config_help = f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})"
    p = argparse.ArgumentParser(prog="hazard-gateway", description=(
        "Edge gateway for major-hazard installations. An additional monitoring and protection layer; "
        "not a safety instrumented system (IEC 61511)."))
    p.add_argument("--version", action="version", version=f"hazard-gateway {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="run the daemon")
    s.add_argument("--config", default=None, help=config_help)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check", help="validate a config file (FILE:LINE:COL errors, exit 2)")
    s.add_argument("file", nargs="?", default=None, help=config_help)
    s.add_argument("--json", action="store_true", help="print the result and every problem as one JSON object")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("grade", help="GB 18218-2018: S, R, grade and major_hazard of one unit as JSON")
    s.add_argument("--people", type=int, required=True, help="people within 500 m outside the unit boundary")
    s.add_argument("--substance", action="append", default=[], metavar="NAME=TONNES",
                   help="Chinese or English name, CAS number, category code or codes joined by + (W2+J3) = "
                        "design maximum quantity in tonnes (GB 18218-2018 4.2.2; repeatable)")
    s.set_defaults(func=cmd_grade)

    s = sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("probe", help="read every configured tag once and print address, raw, value, quality")
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--device", default=None, help="only this device")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.add_argument("--verbose", action="store_true", help="keep the drivers' log lines on stderr")
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("demo", help="run the gateway on the built-in simulated tank farm")
    s.add_argument("--config", default=None, help="gateway config (default: config/demo.yaml)")
    s.add_argument("--workdir", default=None, help="keep keys, stores and logs here (default: a temporary directory)")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON")
    s.add_argument("--scenario", default="demo", help="scenario name from hil/scenarios (default: demo)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("keygen", help="make an Ed25519 key pair (private.pem 0600, <kid>.jwk)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("receiver", help="the reference regulator receiver; `receiver export` writes batches out")
    s.add_argument("action", nargs="?", choices=["export"], help="export accepted batches as <gateway_id>-<seq>.jws")
    s.add_argument("--listen", help="HOST:PORT")
    s.add_argument("--store", metavar="PATH_OR_URL",
                   help="receiver store: an SQLite file, or a postgresql://USER@HOST[:PORT]/DB URL (PostgreSQL, "
                        "which several receiver processes may share)")
    s.add_argument("--trust", help="directory of trusted public keys (*.jwk)")
    s.add_argument("--cert", help="TLS certificate (PEM); without it, plain HTTP on loopback only")
    s.add_argument("--key", help="TLS private key (PEM)")
    s.add_argument("--self-signed", metavar="DIR",
                   help="use (or first write) DIR/server.crt and server.key, self-signed for 127.0.0.1/localhost, "
                        "instead of --cert/--key; prints the file to give the gateway as uplink.ca_file")
    s.add_argument("--signing-key", metavar="PEM",
                   help="receiver Ed25519 private key (keygen's private.pem) that signs content refusals (400), "
                        "the only answers that let a gateway set a batch aside; its <kid>.jwk is the gateway's "
                        "uplink.receiver_key")
    s.add_argument("--require-bound-keys", action="store_true",
                   help="refuse to start with a trusted key that is not bound to a gateway (DIR/<gateway_id>/)")
    s.add_argument("--max-body", type=_positive_int, metavar="BYTES", help="largest accepted batch (default 8 MiB)")
    s.add_argument("--max-connections", type=_positive_int, metavar="N",
                   help="open connections before new requests get 503")
    s.add_argument("--silent-after", type=_positive_minutes, default=15.0, metavar="MINUTES",
                   help="a gateway with no batch for this long is reported silent by /metrics and /v1/health "
                        "(default 15)")
    s.add_argument("--mqtt", metavar="URL",
                   help="also (or, without --listen, only) take batches from an MQTT 5 broker: mqtts://HOST[:PORT] "
                        "(mqtt:// to a loopback broker only), through a shared subscription")
    s.add_argument("--mqtt-group", metavar="NAME", help="shared subscription group (default receivers)")
    s.add_argument("--mqtt-topic", metavar="FILTER", help="topic filter (default hazard/+/batches)")
    s.add_argument("--mqtt-client-id", metavar="ID",
                   help="this process's MQTT client id: stable, one per receiver process (its persistent session)")
    s.add_argument("--mqtt-ca", metavar="FILE", help="CA (PEM) of the broker's certificate (default: system store)")
    s.add_argument("--mqtt-cert", metavar="FILE", help="client certificate (PEM) for mutual TLS, with --mqtt-key")
    s.add_argument("--mqtt-key", metavar="FILE", help="client private key (PEM)")
    s.add_argument("--mqtt-answer-topic", metavar="TEMPLATE",
                   help="where answers go when a batch names no Response Topic (default hazard/{gateway_id}/answers)")
    s.add_argument("--mqtt-leave", dest="leave", action="store_true",
                   help="on SIGTERM retire this receiver from the group for good: unsubscribe, finish what is in "
                        "flight, end its session")
    s.add_argument("--out", help="with export: output directory")
    s.add_argument("--gateway", metavar="ID", help="with export: only this gateway's batches")
    s.add_argument("--since", metavar="RFC3339",
                   help="with export: only batches received at or after this time, e.g. 2026-01-31T00:00:00Z")
    s.set_defaults(func=cmd_receiver)

    s = sub.add_parser("install-service", help="install the systemd unit, user, directories and a starter config "
                                                "(idempotent; --dry-run shows what it would do)")
    s.add_argument("--prefix", default="/", help="install under this root (default /)")
    s.add_argument("--config-dir", default="/etc/hazard-gateway", help="config directory (default /etc/hazard-gateway)")
    s.add_argument("--exec", dest="exec_path", default=None,
                   help="hazard-gateway executable for ExecStart (default: the one running this command)")
    s.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    s.set_defaults(func=cmd_install_service)

    s = sub.add_parser("verify", help="verify exported batches offline: signature, sequence, hash chain")
    s.add_argument("--trust", required=True, help="directory of trusted public keys (*.jwk)")
    s.add_argument("--json", action="store_true", help="print the report as one JSON object")
    s.add_argument("files", nargs="+", help="exported batches (.jws) or directories of them")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("backup", help="archive config, keys (the PRIVATE signing key too: written 0600), safety "
                                      "state and chain position for a replacement PC; stop the daemon first")
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--out", required=True, metavar="ARCHIVE.tar.gz",
                   help="the archive to write (mode 0600: it holds the private signing key; never overwritten)")
    s.add_argument("--with-store", action="store_true",
                   help="also a consistent snapshot of the SQLite store (sqlite3 backup API)")
    s.add_argument("--live", action="store_true",
                   help="back up although the daemon answers on its control socket (a routine backup; for a "
                        "PC replacement stop the daemon first: two PCs uploading one chain get 409)")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="restore a backup archive on a new PC: the chain carries on without a gap")
    s.add_argument("archive", metavar="ARCHIVE")
    s.add_argument("--config-dir", default=None, help="put the config and its files here (default: where they were)")
    s.add_argument("--state-dir", default=None, help="put the store, chain position and safety state here "
                                                     "(default: where the config put them)")
    s.add_argument("--force", action="store_true",
                   help="replace files that exist (each is set aside as *.replaced-<time> first)")
    s.set_defaults(func=cmd_restore)

    for name, func, helptext in (("decode", cmd_decode, "decode registers (hex) to a value"),
                                 ("encode", cmd_encode, "encode a value to registers (hex)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--type", required=True, help="bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string")
        s.add_argument("--order", default="ABCD", help="ABCD, CDAB, BADC, DCBA (or 8-letter forms for 64-bit)"
                       + ("; all: one line per order" if name == "decode" else ""))
        s.add_argument("--scale", type=float, default=1.0)
        s.add_argument("--offset", type=float, default=0.0)
        s.add_argument("--str-len", type=int, default=None, help="string length in characters")
        s.add_argument("hex" if name == "decode" else "values", nargs="+")
        s.set_defaults(func=func)
    for name, helptext, target, reason in (
            ("status", "show devices, tags, alarms, interlocks, outputs, store and uplink of the running daemon",
             None, None),
            ("ack", "acknowledge an alarm", "ALARM_ID", "optional"),
            ("reset", "reset a latched alarm or a tripped interlock (refused while the condition persists)",
             "ALARM_ID|INTERLOCK", "optional"),
            ("shelve", "shelve an alarm for --minutes (needs --reason)", "ALARM_ID", "required"),
            ("unshelve", "return a shelved alarm to service", "ALARM_ID", "optional"),
            ("bypass", "bypass an interlock for --minutes (needs --reason); --end ends it", "INTERLOCK", "required"),
            ("silence", "silence the horns (a new alarm sounds again)", None, "optional")):
        s = sub.add_parser(name, help=helptext)
        if target:
            s.add_argument("target", metavar=target)
        if reason:
            s.add_argument("--reason", default=None, help=f"why ({reason}); logged with your user name")
        if name in ("shelve", "bypass"):
            s.add_argument("--minutes", type=float, default=None, help="duration in minutes")
        if name == "bypass":
            s.add_argument("--end", action="store_true", help="end the bypass now")
        if name == "status":
            s.add_argument("--json", action="store_true", help="print the snapshot as JSON")
        where = s.add_mutually_exclusive_group()
        where.add_argument("--config", default=None, help="the daemon's config file (finds its control socket; "
                           f"default ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
        where.add_argument("--socket", default=None, help="the control socket path")
        s.set_defaults(func=cmd_control)
    s = sub.add_parser("browse", help="list the OPC UA nodes of a server: node id, browse name, node class, data type")
    s.add_argument("endpoint", metavar="ENDPOINT", help="opc.tcp://host:4840/path")
    s.add_argument("--from", dest="start", default="i=85", metavar="NODEID",
                   help="start node (default i=85, the Objects folder)")
    s.add_argument("--depth", type=int, default=3, help="levels below --from (1-10, default 3)")
    s.add_argument("--max-nodes", type=int, default=2000, help="stop after this many nodes (default 2000)")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    s.add_argument("--nsu", action="store_true", help="node ids as nsu=URI;... (stable across server restarts)")
    s.add_argument("--json", action="store_true", help="print the nodes as JSON")
    s.add_argument("--policy", choices=["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"],
                   help="security policy (needs --cert and --key; as security.policy in the config)")
    s.add_argument("--mode", choices=["Sign", "SignAndEncrypt"], help="security mode (default SignAndEncrypt)")
    s.add_argument("--cert", help="client certificate file (DER or PEM, URI in subjectAltName)")
    s.add_argument("--key", help="client private key file")
    s.add_argument("--server-cert", help="trusted server certificate file or directory")
    s.add_argument("--username", help="user name (with --password-file)")
    s.add_argument("--password-file", help="file holding the password (never on the command line)")
    s.set_defaults(func=cmd_browse)

    s = sub.add_parser("scan", help="find the Modbus unit ids (slave addresses) that answer, read-only")
    s.add_argument("--tcp", metavar="HOST[:PORT]", help="Modbus TCP host (port 502 by default)")
    s.add_argument("--serial", metavar="PORT", help="serial port, e.g. /dev/ttyUSB0")
    s.add_argument("--baud", type=int, default=9600, help="bit/s (default 9600)")
    s.add_argument("--parity", default="N", choices=["N", "E", "O"], help="N, E or O (default N)")
    s.add_argument("--stopbits", type=int, default=1, choices=[1, 2], help="1 or 2 (default 1)")
    s.add_argument("--bytesize", type=int, default=8, choices=[7, 8], help="7 or 8 (default 8)")
    s.add_argument("--units", default=None, help="unit ids, e.g. 1-247 (default) or 1-10,20")
    s.add_argument("--address", type=int, default=0, help="0-based register read from each unit (default 0)")
    s.add_argument("--function", type=int, default=3, choices=[3, 4],
                   help="3 read holding registers (default), 4 read input registers")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds each unit gets to answer (default 0.3 serial, 1.0 TCP)")
    s.add_argument("--gap-ms", type=float, default=0.0,
                   help="least time between frames in ms (serial: never below 3.5 character times)")
    s.add_argument("--no-ident", action="store_true", help="skip the FC43/FC17 device identification of units found")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("profile", help="device profiles: `profile import FILE.csv` turns a register list into one")
    s.add_argument("action", choices=["import"])
    s.add_argument("file", metavar="FILE.csv", help="register list: name, address, type, order, scale, unit")
    s.add_argument("--out", metavar="FILE.yaml", help="write the profile here (default: print it)")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.add_argument("--name", help="profile name (default: the file name)")
    s.add_argument("--device", metavar="TEXT", help="only the rows whose device column contains TEXT")
    s.add_argument("--description", help="profile description (default: the device column)")
    s.add_argument("--protocol", choices=["modbus_rtu", "modbus_tcp"], help="the transport the device speaks")
    s.add_argument("--encoding", help="file encoding (default: UTF-8 with or without BOM, else GBK)")
    s.add_argument("--delimiter", help="column delimiter: , ; tab (default: detected)")
    s.set_defaults(func=cmd_profile)
    return p


def main(argv: list[str] | None = None) -> int:
    from gateway.config import ConfigError
    from gateway.model import DeviceError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except DeviceError as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `... | head` stopped reading: the reader has what it wanted, as for any filter
        try:
            sys.stdout = open(os.devnull, "w")   # no second EPIPE when Python flushes stdout at exit
        except OSError:
            pass
        return 141   # 128 + SIGPIPE, what a shell reports for a filter killed by the signal
    except (OSError, ValueError) as exc:
        # KeyFileError, BatchError and file problems are ValueError/OSError subclasses with one-line messages.
        _err(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 2


if __name__ == "__main__":
    sys.exit(main())
