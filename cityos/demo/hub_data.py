"""The demo city's data hub described as data (演示数据目录): base registries, each bureau's
resources and the sharing requests the demo files, with the pools their values come from.

The catalog itself is `hub_catalog.toml` (long Chinese text reads better there); this module
gives it types. A column is `[name, title, gen, type, flags]` (type defaults to string; flags
are comma-separated: key, indexed, sensitive, internal, unit=元, choices=a/b). `gen` names the
generator of its values (`hub_rows.compile_gen`):
  person.<attr>, person@<group>.<attr>  a resident of the population registry (one per row;
                                        groups in GROUPS)
  org.<attr>                            a company of the legal person registry (one per row)
  place.<attr>                          a place in one of the nine districts (one per row)
  seq:<format>                          a running number `{n}`, formatted (unique: keys use it)
  plate, plate:<offset>, plate:any      a unique Jilin City plate (吉B), or any registered one
  credit:<prefix>:<offset>              a unique credit code (e.g. 52 民办非企业单位)
  date:<from year>:<to year>            years as 2016 or relative to this year (-1, +0, +3)
  time:<days back>, int:<a>:<b>, num:<a>:<b>, bool:<probability>
  pick:<a>*<weight>|<b>|...             one of the values (weights default to 1)
  list:<a>|<b>|...                      the values in turn (row n gets the n-th)
  tmpl:<text>                           with {district} {street} {road} {word} {n} and
                                        {=column}, another column of the row
Datasets with a `maker` other than generic (air quality, buses) are filled by that maker, and
their columns' `gen` only says where the value comes from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cityos.demo.data import CITY_CODE

CATALOG = Path(__file__).with_name("hub_catalog.toml")


@dataclass(frozen=True)
class Col:
    """An information item and how the demo fills it."""

    name: str
    title: str
    gen: str
    type: str = "string"
    sensitivity: str = "public"
    key: bool = False
    indexed: bool = False
    unit: str | None = None
    choices: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, raw: list[str]) -> Col:
        """A column from its catalog line `[name, title, gen, type, flags]`."""
        name, title, gen, *rest = raw
        col = cls(name, title, gen, rest[0] if rest else "string")
        for flag in filter(None, (rest[1] if len(rest) > 1 else "").split(",")):
            key, _, value = flag.partition("=")
            if key in ("sensitive", "internal"):
                col = _replace(col, sensitivity=key)
            elif key in ("key", "indexed"):
                col = _replace(col, **{key: True})
            elif key == "unit":
                col = _replace(col, unit=value)
            elif key == "choices":
                col = _replace(col, choices=tuple(value.split("/")))
            else:
                raise ValueError(f"{name}: unknown flag {flag!r}")
        return col

    def spec(self) -> dict[str, Any]:
        """The item as `hub.service.resource_create` takes it."""
        out: dict[str, Any] = {"name": self.name, "title": self.title, "type": self.type,
                               "sensitivity": self.sensitivity, "is_key": self.key,
                               "indexed": self.indexed, "required": self.key}
        if self.unit:
            out["unit"] = self.unit
        if self.choices:
            out["choices"] = list(self.choices)
        return out


def _replace(col: Col, **changes: Any) -> Col:
    return Col(**{**col.__dict__, **changes})


@dataclass(frozen=True)
class Dataset:
    """One resource of a bureau's catalog and, at scale 1.0, how many rows it gets."""

    bureau: str  # the bureau's code suffix (data.BUREAUS): gaj, hbj, jtj ...
    name: str
    name_en: str
    abstract: str
    cols: tuple[Col, ...]
    rows: int = 0
    maker: str = "generic"  # hub_rows' generator; generic fills each column from its `gen`
    share: str = "unconditional"
    condition: str | None = None
    basis: str | None = None
    open: str = "closed"
    cycle: str = "monthly"
    methods: tuple[str, ...] = ("api", "query")
    related: tuple[str, ...] = ()  # names of related resources (a registry by its branch)
    keywords: tuple[str, ...] = ()
    category: str = "department"
    branch: str | None = None
    secret: bool = False
    floor: int = 20  # a tiny demo keeps at least this many rows (a bus network needs stops)

    @property
    def department(self) -> str:
        return f"{CITY_CODE}-{self.bureau}"

    def spec(self, related_codes: list[str]) -> dict[str, Any]:
        """The catalog entry as `hub.service.resource_create` takes it."""
        return {
            "name": self.name, "name_en": self.name_en, "category": self.category,
            "base_branch": self.branch, "department": self.department, "abstract": self.abstract,
            "share_type": self.share, "share_condition": self.condition, "share_basis": self.basis,
            "share_methods": list(self.methods), "open_type": self.open, "update_cycle": self.cycle,
            "related": related_codes, "keywords": list(self.keywords), "secret": self.secret,
            "items": [col.spec() for col in self.cols],
        }


