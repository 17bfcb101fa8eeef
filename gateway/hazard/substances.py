"""Substance table of GB 18218-2018: critical quantity Q and correction factor beta.

The data ship with the package in ``gateway/hazard/data/gb18218_2018.yaml``:

- table 1: the 85 named hazardous chemicals with their critical quantity Q (tonnes);
- table 2: Q by hazard category (J1..J5 acute toxicity, W1.1..W11 physical hazards) for a
  chemical not named in table 1;
- table 3: beta of the named toxic gases (CO, SO2, NH3, ethylene oxide 2; HCl, methyl bromide 3;
  Cl2 4; H2S, HF 5; NO2, HCN 10; phosgene, PH3, methyl isocyanate 20);
- table 4: beta by hazard category for a chemical not named in table 3.

Rules (GB 18218-2018 4.2, quoted by source S3; docs/domain.md, "Critical quantity Q"):

- a chemical in table 1 takes its table-1 Q ("在表1范围内的危险化学品,其临界量应按表1确定");
- any other chemical takes the table-2 Q of its category; with several hazards, the LOWEST Q
  among them ("若一种危险化学品具有多种危险性,按其中最低的临界量确定"): :meth:`SubstanceTable.by_categories`;
- beta: table 3 for its 14 gases, otherwise table 4 by category ("未在表3范围内的危险化学品,其β值按表4确定").
  The standard gives no beta rule for several categories (docs/domain.md, "Grading R": no β rule was found):
  the project takes the HIGHEST table-4 beta among them (conservative), for a table-1 row that
  declares ``categories:`` and in :meth:`SubstanceTable.by_categories`.

Every number carries its source; values not confirmed by two sources are marked ``recalled`` in the
data and :attr:`Substance.unverified` lists them, so a report can say which numbers still need a
check against the official text. A plant's own hazard study wins: :func:`custom` builds a
substance with configured Q / beta.

Lookup (:meth:`SubstanceTable.find`) accepts the Chinese name, the English name, an alias, the CAS
number or a category code ("W5.3"), case-insensitively; an unknown name raises
:class:`UnknownSubstance` whose one-line message lists close matches, and a name or CAS number shared
by several table-1 rows of one chemical (硝化纤维素, 硝酸铵: different Q by form) raises
:class:`AmbiguousSubstance`, which lists the rows to choose from.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ruamel.yaml import YAML

from gateway.chain.basic_data import cas_valid  # the CAS check-digit rule, one place for both ends of the wire
from gateway.i18n import gettext as _

DATA_FILE = Path(__file__).parent / "data" / "gb18218_2018.yaml"


class UnknownSubstance(LookupError):
    """A substance name, CAS number or category code not in the table; str() is one line with close matches."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = _("; close matches: {names}").format(names=", ".join(suggestions)) if suggestions else \
            _("; no close match")
        super().__init__(_("unknown substance {name} (not in GB 18218-2018 tables 1/2 as shipped){hint}").format(
            name=repr(name), hint=hint))

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


class AmbiguousSubstance(UnknownSubstance):
    """A name or CAS number shared by several table-1 rows of one chemical with different Q (e.g. the six
    硝化纤维素 rows, by nitrogen content and wetting). GB 18218-2018 table 1 decides by the form, so the
    caller must name the row (its id or its full Chinese or English name). ``candidates``: the row ids;
    str() is one line listing each row with its Q in tonnes."""

    def __init__(self, name: str, candidates: list["Substance"]):
        self.name = name
        self.candidates = [c.id for c in candidates]
        self.suggestions = [f"{c.id} (Q {c.Q_t:g} t)" for c in candidates]
        LookupError.__init__(self, f"ambiguous substance {name!r}: GB 18218-2018 table 1 has {len(candidates)} rows "
                                   f"for it with different Q; name one: {', '.join(self.suggestions)}")


@dataclass(frozen=True)
class Category:
    """One hazard category row of GB 18218-2018 table 2 (Q) and table 4 (beta).

    code: "J1".."J5", "W1.1".."W11". Q_t: critical quantity in tonnes. beta: correction factor.
    Q_src / beta_src: where the number comes from, by the source tags of docs/domain.md ("S1 p8, S2":
    two sources agree; a source containing "recalled" is unverified).
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
    factor, dimensionless (table 3, or table 4 through the category). category: the first (primary)
    hazard category code, or None for a table-3 gas or a row in no table-2 category. categories: every
    hazard category code of the substance (``(category,)`` for one; empty when category is None); with
    several, beta is the highest table-4 beta among them (project's conservative choice, the standard
    has no rule) and, for a chemical not in table 1, Q the lowest table-2 Q (GB 18218-2018 4.2, S3).
    Q_src / beta_src: source of each number. table: "1" for a named chemical, "2" for a category-only
    entry (or several categories), "config" for a plant-configured one.
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
    categories: tuple[str, ...] = ()

    @property
    def unverified(self) -> list[str]:
        """Which of this substance's numbers are not confirmed by two sources ("Q", "beta"): those whose
        source is marked ``recalled`` (for a table-4 beta this includes an uncertain classification)."""
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


def _norm(name: str) -> str:
    """Lookup key: NFKC (full-width -> half-width), case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


