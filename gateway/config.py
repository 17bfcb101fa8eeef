"""Configuration: one YAML file validated into typed models.

Shape (see config/example-site.yaml for a commented template)::

    gateway:    {id, enterprise_code, enterprise_name, major_hazard_code, point_separator, state_dir}
    keys:       {private_key}
    store:      {path, commit_interval_ms, max_bytes, retention_days, on_full: drop_oldest|stop_polling,
                 retention_floor: {waive, reason}}   (the 30-day floor is hard unless waived)
    uplink:     {transport: https|mqtt, url, topic, keepalive_s, ca_file, client_cert, client_key, receiver_key,
                 timeout_ms, batch_max_readings, interval_ms}
    devices:    [{name, protocol, ..., tags: [{..., point: {measure, vessel, installation, medium, range, code}}]}]
                (a protocol of drivers.registry: modbus_tcp|modbus_rtu|opcua;
                 its own keys come from its section, drivers/*_section.py)
    interlocks: [{name, inputs: [{tag, condition}], vote: 2oo3, on_fault: trip|hold, actions: [{output, value}]}]
    hazard:     {stale_after_s, units: [gateway.hazard.unit_from_dict shape]}   (GB 18218-2018 units, docs/domain.md)
    control:    {socket, mode, group, max_shelve_minutes}   (operator socket)
    annunciators: [{output, kind: beacon|horn|disabled_indicator, pattern: steady|flash, alarm_hz, fault_hz, groups,
                    priorities}]
    alarm_policy: {gas_on_delay_cap_s, clock_unsync_grace_s, oxygen: {over, under}}   (docs/alarm-presets.md)
    (a Modbus device may carry heartbeat: {address, interval_ms, mode: count|toggle})
    include:    [profile files or directories]   (device profiles, gateway.device_profiles)
    metrics:    {listen: 127.0.0.1:9108, allow_remote}   (Prometheus, gateway.ops.metrics)
    web:        {listen: 127.0.0.1:8080, tls: {cert_file, key_file}, credentials_file, max_connections}
                (the read-only status page, gateway.ops.web)
    (a Modbus device may take its tags from a profile: {profile, select, tag_prefix, overrides})
    Secrets (keys.private_key, uplink.client_key, security.key / password_file) are file paths only;
    check_secrets() refuses missing ones and ones group/others can access.

Every mistake is reported as ``FILE:LINE:COL: key.path: message`` (all of them at
once) through :class:`ConfigError`; unknown keys are errors, so a typo cannot
silently disable an alarm. Relative paths are resolved against the directory of
the config file. The YAML is read with ruamel.yaml, which keeps the line and
column of every key and value.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from drivers.registry import PROTOCOLS
from gateway.safety.alarms import (GAS_DETECTION_BUDGET_S, GAS_ON_DELAY_CAP_S, LimitSpec, TagAlarmConfig, preset_limits,
                            setpoint_warnings)
from gateway.record.clock import DEFAULT_UNSYNC_GRACE_S
from gateway.safety.hidden_danger import DEFAULT_AFTER_MINUTES
from gateway.safety.gas import MG_M3, OEL_PCT, GasPreset, GasPresetError, OxygenLimit, canonical_unit, gas_setpoints
from gateway.yamlload import YamlError, load_yaml
from gateway.i18n import ENGLISH, current_language
from gateway.i18n import gettext as _
from gateway.model import STRICT, Explained, SecretPath

LIMIT_KINDS = ("HH", "H", "L", "LL")
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


@dataclass(frozen=True)
class Problem:
    """One config problem: where (file, 1-based line and column, key path) and what."""

    file: str
    line: int
    col: int
    path: str
    message: str
    warning: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.message, Explained):  # made in drivers/ or a model: shown in the reader's language
            object.__setattr__(self, "message", self.message.localized(_))

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        kind = _("warning: ") if self.warning else ""
        return f"{self.file}:{self.line}:{self.col}: {kind}{where}{self.message}"


class ConfigError(Exception):
    """Raised with every problem of a config file; str() is one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Strict(BaseModel):
    # gateway.model.STRICT: unknown keys, .inf / .nan are errors where they are written; sections are frozen
    model_config = STRICT


# --- sections ---------------------------------------------------------------

class GatewaySection(Strict):
    id: str = Field(pattern=NAME_RE, description="gateway id, unique per regulator")
    enterprise_code: str | None = Field(None, description="regulator's enterprise code (12 digits on most platforms)")
    enterprise_name: str | None = Field(None, description="the enterprise's registered name (basic-data record)")
    major_hazard_code: str | None = Field(None, description=(
        "the major hazard installation's own code within the enterprise (e.g. H01), used where a hazard unit "
        "gives none; never containing the enterprise code (point code: enterprise + major-hazard + tag)"))
    point_separator: str = Field("", pattern=r"^[^A-Za-z0-9_.\-\s]{0,3}$", description=(
        "joins enterprise code, major-hazard code and tag into a point code (gateway.hazard.point_code); "
        "default none, as provinces fix the field lengths"))
    state_dir: str = Field("state", description="directory for the store and status files (relative to the config)")


class KeysSection(Strict):
    private_key: SecretPath = Field(description="path of the Ed25519 private key PEM (mode 0600) made by "
                                                "`hazard-gateway keygen`; a secret: never inline")


#: SAWS order No. 40 art. 13 (docs/domain.md): electronic records are kept at least this many days
RETENTION_FLOOR_DAYS = 30


class RetentionFloorWaiver(Strict):
    """``store.retention_floor``: the 30-day floor is hard unless waived here, with a reason.

    A waiver lets ``check`` accept a max_bytes that cannot hold 30 days (a warning instead of an
    error) and a retention_days below 30, and lets drop_oldest delete records younger than the floor
    at the cap. Every gateway start with a waiver records a ``retention_floor_waived`` event."""

    waive: bool = Field(False, description="true: the 30-day retention floor (SAWS order No. 40) is waived "
                                           "for this gateway; reason is then required")
    reason: str | None = Field(None, description="why the floor is waived (recorded in the signed chain at "
                                                 "every start)")

    @model_validator(mode="after")
    def _reason(self) -> "RetentionFloorWaiver":
        if self.waive and not (self.reason or "").strip():
            raise ValueError(_("waive: true needs a reason: why this gateway need not keep 30 days of records"))
        return self


class StoreSection(Strict):
    path: str = Field("store.sqlite", description="SQLite buffer, relative to state_dir")
    commit_interval_ms: int = Field(500, ge=10, le=60_000,
                                    description="the writer commits at least this often; bounds a power-loss loss")
    busy_timeout_ms: int = Field(2000, ge=100, le=600_000, description=(
        "how long one SQLite statement waits for a lock another process holds (a backup, a reader); the readings "
        "wait in memory meanwhile, and a stall of the writer raises system.STORE, never a restart"))
    max_bytes: int = Field(1 << 30, ge=1 << 20, description="size cap of the buffer database; must hold "
                           "retention_days at the configured poll rates unless retention_floor is waived")
    retention_days: float = Field(30, ge=0, le=3660, description="time floor of local records (SAWS order No. 40: at least "
                                                        "30 days; less only with retention_floor waived)")
    on_full: Literal["drop_oldest", "stop_polling"] = Field(
        "drop_oldest", description="at max_bytes: drop the oldest unsent telemetry older than the retention floor "
        "(gap rows), or delete only acknowledged records past the floor; either way, when that is not enough, "
        "new telemetry is no longer recorded (gap rows, system.STORE alarm) and the safety path polls on")
    retention_floor: RetentionFloorWaiver = Field(
        RetentionFloorWaiver(), description="{waive: true, reason: ...} waives the hard 30-day floor")

    def waiver_event(self) -> dict[str, Any] | None:
        """The event a gateway records at every start (and reload) with the floor waived (C16), else None."""
        if not self.retention_floor.waive:
            return None
        return {"type": "store", "event": "retention_floor_waived", "reason": self.retention_floor.reason,
                "retention_days": self.retention_days, "max_bytes": self.max_bytes, "on_full": self.on_full}


class UplinkSection(Strict):
    transport: Literal["https", "mqtt"] = Field("https", description="https (POST per batch) or mqtt (MQTT 5, QoS 1)")
    url: str = Field(description="https://host/v1/batches (TLS only), or for mqtt mqtts://host:8883 "
                                 "(mqtt:// without TLS only to a loopback broker)")
    topic: str = Field("hazard/{gateway_id}/batches", description="mqtt: topic of the batches ({gateway_id} filled in)")
    keepalive_s: int = Field(30, ge=5, le=3600, description="mqtt: keep-alive interval (MQTT 5 s.3.1.2.10)")
    profile: str = Field("jws", description="platform envelope (gateway.record.envelopes): jws = the compact JWS as is")
    ca_file: str | None = Field(None, description="CA (or self-signed certificate) that the receiver's certificate must chain to")
    client_cert: str | None = Field(None, description="client certificate PEM for mutual TLS (holds the key too "
                                                      "when client_key is not given)")
    client_key: SecretPath | None = Field(None, description="client private key file (mode 0600) for mutual TLS")
    receiver_key: str | None = Field(
        None, description="the receiver's public key: the <kid>.jwk (public Ed25519 JWK) that `hazard-gateway keygen` "
                          "writes next to the receiver's private.pem (`receiver --signing-key`). A batch refused with "
                          "400/413/422 is set aside only with a rejection signed by this key for exactly that batch; "
                          "without it (or without such a rejection) the batch is held and retried, never dropped")
    timeout_ms: int = Field(5000, ge=100, description="one upload attempt's time limit")
    batch_max_readings: int = Field(500, ge=1, le=100_000, description="readings per signed batch at most")
    interval_ms: int = Field(1000, ge=10, description="pause between batches when nothing is pending")

    @field_validator("url")
    @classmethod
    def _url_fits_transport(cls, v: str, info: Any) -> str:
        transport = info.data.get("transport", "https")
        if transport == "https" and not v.startswith("https://"):
            raise ValueError(_("transport https needs an https:// url (TLS only)"))
        if transport == "mqtt":
            from gateway.record.uplink_mqtt import parse_broker_url   # ValueError with the reason
            parse_broker_url(v)
        return v

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        from gateway.record.envelopes import get_profile   # ValueError listing the known names
        get_profile(v)
        return v


class LimitCfg(Strict):
    """One alarm limit with ISA-18.2 / IEC 62682 tuning (a bare number is just the set point)."""

    setpoint: float = Field(description="alarm limit in the tag's unit")
    deadband: float = Field(0.0, ge=0, description="the alarm clears only this far back inside the limit")
    on_delay_s: float = Field(0.0, ge=0, description="the limit must be exceeded this long before the alarm")
    off_delay_s: float = Field(0.0, ge=0, description="the value must be back this long before the alarm clears")
    priority: int | None = Field(None, ge=1, le=4, description="1 (highest) .. 4; default HH/LL 1, H/L 3")
    latching: bool | None = Field(None, description="stays active until reset by an operator")


LimitValue = Union[float, LimitCfg]


