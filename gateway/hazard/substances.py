"""Substance table of GB 18218-2018: critical quantity Q and correction factor beta.

The data ship with the package in ``gateway/hazard/data/gb18218_2018.yaml``:

- table 1: named hazardous chemicals with their critical quantity Q (tonnes);
- table 2: Q by hazard category (J1..J5 acute toxicity, W1.1..W11 physical hazards) for a
  chemical not named in table 1;
- table 3: beta of the named toxic gases (CO, SO2, NH3, ethylene oxide 2; HCl, methyl bromide 3;
  Cl2 4; H2S, HF 5; NO2, HCN 10; phosgene, PH3, methyl isocyanate 20);
- table 4: beta by hazard category for a chemical not named in table 3.

Every number carries its source; values not confirmed by docs/domain.md are marked ``recalled`` in the
data and :attr:`Substance.unverified` lists them, so a report can say which numbers still need a
check against the official text. A plant's own hazard study wins: :func:`custom` builds a
substance with configured Q / beta.

Lookup (:meth:`SubstanceTable.find`) accepts the Chinese name, the English name, an alias, the CAS
number or a category code ("W5.3"), case-insensitively; an unknown name raises
:class:`UnknownSubstance` whose one-line message lists close matches.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ruamel.yaml import YAML

DATA_FILE = Path(__file__).parent / "data" / "gb18218_2018.yaml"
_CAS_RE = re.compile(r"^(\d{2,7})-(\d{2})-(\d)$")


class UnknownSubstance(LookupError):
    """A substance name, CAS number or category code not in the table; str() is one line with close matches."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f"; close matches: {', '.join(suggestions)}" if suggestions else "; no close match"
        super().__init__(f"unknown substance {name!r} (not in GB 18218-2018 tables 1/2 as shipped){hint}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


@dataclass(frozen=True)
class Category:
    """One hazard category row of GB 18218-2018 table 2 (Q) and table 4 (beta).

    code: "J1".."J5", "W1.1".."W11". Q_t: critical quantity in tonnes. beta: correction factor.
    Q_src / beta_src: where the number comes from ("docs/domain.md [2]" or "recalled" = unverified).
    """

    code: str
    zh: str
    en: str
    Q_t: float
    beta: float
    Q_src: str
    beta_src: str


@dataclass(frozen=True)
class Substance:
    """A chemical as used in S and R (GB 18218-2018 clauses on identification and grading).

    id: stable key ("chlorine"). zh / en: Chinese and English name. cas: CAS numbers (first = main).
    Q_t: critical quantity in tonnes (table 1, or table 2 through the category). beta: correction
    factor (table 3, or table 4 through the category). category: hazard category code used for beta /
    Q when not named, else None. Q_src / beta_src: source of each number. table: "1" for a named
    chemical, "2" for a category-only entry, "config" for a plant-configured one.
    """

    id: str
    zh: str
    en: str
    Q_t: float
    beta: float
    Q_src: str
    beta_src: str
    cas: tuple[str, ...] = ()
    category: str | None = None
    aliases: tuple[str, ...] = ()
    table: str = "1"

    @property
    def unverified(self) -> list[str]:
        """Which of this substance's numbers are not confirmed ("Q", "beta"): source marked ``recalled``."""
        out = []
        if "recalled" in self.Q_src:
            out.append("Q")
        if "recalled" in self.beta_src:
            out.append("beta")
        return out

    @property
    def label(self) -> str:
        """Display name: "English (中文)"."""
        return f"{self.en} ({self.zh})" if self.zh else self.en


def cas_valid(cas: str) -> bool:
    """True when ``cas`` has the CAS Registry Number form NNNNNNN-NN-N with a correct check digit
    (check digit = sum of the other digits weighted 1, 2, 3 ... from the right, modulo 10)."""
    m = _CAS_RE.match(cas)
    if not m:
        return False
    digits = (m.group(1) + m.group(2))[::-1]
    return sum((i + 1) * int(d) for i, d in enumerate(digits)) % 10 == int(m.group(3))


def _norm(name: str) -> str:
    """Lookup key: NFKC (full-width -> half-width), case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


class SubstanceTable:
    """The GB 18218-2018 tables loaded from a YAML file (default: the shipped data file).

    Raises ValueError (one line, file and entry) when the file is malformed: a missing field, a
    non-positive Q or beta, a bad CAS check digit, an unknown category or a duplicate name.
    """

    def __init__(self, path: Path | str = DATA_FILE):
        self.path = Path(path)
        data = YAML(typ="safe").load(self.path.read_text(encoding="utf-8"))
        self.standard: str = data.get("standard", "")
        self.categories: dict[str, Category] = {}
        self.substances: dict[str, Substance] = {}
        self._index: dict[str, str] = {}
        for i, row in enumerate(data.get("categories") or []):
            where = f"{self.path}: categories[{i}]"
            try:
                c = Category(code=str(row["code"]), zh=row["zh"], en=row["en"], Q_t=float(row["Q_t"]),
                             beta=float(row["beta"]), Q_src=str(row["Q_src"]), beta_src=str(row["beta_src"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: bad entry ({e})") from None
            self._check_positive(where, c.Q_t, c.beta)
            self.categories[c.code.upper()] = c
            sub = Substance(id=c.code, zh=c.zh, en=c.en, Q_t=c.Q_t, beta=c.beta, Q_src=f"table 2, {c.Q_src}",
                            beta_src=f"table 4, {c.beta_src}", category=c.code, table="2")
            self._add(where, sub, [c.code])
        for i, row in enumerate(data.get("named") or []):
            where = f"{self.path}: named[{i}]"
            try:
                cat_code = row.get("category")
                if "beta" in row:
                    beta, beta_src = float(row["beta"]), f"table 3, {row['beta_src']}"
                else:
                    if cat_code is None or str(cat_code).upper() not in self.categories:
                        raise ValueError(f"no table-3 beta and unknown category {cat_code!r}")
                    cat = self.categories[str(cat_code).upper()]
                    beta = cat.beta
                    beta_src = f"table 4 {cat.code} ({row.get('category_src', 'category')}), {cat.beta_src}"
                cas = tuple(str(c) for c in row.get("cas") or ())
                sub = Substance(id=str(row["id"]), zh=str(row["zh"]), en=str(row["en"]), Q_t=float(row["Q_t"]),
                                beta=beta, Q_src=f"table 1, {row['Q_src']}", beta_src=beta_src, cas=cas,
                                category=str(cat_code) if cat_code else None,
                                aliases=tuple(str(a) for a in row.get("aliases") or ()), table="1")
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: bad entry ({e})") from None
            self._check_positive(where, sub.Q_t, sub.beta)
            for c in cas:
                if not cas_valid(c):
                    raise ValueError(f"{where}: CAS number {c!r} fails its check digit")
            self._add(where, sub, [sub.id, sub.zh, sub.en, *sub.aliases, *sub.cas])

    @staticmethod
    def _check_positive(where: str, q: float, beta: float) -> None:
        if not q > 0 or not beta > 0:
            raise ValueError(f"{where}: Q and beta must be > 0 (Q={q}, beta={beta})")

    def _add(self, where: str, sub: Substance, keys: list[str]) -> None:
        if sub.id in self.substances:
            raise ValueError(f"{where}: duplicate id {sub.id!r}")
        self.substances[sub.id] = sub
        for k in keys:
            nk = _norm(k)
            if nk in self._index and self._index[nk] != sub.id:
                raise ValueError(f"{where}: name {k!r} already used by {self._index[nk]!r}")
            self._index[nk] = sub.id

    def names(self) -> list[str]:
        """Every name that :meth:`find` accepts (ids, Chinese and English names, aliases, CAS, category codes)."""
        return sorted(self._index)

    def find(self, name: str) -> Substance:
        """The substance for a Chinese name, English name, alias, CAS number or category code.

        Case-insensitive; full-width characters are accepted. Raises :class:`UnknownSubstance` (one
        line with up to 5 close matches) when nothing matches.
        """
        key = _norm(name)
        sid = self._index.get(key)
        if sid is None:
            close = difflib.get_close_matches(key, list(self._index), n=5, cutoff=0.6)
            # a Chinese name is short: substring matches help more than edit distance
            close += [k for k in self._index if key and (key in k or k in key) and k not in close]
            raise UnknownSubstance(name, self._pretty(close[:5]))
        return self.substances[sid]

    def _pretty(self, keys: list[str]) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for k in keys:
            sid = self._index[k]
            if sid in seen:
                continue
            seen.add(sid)
            s = self.substances[sid]
            out.append(f"{k} = {s.label}" if _norm(s.en) != k else s.label)
        return out


@lru_cache(maxsize=1)
def default_table() -> SubstanceTable:
    """The shipped GB 18218-2018 table (loaded once)."""
    return SubstanceTable()


def find(name: str) -> Substance:
    """Shortcut for ``default_table().find(name)``."""
    return default_table().find(name)


def custom(base: Substance | None, *, id: str | None = None, Q_t: float | None = None, beta: float | None = None,
           source: str = "plant hazard study") -> Substance:
    """A substance with plant-configured numbers (docs/domain.md: "a plant's own hazard study wins").

    base: the table entry to start from (None for a substance the table lacks; then id, Q_t and beta
    are required). Q_t in tonnes, beta dimensionless, both > 0. Raises ValueError (one line) otherwise.
    """
    if base is None:
        if id is None or Q_t is None or beta is None:
            raise ValueError("a substance not in GB 18218-2018 tables needs id, Q_t and beta")
        base = Substance(id=id, zh="", en=id, Q_t=Q_t, beta=beta, Q_src=source, beta_src=source, table="config")
    q = base.Q_t if Q_t is None else float(Q_t)
    b = base.beta if beta is None else float(beta)
    if not q > 0 or not b > 0:
        raise ValueError(f"substance {base.id}: Q and beta must be > 0 (Q={q}, beta={b})")
    return Substance(id=id or base.id, zh=base.zh, en=base.en, Q_t=q, beta=b,
                     Q_src=source if Q_t is not None else base.Q_src,
                     beta_src=source if beta is not None else base.beta_src,
                     cas=base.cas, category=base.category, aliases=base.aliases,
                     table="config" if (Q_t is not None or beta is not None) else base.table)


__all__ = ["Category", "Substance", "SubstanceTable", "UnknownSubstance", "cas_valid", "custom",
           "default_table", "find", "DATA_FILE"]