class SubstanceTable:
    """The GB 18218-2018 tables 1-4 loaded from a YAML file (default: the shipped data file); the Q and
    beta rules are those of GB 18218-2018 4.2 (S3; docs/domain.md, "Critical quantity Q" and "Grading R").

    Table-1 rows give ``beta`` (table 3; or, with ``beta_basis``, a row in no table-2 category) or
    ``category`` / ``categories`` (table 4; with several, the highest beta). Rows with the same
    ``group`` may share aliases and CAS numbers; those shared keys are ambiguous (see :meth:`find`).

    Raises ValueError (one line, file and entry) when the file is malformed: a missing field, a
    non-positive Q or beta, a bad CAS check digit, an unknown category, both ``category`` and
    ``categories``, or a duplicate name outside a group.
    """

    def __init__(self, path: Path | str = DATA_FILE):
        self.path = Path(path)
        data = YAML(typ="safe").load(self.path.read_text(encoding="utf-8"))
        self.standard: str = data.get("standard", "")
        self.categories: dict[str, Category] = {}
        self.substances: dict[str, Substance] = {}
        self._index: dict[str, str] = {}
        self._group_of: dict[str, str] = {}          # substance id -> group
        self._shared: dict[str, list[str]] = {}      # key shared inside a group -> ids
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
                            beta_src=f"table 4, {c.beta_src}", category=c.code, table="2",
                            categories=(c.code,))
            self._add(where, sub, [c.code])
        for i, row in enumerate(data.get("named") or []):
            where = f"{self.path}: named[{i}]"
            try:
                codes = self._row_categories(row)
                if "beta" in row:
                    if codes:
                        raise ValueError("give beta (table 3) or category/categories (table 4), not both")
                    basis = str(row.get("beta_basis", "table 3"))
                    beta, beta_src = float(row["beta"]), f"{basis}, {row['beta_src']}"
                else:
                    if not codes:
                        raise ValueError("no table-3 beta and no category")
                    cats = [self.categories[c] for c in codes]
                    top = max(cats, key=lambda c: c.beta)     # first of the highest
                    why = row.get("category_src", "category")
                    beta = top.beta
                    if len(cats) == 1:
                        beta_src = f"table 4 {top.code} ({why}), {top.beta_src}"
                    else:
                        beta_src = (f"table 4 {top.code}: highest of table 4 {'/'.join(c.code for c in cats)}; "
                                    f"no rule in the standard, conservative ({why}), {top.beta_src}")
                cas = tuple(str(c) for c in row.get("cas") or ())
                sub = Substance(id=str(row["id"]), zh=str(row["zh"]), en=str(row["en"]), Q_t=float(row["Q_t"]),
                                beta=beta, Q_src=f"table 1, {row['Q_src']}", beta_src=beta_src, cas=cas,
                                category=codes[0] if codes else None, categories=tuple(codes),
                                aliases=tuple(str(a) for a in row.get("aliases") or ()), table="1")
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: bad entry ({e})") from None
            self._check_positive(where, sub.Q_t, sub.beta)
            for c in cas:
                if not cas_valid(c):
                    raise ValueError(f"{where}: CAS number {c!r} fails its check digit")
            if row.get("group"):
                self._group_of[sub.id] = str(row["group"])
            self._add(where, sub, [sub.id, sub.zh, sub.en, *sub.aliases, *sub.cas])

    def _row_categories(self, row: dict) -> list[str]:
        """The category codes a table-1 row declares (``category:`` or ``categories:``), upper-case, checked."""
        if "category" in row and "categories" in row:
            raise ValueError("give category or categories, not both")
        raw = row.get("categories")
        if raw is None:
            raw = [row["category"]] if row.get("category") is not None else []
        if not isinstance(raw, list):
            raise ValueError(f"categories must be a list of table-2 codes, got {raw!r}")
        codes = []
        for c in raw:
            code = str(c).upper()
            if code not in self.categories:
                raise ValueError(f"unknown category {c!r}")
            if code not in codes:
                codes.append(code)
        return codes

    @staticmethod
    def _check_positive(where: str, q: float, beta: float) -> None:
        if not q > 0 or not beta > 0:
            raise ValueError(f"{where}: Q and beta must be > 0 (Q={q}, beta={beta})")

    def _add(self, where: str, sub: Substance, keys: list[str]) -> None:
        if sub.id in self.substances:
            raise ValueError(f"{where}: duplicate id {sub.id!r}")
        self.substances[sub.id] = sub
        group = self._group_of.get(sub.id)
        for k in keys:
            nk = _norm(k)
            if nk in self._shared:
                if group is None or self._group_of.get(self._shared[nk][0]) != group:
                    raise ValueError(f"{where}: name {k!r} already used by {self._shared[nk][0]!r}")
                if sub.id not in self._shared[nk]:
                    self._shared[nk].append(sub.id)
                continue
            other = self._index.get(nk)
            if other is not None and other != sub.id:
                if group is None or self._group_of.get(other) != group:
                    raise ValueError(f"{where}: name {k!r} already used by {other!r}")
                del self._index[nk]                   # shared inside the group: ambiguous
                self._shared[nk] = [other, sub.id]
                continue
            self._index[nk] = sub.id

    def names(self) -> list[str]:
        """Every name that :meth:`find` resolves (ids, Chinese and English names, aliases, CAS, category
        codes); names shared by several rows of a group (ambiguous) are not included."""
        return sorted(self._index)

    def ambiguous_names(self) -> dict[str, list[str]]:
        """The lookup keys (normalised) shared by several table-1 rows of one chemical, with their row ids."""
        return {k: list(v) for k, v in sorted(self._shared.items())}

    def find(self, name: str) -> Substance:
        """The substance for a Chinese name, English name, alias, CAS number or category code.

        Case-insensitive; full-width characters are accepted. Raises :class:`AmbiguousSubstance` (one
        line listing the rows and their Q) for a name or CAS number shared by several table-1 rows of
        one chemical, and :class:`UnknownSubstance` (one line with up to 5 close matches) when nothing
        matches.
        """
        key = _norm(name)
        sid = self._index.get(key)
        if sid is None:
            if key in self._shared:
                raise AmbiguousSubstance(name, [self.substances[i] for i in self._shared[key]])
            close = difflib.get_close_matches(key, list(self._index), n=5, cutoff=0.6)
            # a Chinese name is short: substring matches help more than edit distance
            close += [k for k in self._index if key and (key in k or k in key) and k not in close]
            raise UnknownSubstance(name, self._pretty(close[:5]))
        return self.substances[sid]

    def by_categories(self, codes: list[str]) -> Substance:
        """The substance for a chemical NOT named in table 1 that has several table-2 hazards.

        codes: table-2 category codes ("W2", "J3"; case-insensitive, repeats ignored). Returns a
        Substance with id "W2+J3" (codes in the given order), table "2", categories = the codes and:

        - Q_t (tonnes) = the LOWEST table-2 Q among the categories: GB 18218-2018 4.2, "若一种危险化学品
          具有多种危险性,按其中最低的临界量确定" (S3 in docs/domain.md);
        - beta = the HIGHEST table-4 beta among them. The standard gives no rule for beta
          (docs/domain.md, "Grading R": no β rule was found); this is the project's conservative choice.

        Q_src and beta_src say which category gave each number (the first one on a tie). A single code
        returns the same as ``find(code)``. Raises :class:`UnknownSubstance` (one line, close matches
        among the codes) for a code that is not a table-2 category, ValueError for an empty list.
        """
        wanted: list[str] = []
        for c in codes:
            code = _norm(str(c)).upper()
            if code not in self.categories:
                close = difflib.get_close_matches(code, list(self.categories), n=5, cutoff=0.5)
                raise UnknownSubstance(str(c), [f"{k} = {self.categories[k].en}" for k in close])
            if code not in wanted:
                wanted.append(code)
        if not wanted:
            raise ValueError("by_categories needs at least one table-2 category code")
        if len(wanted) == 1:
            return self.find(wanted[0])
        cats = [self.categories[c] for c in wanted]
        codes_txt = "/".join(c.code for c in cats)
        low = min(cats, key=lambda c: c.Q_t)       # first of the lowest
        top = max(cats, key=lambda c: c.beta)      # first of the highest
        return Substance(
            id="+".join(c.code for c in cats), zh=" + ".join(c.zh for c in cats), en=" + ".join(c.en for c in cats),
            Q_t=low.Q_t, beta=top.beta,
            Q_src=f"table 2 {low.code}: lowest Q of {codes_txt} (GB 18218-2018 4.2, S3), {low.Q_src}",
            beta_src=f"table 4 {top.code}: highest beta of {codes_txt} (no rule in the standard; project's "
                     f"conservative choice), {top.beta_src}",
            category=cats[0].code, categories=tuple(c.code for c in cats), table="2")

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
                     table="config" if (Q_t is not None or beta is not None) else base.table,
                     categories=base.categories)


__all__ = ["AmbiguousSubstance", "Category", "Substance", "SubstanceTable", "UnknownSubstance", "cas_valid", "custom",
           "default_table", "find", "DATA_FILE"]

