"""The basic-data record (基础数据) of a running gateway: built from its Plant, put into the signed chain.

:func:`build_document` makes the document gateway.chain.basic_data defines (version 1) from the config (the
enterprise, the typed points, gateway.config.point_places), the hazard engine (each installation's design S, R,
grade, colour: GB 18218-2018 4.2.2, never the live inventory) and the plant's point codes. :func:`record` puts
it on the record through the gateway's ``log_event`` (an event ``{"type": "basic_data", ...}``: stored, signed
in the next batch and uploaded in the chain); the gateway calls it at every start (gateway.runtime.gateway.
Gateway.run) and after every applied reload (gateway.runtime.reload), so the regulator's copy follows each
config change and carries its ``config_hash``.

Why: provincial platforms keep the basic data of enterprises, major hazard installations (重大危险源), tanks
(储罐) and monitoring points (监测点位) beside the readings (docs/domain.md, Regulator platforms).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from gateway.chain.basic_data import LIMIT_KINDS, TYPE, VERSION, validate
from gateway.config import LoadedConfig, point_places, point_unit, tag_alarm_config
from gateway.hazard import ColourMap, HazardEngine, default_table, unit_from_dict
from gateway.hazard.engine import resolve_substance
from gateway.model import rfc3339

log = logging.getLogger("hazard_gateway")


def _medium(sub: Any) -> dict[str, Any]:
    """MEDIUM of a GB 18218-2018 substance (gateway.hazard.substances.Substance): its Chinese name (else the
    English name, else its id), English name, first CAS number."""
    return {"name": sub.zh or sub.en or sub.id, "name_en": sub.en or None, "cas": sub.cas[0] if sub.cas else None}


def _installations(cfg: LoadedConfig, hazard: HazardEngine | None) -> tuple[list[dict], list[dict]]:
    """(installations, vessels) of the document from the hazard: units and the engine's design figures."""
    h = cfg.model.hazard
    if hazard is None or h is None:
        return [], []
    status = {u["unit"]: u for u in hazard.status()}
    table = default_table()
    units, vessels = [], []
    for i, d in enumerate(h.units):
        spec = unit_from_dict(d, f"hazard.units[{i}]", cfg.base_dir)
        st = status[spec.name]
        cmap = spec.colour_map if isinstance(spec.colour_map, ColourMap) else ColourMap.from_dict(spec.colour_map)
        base = (spec.assessed_risk or {}).get("colour")
        code = hazard.major_hazard_code(spec.name) or cfg.model.gateway.major_hazard_code
        units.append({"name": spec.name, "major_hazard_code": str(code) if code else None,
                      "people_500m": spec.people_500m, "alpha": st["alpha"], "S": st["S"], "R": st["R"],
                      "major_hazard": st["major_hazard"], "grade": st["grade"],
                      "colour": cmap.colour(st["grade"], base=base),   # the design colour: no live alarm state
                      "colour_source": st["colour_source"], "basis": st["basis"]})
        items: list[tuple[str, str, Any, float, list[str]]] = []
        for t in spec.tanks:
            tags = [*t.level_tags, *([t.tag_temperature] if t.tag_temperature else [])]
            items.append((t.name or t.level_tags[0], "tank", t, t.geometry.capacity_m3, tags))
        for v in spec.vessels:
            tags = [v.tag_pressure, *([v.tag_temperature] if v.tag_temperature else [])]
            items.append((v.name or v.tag_pressure, "vessel", v, v.volume_m3, tags))
        # the engine lists a unit's tanks, then its vessels (gateway.hazard.engine), as here
        for (name, kind, item, capacity, tags), row in zip(items, st["tanks"]):
            sub = resolve_substance(table, item.substance, tuple(item.categories or ()), item.mixture, where=name)
            vessels.append({"name": str(name), "installation": spec.name, "kind": kind,
                            "capacity_m3": round(float(capacity), 6), "design_q_t": round(float(row["design_q_t"]), 6),
                            "medium": _medium(sub), "tags": tags})
    return units, vessels