class AlarmsCfg(Strict):
    """A tag's alarms: a GB/T 50493-2019 5.5.2 gas preset (gateway.safety.gas; docs/alarm-presets.md) and/or explicit
    limits over it. The preset must fit the tag's unit (check refuses it otherwise, at the ``gas`` value)."""

    gas: Literal["combustible", "combustible_open_path", "toxic", "oxygen"] | None = Field(
        None, description="GB/T 50493-2019 5.5.2 preset: combustible (point detector, tag in %LEL) 25/50 %LEL; "
                          "combustible_open_path (open-path detector, tag in LEL·m) 1/2 LEL·m; toxic 100/200 %OEL "
                          "(or 5/10 %IDLH) converted to the tag's unit (%OEL, %IDLH, mg/m3, ppm); oxygen (tag in "
                          "%VOL) 23.5 over / 19.5 under (levels from alarm_policy.oxygen)")
    oel_mg_m3: float | None = Field(None, gt=0, description=(
        "gas: toxic: the occupational exposure limit in mg/m³ (GBZ 2.1: the MAC, else the PC-TWA); level 1 at "
        "100 %OEL, level 2 at 200 %OEL, converted to the tag's unit"))
    oel: float | None = Field(None, gt=0, description=(
        "old name of oel_mg_m3, read in the tag's unit: accepted only on a mg/m3 tag (or 100 on a %OEL tag); "
        "anywhere else use oel_mg_m3"))
    idlh_mg_m3: float | None = Field(None, gt=0, description=(
        "gas: toxic: the IDLH in mg/m³, for the GB/T 50493-2019 5.5.2 fallback where the measuring range cannot "
        "reach 200 %OEL: level 1 at 5 %IDLH, level 2 at 10 %IDLH"))
    toxic_basis: Literal["oel", "idlh"] | None = Field(None, description=(
        "gas: toxic: set points from the OEL (100/200 %OEL) or the IDLH (5/10 %IDLH); default: the OEL, unless the "
        "tag's measuring range (valid_range, else eng_range, upper end) is below 200 %OEL: then the IDLH"))
    gas_name: str | None = Field(None, description=(
        "gas: toxic on a ppm tag: the gas, for its molar mass (H2S, NH3, Cl2, CO, SO2, HCN, NO2, HCl, HF, COCl2, "
        "PH3, C2H4O, CH3Br, C6H6 or their names); ppm = mg/m³ x 24.04 / M at 20 degC, 101.325 kPa"))
    molar_mass_g_mol: float | None = Field(None, gt=0, description=(
        "gas: toxic on a ppm tag: the gas's molar mass in g/mol (instead of gas_name)"))
    HH: LimitValue | None = None
    H: LimitValue | None = None
    L: LimitValue | None = None
    LL: LimitValue | None = None
    stale_after_s: float | None = Field(None, gt=0, description=(
        "seconds without any reading of the tag before it is stale: a QUALITY alarm 'stale', and an interlock "
        "input on it counts as unknown (a fault vote). Any reading, good or bad, resets the timer (a bad "
        "reading raises its own QUALITY alarm at once), so this catches a hung poll loop, not a silent "
        "device. Default: derived from the device, 3 poll intervals plus 3 timeouts per device sharing its "
        "link; gas tags at most 30 s (the detection budget)"))
    group: str | None = Field(None, description="first-out group (default: every gas detector is in the group 'gas')")

    @model_validator(mode="after")
    def _limits_in_order(self) -> "AlarmsCfg":
        """The explicit limits given must rise LL < L < H < HH (ISA-18.2 / IEC 62682: HH is the more severe high
        limit; an H above its HH would never be the first warning, an L below LL never the first low one)."""
        given = [(k, v if isinstance(v, (int, float)) else v.setpoint)
                 for k, v in (("LL", self.LL), ("L", self.L), ("H", self.H), ("HH", self.HH)) if v is not None]
        for (lo_k, lo), (hi_k, hi) in zip(given, given[1:]):
            if not lo < hi:
                raise ValueError(_("alarm limits out of order: {lo_key} {lo} is not below {hi_key} {hi} (they must "
                                   "rise LL < L < H < HH)").format(lo_key=lo_k, lo=f"{lo:g}", hi_key=hi_k,
                                                                    hi=f"{hi:g}"))
        return self


class ReportCfg(Strict):
    """Report by exception on the record path (the safety path still sees every reading)."""

    deadband: float = Field(0.0, ge=0, description="record a value only when it moved more than this (tag's unit)")
    max_silence_s: float = Field(60.0, gt=0, description="record at least this often even without a change")


class MediumCfg(Strict):
    """The medium a point measures or its vessel holds: name and CAS Registry Number (check digit checked)."""

    name: str = Field(min_length=1, description="the medium's name, e.g. 苯 or benzene")
    cas: str | None = Field(None, description="CAS Registry Number NNNNNNN-NN-N, e.g. 71-43-2 (check digit checked)")

    @field_validator("cas")
    @classmethod
    def _cas(cls, v: str | None) -> str | None:
        from gateway.chain.basic_data import cas_valid   # the CAS check-digit rule (one place)
        if v is not None and not cas_valid(v.strip()):
            raise ValueError(_("CAS number {cas} is not NNNNNNN-NN-N with a correct check digit (the digits weighted "
                               "1, 2, 3 ... from the right, summed, modulo 10)").format(cas=repr(v)))
        return v.strip() if v is not None else v


class PointCfg(Strict):
    """What a tag is to the regulator (a typed monitoring point, 监测点位; docs/domain.md, Regulator platforms): the
    kind of measurement, the vessel or hazard unit it belongs to, the medium, the measuring range and its own
    part of the point code. It goes into the basic-data record (gateway.chain.basic_data) with the tag's unit
    and alarm limits."""

    measure: Literal["level", "temperature", "pressure", "flow", "gas_concentration", "valve_position",
                     "switch_state"] = Field(description=(
        "what the tag measures; its unit must fit (level m/cm/mm/%, temperature degC/K, pressure Pa/kPa/MPa/bar, "
        "flow m3/h, t/h, kg/h ..., gas_concentration %LEL/ppm/mg/m3/%VOL ..., valve_position % or '' (1 = open), "
        "switch_state '' (1 = on))"))
    vessel: str | None = Field(None, description="the tank or vessel of a hazard unit it belongs to (its name: "
                                                 "hazard.units[].tanks[].name, else its level tag)")
    installation: str | None = Field(None, description="the hazard unit (hazard.units[].name) it belongs to, when "
                                                       "no vessel says so (default: the vessel's unit)")
    medium: MediumCfg | None = Field(None, description="{name, cas} of what it measures (default: the vessel's)")
    range: tuple[float, float] | None = Field(None, description=(
        "[lo, hi] measuring range (量程) in the tag's unit; every alarm limit must lie within it"))
    code: str | None = Field(None, pattern=NAME_RE, description=(
        "the tag's part of the point code (default: the tag name); must not contain the enterprise or "
        "major-hazard code"))

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(_("range {range} must be [lo, hi] with lo < hi").format(range=f"[{v[0]:g}, {v[1]:g}]"))
        return v


class TagBase(Strict):
    name: str = Field(pattern=NAME_RE, description="tag name, unique in the whole config (e.g. T101.level)")
    unit: str = Field("", description="engineering unit, e.g. m, degC, kPa, %LEL, ppm, mg/m3")
    writable: bool = Field(False, description="an output the gateway may write (interlock actions, annunciators)")
    alarms: AlarmsCfg | None = Field(None, description="limits (HH/H/L/LL) and gas presets")
    valid_range: tuple[float, float] | None = Field(None, description=(
        "[lo, hi] in engineering units: a reading outside it is BAD \"out of range\" (never a value, so it "
        "never votes 'within limits'; an interlock input counts it as a fault); e.g. [-5, 105] for %LEL. "
        "4-20 mA range maps (raw_range) also refuse the NAMUR NE 43 failure band by themselves"))
    report: ReportCfg | None = None
    point: PointCfg | None = Field(None, description=(
        "the regulator's view of the tag: {measure, vessel, installation, medium: {name, cas}, range, code} "
        "(the basic-data record)"))
    precision: int | None = Field(None, ge=0, le=9, description=(
        "decimal places shown wherever a person reads the value (status, the status page, probe, demo); "
        "display only: stored, uploaded and compared values keep full resolution. Unset: 6 significant digits"))
    description: str | None = None

    @field_validator("valid_range")
    @classmethod
    def _valid_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"valid_range {list(v)} must be two finite numbers [lo, hi] with lo < hi")
        return v


class DeviceBase(Strict):
    name: str = Field(pattern=NAME_RE, description="device name, unique; used in every message about it")
    poll_interval_ms: int = Field(1000, ge=20, le=3_600_000, description="read every tag this often")
    timeout_ms: int = Field(1000, ge=10, le=60_000, description="one request's answer time limit")
    enabled: bool = Field(True, description="false: configured but not polled")


class ProfileDeviceBase(DeviceBase):
    """Fields of a device of a protocol that takes register-map profiles (drivers.registry.Protocol.profiles,
    gateway.device_profiles): a profile and its own tags."""

    profile: str | None = Field(None, description="device profile: a name (config/profiles/NAME.yaml, include:) "
                                                  "or a path; its tags are added to this device's tags")
    select: list[str] | None = Field(None, description="fnmatch patterns over the profile's tag keys "
                                                       "(default: the profile's select)")
    tag_prefix: str | None = Field(None, description="profile tags are named tag_prefix + key "
                                                     "(default: the device name and a dot)")
    overrides: dict[str, dict[str, Any]] | None = Field(
        None, description="per profile tag key, tag keys that replace the profile's (unit, alarms, address ...)")

    @model_validator(mode="after")
    def _needs_tags(self) -> "ProfileDeviceBase":
        if not self.tags:  # type: ignore[attr-defined]
            raise ValueError(_("a device needs tags: or a profile:"))
        return self


def _protocol_models() -> tuple[dict[str, type], dict[str, type]]:
    """The tag model and the device model of every protocol of the registry (drivers.registry.PROTOCOLS): the
    protocol's own keys (its ``tag_fields`` / ``device_fields``) joined with the keys every tag (TagBase) and
    device (DeviceBase, or ProfileDeviceBase for a protocol that takes profiles) has. Keyed by protocol name."""
    by_fields: dict[type, type] = {}
    tags: dict[str, type] = {}
    devices: dict[str, type] = {}
    for name, proto in PROTOCOLS.items():
        tag = by_fields.get(proto.tag_fields)
        if tag is None:
            tag = by_fields[proto.tag_fields] = create_model(proto.tag_model, __base__=(proto.tag_fields, TagBase),
                                                             __module__=__name__)
        if proto.profiles:
            base: type = ProfileDeviceBase
            tags_field: Any = (list[tag], Field(default_factory=list, description="this device's points (profile "
                                                                                   "tags are appended)"))
        else:
            base, tags_field = DeviceBase, (list[tag], ...)
        tags[name] = tag
        devices[name] = create_model(proto.device_model, __base__=(proto.device_fields, base), __module__=__name__,
                                     protocol=(Literal[name], ...), tags=tags_field)  # type: ignore[call-overload]
    return tags, devices


