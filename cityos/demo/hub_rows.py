"""Row generators of the demo data hub (演示数据生成): residents, companies, places and plates,
the registries' rows, and department datasets described column by column in `hub_data`.

Everything is deterministic. Residents and companies are pure functions of their number
(`People.person(i)`, `Orgs.org(i)`), so any dataset can name a registry resident without the
registry in memory, and a build at the same scale always makes the same city.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

from cityos.core.db import utcnow
from cityos.core.identifiers import citizen_id_with_check, credit_code_with_check
from cityos.demo import hub_data as hd
from cityos.demo.data import CITY_CODE, SEED, org_code
from cityos.hub import registries

M64 = (1 << 64) - 1


def mix(x: int) -> int:
    """SplitMix64's finalizer: 64 well-mixed bits from an integer (a pure, fast hash)."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


class Weighted:
    """Draw from (value, weight) pairs with a number or a random generator."""

    def __init__(self, pairs: Iterable[tuple[Any, int]]) -> None:
        values, weights = zip(*pairs, strict=True)
        self.values, self.cum = list(values), list(accumulate(weights))
        self.total = self.cum[-1]

    def at(self, h: int) -> Any:
        return self.values[bisect_right(self.cum, h % self.total)]

    def draw(self, rng: random.Random) -> Any:
        return self.at(rng.randrange(self.total))


def rows_at(n: int, scale: float, floor: int = 20) -> int:
    """A dataset's row count at this scale; a tiny demo keeps a few rows of everything."""
    return max(round(n * scale), min(n, floor)) if n else 0


# -- people, legal persons, places --------------------------------------------------------------


class Person(NamedTuple):
    id_number: str
    name: str
    gender: str
    birth_date: dt.date
    district: str
    district_name: str
    ethnicity: str
    address: str
    phone: str
    marital_status: str
    education: str | None
    death_date: dt.date | None


SURNAMES = Weighted(hd.SURNAMES)
ETHNICITY = Weighted(hd.ETHNICITY)
MARITAL_ADULT = Weighted((("已婚", 72), ("未婚", 14), ("离婚", 8), ("丧偶", 6)))
MARITAL_SENIOR = Weighted((("已婚", 62), ("丧偶", 30), ("离婚", 6), ("未婚", 2)))
EDUCATION = Weighted((("研究生", 3), ("大学本科", 18), ("大学专科", 15), ("中等职业教育", 10),
                      ("普通高级中学", 20), ("初级中学", 25), ("小学", 7), ("其他", 2)))
DISTRICTS = list(hd.DISTRICT_GEO)
DISTRICT_W = Weighted((d, round(g[0] * 1000)) for d, g in hd.DISTRICT_GEO.items())
# GB/T 2260 codes in force by year of birth: an ID number carries the code of its registration,
# and the check (stdnum's table) refuses a code that did not exist yet. 220220 is 吉林市市区
# before 1983; 蛟河、桦甸、舒兰、磐石 were counties (220224, 220225, 220222, 220223) first.
ID_REGIONS: dict[str, tuple[tuple[int, str], ...]] = {
    "220202": ((1983, "220202"), (0, "220220")), "220203": ((1983, "220203"), (0, "220220")),
    "220204": ((1983, "220204"), (0, "220220")), "220211": ((1983, "220211"), (0, "220220")),
    "220221": ((1983, "220221"), (0, "220220")),
    "220281": ((1989, "220281"), (1983, "220224"), (0, "220220")),
    "220282": ((1989, "220282"), (1983, "220225"), (0, "220220")),
    "220283": ((1992, "220283"), (1983, "220222"), (0, "220220")),
    "220284": ((1995, "220284"), (1983, "220223"), (0, "220220")),
}
SEQ_SLOTS = 55  # sequence numbers (顺序码) per district: 9 x 55 pairs fit in 001-999
DAY_STEP = 7919  # a prime: day = index * step mod days is a bijection on each band's days