@dataclass(frozen=True)
class Registry:
    """A base registry installed through `hub.registries`, and its rows at scale 1.0."""

    branch: str
    bureau: str
    rows: int
    authorities: dict[str, str] = field(default_factory=dict)  # role of the definition -> bureau


@dataclass(frozen=True)
class Ask:
    """A sharing request (共享申请) the demo files as a staff member, and what becomes of it:
    auto (the share type decides), pending, overdue (backdated), granted, refused, revoked,
    withdrawn."""

    requester: str  # username
    dataset: str  # the resource's name (a registry by its branch)
    fields: tuple[str, ...]
    purpose: str
    outcome: str
    decider: str | None = None  # the provider's department admin
    granted: tuple[str, ...] = ()  # narrower fields than asked for, when granted
    reason: str | None = None
    basis: str = "《吉林市政务信息资源共享管理办法》"
    reads: int = 0  # reads the requester makes through the grant (audited with the purpose)
    showcase: bool = False  # the one the demo summary tells visitors to try


REGISTRIES: list[Registry] = [
    Registry("population", "gaj", 1_000_000, {"civil": "mzj", "education": "jyj", "health": "wjw"}),
    Registry("legal_person", "zjj", 200_000),
    Registry("licence", "zwb", 300_000),
]


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


@cache
def catalog() -> tuple[tuple[Dataset, ...], tuple[Ask, ...]]:
    """The datasets and requests of `hub_catalog.toml`, read once."""
    raw = tomllib.loads(CATALOG.read_text(encoding="utf-8"))
    datasets = tuple(
        Dataset(**_tuples({k: v for k, v in d.items() if k != "cols"}),
                cols=tuple(Col.parse(c) for c in d["cols"]))
        for d in raw["dataset"])
    asks = tuple(Ask(**_tuples(a)) for a in raw["ask"])
    return datasets, asks


def datasets() -> tuple[Dataset, ...]:
    return catalog()[0]


def asks() -> tuple[Ask, ...]:
    return catalog()[1]


def showcase() -> Ask:
    """The request the summary points visitors to (市交通局 reads part of 市公安局's data)."""
    return next(a for a in asks() if a.showcase)


# -- value pools -----------------------------------------------------------------------------

DISTRICT_NAMES = {"220202": "昌邑区", "220203": "龙潭区", "220204": "船营区", "220211": "丰满区",
                  "220221": "永吉县", "220281": "蛟河市", "220282": "桦甸市", "220283": "舒兰市",
                  "220284": "磐石市"}
# Share of the population and centre (lon, lat) of each district, and the spread in degrees.
DISTRICT_GEO: dict[str, tuple[float, float, float, float]] = {
    "220202": (0.14, 126.574, 43.882, 0.03), "220203": (0.10, 126.596, 43.925, 0.03),
    "220204": (0.10, 126.530, 43.838, 0.03), "220211": (0.08, 126.566, 43.806, 0.03),
    "220221": (0.09, 126.497, 43.672, 0.05), "220281": (0.10, 127.344, 43.724, 0.05),
    "220282": (0.10, 126.746, 42.972, 0.05), "220283": (0.15, 126.965, 44.406, 0.05),
    "220284": (0.14, 126.060, 42.946, 0.05),
}
# Streets and towns (街道/乡镇) of each district, for addresses.
STREETS: dict[str, tuple[str, ...]] = {
    "220202": ("兴华街道", "文庙街道", "站前街道", "延安街道", "通江街道", "孤店子镇"),
    "220203": ("新吉林街道", "山前街道", "遵义街道", "龙华街道", "乌拉街满族镇"),
    "220204": ("南京街道", "大东街道", "北京街道", "青岛街道", "搜登站镇"),
    "220211": ("江南街道", "泰山街道", "丰满街道", "石井街道", "旺起镇"),
    "220221": ("口前镇", "岔路河镇", "北大湖镇", "西阳镇", "一拉溪镇"),
    "220281": ("民主街道", "长安街道", "新站镇", "天岗镇", "拉法街道"),
    "220282": ("明桦街道", "永吉街道", "夹皮沟镇", "红石砬子镇", "八道河子镇"),
    "220283": ("北城街道", "南城街道", "平安镇", "法特镇", "溪河镇"),
    "220284": ("东宁街道", "福安街道", "明城镇", "红旗岭镇", "烟筒山镇"),
}
# Jilin City names many streets after other cities; the demo's roads and bus stops do too.
CITY_WORDS = (
    "北京 上海 天津 重庆 南京 青岛 沈阳 长春 大连 延吉 珲春 通化 四平 辽源 白山 松原 白城 敦化 图们 "
    "龙井 抚顺 鞍山 丹东 锦州 营口 本溪 铁岭 牡丹江 佳木斯 大庆 济南 郑州 武汉 长沙 广州 深圳 成都 "
    "西安 兰州 太原 杭州 福州 南昌 合肥 昆明 贵阳 南宁 厦门 苏州 无锡 宁波 烟台 威海 洛阳 开封 徐州 "
    "扬州 常州 镇江 绍兴 嘉兴 泉州 漳州 珠海 汕头 桂林 遵义 延安 宝鸡 天水 承德 秦皇岛 保定 邯郸 "
    "大同 包头 赤峰").split()