#: protocol name -> its tag model / device model (the JSON Schema names ModbusTag, ModbusTcpDevice, ...)
TAG_MODELS, DEVICE_MODELS = _protocol_models()
DeviceCfg = Annotated[Union[tuple(DEVICE_MODELS.values())], Field(discriminator="protocol")]  # type: ignore[misc]


def profile_tag_model() -> type:
    """The tag model of the protocols whose devices take register-map profiles (gateway.device_profiles)."""
    models = {TAG_MODELS[n] for n, p in PROTOCOLS.items() if p.profiles}
    if len(models) != 1:
        raise RuntimeError(f"profiles need one tag model, the registry gives {len(models)}")
    return models.pop()


class InterlockInputCfg(Strict):
    tag: str = Field(description="an input tag with the limit named by condition")
    condition: Literal["HH", "H", "L", "LL"] = Field(description="the tag's alarm limit that votes to trip")


class ActionCfg(Strict):
    output: str = Field(description="a writable tag")
    value: Union[bool, int, float] = Field(description="the safe-state value written on trip")
    reset_value: Union[bool, int, float, None] = Field(None, description=(
        "value written after an operator reset (e.g. 0: beacon off); default none: the gateway never writes "
        "the normal value, restarting the plant is a local operator action. Not written while another "
        "tripped interlock holds the same output"))


class InterlockCfg(Strict):
    name: str = Field(pattern=NAME_RE)
    inputs: list[InterlockInputCfg] = Field(min_length=1)
    vote: str = Field("1oo1", pattern=r"^\d+oo\d+$", description="MooN voting, e.g. 2oo3 (GB 16808-2025 5.5.1.8)")
    on_fault: Literal["trip", "hold"] = Field("trip", description="a bad or stale input votes to trip (fail "
                                                                  "safe) or holds")
    latch: bool = Field(True, description="stays tripped until reset by an operator")
    actions: list[ActionCfg] = Field(min_length=1)

    @model_validator(mode="after")
    def _vote(self) -> "InterlockCfg":
        m, n = (int(x) for x in self.vote.split("oo"))
        if not 1 <= m <= n:
            raise ValueError(_("vote {vote}: M must be between 1 and N").format(vote=self.vote))
        if n != len(self.inputs):
            raise ValueError(_("vote {vote} needs {n} inputs, {given} given").format(vote=self.vote, n=n,
                                                                                      given=len(self.inputs)))
        return self


class ControlSection(Strict):
    """The operator socket (`hazard-gateway ack|reset|shelve|unshelve|bypass|silence|status`): a local
    unix stream socket; who may act is decided by the socket file's mode and group (docs/design.md, Fail safe)."""

    socket: str | None = Field(None, description="socket path (default: state_dir/control.sock)")
    mode: int = Field(0o660, description="permission bits of the socket file, octal (\"0660\")",
                      json_schema_extra={"type": ["integer", "string"]})
    group: str | None = Field(None, description="group owning the socket file (members may act); null: the daemon's")
    max_shelve_minutes: float = Field(480.0, gt=0, description="longest shelve an operator may ask for")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> int:
        try:
            if isinstance(v, bool):
                raise ValueError
            if isinstance(v, str):
                bits = int(v.strip().removeprefix("0o"), 8)
            elif type(v).__name__ == "OctalInt":  # YAML 1.2 0o660
                bits = int(v)
            elif isinstance(v, int):  # YAML 1.2 reads 0660 as the decimal 660: take its digits as octal
                bits = int(str(v), 8)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(_("mode {mode} is not an octal permission such as \"0660\"").format(mode=repr(v))) from None
        if not 0 <= bits <= 0o777:
            raise ValueError(_("mode {mode} is outside 0000..0777").format(mode=repr(v)))
        return bits


class AnnunciatorCfg(Strict):
    """A beacon or horn driven from the alarm list (GB 16808-2008 4.2: alarm flashes >= 1 Hz, fault >= 0.2 Hz;
    GB 16808 test methods: silence allowed, a new alarm sounds again), or a disabled_indicator: a lamp on
    while any gas point is shelved, suppressed or out of service (GB 16808 屏蔽 indication)."""

    output: str = Field(description="a writable tag (coil or register): 1 = on, 0 = off")
    kind: Literal["beacon", "horn", "disabled_indicator"] = Field(description=(
        "beacon: on while an alarm (or fault) stands; horn: sounds for unacknowledged alarms until silenced; "
        "disabled_indicator: on while any gas point is shelved, suppressed or out of service (屏蔽)"))
    pattern: Literal["steady", "flash"] = "steady"
    alarm_hz: float = Field(1.0, gt=0, le=10, description="flash rate for a process alarm")
    fault_hz: float = Field(0.2, gt=0, le=10, description="flash rate for a fault (quality or output fault)")
    groups: list[str] | None = Field(None, description="follow only alarms of these first-out groups (default: all)")
    priorities: list[Annotated[int, Field(ge=1, le=4)]] | None = Field(None, description="follow only these priorities")
    faults: bool = Field(True, description="also annunciate faults (comm / bad / stale / output fault)")


class OxygenOverCfg(Strict):
    """How the over-oxygen set point (23.5 %VOL, GB/T 50493-2019 5.5.2 item 4) is raised: the standard names
    no level, so the level is the project's choice (docs/alarm-presets.md, Oxygen)."""

    kind: Literal["H", "HH"] = Field("H", description="the limit that carries 23.5 %VOL")
    level: Literal[1, 2] | None = Field(1, description="gas alarm level (2 raises the risk colour and orders first)")
    priority: int = Field(2, ge=1, le=4, description="1 (highest) .. 4")


class OxygenUnderCfg(Strict):
    """How the under-oxygen set point (19.5 %VOL, GB/T 50493-2019 5.5.2 item 4) is raised (the project's
    choice, docs/alarm-presets.md, Oxygen)."""

    kind: Literal["L", "LL"] = Field("L", description="the limit that carries 19.5 %VOL")
    level: Literal[1, 2] | None = Field(2, description="gas alarm level (2 raises the risk colour and orders first)")
    priority: int = Field(1, ge=1, le=4, description="1 (highest) .. 4")


class OxygenPolicyCfg(Strict):
    over: OxygenOverCfg = OxygenOverCfg()
    under: OxygenUnderCfg = OxygenUnderCfg()


class AlarmPolicySection(Strict):
    """Site-wide alarm settings (gateway.safety.alarms, gateway.record.clock; docs/alarm-presets.md)."""

    gas_on_delay_cap_s: float = Field(GAS_ON_DELAY_CAP_S, ge=0, le=GAS_DETECTION_BUDGET_S, description=(
        "the longest on-delay a gas alarm gets, seconds: the gateway's delay adds to the detector's own response "
        "(<= 30 s) and the poll time (docs/domain.md, Response times); check warns above the default 5 s"))
    clock_unsync_grace_s: float = Field(DEFAULT_UNSYNC_GRACE_S, ge=0, description=(
        "the CLOCK alarm (system.CLOCK, 系统时钟未同步) is raised when the kernel reports the clock "
        "unsynchronised for this long (checked about once a minute); never where the state is unknown"))
    oxygen: OxygenPolicyCfg = Field(OxygenPolicyCfg(), description=(
        "which limit kind, level and priority the over-oxygen (23.5 %VOL) and under-oxygen (19.5 %VOL) set points "
        "get (default: over H level 1 priority 2, under L level 2 priority 1)"))


class HazardSection(Strict):
    """GB 18218-2018 major-hazard units (gateway/hazard; docs/domain.md, GB 18218-2018). Each entry of ``units`` has the shape
    that gateway.hazard.unit_from_dict documents (name, people_500m, tanks, vessels, fixed, overrides,
    colour_map, major_hazard_code, alarm_tags); it is checked, with FILE:LINE:COL, in
    _hazard_checks (every tag must exist, with a unit the volume model understands)."""

    stale_after_s: float | None = Field(60.0, gt=0, description=(
        "a level / pressure / temperature older than this counts as unknown (tank at its upper bound)"))
    units: list[dict[str, Any]] = Field(default_factory=list)


class HiddenDangerSection(Strict):
    """Hidden-danger records (隐患; gateway.safety.hidden_danger, docs/domain.md, Hidden dangers): a bypass, shelve
    or out-of-service state of a gas alarm or an interlock input that lasts longer than ``after_minutes`` is
    uploaded as an "opened" record and closed when it ends, for the platform's 隐患排查治理 workflow."""

    after_minutes: float = Field(DEFAULT_AFTER_MINUTES, ge=0, allow_inf_nan=False, description=(
        "minutes a protection may stay bypassed, shelved or out of service before it is a hidden-danger record "
        "(0: at once; default 30: longer than a routine calibration or proof test, well under the 8 h limits)"))


class MetricsSection(Strict):
    """Prometheus metrics over HTTP (gateway.ops.metrics; text exposition format 0.0.4). Loopback only unless
    allow_remote: the endpoint has no authentication."""

    allow_remote: bool = Field(False, description="allow a non-loopback listen address (no authentication!)")
    listen: str = Field("127.0.0.1:9108", description="HOST:PORT to serve /metrics on (default 127.0.0.1:9108)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str, info: Any) -> str:
        host = _listen_host(v, "127.0.0.1:9108")
        if not _is_loopback(host) and not info.data.get("allow_remote", False):
            raise ValueError(_("metrics listen address {host} is not loopback; the endpoint has no "
                               "authentication (set allow_remote: true to expose it anyway)").format(host=host))
        return v


def _listen_host(listen: str, example: str) -> str:
    """The host of a ``HOST:PORT`` / ``[v6]:PORT`` listen address (port 1..65535); ValueError (one line, with
    ``example``) otherwise."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(_("listen {listen} is not HOST:PORT (e.g. {example})").format(listen=repr(listen),
                                                                                        example=example))
    return host


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebTlsSection(Strict):
    """The certificate (PEM, may hold the chain) and its private key (a secret file: chmod 600) the status page
    serves HTTPS with."""

    cert_file: str = Field(description="PEM certificate (chain) of the status page")
    key_file: str = Field(description="PEM private key of the status page (secret file, chmod 600)")


class WebSection(Strict):
    """The local, read-only status page (gateway.ops.web): HTTP on loopback; any other address only over TLS
    with a credentials file (HTTP Basic against ``user:HASH`` lines, gateway.ops.web.auth)."""

    tls: WebTlsSection | None = Field(None, description="serve HTTPS with this certificate and key")
    credentials_file: str | None = Field(
        None, description="file of user:HASH lines (pbkdf2_sha256 or scrypt, gateway.ops.web.auth; secret file, "
                          "chmod 600): HTTP Basic")
    max_connections: int = Field(32, ge=1, le=1024, description="connections served at once; more get 503")
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT of the status page (default 127.0.0.1:8080)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str, info: Any) -> str:
        host = _listen_host(v, "127.0.0.1:8080")
        if not _is_loopback(host) and (info.data.get("tls") is None or not info.data.get("credentials_file")):
            raise ValueError(_("web listen address {host} is not loopback: the status page needs tls: {{cert_file, "
                               "key_file}} and a credentials_file there").format(host=host))
        return v


class Config(Strict):
    """A hazard-gateway configuration file (validated by `hazard-gateway check`)."""

    include: list[str] = Field(default_factory=list, description="device profile files or directories "
                                                                 "(relative to this file) that devices name")
    gateway: GatewaySection
    keys: KeysSection
    store: StoreSection = StoreSection()
    uplink: UplinkSection | None = None
    devices: list[DeviceCfg] = Field(min_length=1)
    interlocks: list[InterlockCfg] = Field(default_factory=list)
    hazard: HazardSection | None = None
    control: ControlSection = ControlSection()
    annunciators: list[AnnunciatorCfg] = Field(default_factory=list)
    alarm_policy: AlarmPolicySection = AlarmPolicySection()
    hidden_danger: HiddenDangerSection = Field(HiddenDangerSection(), description=(
        "when a defeated protection (bypass, shelve, out of service) becomes a hidden-danger record (隐患)"))
    metrics: MetricsSection | None = Field(None, description="optional Prometheus metrics on 127.0.0.1")
    web: WebSection | None = Field(None, description="optional read-only status page on 127.0.0.1")


@dataclass
class LoadedConfig:
    """A validated config and where it came from: path, base dir for relative paths, hash of its bytes."""

    model: Config
    path: Path
    text: str
    warnings: list[Problem]
    extra_files: list[tuple[Path, str]] | None = None   # profile files read, (path, text)
    srcmap: Any = None                                  # gateway.device_profiles.SourceMap of the tree

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def config_hash(self) -> str:
        """SHA-256 hex of the file's bytes: recorded in every batch (config_hash)."""
        h = hashlib.sha256(self.text.encode())
        for path, text in self.extra_files or ():  # profile files: a changed register map changes the hash
            h.update(b"\0" + str(path).encode() + b"\0" + text.encode())
        return h.hexdigest()

    def resolve(self, p: str | None) -> Path | None:
        """A config path made absolute against the config file's directory."""
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.model.gateway.state_dir)  # type: ignore[return-value]

    @property
    def store_path(self) -> Path:
        q = Path(self.model.store.path)
        return q if q.is_absolute() else self.state_dir / q

    def all_tags(self) -> dict[str, tuple[Any, Any]]:
        """tag name -> (device cfg, tag cfg)."""
        return {t.name: (d, t) for d in self.model.devices for t in d.tags}