def region_code(district: str, year: int) -> str:
    return next(code for since, code in ID_REGIONS[district] if year >= since)


class People:
    """The residents of the population registry; `person(i)` is a pure function of i, so other
    datasets can name registry residents without holding them. ID numbers are unique by
    construction: a district's residents are spread over the days of their birth band, and
    residents sharing a day get different sequence numbers from their district's own slots."""

    def __init__(self, n: int) -> None:
        self.n = n
        counts = [round(n * hd.DISTRICT_GEO[d][0]) for d in DISTRICTS]
        counts[-1] = n - sum(counts[:-1])
        self.starts = [0, *accumulate(counts)]
        self.slots: list[tuple[int, int]] = []  # j % 100 -> (band, rank within the band)
        for b, (_f, _t, pct) in enumerate(hd.BIRTH_BANDS):
            self.slots += [(b, r) for r in range(pct)]
        self.bands = [(dt.date(f, 1, 1).toordinal(), dt.date(t, 12, 31).toordinal() - dt.date(f, 1, 1)
                       .toordinal() + 1, pct) for f, t, pct in hd.BIRTH_BANDS]
        # Residents born on the same day in the same district take turns through its slots.
        if any(c * pct / 100 / days + 1 > SEQ_SLOTS for c in counts for _f, days, pct in self.bands):
            raise ValueError("population too large for unique demo ID numbers / 演示人口过多")

    def birth(self, i: int) -> tuple[int, dt.date, int]:
        """Resident i's district (index), birth date, and sequence slot (0..SEQ_SLOTS-1)."""
        di = bisect_right(self.starts, i) - 1
        j = i - self.starts[di]
        band, rank = self.slots[j % 100]
        first, days, pct = self.bands[band]
        jb = (j // 100) * pct + rank
        day = (jb * DAY_STEP + di * 131) % days
        return di, dt.date.fromordinal(first + day), (jb // days + day) % SEQ_SLOTS

    def person(self, i: int) -> Person:
        di, born, slot = self.birth(i)
        district = DISTRICTS[di]
        h, h2 = mix(i ^ (SEED << 40)), mix(i + SEED)
        male = bool(h & 1)
        s = di * SEQ_SLOTS + slot
        first17 = (f"{region_code(district, born.year)}{born.year}{born.month:02d}{born.day:02d}"
                   f"{2 * s + (1 if male else 2):03d}")
        streets = hd.STREETS[district]
        district_name = hd.DISTRICT_NAMES[district]
        road = hd.CITY_WORDS[(h >> 32) % len(hd.CITY_WORDS)] + hd.ROAD_KINDS[(h >> 40) % 4]
        room = f"{1 + (h2 >> 28) % 6}0{1 + (h2 >> 32) % 4}"
        address = (f"吉林省吉林市{district_name}{streets[(h >> 28) % len(streets)]}{road}"
                   f"{1 + (h2 >> 8) % 300}号{1 + (h2 >> 20) % 30}栋{room}室")
        phone = hd.MOBILE_PREFIXES[(h2 >> 36) % len(hd.MOBILE_PREFIXES)] + f"{(h2 >> 24) % 10**8:08d}"
        year = born.year
        marital = "未婚" if year > 2002 else (MARITAL_SENIOR if year < 1955 else MARITAL_ADULT).at(h >> 44)
        education = None if year > 2017 else "小学" if year > 2011 else EDUCATION.at(h2 >> 44)
        death = None
        if year < 1950 and (h2 >> 52) % 20 == 0:
            death = dt.date(2015 + (h2 >> 12) % 9, 1 + (h2 >> 16) % 12, 1 + (h2 >> 4) % 28)
        return Person(citizen_id_with_check(first17), self._name(h), "男" if male else "女",
                      born, district, district_name, ETHNICITY.at(h2 >> 50), address, phone, marital,
                      education, death)

    @staticmethod
    def _name(h: int) -> str:
        pool = hd.GIVEN_MALE if h & 1 else hd.GIVEN_FEMALE
        given = pool[(h >> 8) % 30] + (pool[(h >> 16) % 30] if (h >> 24) % 10 < 7 else "")
        return str(SURNAMES.at(h >> 48)) + given

    def name(self, i: int) -> str:
        """Resident i's name alone (what `person(i).name` is, for a fraction of the work)."""
        return self._name(mix(i ^ (SEED << 40)))

    def sample(self, rng: random.Random, k: int, group: str | None = None) -> list[int]:
        """k residents (distinct while the registry has enough of them), of a group if asked
        (`hub_data.GROUPS`: born between two years, of one gender)."""
        first, last, gender = hd.GROUPS[group] if group else (0, 9999, None)
        out: list[int] = []
        seen: set[int] = set()
        for _ in range(max(k * 50, 1000)):
            if len(out) == k:
                break
            i = rng.randrange(self.n)
            if i in seen and len(seen) < self.n // 2:
                continue
            if not first <= self.birth(i)[1].year <= last:
                continue
            if gender and ("男" if mix(i ^ (SEED << 40)) & 1 else "女") != gender:
                continue
            seen.add(i)
            out.append(i)
        return out


class Org(NamedTuple):
    credit_code: str
    name: str
    kind: str
    legal_rep: str
    reg_capital: float
    established: dt.date
    address: str
    district: str
    district_name: str
    status: str
    industry: str


ORG_KINDS = Weighted(hd.ORG_KINDS)
LEGAL_STATUS = Weighted(hd.LEGAL_STATUS)
ORG_CODE_BASE = 60_000_000  # generated organization codes of companies (the bureaus use 13546xxx)


class Orgs:
    """The legal persons of the registry; `org(i)` is a pure function of i (credit codes unique)."""

    def __init__(self, n: int, people: People) -> None:
        self.n, self.people = n, people

    def kind(self, i: int) -> str:
        """The kind of legal person i: 91 企业, 92 个体工商户, 93 农民专业合作社."""
        return str(ORG_KINDS.at(mix(i ^ (SEED << 44) ^ 0x0F0F)))

    def org(self, i: int) -> Org:
        h, h2 = mix(i ^ (SEED << 44) ^ 0x0F0F), mix(i * 31 + SEED)
        kind = ORG_KINDS.at(h)
        district = DISTRICT_W.at(h >> 12)
        dname = hd.DISTRICT_NAMES[district]
        word = hd.WORDS[(h >> 20) % len(hd.WORDS)] + hd.WORDS[(h >> 26) % len(hd.WORDS)]
        code, trade = hd.INDUSTRIES[(h >> 32) % len(hd.INDUSTRIES)]
        if kind == "91":
            name = f"吉林市{word}{trade}有限公司" if (h >> 36) % 4 else f"吉林{word}{trade}股份有限公司"
        elif kind == "92":
            code, name = "F52", f"{dname}{word}{hd.SHOPS[(h >> 36) % len(hd.SHOPS)]}"
        else:
            code, name = "A01", f"{dname}{word}{hd.CROPS[(h >> 36) % len(hd.CROPS)]}种植专业合作社"
        credit = credit_code_with_check(f"{kind}{district}{org_code(ORG_CODE_BASE + i)}")
        rep = self.people.name((h2 >> 8) % self.people.n) if self.people.n else "—"
        capital = round(10 ** (1 + (h2 >> 30) % 1000 / 300), 2) if kind == "91" else round(
            1 + (h2 >> 30) % 50, 2)
        established = dt.date.fromordinal(dt.date(1992, 1, 1).toordinal() + (h2 >> 40) % 11_900)
        streets = hd.STREETS[district]
        address = (f"吉林省吉林市{dname}{streets[(h2 >> 16) % len(streets)]}"
                   f"{hd.CITY_WORDS[(h2 >> 22) % len(hd.CITY_WORDS)]}路{1 + (h2 >> 50) % 500}号")
        return Org(credit, name, kind, rep, capital, established, address, district, dname,
                   LEGAL_STATUS.at(h2), code)

    def sample(self, rng: random.Random, k: int) -> list[int]:
        """k companies (企业, not shops or co-operatives), distinct while there are enough."""
        out: list[int] = []
        seen: set[int] = set()
        for _ in range(max(k * 20, 1000)):
            if len(out) == k:
                break
            i = rng.randrange(self.n)
            if (i in seen and len(seen) < self.n // 4) or self.kind(i) != "91":
                continue
            seen.add(i)
            out.append(i)
        return out


class Place(NamedTuple):
    district: str
    district_name: str
    street: str
    address: str
    lon: float
    lat: float


def place(rng: random.Random, district: str | None = None) -> Place:
    """A point in one of the nine districts, weighted by population, with a street address."""
    district = district or DISTRICT_W.draw(rng)
    _share, lon, lat, spread = hd.DISTRICT_GEO[district]
    street = rng.choice(hd.STREETS[district])
    road = rng.choice(hd.CITY_WORDS) + rng.choice(hd.ROAD_KINDS)
    dname = hd.DISTRICT_NAMES[district]
    return Place(district, dname, street, f"吉林省吉林市{dname}{street}{road}{rng.randint(1, 600)}号",
                 round(lon + rng.gauss(0, spread), 6), round(lat + rng.gauss(0, spread * 0.7), 6))


PLATE_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O on Chinese plates


def plate(n: int) -> str:
    """The n-th Jilin City plate (吉B): a bijection of n onto five characters, so never repeated."""
    x = (n * 7919 + 12345) % 34**5
    chars = []
    for _ in range(5):
        x, r = divmod(x, 34)
        chars.append(PLATE_CHARS[r])
    return "吉B" + "".join(chars)


# -- the generic row maker: columns described by their `gen` -----------------------------------


@dataclass
class World:
    """What every generator draws on: the registries' residents and companies, and the scale."""

    scale: float
    people: People
    orgs: Orgs
    now: dt.datetime = field(default_factory=utcnow)  # "now" of the whole build, in every process
    today: dt.date = field(default_factory=registries.city_today)
    vehicles: int = 1  # registered vehicles, for plates of any of them


class Row:
    """One row being generated: its number and the resident, company and place it is about."""

    def __init__(self, world: World, rng: random.Random, n: int, person: int | None, org: int | None):
        self.world, self.rng, self.n = world, rng, n
        self._person, self._org = person, org
        self._p: Person | None = None
        self._o: Org | None = None
        self._place: Place | None = None
        self.values: dict[str, Any] = {}  # the row's columns so far, for templates

    def person(self) -> Person:
        if self._p is None:
            i = self._person if self._person is not None else self.rng.randrange(self.world.people.n)
            self._p = self.world.people.person(i)
        return self._p

    def org(self) -> Org:
        if self._o is None:
            i = self._org if self._org is not None else self.rng.randrange(self.world.orgs.n)
            self._o = self.world.orgs.org(i)
        return self._o

    def place(self) -> Place:
        if self._place is None:
            self._place = place(self.rng)
        return self._place


Gen = Callable[[Row], Any]
TMPL = re.compile(r"\{(district|street|road|word|n|=\w+)\}")


def _tmpl(text: str) -> Gen:
    def fill(r: Row) -> str:
        def one(m: re.Match[str]) -> str:
            key = m.group(1)
            if key == "district":
                return r.place().district_name
            if key == "street":
                return r.place().street
            if key == "road":
                return r.rng.choice(hd.CITY_WORDS) + r.rng.choice(hd.ROAD_KINDS)
            if key == "word":
                return r.rng.choice(hd.WORDS)
            if key.startswith("="):
                return str(r.values[key[1:]])
            return str(r.n)
        return TMPL.sub(one, text)
    return fill


def _year(text: str, today: dt.date) -> int:
    """A year as written in a catalog: 2016, or relative to this year (-1, +0, +3)."""
    return today.year + int(text) if text[0] in "+-" else int(text)


def _date(a: str, b: str, today: dt.date) -> Gen:
    """Dates between two years; never after today unless the range reaches into later years."""
    lo = dt.date(_year(a, today), 1, 1).toordinal()
    hi = dt.date(_year(b, today), 12, 31).toordinal()
    if not (b[0] == "+" and int(b) > 0):
        hi = min(hi, today.toordinal())
    return lambda r: dt.date.fromordinal(r.rng.randint(lo, hi))


def _pick(spec: str) -> Gen:
    pairs = [(p.split("*")[0], int(p.split("*")[1]) if "*" in p else 1) for p in spec.split("|")]
    w = Weighted(pairs)
    return w.draw


def _credit(prefix: str, offset: str = "0") -> Gen:
    base = 70_000_000 + int(prefix) * 100_000 + int(offset)
    return lambda r: credit_code_with_check(f"{prefix}{CITY_CODE}{org_code(base + r.n)}")


def _num(a: str, b: str) -> Gen:
    lo, hi = float(a), float(b)
    return lambda r: round(r.rng.uniform(lo, hi), 2)


def compile_gen(col: hd.Col, world: World) -> Gen:
    """The generator a column's `gen` names (see the table at the top of `hub_data`)."""
    gen = col.gen
    kind, _, arg = gen.partition(":")
    if kind.startswith("person"):
        attr = gen.split(".", 1)[1]
        return lambda r: getattr(r.person(), attr)
    if kind.startswith("org."):
        attr = gen.split(".", 1)[1]
        return lambda r: getattr(r.org(), attr)
    if kind.startswith("place."):
        attr = gen.split(".", 1)[1]
        return lambda r: getattr(r.place(), attr)
    if kind == "seq":
        return lambda r: arg.format(n=r.n)
    if kind == "plate":
        if arg == "any":
            return lambda r: plate(r.rng.randrange(1, world.vehicles + 1))
        offset = int(arg or 0)
        return lambda r: plate(r.n + offset)
    if kind == "date":
        a, b = arg.split(":")
        return _date(a, b, world.today)
    if kind == "time":
        days = float(arg)
        return lambda r: world.now - dt.timedelta(seconds=r.rng.uniform(0, days * 86400))
    if kind == "int":
        lo, hi = (int(x) for x in arg.split(":"))
        return lambda r: r.rng.randint(lo, hi)
    if kind == "num":
        return _num(*arg.split(":"))
    if kind == "bool":
        p = float(arg)
        return lambda r: r.rng.random() < p
    if kind == "pick":
        pick = _pick(arg)
        return lambda r: int(pick(r.rng)) if col.type == "integer" else pick(r.rng)
    if kind == "list":  # the values in turn: row n gets the n-th
        values = arg.split("|")
        return lambda r: values[(r.n - 1) % len(values)]
    if kind == "choice":
        assert col.choices
        choices = col.choices
        return lambda r: r.rng.choice(choices)
    if kind == "tmpl":
        return _tmpl(arg)
    if kind == "credit":
        return _credit(*arg.split(":"))
    raise ValueError(f"{col.name}: unknown generator {gen!r}")


def draw(ds: hd.Dataset, world: World, n: int) -> tuple[list[int], list[int]]:
    """The residents and companies a dataset's n rows are about (distinct while there are enough),
    drawn once for the whole dataset so that its chunks never repeat a key."""
    rng = random.Random(f"{SEED}:{ds.name}")
    groups = {m.group(1) for col in ds.cols if (m := re.match(r"person@(\w+)\.", col.gen))}
    persons = world.people.sample(rng, n, next(iter(groups), None)) if any(
        col.gen.startswith("person") for col in ds.cols) else []
    orgs = world.orgs.sample(rng, n) if any(col.gen.startswith("org.") for col in ds.cols) else []
    return persons, orgs


def generic_rows(ds: hd.Dataset, world: World, start: int, stop: int, persons: Sequence[int] = (),
                 orgs: Sequence[int] = ()) -> Iterator[dict[str, Any]]:
    """Rows start..stop of a department dataset from its columns' generators; `persons` and
    `orgs` are those rows' residents and companies (from `draw`)."""
    rng = random.Random(f"{SEED}:{ds.name}:{start}")
    # Templates last: they may name the row's other columns ({=stage}).
    cols = sorted(ds.cols, key=lambda col: col.gen.startswith("tmpl:"))
    gens = [(col.name, compile_gen(col, world)) for col in cols]
    for k in range(stop - start):
        r = Row(world, rng, start + k + 1, persons[k] if k < len(persons) else None,
                orgs[k] if k < len(orgs) else None)
        for name, g in gens:
            r.values[name] = g(r)
        yield r.values


# -- the registries' rows -----------------------------------------------------------------------


def population_rows(world: World, start: int, stop: int) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        p = world.people.person(i)
        yield {"id_number": p.id_number, "name": p.name, "gender": p.gender, "birth_date": p.birth_date,
               "ethnicity": p.ethnicity, "household_address": p.address, "district": p.district,
               "marital_status": p.marital_status, "education": p.education, "death_date": p.death_date}


def legal_person_rows(world: World, start: int, stop: int) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        o = world.orgs.org(i)
        yield {"credit_code": o.credit_code, "name": o.name, "legal_rep": o.legal_rep,
               "reg_capital": o.reg_capital, "established": o.established, "address": o.address,
               "status": o.status, "industry": o.industry}


LICENCE_W = Weighted((k, v[3]) for k, v in hd.LICENCES.items())


def licence_rows(world: World, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Licences of residents and companies, each issued by its bureau; expired and revoked ones too."""
    rng = random.Random(f"{SEED}:licences:{start}")
    today = world.today
    for k in range(start + 1, stop + 1):
        kind = LICENCE_W.draw(rng)
        prefix, bureau, years, _share = hd.LICENCES[kind]
        holder = registries.LICENCE_TYPES[kind]
        row: dict[str, Any] = {"type": kind, "holder_type": holder, "holder_citizen_id": None,
                               "holder_credit_code": None, "issuer": f"{CITY_CODE}-{bureau}",
                               "revoked_on": None, "revoked_reason": None}
        if holder == "person":
            p = world.people.person(rng.randrange(world.people.n))
            while p.birth_date.year > today.year - 18 and world.people.n > 1:
                p = world.people.person(rng.randrange(world.people.n))
            row |= {"holder_citizen_id": p.id_number, "holder_name": p.name}
            start_year = max(p.birth_date.year + 18, 2005)
        else:
            o = world.orgs.org(rng.randrange(world.orgs.n))
            row |= {"holder_credit_code": o.credit_code, "holder_name": o.name}
            start_year = max(o.established.year, 2005)
        first = dt.date(min(start_year, today.year), 1, 1).toordinal()
        valid_from = dt.date.fromordinal(rng.randint(min(first, today.toordinal()), today.toordinal()))
        valid_to = valid_from.replace(year=valid_from.year + years, day=min(valid_from.day, 28)) \
            if years else None
        status = "expired" if valid_to and valid_to < today else "valid"
        if rng.random() < 0.02:
            status = "revoked"
            row |= {"revoked_on": dt.date.fromordinal(rng.randint(valid_from.toordinal(),
                                                                  today.toordinal())),
                    "revoked_reason": rng.choice(hd.REVOKE_REASONS)}
        row |= {"licence_no": f"{prefix}-{valid_from.year}-{k:07d}", "valid_from": valid_from,
                "valid_to": valid_to, "status": status}
        yield row