ROAD_KINDS = ("路", "街", "大路", "大街")
# Shop and firm names (字号).
WORDS = ("华 鑫 隆 恒 昌 盛 泰 和 丰 源 达 信 诚 瑞 祥 福 康 安 宏 兴 润 鼎 通 远 正 嘉 金 汇 宇 天 "
         "亿 佳 友 新 博 凯 松 江 雾凇 北山 龙潭 松花湖 长白 吉顺 吉盛 江城").split()
SURNAMES: tuple[tuple[str, int], ...] = (
    ("王", 72), ("李", 70), ("张", 68), ("刘", 55), ("陈", 30), ("杨", 30), ("赵", 28), ("孙", 26),
    ("于", 20), ("高", 18), ("周", 16), ("徐", 16), ("马", 15), ("吴", 14), ("朱", 13), ("胡", 12),
    ("郭", 12), ("林", 10), ("何", 9), ("韩", 11), ("曹", 9), ("姜", 10), ("崔", 9), ("金", 9),
    ("宋", 8), ("郑", 8), ("谢", 6), ("唐", 6), ("许", 7), ("冯", 7), ("邓", 5), ("田", 7),
    ("董", 8), ("袁", 5), ("潘", 5), ("吕", 6), ("范", 6), ("曲", 5), ("孟", 6), ("白", 5),
)
GIVEN_MALE = ("伟 强 磊 军 洋 勇 杰 涛 明 超 刚 辉 建 国 志 "
              "海 鹏 宇 浩 峰 斌 波 鑫 龙 亮 成 东 林 凯 旭").split()
GIVEN_FEMALE = ("芳 娜 敏 静 丽 艳 娟 秀 霞 桂 英 华 玉 兰 红 "
                "燕 琳 婷 雪 梅 莉 颖 倩 欣 悦 晶 丹 萍 慧 佳").split()
ETHNICITY = (("汉族", 910), ("满族", 50), ("朝鲜族", 28), ("回族", 6), ("蒙古族", 6))
MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151",
                   "155", "158", "176", "180", "186", "187", "189", "199")
# Birth years by band (from, to, % of residents): a rough age pyramid of a northeastern city.
BIRTH_BANDS: tuple[tuple[int, int, int], ...] = (
    (1935, 1949, 5), (1950, 1959, 11), (1960, 1969, 17), (1970, 1979, 16), (1980, 1989, 17),
    (1990, 1999, 14), (2000, 2009, 10), (2010, 2023, 10),
)
# Groups of residents a dataset may be about (person@<group>): born from, to, and gender.
GROUPS: dict[str, tuple[int, int, str | None]] = {
    "young": (2006, 2018, None), "adult": (1955, 2002, None), "mother": (1980, 2000, "女"),
    "senior": (1935, 1964, None),
}
# Legal persons: credit code prefix (registration authority + kind) and share in per mille.
ORG_KINDS = (("91", 800), ("92", 160), ("93", 40))  # 企业, 个体工商户, 农民专业合作社
INDUSTRIES = (("F52", "商贸"), ("F51", "贸易"), ("H62", "餐饮管理"), ("E47", "建筑工程"),
              ("C26", "化工"), ("G54", "运输"), ("I65", "科技"), ("A01", "农业开发"),
              ("K70", "房地产开发"), ("O80", "汽车服务"), ("C13", "食品"), ("L72", "商务咨询"))
SHOPS = ("便利店", "超市", "饭店", "五金商店", "理发店", "水果店", "药店", "汽车修理部")
CROPS = ("水稻", "玉米", "大豆", "人参", "食用菌", "蔬菜")
LEGAL_STATUS = (("存续", 700), ("在业", 160), ("吊销", 50), ("注销", 80), ("迁出", 10))
# Electronic licences: type -> (number prefix, issuing bureau, years valid (0: long-term), share).
LICENCES: dict[str, tuple[str, str, int, int]] = {
    "营业执照": ("YYZZ", "zjj", 0, 300), "食品经营许可证": ("JY", "zjj", 5, 90),
    "药品经营许可证": ("YPJY", "zjj", 5, 15), "排污许可证": ("PW", "hbj", 5, 10),
    "道路运输经营许可证": ("DLYS", "jtj", 4, 20), "建筑业企业资质证书": ("JZZZ", "ghj", 5, 10),
    "机动车驾驶证": ("JSZ", "gaj", 10, 420), "医师执业证书": ("YSZY", "wjw", 0, 25),
    "教师资格证书": ("JSZG", "jyj", 0, 60), "残疾人证": ("CJR", "mzj", 10, 40),
    "导游证": ("DYZ", "lfw", 3, 10),
}
REVOKE_REASONS = ("持证主体申请注销", "依法吊销", "证照信息有误，重新核发")
