"""The demo city described as data (演示城市): Jilin City, its districts, bureaus and people.

Everything `cityos demo` creates is listed here, and `plan()` turns these tables into one
ordered list of departments and users; `seed.py` is the only code that reads it. Generated
people come from a fixed random seed, so every build of the demo is identical.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

from cityos.core import access
from cityos.core.identifiers import citizen_id_with_check, credit_code_with_check

CITY_CODE = "220200"  # GB/T 2260: 吉林市 (Jilin City, Jilin Province)
CITY = ("吉林市", "Jilin City")
SEED = 2202  # the random seed of every generated person


@dataclass(frozen=True)
class DepartmentSpec:
    """One department to create; `code` is the admin code for the territorial kinds."""

    code: str
    name: str
    name_en: str
    kind: str
    parent_code: str | None = None
    admin_code: str | None = None
    credit_code: str | None = None


@dataclass(frozen=True)
class UserSpec:
    """One user to create; residents carry a (fake but valid) ID number and mobile number."""

    username: str
    role: str
    department_code: str
    display_name: str
    id_number: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class Plan:
    """The whole demo city in creation order (parents before children)."""

    departments: list[DepartmentSpec] = field(default_factory=list)
    users: list[UserSpec] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.departments) + len(self.users)


# -- territory -------------------------------------------------------------------------------

# The nine districts and counties (county-level cities included), GB/T 2260 codes.
DISTRICTS: list[tuple[str, str, str]] = [
    ("220202", "昌邑区", "Changyi District"),
    ("220203", "龙潭区", "Longtan District"),
    ("220204", "船营区", "Chuanying District"),
    ("220211", "丰满区", "Fengman District"),
    ("220221", "永吉县", "Yongji County"),
    ("220281", "蛟河市", "Jiaohe City"),
    ("220282", "桦甸市", "Huadian City"),
    ("220283", "舒兰市", "Shulan City"),
    ("220284", "磐石市", "Panshi City"),
]

# Real streets and townships (街道/乡镇) of the four urban districts. Their codes are generated
# in the statistical-division format (统计用区划代码): county code + 3 digits, numbered in the
# order listed here; they are not the official statistical codes.
STREETS: dict[str, list[tuple[str, str]]] = {
    "220202": [("兴华街道", "Xinghua Subdistrict"), ("文庙街道", "Wenmiao Subdistrict"),
               ("站前街道", "Zhanqian Subdistrict"), ("延安街道", "Yan'an Subdistrict"),
               ("孤店子镇", "Gudianzi Town")],
    "220203": [("新吉林街道", "Xinjilin Subdistrict"), ("山前街道", "Shanqian Subdistrict"),
               ("遵义街道", "Zunyi Subdistrict"), ("乌拉街满族镇", "Wulajie Manchu Town")],
    "220204": [("南京街道", "Nanjing Subdistrict"), ("大东街道", "Dadong Subdistrict"),
               ("北京街道", "Beijing Subdistrict"), ("搜登站镇", "Soudengzhan Town")],
    "220211": [("江南街道", "Jiangnan Subdistrict"), ("泰山街道", "Taishan Subdistrict"),
               ("丰满街道", "Fengman Subdistrict"), ("旺起镇", "Wangqi Town")],
}

# Communities (社区/村) under some streets, keyed by the street's generated 9-digit code; their
# 12-digit codes are generated the same way (street code + 3 digits). The names are illustrative.
COMMUNITIES: dict[str, list[tuple[str, str]]] = {
    "220202001": [("北山社区", "Beishan Community"), ("江湾社区", "Jiangwan Community")],
    "220203001": [("新吉林社区", "Xinjilin Community"), ("铁东社区", "Tiedong Community")],
    "220204001": [("临江社区", "Linjiang Community"), ("青岛社区", "Qingdao Community")],
    "220211001": [("江南社区", "Jiangnan Community"), ("松江社区", "Songjiang Community")],
}

# -- bureaus (委办局) ---------------------------------------------------------------------------

# The city's bureaus the master plan names: code suffix (pinyin initials), name, English name,
# and an English slug for the demo usernames. Each gets a unified social credit code of a
# government organ (登记管理部门 1 机构编制, 类别 1 机关) registered in 220200.
BUREAUS: list[tuple[str, str, str, str]] = [
    ("zwb", "市政网办", "Government Online Service Office", "egov"),
    ("gaj", "市公安局", "Public Security Bureau", "police"),
    ("hbj", "市环保局", "Environmental Protection Bureau", "env"),
    ("jtj", "市交通局", "Transport Bureau", "transport"),
    ("ghj", "市规划局", "Urban Planning Bureau", "planning"),
    ("wjw", "市卫生计生委", "Health and Family Planning Commission", "health"),
    ("mzj", "市民政局", "Civil Affairs Bureau", "civil"),
    ("jyj", "市教育局", "Education Bureau", "education"),
    ("xzzfj", "市行政执法局", "Administrative Law Enforcement Bureau", "enforcement"),
    ("zjj", "市质监局", "Quality and Technical Supervision Bureau", "quality"),
    ("fgw", "市发改委", "Development and Reform Commission", "ndrc"),
    ("gxj", "市工信局", "Industry and Information Technology Bureau", "industry"),
    ("nw", "市农委", "Agriculture Commission", "agriculture"),
    ("lfw", "市旅发委", "Tourism Development Commission", "tourism"),
    ("dsjj", "市大数据局", "Big Data Bureau", "data"),
]
CREDIT_PREFIX = "11"  # GB 32100: 机构编制 + 机关 (a government organ)
ORG_CODE_BASE = 13_546_000  # generated organization codes (GB 11714) count up from here

# -- users -----------------------------------------------------------------------------------

# (username, role, department code, display name). Bureau and district staff follow below.
PEOPLE: list[tuple[str, str, str, str]] = [
    ("admin", access.PLATFORM_ADMIN, CITY_CODE, "平台管理员"),
    ("auditor", access.AUDITOR, CITY_CODE, "审计员"),
    # 市公安局's own auditor: sees who read the bureau's data, and for what (the data hub demo).
    ("police_auditor", access.AUDITOR, f"{CITY_CODE}-gaj", "市公安局审计员"),
]
# Bureaus and districts that get a department admin and a staff member (by slug / code).
STAFFED_BUREAUS = ["egov", "police", "env", "transport", "health", "civil"]
STAFFED_DISTRICTS: dict[str, str] = {"220202": "changyi", "220204": "chuanying",
                                     "220203": "longtan", "220211": "fengman",
                                     "220221": "yongji"}
# Street staffers (街道工作人员): username prefix by street code.
STAFFED_STREETS: dict[str, str] = {"220202001": "xinghua", "220204001": "nanjing"}
ROLE_SUFFIX = {access.DEPARTMENT_ADMIN: "admin", access.DEPARTMENT_STAFF: "staff"}
RESIDENTS = 8

SURNAMES = "王李张刘陈杨赵黄周吴徐孙朱马胡郭林何高梁郑罗宋谢唐韩曹许邓萧冯"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红文辉建国志海燕鹏宇浩"
# Mobile number prefixes of the three carriers (号段).
MOBILE_PREFIXES = ["130", "131", "132", "133", "135", "136", "137", "138", "139", "150",
                   "151", "155", "158", "176", "180", "186", "187", "189", "199"]
# The urban districts' codes date from 1983, and the ID check (stdnum's region table) refuses a
# region code that did not exist in the birth year: generated residents are born 1983-2005.
BIRTH_FROM, BIRTH_TO = dt.date(1983, 1, 1), dt.date(2005, 12, 31)


def org_code(n: int) -> str:
    """A GB 11714 organization code: 8 digits and their check character."""
    body = f"{n:08d}"
    weights = (3, 7, 9, 10, 5, 8, 4, 2)
    check = 11 - sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11
    return body + {10: "X", 11: "0"}.get(check, str(check))


def bureau_credit_code(index: int) -> str:
    """The deterministic unified social credit code (统一社会信用代码) of the index-th bureau."""
    return credit_code_with_check(CREDIT_PREFIX + CITY_CODE + org_code(ORG_CODE_BASE + index))


def territory() -> list[DepartmentSpec]:
    """The city, its districts and counties, streets and communities, parents first."""
    depts = [DepartmentSpec(CITY_CODE, CITY[0], CITY[1], "city", None, CITY_CODE)]
    for code, name, name_en in DISTRICTS:
        depts.append(DepartmentSpec(code, name, name_en, "district", CITY_CODE, code))
    for district, streets in STREETS.items():
        for i, (name, name_en) in enumerate(streets, start=1):
            code = f"{district}{i:03d}"
            depts.append(DepartmentSpec(code, name, name_en, "street", district, code))
            for j, (cname, cname_en) in enumerate(COMMUNITIES.get(code, []), start=1):
                ccode = f"{code}{j:03d}"
                depts.append(DepartmentSpec(ccode, cname, cname_en, "community", code, ccode))
    return depts


def bureaus() -> list[DepartmentSpec]:
    """The city's bureaus, coded city code + pinyin initials (e.g. 220200-gaj)."""
    return [
        DepartmentSpec(f"{CITY_CODE}-{suffix}", name, name_en, "bureau", CITY_CODE,
                       credit_code=bureau_credit_code(i))
        for i, (suffix, name, name_en, _slug) in enumerate(BUREAUS, start=1)
    ]