def build_document(cfg: LoadedConfig, hazard: HazardEngine | None, points: dict[str, str],
                   now: float | None = None) -> dict[str, Any]:
    """The basic-data document (gateway.chain.basic_data, version 1) of ``cfg``.

    hazard: the plant's GB 18218-2018 engine (None: no installations, no vessels). points: tag -> point code
    (gateway.runtime.build.point_codes). now: UTC epoch seconds of ``ts`` (default: the clock). One point per tag
    of every enabled device: its code (null without an enterprise or major-hazard code), tag code, measure and
    the unit in its canonical spelling (null and the unit as written for an untyped tag), range (``point.range``,
    else null), alarm limits in force (GB/T 50493-2019 presets and explicit limits, gateway.config.
    tag_alarm_config), vessel, installation and medium (the point's own, else its vessel's).

    Raises ValueError, KeyError or OSError only for a config that did not pass gateway.config.load_config."""
    m = cfg.model
    g = m.gateway
    installations, vessels = _installations(cfg, hazard)
    vessel_medium = {v["name"]: v["medium"] for v in vessels}
    places = point_places(cfg)
    out_points = []
    for d in m.devices:
        if not d.enabled:
            continue
        for t in d.tags:
            p, place = t.point, places[t.name]
            limits: dict[str, float] = {}
            if t.alarms is not None:
                for lim in tag_alarm_config(t, policy=m.alarm_policy).limits:
                    if lim.kind in LIMIT_KINDS:
                        limits[lim.kind] = float(lim.setpoint)
            medium = None
            if p is not None and p.medium is not None:
                medium = {"name": p.medium.name, "name_en": None, "cas": p.medium.cas}
            elif place.vessel in vessel_medium:
                medium = vessel_medium[place.vessel]
            measure = p.measure if p is not None else None
            out_points.append({
                "tag": t.name, "tag_code": place.tag_code, "code": points.get(t.name),
                "major_hazard_code": place.major_hazard_code or None, "measure": measure,
                "unit": (point_unit(measure, t.unit) or t.unit) if measure else t.unit,
                "range": [float(p.range[0]), float(p.range[1])] if p is not None and p.range else None,
                "limits": {k: limits[k] for k in LIMIT_KINDS if k in limits},
                "vessel": place.vessel, "installation": place.installation, "medium": medium,
                "writable": bool(t.writable), "description": t.description})
    return {"type": TYPE, "version": VERSION, "gateway_id": g.id, "config_hash": cfg.config_hash,
            "ts": rfc3339(time.time() if now is None else now),
            "enterprise": {"code": g.enterprise_code or None, "name": g.enterprise_name or None},
            "point_separator": g.point_separator, "installations": installations, "vessels": vessels,
            "points": out_points}


def record(plant: Any, log_event: Callable[[dict[str, Any]], None]) -> bool:
    """Put the basic-data record of ``plant`` (gateway.runtime.build.Plant: its cfg, hazard engine and point codes)
    on the record through ``log_event`` (gateway.runtime.gateway.Gateway.log_event). The document is checked
    with gateway.chain.basic_data.validate first, as the receiver will: one the receiver would refuse (it would
    refuse the whole batch) is not sent; a ``{"type": "gateway", "event": "basic_data_invalid", "error"}`` event
    and an ERROR line say why instead. Returns True when the record went out."""
    try:
        doc = validate(build_document(plant.cfg, plant.hazard, plant.points))
    except (ValueError, KeyError, OSError) as exc:   # a bug: check accepts only configs that build a valid one
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("basic data not recorded: %s", error)
        log_event({"type": "gateway", "event": "basic_data_invalid", "error": error[:400],
                   "config_hash": plant.cfg.config_hash, "ts": rfc3339(time.time())})
        return False
    log_event(doc)
    return True


__all__ = ["build_document", "record"]