# --- locating errors ---------------------------------------------------------

def _locate(root: Any, loc: tuple, default: tuple[int, int] = (0, 0)) -> tuple[int, int, str]:
    """Walk a pydantic error location through the ruamel tree: (line, col) 1-based and a key path."""
    node, line, col = root, default[0], default[1]
    parts: list[str] = []
    for key in loc:
        if isinstance(node, CommentedMap) and isinstance(key, str) and key in node:
            ln, cl = node.lc.key(key)
            line, col = ln, cl
            parts.append(key)
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line, col = node.lc.item(key)
            parts.append(f"[{key}]")
            node = node[key]
        # else: a discriminator tag or a model-level location; keep the deepest found
    path = ".".join(parts).replace(".[", "[")
    return line + 1, col + 1, path


def _value_pos(root: Any, loc: tuple) -> tuple[int, int] | None:
    """Position of the value (not the key) at loc, when it is a scalar in a mapping."""
    node = root
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and isinstance(key, str) and key in node:
            if last and not isinstance(node[key], (CommentedMap, CommentedSeq)):
                ln, cl = node.lc.value(key)
                return ln + 1, cl + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            if last and not isinstance(node[key], (CommentedMap, CommentedSeq)):
                ln, cl = node.lc.item(key)
                return ln + 1, cl + 1
            node = node[key]
        else:
            return None
    return None


#: keys that would hold a secret inline; refused with a message saying to use a file (docs/design.md, Secrets)
INLINE_SECRET_KEYS = {"password", "passwd", "pass", "passphrase", "secret", "token", "api_key", "apikey",
                      "private_key_pem", "key_pem", "pin"}


def _message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    typ = err.get("type", "")
    if typ == "extra_forbidden" and err["loc"] and str(err["loc"][-1]).lower() in INLINE_SECRET_KEYS:
        return _("secrets are never inline: put it in a file readable only by the gateway (chmod 600) "
                 "and give the file's path (password_file:, private_key:, client_key:)")
    if typ == "extra_forbidden":
        return _("unknown key (typo?)")
    if typ == "missing":
        return _("missing required key '{key}'").format(key=err["loc"][-1])
    if typ == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return _("protocol must be one of {protocols}").format(
            protocols=ctx.get("expected_tags", ", ".join(PROTOCOLS)))
    if typ == "union_tag_not_found":
        return _("missing required key 'protocol' ({protocols} or {last})").format(
            protocols=", ".join(list(PROTOCOLS)[:-1]), last=list(PROTOCOLS)[-1])
    if typ == "value_error":  # our own validators' sentences, already in the reader's language
        cause = (err.get("ctx") or {}).get("error")
        said = cause.args[0] if isinstance(cause, ValueError) and cause.args else None
        if isinstance(said, Explained):   # a driver's or model's sentence (gateway.model.Explained)
            return said.localized(_)
        return msg.removeprefix("Value error, ")
    lead = _pydantic_lead(typ, err.get("ctx") or {})
    if lead is None or current_language() == ENGLISH:
        return msg   # English: pydantic's own sentence, as it always was
    return _("{lead} ({detail})").format(lead=lead, detail=msg)


def _pydantic_lead(typ: str, ctx: dict) -> str | None:
    """Our leading sentence for the pydantic error kinds people hit most (a wrong type, a number out of range, a
    value not in the allowed set, a wrong length or format), in the reader's language; pydantic's English
    follows it as the detail (_message). None for other kinds (pydantic's sentence alone)."""
    if typ in ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float", "decimal_type"):
        return _("wrong type: a number is needed")
    if typ in ("string_type", "string_unicode"):
        return _("wrong type: text is needed")
    if typ in ("bool_type", "bool_parsing"):
        return _("wrong type: true or false is needed")
    if typ in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return _("wrong type: a mapping (key: value) is needed")
    if typ in ("list_type", "tuple_type", "set_type", "iterable_type"):
        return _("wrong type: a list is needed")
    if typ == "finite_number":
        return _("not a finite number")
    bounds = {"greater_than": ("gt", _("out of range: must be > {limit}")),
              "greater_than_equal": ("ge", _("out of range: must be >= {limit}")),
              "less_than": ("lt", _("out of range: must be < {limit}")),
              "less_than_equal": ("le", _("out of range: must be <= {limit}"))}
    if typ in bounds:
        key, text = bounds[typ]
        limit = ctx.get(key, "?")
        return text.format(limit=f"{limit:g}" if isinstance(limit, float) else limit)
    if typ in ("literal_error", "enum"):
        return _("not one of the allowed values: {expected}").format(expected=ctx.get("expected", "?"))
    if typ == "too_short":
        return _("too few items (at least {n})").format(n=ctx.get("min_length", "?"))
    if typ == "too_long":
        return _("too many items (at most {n})").format(n=ctx.get("max_length", "?"))
    if typ == "string_pattern_mismatch":
        return _("wrong format")
    return None


_PYDANTIC_BRANCHES = {"float", "int", "str", "bool", "list", "dict", "tuple", "none"} | set(PROTOCOLS)  # + tags


def _model_names() -> frozenset[str]:
    """Names of every model of the config's grammar (ours and the protocols' sections), which pydantic writes
    into a location as a union branch."""
    out: set[str] = set()
    todo: list[type] = [Strict, *(c for p in PROTOCOLS.values() for c in (p.device_fields, p.tag_fields))]
    while todo:
        c = todo.pop()
        if c.__name__ not in out:
            out.add(c.__name__)
            todo.extend(c.__subclasses__())
            for f in getattr(c, "model_fields", {}).values():   # nested sections (ModbusAddress, HeartbeatCfg ...)
                todo.extend(t for t in _model_types(f.annotation))
    return frozenset(out)


def _model_types(annotation: Any) -> list[type]:
    """The pydantic model classes an annotation names (through Optional, Union, list, tuple, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for a in getattr(annotation, "__args__", ()) for t in _model_types(a)]


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union branch names (e.g. 'modbus_tcp', 'float', 'LimitCfg') from a location."""
    models = _model_names()
    out = []
    for k in loc:
        if isinstance(k, str) and (k in models or k in _PYDANTIC_BRANCHES
                                   or k.startswith(("function-", "union[", "tagged-union[", "literal["))):
            continue
        out.append(k)
    return tuple(out)