def staff(depts: dict[str, DepartmentSpec]) -> list[UserSpec]:
    """Admins, auditors and staff: one admin and one staffer per staffed bureau and district."""
    users = [UserSpec(*person) for person in PEOPLE]
    slugs = {slug: f"{CITY_CODE}-{suffix}" for suffix, _n, _e, slug in BUREAUS}
    units = [(slugs[s], s) for s in STAFFED_BUREAUS] + list(STAFFED_DISTRICTS.items())
    for code, prefix in units:
        for role, suffix in ROLE_SUFFIX.items():
            users.append(UserSpec(f"{prefix}_{suffix}", role, code,
                                  f"{depts[code].name}{access.ROLES[role][0]}"))
    for code, prefix in STAFFED_STREETS.items():
        users.append(UserSpec(f"{prefix}_staff", access.DEPARTMENT_STAFF, code,
                              f"{depts[code].name}{access.ROLES[access.DEPARTMENT_STAFF][0]}"))
    return users


def residents(depts: list[DepartmentSpec], rng: random.Random) -> list[UserSpec]:
    """Residents (居民) with fake ID numbers valid under GB 11643 and mobile numbers."""
    homes = [d for d in depts if d.kind in ("street", "community")]
    people: list[UserSpec] = []
    taken: set[str] = set()
    span = (BIRTH_TO - BIRTH_FROM).days
    while len(people) < RESIDENTS:
        home = rng.choice(homes)
        born = BIRTH_FROM + dt.timedelta(days=rng.randrange(span + 1))
        # The 3-digit sequence (顺序码): odd for men, even for women.
        first17 = f"{home.code[:6]}{born:%Y%m%d}{rng.randrange(1, 1000):03d}"
        id_number = citizen_id_with_check(first17)
        if id_number in taken:
            continue
        taken.add(id_number)
        name = rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.choice((1, 2))))
        phone = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        people.append(UserSpec(f"resident{len(people) + 1:02d}", access.RESIDENT, home.code,
                               name, id_number, phone))
    return people


def plan() -> Plan:
    """The demo city, identical on every call (a fresh random.Random(SEED) each time)."""
    depts = territory() + bureaus()
    by_code = {d.code: d for d in depts}
    users = staff(by_code) + residents(depts, random.Random(SEED))
    return Plan(depts, users)