def _dedupe_union_errors(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a Union yields one error per member: keep the most telling.

    A type error of one branch ("should be a valid number") is dropped when another branch got
    further (its location is deeper), and only one error is kept per location."""
    cleaned = [(_clean_loc(e["loc"]), e) for e in errors]
    out: list[dict] = []
    seen: set[tuple] = set()
    for loc, e in cleaned:
        typ = e.get("type", "")
        if typ.endswith(("_type", "_parsing")) and any(o != loc and o[:len(loc)] == loc for o, _ in cleaned):
            continue
        if typ.endswith(("_type", "_parsing")) and any(o == loc and not f.get("type", "").endswith(("_type", "_parsing"))
                                                       for o, f in cleaned):
            continue
        if loc in seen:
            continue
        seen.add(loc)
        out.append(dict(e, loc=loc))
    return out


def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate a config file.

    Returns a LoadedConfig (with warnings, e.g. a gas set point looser than the
    GB/T 50493-2019 5.5.2 ceiling). Raises ConfigError listing every problem
    as FILE:LINE:COL; never another exception for a bad file.
    """
    p = Path(path)
    shown = str(path)
    root, text = read_yaml(p, shown)
    if not isinstance(root, CommentedMap):
        raise ConfigError([Problem(shown, 1, 1, "", _("the top level must be a mapping (gateway:, devices: ...)"))])
    from gateway.device_profiles import expand  # profiles import this module

    ex = expand(root, shown, p)  # device profiles and include: merged into the tree, with their marks
    problems = list(ex.problems)
    try:
        # top-level keys starting with "x-" hold YAML anchors for reuse (<<: *anchor), like compose files
        model = Config.model_validate({k: v for k, v in ex.tree.items() if not str(k).startswith("x-")})
    except ValidationError as exc:
        failed = {f"devices[{i}]" for i in ex.failed_devices}
        for q in validation_problems(exc, ex.smap):
            # a device whose profile failed has no profile tags: do not also say it has none
            if not (q.message == _("a device needs tags: or a profile:") and q.path in failed):
                problems.append(q)
        raise ConfigError(_sorted_problems(problems, shown)) from None
    if problems:
        raise ConfigError(_sorted_problems(problems, shown))
    loaded = LoadedConfig(model=model, path=p.resolve(), text=text, warnings=[], extra_files=ex.files,
                          srcmap=ex.smap)
    problems, warnings = _semantic_checks(loaded, ex.smap, shown)
    if problems:
        raise ConfigError(_sorted_problems(problems, shown))
    loaded.warnings = ex.warnings + warnings
    return loaded


def _sorted_problems(problems: list[Problem], shown: str) -> list[Problem]:
    """The config file's problems first, by position; then each profile file's; duplicates once."""
    out: list[Problem] = []
    for q in sorted(problems, key=lambda q: (q.file != shown, q.file, q.line, q.col)):
        if q not in out:
            out.append(q)
    return out


def read_yaml(p: Path, shown: str) -> tuple[Any, str]:
    """Read and parse one YAML file with ruamel round-trip marks -> (root node, text), through the
    bounded loader (gateway.yamlload: size, node budget with aliases expanded, nesting depth,
    self-referencing aliases, core tags only).

    Raises ConfigError (FILE:LINE:COL, one problem) for a missing or unreadable file, text that is
    not UTF-8, a syntax error or a file past a limit; never another exception."""
    try:
        return load_yaml(p, shown)
    except YamlError as exc:
        raise ConfigError([Problem(exc.file, max(exc.line, 1), max(exc.col, 1), "", exc.message)]) from None


def validation_problems(exc: ValidationError, smap: Any) -> list[Problem]:
    """pydantic errors -> Problems placed through a SourceMap (gateway.device_profiles): the key for
    missing / unknown keys, the value for a bad scalar, in whichever file the key came from."""
    out = []
    for err in _dedupe_union_errors(exc.errors(include_url=False)):
        loc = err["loc"]
        if err.get("type") == "union_tag_invalid":
            loc = (*loc, "protocol")
        out.append(smap.problem(loc, _message(err), at_value=err.get("type") not in ("missing", "extra_forbidden")))
    return out


def _semantic_checks(cfg: LoadedConfig, root: Any, shown: str) -> tuple[list[Problem], list[Problem]]:
    """Cross-references pydantic cannot see: unique names, interlock inputs and outputs, serial settings."""
    m = cfg.model
    problems: list[Problem] = []
    warnings: list[Problem] = []

    def at(loc: tuple, msg: str, warning: bool = False, at_value: bool = False) -> None:
        if hasattr(root, "problem"):  # a SourceMap: the key may sit in a profile file
            (warnings if warning else problems).append(root.problem(loc, msg, at_value=at_value, warning=warning))
            return
        line, col, kpath = _locate(root, loc)
        if at_value:
            line, col = _value_pos(root, loc) or (line, col)
        (warnings if warning else problems).append(Problem(shown, line, col, kpath, msg, warning))

    seen_dev: dict[str, int] = {}
    seen_tag: dict[str, tuple[int, int]] = {}
    for di, d in enumerate(m.devices):
        if d.name in seen_dev:
            at(("devices", di, "name"), _("device name '{name}' also used by devices[{index}]").format(
                name=d.name, index=seen_dev[d.name]))
        seen_dev.setdefault(d.name, di)
        for ti, t in enumerate(d.tags):
            if t.name in seen_tag:
                a, b = seen_tag[t.name]
                at(("devices", di, "tags", ti, "name"), _("tag name '{name}' also used at devices[{device}].tags[{tag}]")
                   .format(name=t.name, device=a, tag=b))
            seen_tag.setdefault(t.name, (di, ti))
            if t.alarms is not None:
                loc = ("devices", di, "tags", ti, "alarms")
                try:
                    preset = tag_gas_preset(t, m.alarm_policy)
                except GasPresetError as e:  # the preset does not fit the tag: refused where the key is
                    key = e.key if getattr(t.alarms, e.key, None) is not None else ("gas" if t.alarms.gas else None)
                    at((*loc, key) if key else loc, str(e), at_value=key is not None)
                else:
                    for note in preset.notes if preset is not None else ():
                        at(loc, note, warning=True)
                    for w in _preset_warnings(t, m.alarm_policy):
                        at(loc, w, warning=True)
                if t.alarms.gas is not None and d.enabled:
                    for w in _gas_freshness_warnings(d, t.alarms):
                        at(loc, w, warning=True)
    by_protocol: dict[str, list[tuple[int, Any]]] = {}
    for di, d in enumerate(m.devices):
        by_protocol.setdefault(d.protocol, []).append((di, d))
    for name, devs in by_protocol.items():   # checks across one protocol's devices (drivers.registry)
        PROTOCOLS[name].check(devs, lambda loc, msg: at(loc, msg))
    waived = m.store.retention_floor.waive   # C16: the 30-day floor is hard unless waived with a reason
    retention = _retention_warning(m)
    if retention:
        at(("store", "max_bytes"), retention if waived else f"{retention}; {_waive_hint()}", warning=waived)
    if m.store.retention_days < RETENTION_FLOOR_DAYS and not waived:
        at(("store", "retention_days"), _("retention_days {days} is below the {floor}-day floor of SAWS order No. 40 "
                                          "(docs/domain.md): set at least {floor}, {hint}").format(
            days=f"{m.store.retention_days:g}", floor=RETENTION_FLOOR_DAYS, hint=_waive_hint()), at_value=True)
    if m.alarm_policy.gas_on_delay_cap_s > GAS_ON_DELAY_CAP_S:
        at(("alarm_policy", "gas_on_delay_cap_s"), _(
            "gas on-delays up to {delay} s: longer than the default {cap} s cap; the delay adds to the detector's "
            "own response (<= 30 s) and the poll time (docs/domain.md, Response times)").format(
            delay=f"{m.alarm_policy.gas_on_delay_cap_s:g}", cap=f"{GAS_ON_DELAY_CAP_S:g}"), warning=True)
    tags = cfg.all_tags()
    for ii, il in enumerate(m.interlocks):
        for ni, inp in enumerate(il.inputs):
            if inp.tag not in tags:
                at(("interlocks", ii, "inputs", ni, "tag"), _("unknown tag '{tag}'").format(tag=inp.tag))
                continue
            t_in = tags[inp.tag][1]
            kinds = _limit_kinds(t_in, m.alarm_policy) if t_in.alarms is not None else set()
            if kinds is not None and inp.condition not in kinds:
                at(("interlocks", ii, "inputs", ni, "condition"),
                   _("tag '{tag}' has no {condition} limit (set it under the tag's alarms:)").format(
                       tag=inp.tag, condition=inp.condition))
        for ai, act in enumerate(il.actions):
            if act.output not in tags:
                at(("interlocks", ii, "actions", ai, "output"), _("unknown tag '{tag}'").format(tag=act.output))
            elif not tags[act.output][1].writable:
                at(("interlocks", ii, "actions", ai, "output"),
                   _("tag '{tag}' is not writable (writable: true)").format(tag=act.output))
    _shared_output_checks(m, at)
    if m.hidden_danger.after_minutes >= m.control.max_shelve_minutes:   # gateway.safety.hidden_danger
        at(("hidden_danger", "after_minutes"), _(
            "hidden_danger.after_minutes {after} is not below control.max_shelve_minutes {shelve}: a shelved gas alarm "
            "never becomes a hidden-danger record (隐患)").format(
            after=f"{m.hidden_danger.after_minutes:g}", shelve=f"{m.control.max_shelve_minutes:g}"),
           warning=True, at_value=True)
    _safety_io_checks(cfg, at)
    _hazard_checks(cfg, at)
    _point_checks(cfg, at)
    return problems, warnings


#: estimated bytes one stored reading takes in the buffer (row + indexes; measured ~87 B for a
#: float with a 10-character tag name in gateway.record.store, rounded up)
BYTES_PER_READING = 100


def _waive_hint() -> str:
    """How a refused retention setting can be accepted anyway (C16), in the reader's language."""
    return _("or waive the floor where it does not apply: store.retention_floor: {example}").format(
        example='{waive: true, reason: "..."}')


def _retention_warning(m: Config) -> str | None:
    """C16: max_bytes must hold retention_days of readings at the configured tag count and poll rates
    (worst case: every poll stored; report-by-exception can only lower it). None when it fits."""
    per_s = sum(len(d.tags) * 1000.0 / d.poll_interval_ms for d in m.devices if d.enabled)
    need = per_s * m.store.retention_days * 86400 * BYTES_PER_READING
    if need <= m.store.max_bytes:
        return None
    days = m.store.max_bytes / (per_s * 86400 * BYTES_PER_READING)
    return _("max_bytes {max_bytes} holds about {days} days at {rate} readings/s (~{size} B each), less than "
             "retention_days {retention}; raise max_bytes to at least {need} or poll less often").format(
        max_bytes=m.store.max_bytes, days=f"{days:.1f}", rate=f"{per_s:g}", size=BYTES_PER_READING,
        retention=f"{m.store.retention_days:g}", need=math.ceil(need))


def limit_spec(kind: str, v: LimitValue, base: LimitSpec | None) -> LimitSpec:
    """A configured limit over a preset default (gateway.safety.alarms.gas_preset): the config's fields win, the
    preset fills the rest; without a preset HH/LL get priority 1, H/L priority 3."""
    if isinstance(v, LimitCfg):
        fields: dict[str, Any] = {"setpoint": v.setpoint, "deadband": v.deadband, "on_delay_s": v.on_delay_s,
                                  "off_delay_s": v.off_delay_s}
        if v.priority is not None:
            fields["priority"] = v.priority
        if v.latching is not None:
            fields["latching"] = v.latching
    else:
        fields = {"setpoint": float(v)}
    if base is not None:
        merged = {"priority": base.priority, "latching": base.latching, "level": base.level,
                  "deadband": base.deadband, "on_delay_s": base.on_delay_s}
        merged.update(fields)
        return LimitSpec(kind, **merged)
    return LimitSpec(kind, priority={"HH": 1, "LL": 1, "H": 3, "L": 3}.get(kind, 3), **fields)


def tag_range_hi(t: Any) -> float | None:
    """The upper end of a tag's measuring range in its unit: ``valid_range`` (what the gateway accepts as a
    measurement), else ``eng_range`` (a 4-20 mA map); None when neither is configured."""
    if t.valid_range is not None:
        return float(t.valid_range[1])
    eng = getattr(t, "eng_range", None)
    return float(max(eng)) if eng is not None else None


_TOXIC_KEYS = ("oel", "oel_mg_m3", "idlh_mg_m3", "toxic_basis", "gas_name", "molar_mass_g_mol")


def _legacy_oel(a: AlarmsCfg, unit: str | None, raw_unit: str) -> float | None:
    """The OEL in mg/m³ from the old ``oel:`` (read in the tag's unit), where that reading and the new one
    agree: a mg/m3 tag (the OEL as it is), or 100 on a %OEL tag (the OEL itself, not used). Anywhere else
    it is refused (GasPresetError at ``oel``): on a ppm tag ``oel: 10`` for H2S's 10 mg/m³ put level 1 at
    about 142 %OEL (docs/domain.md, Units)."""
    if a.oel is None:
        return a.oel_mg_m3
    if a.oel_mg_m3 is not None:
        raise GasPresetError("oel", _("give the OEL once, as oel_mg_m3 (oel is its old name)"))
    if unit == MG_M3:
        return a.oel
    if unit == OEL_PCT:
        if a.oel == 100:
            return None
        raise GasPresetError("oel", _("oel {oel} on a %OEL tag would put level 1 at {oel} %OEL; the preset is "
                                      "100 / 200 %OEL: remove oel, or give the OEL in mg/m³ as oel_mg_m3").format(
            oel=f"{a.oel:g}"))
    where = _("a tag in '{unit}'").format(unit=raw_unit) if raw_unit.strip() else _("a tag without a unit")
    extra = _(" with gas_name: or molar_mass_g_mol: for the ppm conversion") if canonical_unit(raw_unit) == "ppm" \
        else ""
    raise GasPresetError("oel", _("oel is read in the tag's unit, which is ambiguous on {where}: give the OEL in "
                                  "mg/m³ (GBZ 2.1) as oel_mg_m3{extra}").format(where=where, extra=extra))


def tag_gas_preset(t: Any, policy: AlarmPolicySection | None = None) -> GasPreset | None:
    """The GB/T 50493-2019 5.5.2 preset of a tag (gateway.safety.gas.gas_setpoints, in the tag's unit), or None: no
    ``gas:``, or a toxic gas with neither an OEL / IDLH nor a %OEL / %IDLH unit but explicit H/HH (those
    limits alone then apply). policy: the config's alarm_policy (the oxygen mapping).

    Raises GasPresetError (one line; ``key`` the alarms key it is about) when the preset does not fit: the
    unit (docs/domain.md, Units), a toxic gas without an OEL, a ppm tag without the molar mass, the old
    ``oel:`` where its meaning is ambiguous, or substance keys on a tag that is not toxic."""
    a: AlarmsCfg | None = t.alarms
    if a is None:
        return None
    if a.gas != "toxic":
        stray = next((k for k in _TOXIC_KEYS if getattr(a, k) is not None), None)
        if stray is not None:
            raise GasPresetError(stray, _("{key} is only for gas: toxic").format(key=stray))
        if a.gas is None:
            return None
    policy = policy or AlarmPolicySection()
    raw = t.unit or ""
    unit = canonical_unit(raw)
    kw: dict[str, Any] = {}
    if a.gas == "toxic":
        oel = _legacy_oel(a, unit, raw)
        if oel is None and a.idlh_mg_m3 is None and unit not in (OEL_PCT, "%IDLH"):
            if a.H is not None or a.HH is not None:
                return None
            raise GasPresetError("gas", _("gas: toxic needs oel_mg_m3 (the OEL in mg/m³: MAC, else PC-TWA), or a "
                                          "tag in %OEL, or explicit H/HH set points"))
        kw = dict(oel_mg_m3=oel, idlh_mg_m3=a.idlh_mg_m3, toxic_basis=a.toxic_basis, gas_name=a.gas_name,
                  molar_mass_g_mol=a.molar_mass_g_mol, range_hi=tag_range_hi(t))
    o = policy.oxygen
    return gas_setpoints(a.gas, raw, oxygen_over=OxygenLimit(o.over.kind, o.over.level, o.over.priority),
                         oxygen_under=OxygenLimit(o.under.kind, o.under.level, o.under.priority), **kw)


def tag_alarm_config(t: Any, stale_after_s: float | None = None,
                     policy: AlarmPolicySection | None = None) -> TagAlarmConfig:
    """The gateway.safety.alarms.TagAlarmConfig of one tag's ``alarms:``: its GB/T 50493-2019 5.5.2 preset in the tag's
    unit (tag_gas_preset), then the explicit limits over it (limit_spec); ``ceilings`` are the preset's set
    points, which the configured limits must not be looser than. t: the tag's config (TagBase).
    The one translation used by the running gateway (gateway.runtime.gateway.alarm_configs) and by `check`
    (_limit_kinds, _preset_warnings), so what check accepts is what runs. Raises GasPresetError where
    check refuses the tag."""
    a: AlarmsCfg = t.alarms
    preset = tag_gas_preset(t, policy)
    base = {s.kind: s for s in preset_limits(preset)} if preset is not None else {}
    limits = dict(base)
    for kind in LIMIT_KINDS:
        v = getattr(a, kind)
        if v is not None:
            limits[kind] = limit_spec(kind, v, base.get(kind))
    return TagAlarmConfig(tag=t.name, limits=list(limits.values()), gas=a.gas, stale_after_s=stale_after_s,
                          group=a.group or ("gas" if a.gas else None),
                          ceilings={x.kind: x.setpoint for x in preset.limits} if preset is not None else None)


def _limit_kinds(t: Any, policy: AlarmPolicySection | None = None) -> set[str] | None:
    """The limit kinds the running alarm engine will have for tag ``t`` (preset and explicit); None when check
    refuses the tag's preset (that problem is reported at the tag, and is the one to fix first)."""
    try:
        return {lim.kind for lim in tag_alarm_config(t, policy=policy).limits}
    except GasPresetError:
        return None


def _preset_warnings(t: Any, policy: AlarmPolicySection) -> list[str]:
    """gateway.safety.alarms.setpoint_warnings of the tag's alarms as configured (GB/T 50493-2019 5.5.2 ceilings in the
    tag's unit, the alarm_policy.gas_on_delay_cap_s cap, latching and level ordering of gas alarms), without
    the tag prefix (the warning is placed at the tag's ``alarms`` key)."""
    cfg = tag_alarm_config(t, policy=policy)
    return [w.removeprefix(f"{t.name}: ") for w in setpoint_warnings(cfg, policy.gas_on_delay_cap_s)]


def _shared_output_checks(m: Config, at: Any) -> None:
    """An output driven by several interlocks must have one safe value and one reset value: with two, the
    interlock tripped last (or reset last) would silently decide the output's state (OutputManager: the
    latest command wins). Reported at the later action's ``value`` / ``reset_value``."""
    first: dict[str, tuple[int, int, Any]] = {}   # output -> (interlock index, action index, action)
    for ii, il in enumerate(m.interlocks):
        for ai, act in enumerate(il.actions):
            prev = first.setdefault(act.output, (ii, ai, act))
            if prev[0] == ii:
                continue
            pi, pa, p = prev
            where = f"interlocks[{pi}].actions[{pa}] ({m.interlocks[pi].name})"
            if p.value != act.value:  # (0 == false: a coil written 0 or false is the same state)
                at(("interlocks", ii, "actions", ai, "value"), _(
                    "output '{output}' gets safe value {value} here but {other} from {where}: one output, one safe "
                    "state").format(output=act.output, value=repr(act.value), other=repr(p.value), where=where))
            if p.reset_value != act.reset_value:
                at(("interlocks", ii, "actions", ai, "reset_value" if act.reset_value is not None else "output"), _(
                    "output '{output}' gets reset_value {value} here but {other} from {where}: one output, one "
                    "reset value").format(output=act.output, value=repr(act.reset_value), other=repr(p.reset_value),
                                          where=where))


def _gas_freshness_warnings(d: Any, a: AlarmsCfg) -> list[str]:
    """A gas tag must be detected within GAS_DETECTION_BUDGET_S (30 s, the detector response budget of the
    commissioning rules; docs/domain.md, Response times): warn when its device's poll interval + timeout
    alone exceed it, or when stale_after_s is set above it (gateway.runtime.gateway.alarm_configs caps the derived
    stale time of gas tags at it)."""
    out = []
    cycle = (d.poll_interval_ms + d.timeout_ms) / 1000
    if cycle > GAS_DETECTION_BUDGET_S:
        out.append(_("gas detector polled every {interval} s with a {timeout} s timeout: a reading can be older "
                     "than the {budget} s detection budget").format(
            interval=f"{d.poll_interval_ms / 1000:g}", timeout=f"{d.timeout_ms / 1000:g}",
            budget=f"{GAS_DETECTION_BUDGET_S:g}"))
    if a.stale_after_s is not None and a.stale_after_s > GAS_DETECTION_BUDGET_S:
        out.append(_("stale_after_s {stale} s is longer than the {budget} s detection budget of a gas detector")
                   .format(stale=f"{a.stale_after_s:g}", budget=f"{GAS_DETECTION_BUDGET_S:g}"))
    return out


def _safety_io_checks(cfg: LoadedConfig, at: Any) -> None:
    """Annunciator outputs (known, writable, one writer per output; GB 16808-2008 4.2 flash rates) and
    heartbeats (every PLC that carries an interlock output should have one; docs/design.md, Fail safe)."""
    import grp

    m = cfg.model
    tags = cfg.all_tags()
    il_outputs = {a.output for il in m.interlocks for a in il.actions}
    seen: dict[str, int] = {}
    for ai, an in enumerate(m.annunciators):
        loc = ("annunciators", ai, "output")
        if an.output not in tags:
            at(loc, _("unknown tag '{tag}'").format(tag=an.output))
        elif not tags[an.output][1].writable:
            at(loc, _("tag '{tag}' is not writable (writable: true)").format(tag=an.output))
        elif an.output in il_outputs:
            at(loc, _("tag '{tag}' is also an interlock action output (one writer per output)").format(tag=an.output))
        elif an.output in seen:
            at(loc, _("tag '{tag}' is also driven by annunciators[{index}]").format(tag=an.output,
                                                                                  index=seen[an.output]))
        seen.setdefault(an.output, ai)
        if an.pattern == "flash" and an.alarm_hz < 1.0 and an.kind != "disabled_indicator":
            at(("annunciators", ai, "alarm_hz"), _("alarm flashing at {hz} Hz is slower than the "
                                                   "GB 16808-2008 4.2 minimum of 1 Hz").format(hz=f"{an.alarm_hz:g}"),
               warning=True)
        if an.pattern == "flash" and an.faults and an.fault_hz < 0.2:
            at(("annunciators", ai, "fault_hz"), _("fault flashing at {hz} Hz is slower than the "
                                                   "GB 16808-2008 4.2 minimum of 0.2 Hz").format(hz=f"{an.fault_hz:g}"),
               warning=True)
    for di, d in enumerate(m.devices):
        carried = [t.name for t in d.tags if t.name in il_outputs]
        if carried and d.enabled and getattr(d, "heartbeat", None) is None:
            extra = "" if hasattr(d, "heartbeat") else _(" (heartbeats are available on Modbus devices)")
            at(("devices", di, "name"), _("device '{name}' carries interlock output {outputs} but has no heartbeat: "
                                          "it cannot trip by itself when the gateway stops{extra}").format(
                name=d.name, outputs=", ".join(carried), extra=extra), warning=True)
    if m.control.group is not None:
        try:
            grp.getgrnam(m.control.group)
        except KeyError:
            at(("control", "group"), _("group '{group}' does not exist on this machine").format(group=m.control.group),
               warning=True)


def _where_loc(where: str) -> tuple:
    """'hazard.units[0].tanks[1].geometry' -> ('hazard', 'units', 0, 'tanks', 1, 'geometry') for _locate."""
    import re
    return tuple(int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", where))


@dataclass(frozen=True)
class PointPlace:
    """Where a tag sits for the regulator: its hazard unit (installation) and vessel (tank or vessel name), or
    None; the major-hazard code and tag code its point code is built from (gateway.chain.basic_data.point_code)."""

    installation: str | None
    vessel: str | None
    major_hazard_code: str | None
    tag_code: str


def hazard_vessels(cfg: "LoadedConfig") -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """From the hazard: section, (vessel name -> its unit, tag -> (first unit it belongs to, its vessel or None)).

    A tank is named by ``name``, else its (first) level tag; a vessel by ``name``, else its pressure tag (as
    gateway.hazard.engine names them). A unit's tags are its tanks' and vessels' level / pressure / temperature
    tags and its ``alarm_tags`` (gateway.hazard.HazardEngine.unit_tags); units that do not parse are skipped
    (``check`` reports them)."""
    from gateway.hazard import unit_from_dict

    m = cfg.model
    vessels: dict[str, str] = {}
    home: dict[str, tuple[str, str | None]] = {}
    for ui, d in enumerate(m.hazard.units if m.hazard is not None else []):
        try:
            spec = unit_from_dict(d, f"hazard.units[{ui}]", cfg.base_dir)
        except (ValueError, TypeError, OSError):   # reported by check; its vessels' names still count (no noise)
            if isinstance(d, dict):
                for group, key in (("tanks", "tag_level"), ("vessels", "tag_pressure")):
                    for item in d.get(group) or []:
                        name = item.get("name") or item.get(key) if isinstance(item, dict) else None
                        name = name[0] if isinstance(name, list) and name else name
                        if isinstance(name, str):
                            vessels.setdefault(name, str(d.get("name")))
            continue
        items = [(t.name or t.level_tags[0], [*t.level_tags, *([t.tag_temperature] if t.tag_temperature else [])])
                 for t in spec.tanks]
        items += [(v.name or v.tag_pressure, [v.tag_pressure, *([v.tag_temperature] if v.tag_temperature else [])])
                  for v in spec.vessels]
        for name, tags in items:
            vessels.setdefault(str(name), spec.name)
            for tag in tags:
                home.setdefault(tag, (spec.name, str(name)))
        for tag in spec.alarm_tags:
            home.setdefault(tag, (spec.name, None))
    return vessels, home


def point_places(cfg: "LoadedConfig") -> dict[str, PointPlace]:
    """PointPlace of every tag: the vessel is the tag's ``point.vessel``, else the tank or vessel whose tag it is;
    the installation is ``point.installation``, else the vessel's unit, else the first unit the tag belongs to
    (hazard_vessels); the major-hazard code is that unit's ``major_hazard_code``, else
    ``gateway.major_hazard_code``; the tag code is ``point.code``, else the tag name. The one mapping behind the
    point codes (gateway.runtime.build.point_codes) and the basic-data record (gateway.runtime.basic_data)."""
    m = cfg.model
    vessels, home = hazard_vessels(cfg)
    unit_codes = {str(d.get("name")): d.get("major_hazard_code") for d in (m.hazard.units if m.hazard else [])
                  if isinstance(d, dict)}
    out = {}
    for tag, (_dev, t) in cfg.all_tags().items():
        p = t.point
        unit, vessel = home.get(tag, (None, None))
        if p is not None and p.vessel:
            vessel, unit = p.vessel, vessels.get(p.vessel, unit)
        if p is not None and p.installation:
            unit = p.installation
        mh = unit_codes.get(unit) if unit is not None else None
        out[tag] = PointPlace(installation=unit, vessel=vessel,
                              major_hazard_code=str(mh) if mh else m.gateway.major_hazard_code,
                              tag_code=(p.code if p is not None and p.code else tag))
    return out


def point_unit(measure: str, unit: str) -> str | None:
    """The canonical spelling (gateway.chain.basic_data.MEASURE_UNITS) of a tag's ``unit`` for ``measure``, or
    None when the unit does not fit: a gas concentration through gateway.safety.gas.canonical_unit ("% LEL",
    "lel%" -> "%LEL"), a temperature from degC / °C / ℃ / C / K, m³ as m3; anything else as written."""
    from gateway.chain.basic_data import MEASURE_UNITS
    from gateway.hazard.engine import TEMP_UNITS   # the temperature spellings the hazard engine reads

    u = (unit or "").strip()
    if measure == "gas_concentration":
        u = canonical_unit(u) or ""
        return u or None
    if measure == "temperature":
        return None if not u or u not in TEMP_UNITS else ("K" if u == "K" else "degC")
    u = u.replace("³", "3")
    return u if u in MEASURE_UNITS[measure] else None


def _point_checks(cfg: LoadedConfig, at: Any) -> None:
    """Typed points (``point:`` on a tag; docs/domain.md, Regulator platforms): the unit fits the measure
    (point_unit), every alarm limit (explicit or from a gas preset) lies within ``range``, the vessel is a tank or
    vessel a hazard unit declares and the installation a hazard unit, both agreeing, and the tag code part of the
    point code contains neither the enterprise code nor the major-hazard code (gateway.chain.basic_data.code_clash;
    checked for every tag that gets a point code)."""
    from gateway.chain.basic_data import MEASURE_UNITS, code_clash

    m = cfg.model
    vessels, home = hazard_vessels(cfg)
    units = {str(d.get("name")) for d in (m.hazard.units if m.hazard else []) if isinstance(d, dict)}
    places = point_places(cfg)
    seen: dict[str, str] = {}   # a point names its vessel: tank and vessel names are unique across the units
    for ui, u in enumerate(m.hazard.units if m.hazard else []):
        for group, tag_key in (("tanks", "tag_level"), ("vessels", "tag_pressure")):
            for ii, item in enumerate((u.get(group) or []) if isinstance(u, dict) else []):
                if not isinstance(item, dict):
                    continue
                name = item.get("name") or item.get(tag_key)
                name = name[0] if isinstance(name, list) and name else name
                if not isinstance(name, str):
                    continue
                where = f"hazard.units[{ui}].{group}[{ii}]"
                if name in seen:
                    at(("hazard", "units", ui, group, ii, "name" if "name" in item else tag_key),
                       _("vessel name '{name}' also used by {other}").format(name=name, other=seen[name]))
                seen.setdefault(name, where)
    for di, d in enumerate(m.devices):
        for ti, t in enumerate(d.tags):
            base = ("devices", di, "tags", ti)
            p = t.point
            place = places.get(t.name)
            if m.gateway.enterprise_code and place is not None and place.major_hazard_code:
                clash = code_clash(m.gateway.enterprise_code, place.major_hazard_code, place.tag_code)
                if clash is not None and code_clash(m.gateway.enterprise_code, place.major_hazard_code) is None:
                    at((*base, "point", "code") if p is not None and p.code else (*base, "name"), clash,
                       at_value=True)
            if p is None:
                continue
            if point_unit(p.measure, t.unit) is None:
                allowed = ", ".join(repr(u) for u in sorted(MEASURE_UNITS[p.measure]))
                at((*base, "unit") if t.unit else (*base, "point", "measure"),
                   _("unit '{unit}' does not fit measure {measure}: use one of {allowed}").format(
                       unit=t.unit, measure=p.measure, allowed=allowed), at_value=True)
            if p.vessel is not None and p.vessel not in vessels:
                at((*base, "point", "vessel"), _("vessel '{vessel}' is declared by no hazard unit (hazard.units[]."
                                                 "tanks or vessels, by name or level / pressure tag)").format(
                    vessel=p.vessel), at_value=True)
            elif p.vessel is not None and home.get(t.name, (None, None))[1] not in (None, p.vessel):
                at((*base, "point", "vessel"), _("tag '{tag}' is an instrument of vessel '{owner}' in the hazard "
                                                 "units, not of '{vessel}'").format(
                    tag=t.name, owner=home[t.name][1], vessel=p.vessel), at_value=True)
            if p.installation is not None:
                if p.installation not in units:
                    at((*base, "point", "installation"), _("installation '{unit}' is not a hazard unit "
                                                           "(hazard.units[].name)").format(unit=p.installation),
                       at_value=True)
                elif p.vessel in vessels and vessels[p.vessel] != p.installation:
                    at((*base, "point", "installation"), _("vessel '{vessel}' belongs to hazard unit '{owner}', not "
                                                           "'{unit}'").format(vessel=p.vessel,
                                                                              owner=vessels[p.vessel],
                                                                              unit=p.installation), at_value=True)
            if p.range is not None and t.alarms is not None:
                try:
                    limits = tag_alarm_config(t, policy=m.alarm_policy).limits
                except GasPresetError:
                    continue   # reported at the tag's alarms
                lo, hi = p.range
                for lim in limits:
                    if lo <= lim.setpoint <= hi:
                        continue
                    explicit = getattr(t.alarms, lim.kind, None) is not None
                    at((*base, "alarms", lim.kind if explicit else "gas"),
                       _("alarm limit {kind} {setpoint} is outside the point's range [{lo}, {hi}]").format(
                           kind=lim.kind, setpoint=f"{lim.setpoint:g}", lo=f"{lo:g}", hi=f"{hi:g}"),
                       at_value=explicit and not isinstance(getattr(t.alarms, lim.kind), LimitCfg))


def _hazard_checks(cfg: LoadedConfig, at: Any) -> None:
    """The hazard: section (docs/domain.md, GB 18218-2018): each unit through gateway.hazard.unit_from_dict and HazardEngine
    (their one-line errors placed at the key they name), unique unit names, tags that exist with a unit
    the volume model takes (level m/cm/mm/%, temperature degC/K, pressure Pa/kPa/MPa/bar), and
    enterprise / major-hazard codes that make valid point codes (gateway.chain.basic_data.point_code: each part
    letters, digits, '_', '.', '-', and a major-hazard code that neither contains the enterprise code nor
    occurs in it)."""
    from gateway.chain.basic_data import code_clash, code_part
    from gateway.hazard import HazardEngine, default_table, unit_from_dict
    from gateway.hazard.engine import resolve_substance
    from gateway.hazard.engine import PRESSURE_KPA, TEMP_UNITS
    from gateway.hazard.volume import LEVEL_UNITS

    m = cfg.model
    g = m.gateway

    def code_ok(loc: tuple, what: str, value: str) -> None:
        try:
            code_part(what, value, g.point_separator)
        except ValueError as e:
            at(loc, e.args[0], at_value=True)
            return
        if g.enterprise_code is not None and what != "enterprise code":   # the parts never contain each other
            clash = code_clash(g.enterprise_code, value)
            if clash is not None:
                at(loc, clash, at_value=True)

    if g.enterprise_code is not None:
        code_ok(("gateway", "enterprise_code"), "enterprise code", g.enterprise_code)
    if g.major_hazard_code is not None:
        code_ok(("gateway", "major_hazard_code"), "major-hazard code", g.major_hazard_code)
    if m.hazard is None:
        return
    tags = cfg.all_tags()
    table = default_table()
    names: dict[str, int] = {}
    kinds = {"tag_level": ("level", {*LEVEL_UNITS, "%"}), "tag_temperature": ("temperature", TEMP_UNITS),
             "tag_pressure": ("pressure", {*PRESSURE_KPA, ""})}
    for ui, d in enumerate(m.hazard.units):
        base = ("hazard", "units", ui)
        try:
            spec = unit_from_dict(d, f"hazard.units[{ui}]", cfg.base_dir)
        except ValueError as e:
            where, _sep, what = str(e).partition(": ")
            loc = _where_loc(where) if where.startswith("hazard.units[") else base
            if what.startswith("unknown key(s) "):  # point at the (first) unknown key itself
                loc = (*loc, what.removeprefix("unknown key(s) ").split(", ")[0])
            at(loc, what or str(e))
            continue
        if spec.name in names:
            at((*base, "name"), _("unit name '{name}' also used by hazard.units[{index}]").format(
                name=spec.name, index=names[spec.name]))
        names.setdefault(spec.name, ui)
        if spec.major_hazard_code is not None:
            code_ok((*base, "major_hazard_code"), "major-hazard code", str(spec.major_hazard_code))
        bad_substance = False
        for group in ("tanks", "vessels"):
            for ii, item in enumerate(d.get(group) or []):
                try:
                    resolve_substance(table, str(item.get("substance") or ""), tuple(item.get("categories") or ()),
                                      item.get("mixture"), where="x")
                except ValueError as e:
                    msg = str(e).removeprefix("x: ")
                    key = next((k for k, ok in (("mixture", "mixture" in msg), ("substance", True),
                                                ("categories", True)) if ok and k in item), None)
                    at((*base, group, ii, *((key,) if key else ())), msg)
                    bad_substance = True
                for key, (kind, units) in kinds.items():
                    value = item.get(key)
                    if value is None:
                        continue
                    for li, tag in enumerate(value if isinstance(value, list) else [value]):
                        loc = (*base, group, ii, key, *((li,) if isinstance(value, list) else ()))
                        if tag not in tags:
                            at(loc, _("unknown tag '{tag}'").format(tag=tag))
                        elif tags[tag][1].unit.strip() not in units:
                            allowed = ", ".join(sorted(u or "''" for u in units))
                            what_kind = {"level": _("level"), "temperature": _("temperature"),
                                         "pressure": _("pressure")}[kind]
                            at(loc, _("tag '{tag}' has unit '{unit}'; a {kind} needs one of {allowed}").format(
                                tag=tag, unit=tags[tag][1].unit, kind=what_kind, allowed=allowed))
        for ti, tag in enumerate(spec.alarm_tags):
            if tag not in tags:
                at((*base, "alarm_tags", ti), _("unknown tag '{tag}'").format(tag=tag))
        if bad_substance:
            continue
        try:
            HazardEngine([spec], table=table)
        except (ValueError, LookupError) as e:  # one line naming the unit; place it at the key it is about
            msg = e.args[0] if e.args else str(e)
            key = next((k for k, needle in (("colour_map", "colour map"), ("assessed_risk", "assessed_risk"),
                                            ("overrides", ", override "),
                                            ("fixed", ", fixed ")) if needle in msg), None)
            at((*base, key) if key else base, msg)


# --- secret files (docs/design.md, Secrets) ---------------------------------------------------------------------

def secret_locations(cfg: LoadedConfig, used_only: bool = False) -> list[tuple[tuple, str]]:
    """(location, configured path) of every secret file: keys.private_key, uplink.client_key (or
    client_cert when it also holds the key), OPC UA security key and password_file. used_only: only
    those the daemon will open (the signing key only with an uplink; enabled devices only)."""
    m = cfg.model
    out: list[tuple[tuple, str]] = []
    if not used_only or m.uplink is not None:
        out.append((("keys", "private_key"), m.keys.private_key))
    if m.uplink is not None:
        if m.uplink.client_key:
            out.append((("uplink", "client_key"), m.uplink.client_key))
        elif m.uplink.client_cert:
            out.append((("uplink", "client_cert"), m.uplink.client_cert))
    for di, d in enumerate(m.devices):
        sec = getattr(d, "security", None)
        if sec is None or (used_only and not d.enabled):
            continue
        for f in ("key", "password_file"):
            if getattr(sec, f):
                out.append((("devices", di, "security", f), getattr(sec, f)))
    if m.web is not None:   # the status page's TLS key and its credentials (gateway.ops.web)
        if m.web.tls is not None:
            out.append((("web", "tls", "key_file"), m.web.tls.key_file))
        if m.web.credentials_file:
            out.append((("web", "credentials_file"), m.web.credentials_file))
    return out


def check_secrets(cfg: LoadedConfig, used_only: bool = False) -> list[Problem]:
    """Secret files must exist, be regular files and be readable by their owner only (no group or
    other permission bits: chmod 600); the signing key (keys.private_key) must not be a symbolic
    link, as the daemon refuses one. Certificates and uplink.receiver_key must exist (any mode); the receiver
    key must be one public Ed25519 JWK (gateway.chain.rejection.load_receiver_key). One Problem per bad file, at the
    value's FILE:LINE:COL."""
    import stat

    smap = cfg.srcmap
    problems = []

    def bad(loc: tuple, msg: str) -> None:
        if smap is not None:
            problems.append(smap.problem(loc, msg, at_value=True))
        else:
            problems.append(Problem(str(cfg.path), 1, 1, ".".join(map(str, loc)), msg))

    for loc, value in secret_locations(cfg, used_only):
        path = cfg.resolve(value)
        try:
            st = path.stat()  # type: ignore[union-attr]
        except FileNotFoundError:
            bad(loc, _("secret file {file} does not exist ({path})").format(file=value, path=path))
            continue
        except OSError as exc:
            bad(loc, _("secret file {file}: cannot stat: {error}").format(file=value, error=exc.strerror))
            continue
        if loc == ("keys", "private_key") and path.is_symlink():  # type: ignore[union-attr]
            # the daemon opens the signing key with O_NOFOLLOW (gateway.chain.signing.Signer.from_file)
            bad(loc, _("secret file {file} is a symbolic link (to {target}); the signing key is opened without "
                       "following links: put the key file itself there (chmod 600)").format(
                file=value, target=path.readlink()))  # type: ignore[union-attr]
        elif not stat.S_ISREG(st.st_mode):
            bad(loc, _("secret file {file} is not a regular file").format(file=value))
        elif st.st_mode & 0o077:
            bad(loc, _("secret file {file} is accessible by group/others (mode {mode}); run: chmod 600 {path}")
                .format(file=value, mode=f"{stat.S_IMODE(st.st_mode):04o}", path=path))
        elif loc == ("web", "credentials_file"):  # user:HASH lines the status page checks (gateway.ops.web.auth)
            from gateway.ops.web.auth import load_credentials
            try:
                load_credentials(path)  # type: ignore[arg-type]
            except ValueError as exc:  # one line naming the file and line
                bad(loc, str(exc))
    for loc, value in public_file_locations(cfg, used_only):  # certificates: must exist, any mode
        path = cfg.resolve(value)
        if loc[-1] == "server_cert" and path.is_dir():  # type: ignore[union-attr]
            pass  # OPC UA: a directory of trusted server certificates (drivers/opcua.py)
        elif not path.is_file():  # type: ignore[union-attr]
            bad(loc, _("file {file} does not exist or is not a regular file ({path})").format(file=value, path=path))
        elif loc == ("uplink", "ca_file"):  # PEM certificate(s) the receiver's must chain to (as run loads it)
            import ssl
            try:
                ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                bad(loc, _("CA file {file} holds no usable PEM certificate ({error})").format(file=value, error=exc))
        elif loc == ("uplink", "receiver_key"):  # one public Ed25519 JWK (gateway.chain.rejection)
            from gateway.chain.rejection import load_receiver_key
            try:
                load_receiver_key(path)  # type: ignore[arg-type]
            except ValueError as exc:  # KeyFileError: one line naming the file
                bad(loc, _("receiver key {file}: {error}").format(file=value, error=exc))
        elif loc[0] == "devices" and loc[-1] == "cert":  # OPC UA: ApplicationUri = the cert's URI SAN
            from drivers.opcua_certs import certificate_application_uri
            try:
                certificate_application_uri(path)  # type: ignore[arg-type]
            except ValueError as exc:  # Part 6 6.2.2
                bad(loc, str(exc))
    return problems


def public_file_locations(cfg: LoadedConfig, used_only: bool = False) -> list[tuple[tuple, str]]:
    """(location, configured path) of the certificate and public key files the daemon opens: uplink.ca_file,
    uplink.client_cert (when a separate client_key holds the key), uplink.receiver_key (a public JWK),
    OPC UA cert and server_cert."""
    m = cfg.model
    out: list[tuple[tuple, str]] = []
    if m.uplink is not None:
        if m.uplink.ca_file:
            out.append((("uplink", "ca_file"), m.uplink.ca_file))
        if m.uplink.client_cert and m.uplink.client_key:
            out.append((("uplink", "client_cert"), m.uplink.client_cert))
        if m.uplink.receiver_key:
            out.append((("uplink", "receiver_key"), m.uplink.receiver_key))
    for di, d in enumerate(m.devices):
        sec = getattr(d, "security", None)
        if sec is None or (used_only and not d.enabled):
            continue
        for f in ("cert", "server_cert"):
            if getattr(sec, f):
                out.append((("devices", di, "security", f), getattr(sec, f)))
    if m.web is not None and m.web.tls is not None:
        out.append((("web", "tls", "cert_file"), m.web.tls.cert_file))
    return out


def check_state_dirs(cfg: LoadedConfig) -> list[Problem]:
    """Can the daemon create (or write in) ``gateway.state_dir`` and the store's directory?

    ``run`` creates both (gateway.runtime.gateway.Gateway.run, gateway.record.store.Store.open); here the nearest
    existing ancestor of each is probed by creating and removing a temporary directory in it, so a
    path under a virtual file system (/proc), a read-only mount or below a regular file is caught
    by ``check``. One Problem at the value's FILE:LINE:COL: an error, or a warning when only the
    permissions of the user running ``check`` stand in the way (run it as the service user, README
    "Install on a plant host" step 4).
    """
    import errno
    import os
    import tempfile

    smap = cfg.srcmap
    out: list[Problem] = []

    def report(loc: tuple, msg: str, warning: bool) -> None:
        if smap is not None:
            out.append(smap.problem(loc, msg, at_value=True, warning=warning))
        else:
            out.append(Problem(str(cfg.path), 1, 1, ".".join(map(str, loc)), msg, warning))

    def probe(path: Path) -> OSError | None:
        p = path
        while not p.exists() and p != p.parent:
            p = p.parent
        if p.exists() and not p.is_dir():
            return NotADirectoryError(errno.ENOTDIR, "not a directory", str(p))
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".hg-check-", dir=p))
        except OSError as exc:
            return exc
        return None

    targets = [(("gateway", "state_dir"), cfg.state_dir, "state_dir")]
    if cfg.store_path.parent != cfg.state_dir:
        targets.append((("store", "path"), cfg.store_path.parent, "store directory"))
    for loc, path, what in targets:
        exc = probe(path)
        if exc is None:
            continue
        perm = exc.errno in (errno.EACCES, errno.EPERM)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        report(loc, _("{what} {path} cannot be created or written: {error}{where}").format(
            what={"state_dir": "state_dir", "store directory": _("store directory")}[what], path=path,
            error=exc.strerror or exc, where=where) + (_("; check again as the service user") if perm else ""), perm)
    return out
