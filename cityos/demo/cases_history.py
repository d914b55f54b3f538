"""The demo city's case catalog and a generated case history (历史工单) for smart dispatch.

`CATEGORIES` is the catalog `cityos demo` seeds (事项类别: the 12345 hotline's matters and the
city-management components and events of GB/T 30428), described as data. `history(n, seed)`
writes what residents of Jilin City would have said about each, so that the dispatch model has
closed cases to learn from: templates, places, times, colloquial and north-eastern phrasing,
typos, and — as in a real hotline's records — texts that fit two categories, a few cases the
dispatcher filed under a neighbouring category, and a few that say almost nothing. The model
should therefore learn well but not perfectly. Deterministic for a seed; names are illustrative.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cityos.demo import data


@dataclass(frozen=True)
class CategorySpec:
    """One category of the catalog; `department` is a slug the demo maps to a department."""

    code: str
    name: str
    name_en: str
    group: str
    line: str  # hotline|citymgmt
    kind: str  # consultation|help|complaint|report|suggestion; component|event (GB/T 30428)
    department: str
    keywords: tuple[str, ...]
    gbt_code: str | None = None  # GB/T 30428 major + minor class, city management only
    attributes: tuple[dict[str, Any], ...] = ()  # Open311 service attributes


def _attr(code: str, description: str, values: dict[str, str], required: bool = True) -> dict[str, Any]:
    return {"code": code, "datatype": "singlevaluelist", "required": required, "description": description,
            "values": [{"key": k, "name": v} for k, v in values.items()]}


_C = CategorySpec
CATEGORIES: tuple[CategorySpec, ...] = (
    # -- city management (数字城管): components (部件) and events (事件) of GB/T 30428
    _C("manhole", "井盖破损/缺失", "Manhole cover damaged or missing", "市政设施", "citymgmt", "component",
       "municipal", ("井盖", "雨水箅子", "窨井", "井口"), "0101",
       (_attr("cover_state", "井盖状态",
              {"missing": "缺失", "broken": "破损", "loose": "松动", "sunk": "下沉"}),)),
    _C("streetlight", "路灯不亮/损坏", "Street light out or damaged", "市政设施", "citymgmt", "component",
       "municipal", ("路灯", "灯杆", "景观灯", "照明"), "0118",
       (_attr("light_state", "路灯状态", {"off": "不亮", "flicker": "闪烁", "day": "白天亮灯",
                                          "pole": "灯杆损坏"}),)),
    _C("road", "道路破损", "Damaged road", "市政设施", "citymgmt", "event", "municipal",
       ("路面", "坑洼", "塌陷", "人行道砖"), "0401"),
    _C("waterlogging", "道路积水/排水不畅", "Standing water, blocked drains", "市政设施", "citymgmt", "event",
       "municipal", ("积水", "下水道", "雨水口", "排水"), "0406"),
    _C("snow", "积雪结冰", "Snow and ice on roads", "市容环境", "citymgmt", "event", "citymgmt",
       ("积雪", "结冰", "清雪", "冰溜子"), "0407"),
    _C("garbage", "垃圾清运", "Garbage collection", "市容环境", "citymgmt", "event", "citymgmt",
       ("垃圾", "垃圾箱", "清运", "建筑垃圾"), "0102"),
    _C("vending", "占道经营", "Street vending on roads", "街面秩序", "citymgmt", "event", "enforcement",
       ("占道", "摊贩", "店外经营", "马路市场"), "0504"),
    _C("illegal_building", "违章建筑", "Illegal construction", "市容环境", "citymgmt", "event", "enforcement",
       ("违建", "私搭乱建", "加盖", "扩建"), "0101"),
    _C("ads", "小广告/乱涂乱画", "Illegal flyers and graffiti", "宣传广告", "citymgmt", "event",
       "enforcement", ("小广告", "张贴", "喷涂", "横幅"), "0201"),
    _C("construction", "施工扰民/工地扬尘", "Construction site nuisance", "施工管理", "citymgmt", "event",
       "enforcement", ("工地", "施工", "扬尘", "渣土车"), "0301"),
    _C("trees", "园林绿化/树木", "Trees and green space", "园林绿化", "citymgmt", "component", "parks",
       ("树木", "绿地", "修剪", "绿化带"), "0402",
       (_attr("tree_state", "树木情况", {"fallen": "倒伏", "branch": "断枝", "prune": "需修剪",
                                         "damage": "绿地破坏"}, required=False),)),
    # -- the 12345 hotline (政务服务便民热线)
    _C("heating", "供暖问题", "Heating", "公用事业", "hotline", "complaint", "heating",
       ("暖气", "供暖", "采暖费", "室温")),
    _C("water", "供水问题", "Water supply", "公用事业", "hotline", "help", "water",
       ("停水", "自来水", "水压", "水质")),
    _C("gas", "燃气问题", "Gas supply", "公用事业", "hotline", "help", "gas",
       ("燃气", "煤气", "天然气", "燃气表")),
    _C("noise", "噪音扰民", "Noise nuisance", "环境保护", "hotline", "complaint", "env",
       ("噪音", "吵闹", "扰民", "音响")),
    _C("fumes", "餐饮油烟", "Restaurant fumes", "环境保护", "hotline", "complaint", "env",
       ("油烟", "烧烤", "排烟", "净化器")),
    _C("pollution", "环境污染", "Pollution", "环境保护", "hotline", "report", "env",
       ("排污", "黑烟", "焚烧", "异味")),
    _C("parking", "违法停车", "Illegal parking", "交通出行", "hotline", "report", "police",
       ("乱停车", "消防通道", "占用车位", "僵尸车")),
    _C("signal", "交通信号/标志", "Traffic signals and signs", "交通出行", "hotline", "report", "police",
       ("红绿灯", "信号灯", "交通标志", "斑马线")),
    _C("bus", "公交出行", "Buses", "交通出行", "hotline", "complaint", "transport",
       ("公交", "公交车", "站点", "线路")),
    _C("taxi", "出租车服务", "Taxis", "交通出行", "hotline", "complaint", "transport",
       ("出租车", "拒载", "绕路", "网约车")),
    _C("property", "物业纠纷", "Property management disputes", "住房物业", "hotline", "complaint", "housing",
       ("物业", "物业费", "业委会", "维修基金")),
    _C("elevator", "电梯故障", "Lift faults", "住房物业", "hotline", "help", "market",
       ("电梯", "困人", "年检", "停运")),
    _C("consumer", "消费投诉", "Consumer complaints", "市场监管", "hotline", "complaint", "market",
       ("退款", "预付卡", "商家", "欺诈")),
    _C("food", "食品安全", "Food safety", "市场监管", "hotline", "report", "market",
       ("过期", "食品", "卫生", "无证")),
    _C("medical", "医疗卫生", "Health care", "医疗卫生", "hotline", "complaint", "health",
       ("医院", "医生", "挂号", "疫苗")),
    _C("school", "教育", "Education", "教育", "hotline", "consultation", "education",
       ("学校", "入学", "补课", "幼儿园")),
    _C("social_security", "社保医保咨询", "Social and medical insurance", "社会保障", "hotline",
       "consultation", "hotline", ("社保", "医保", "养老保险", "退休")),
    _C("hukou", "户籍证件", "Household registration and ID", "户籍证件", "hotline", "consultation",
       "police", ("户口", "身份证", "居住证", "迁移")),
    _C("welfare", "社会救助/养老", "Social assistance and elderly care", "社会保障", "hotline", "help",
       "civil", ("低保", "救助", "养老", "残疾人")),
)
BY_CODE = {c.code: c for c in CATEGORIES}

# Demo rules that win over the model (see cityos.cases.dispatching.rules_from): a point inside a
# park is the parks department's, whatever the text says.
RULES: tuple[dict[str, str], ...] = (
    {"layer": "parks", "category": "trees", "department": "parks",
     "reason": "位于公园范围内，由园林部门办理 / inside a park: the parks department handles it"},
)


def _s(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


@dataclass(frozen=True)
class Phrases:
    """What residents say about one category: short titles, the problem, what it causes, where."""

    shorts: tuple[str, ...]
    problems: tuple[str, ...]
    effects: tuple[str, ...] = ()
    where: str = "any"  # home|street|public|none|any
    weight: int = 3  # how common the category is
    urgent: float = 0.03


P = Phrases
PHRASES: dict[str, Phrases] = {
    "manhole": P(_s("井盖缺失|井盖破损|井盖松动|井盖丢了|雨水箅子丢了|井盖下沉|井口没盖"), _s(
        "路边的井盖不知道被谁偷走了，就剩一个大窟窿|井盖碎成好几块，车一压就往下掉|井盖松动，车压过去咣当咣当响|"
        "雨水箅子丢了一个，自行车轮子容易卡进去|人行道上的井盖塌下去半截|井盖比路面低了一大块，车过去颠得厉害|"
        "污水井盖裂了一道大缝|井盖被车压翻了，一直没人盖回去|井口就用几块砖头挡着，没有盖子|"
        "电力井盖破了个洞|小区门口井盖晃动，晚上走路差点踩空"), _s(
        "晚上看不清，非常危险|已经有老人崴了脚|孩子上学天天从这走，太吓人了|下雨天根本看不见井口"),
        "street", 3, 0.25),
    "streetlight": P(_s("路灯不亮|路灯损坏|路灯白天亮着|路灯忽明忽暗|灯杆倾斜|一排路灯都不亮"), _s(
        "这一段路灯已经好几天晚上都不亮了|路灯一闪一闪的，一会亮一会灭|大白天路灯还开着，浪费电|"
        "路灯杆被车撞歪了，斜在路边|路灯灯罩掉下来了|一整排路灯全黑了|灯杆底座的检修门没了，里面电线露着|"
        "桥上的灯坏了好几盏|路灯特别暗，跟没开一样"), _s(
        "晚上黑灯瞎火的，走路不安全|下夜班回家一路摸黑|晚上都不敢出门遛弯|电线露着小孩容易碰到"),
        "street", 4),
    "road": P(_s("道路破损|路面坑洼|路面塌陷|人行道砖松动|马路大坑|路面裂缝"), _s(
        "马路中间有个大坑，车开过去直颠|路面坑坑洼洼的，一下雨全是水坑|路面塌了一块，拿锥桶围着好久没修|"
        "人行道的地砖松了，一踩溅一身泥水|路面裂了好几条大缝|减速带坏了，钉子都露出来了|"
        "修完管道回填不实，路面又陷下去了|路边石被撞碎了|冬天冻裂的路面开春了还没补"), _s(
        "车胎都颠爆了|骑电动车的摔倒好几个了|天天堵车就因为这个坑"), "street", 4, 0.08),
    "waterlogging": P(_s("道路积水|雨后积水|下水道堵塞|排水不畅|路口积水"), _s(
        "一下雨路口就积水，水深没过脚脖子|下水道堵了，雨水排不出去|雨水口被树叶垃圾堵死了|"
        "桥洞下面积水很深，车都熄火了|下水井往外冒水|路边排水沟满了，水往人行道上漫|"
        "小区门口下雨后积水好几天不退"), _s("行人只能蹚水过去|汽车开过去溅人一身|上学的孩子过不去"),
        "street", 2, 0.1),
    "snow": P(_s("积雪未清|道路结冰|人行道积雪|清雪不及时|冰溜子"), _s(
        "下完雪好几天了，人行道上的雪还没人清|路面结了厚厚一层冰，特别滑|公交站附近的雪堆得老高|"
        "清雪车把雪都推到小区门口堵住了|楼檐上挂着大冰溜子，随时可能掉下来|坡道上全是冰，车都上不去|"
        "学校门口的冰没人刨|雪堆在盲道上好几天了"),
        _s("老人出门摔了好几个|早上上班滑倒好几次|车辆打滑差点撞上"), "street", 3, 0.08),
    "garbage": P(_s("垃圾清运不及时|垃圾堆放|垃圾箱满溢|暴露垃圾|建筑垃圾乱倒|垃圾没人收"), _s(
        "垃圾箱满了好几天都没人来收|小区门口垃圾堆成了小山，味道特别大|有人半夜往路边倒装修垃圾|"
        "垃圾桶坏了，垃圾撒了一地|垃圾站周围脏得不行，苍蝇到处飞|路边的果皮纸屑没人扫|"
        "垃圾车收垃圾的时候撒得到处都是|楼下的垃圾好几天没清理，都招耗子了|河边有人乱扔垃圾"), _s(
        "夏天臭得窗户都不敢开|太埋汰了|影响市容"), "any", 5),
    "vending": P(_s("占道经营|流动摊贩|店外经营|早市占道|马路市场"), _s(
        "早市的摊子都摆到马路中间了|小商贩推车在人行道上卖水果|饭店把桌子摆到人行道上|"
        "门市把货物都摆到店门外的人行道上|卖菜的三轮车把路口堵死了|修车铺在人行道上修车，满地油污|"
        "学校门口小摊贩占道卖东西"), _s("行人只能走机动车道|早上上班车根本过不去|散摊后满地垃圾"),
        "street", 4),
    "illegal_building": P(_s("违章建筑|私搭乱建|违建|楼顶加盖|私自扩建"), _s(
        "一楼住户私自往外扩建了一间房|楼顶有人加盖了彩钢房|邻居在绿地上私搭了个棚子|"
        "有人把小区公共区域圈起来盖了仓房|门市私自打通承重墙|楼下违建挡住了消防通道|"
        "河边有人私自建房|在公共楼道里砌墙占用"), _s("存在安全隐患|影响采光|挡着消防车进出"), "home", 3),
    "ads": P(_s("小广告|乱贴广告|乱涂乱画|非法广告|横幅乱挂"), _s(
        "楼道里贴满了开锁办证的小广告|电线杆上全是乱贴的小广告|有人在墙上喷涂电话号码|"
        "路边有人散发传单，扔得满地都是|广告牌摇摇晃晃，快掉下来了|店铺私自挂的横幅挡住了路牌|"
        "单元门上刚刷的漆又被贴满了广告"), (), "any", 2),
    "construction": P(_s("工地扬尘|施工扰民|夜间施工|渣土车遗撒|施工占道"), _s(
        "工地没有围挡，刮风时灰土漫天|晚上十一点了工地还在打桩|渣土车一路走一路撒土|"
        "工地车辆带泥上路，马路上全是泥|施工把人行道全占了，没留通道|施工围挡倒了一片没人管|"
        "拆迁工地不洒水，灰特别大"), _s("窗户都不敢开|影响休息|路过一身土"), "street", 3),
    "trees": P(_s("树木倒伏|树枝折断|修剪树木|绿地破坏|行道树歪倒|杨絮"), _s(
        "大风把路边的树刮倒了，横在路上|树枝快断了，耷拉在人行道上方|楼前的树太高挡住了阳光，希望修剪一下|"
        "树枝碰到电线了，刮风时打火花|有人把绿化带里的草皮挖了种菜|公园里的树死了好几棵没人管|"
        "杨树毛子满天飞|绿化带里的树被车撞倒了|树上有个马蜂窝|树根把人行道的砖都拱起来了"), (), "any", 3),
    "heating": P(_s("暖气不热|供暖不达标|暖气漏水|停暖|采暖费|暖气管道异响"), _s(
        "家里暖气一直不热，室温才十四五度|暖气片上热下凉|暖气阀门漏水，地板都泡了|"
        "供热站说管网维修，已经停暖两天了|交了采暖费暖气还是不热|暖气管子里有空气，哗哗响|"
        "入冬以来家里贼冷，屋里得穿棉袄|热力公司的电话一直没人接|暖气放风之后还是凉的|"
        "楼上改了暖气管道，我家就不热了|供暖期都开始了还没来热"), _s(
        "家里有老人孩子，冻感冒了|开电暖器电费好几百"), "home", 8, 0.06),
    "water": P(_s("停水|水压低|水质发黄|自来水问题|水管漏水|水表冻裂"), _s(
        "家里突然停水了，也没有提前通知|水压太低了，楼上根本上不去水|自来水放出来是黄色的，还有异味|"
        "楼道里的水管爆了，水哗哗往外流|停水好几天了一直没来|水表冻裂了|自来水漂白粉味特别重|"
        "二次供水的水箱不知道多久没清洗了|小区外面的供水管道漏水"), _s("做饭洗衣都成问题|老人只能下楼拎水"),
        "home", 5, 0.1),
    "gas": P(_s("燃气泄漏|煤气味|燃气表问题|天然气开通|燃气灶打不着"), _s(
        "楼道里有很大的煤气味|燃气表不走字了|燃气表显示余额不足但刚充过|天然气开通需要什么手续|"
        "燃气灶打不着火|燃气管道锈得厉害|家里燃气报警器一直响|燃气公司上门安检要收费是否合理|"
        "户外燃气管道被施工挖破了"), _s("担心出事|家里不敢开火"), "home", 3, 0.3),
    "noise": P(_s("噪音扰民|广场舞噪音|夜间噪音|装修噪音|商铺喇叭"), _s(
        "楼下广场舞音响开得特别大声|KTV唱歌到凌晨两三点|楼上天天晚上装修砸墙|商店门口大喇叭循环播放|"
        "邻居家狗整夜叫|楼下空调外机声音太大|酒吧音乐声震得玻璃响|早上五点就有人在楼下喊着卖菜"), _s(
        "孩子要高考了根本没法学习|整宿睡不着觉|老人心脏不好受不了"), "home", 6),
    "fumes": P(_s("餐饮油烟|油烟扰民|烧烤油烟|排烟管道"), _s(
        "楼下饭店油烟直接往楼上排|烧烤店的烟呛得窗户都打不开|饭店没装油烟净化器|油烟管道正对着我家窗户|"
        "露天烧烤烟雾很大|饭店后厨排风扇对着居民楼|家里衣服都是油烟味"), _s("夏天没法开窗|呛得直咳嗽"),
        "home", 3),
    "pollution": P(_s("环境污染|排放黑烟|污水直排|焚烧垃圾|刺鼻异味"), _s(
        "工厂烟囱冒黑烟|有人往江里排污水|附近企业晚上偷偷排放，气味刺鼻|有人在空地上焚烧垃圾和轮胎|"
        "洗车店污水直接排到路上|化工厂附近一股臭味|锅炉房烟尘很大，窗台上一层黑灰|养殖场粪便乱排，臭气熏天"),
        _s("对身体有害|江水都变色了"), "any", 2),
    "parking": P(_s("违法停车|乱停车|占用消防通道|车辆堵门|僵尸车"), _s(
        "有车长期停在人行道上|车堵在小区门口出不去|消防通道上停满了车|有辆车停在盲道上好几天了|"
        "路口乱停车导致拥堵|一辆破车停在路边一年多没人动|车停在我家车库门口，联系不上车主"), _s(
        "救护车都进不来|早上上班出不去"), "street", 6),
    "signal": P(_s("信号灯故障|红绿灯不亮|信号灯时间不合理|交通标志损坏|斑马线"), _s(
        "路口红绿灯坏了，一直闪黄灯|红绿灯时间太短，老人过不去马路|左转灯时间太短，车排老长|"
        "信号灯被广告牌挡住看不见|交通标志牌被撞倒了|人行横道的按钮灯不管用|路口没有红绿灯，车开得很快很危险|"
        "斑马线都磨没了"), _s("差点出车祸|早晚高峰堵得厉害"), "street", 2, 0.06),
    "bus": P(_s("公交服务|公交车晚点|公交线路|公交站点|公交司机态度"), _s(
        "公交车等了四十多分钟都不来|司机开车太猛，老人差点摔倒|公交车不进站停车|"
        "建议增加一条到开发区的公交线路|公交车司机态度恶劣|末班车提前发车|公交车过站不停|公交卡刷不上|"
        "车上不开暖风冻得够呛|站牌信息跟实际线路不一致"), (), "public", 4),
    "taxi": P(_s("出租车拒载|出租车绕路|不打表|出租车服务|网约车"), _s(
        "出租车司机拒载，说不顺路|司机故意绕路多收钱|打车不打表，张口要五十|出租车拼客|司机一路抽烟|"
        "东西落在出租车上了想找回来|网约车司机取消订单还扣钱"), (), "public", 2),
    "property": P(_s("物业纠纷|物业不作为|物业费|物业服务差|小区管理"), _s(
        "物业费涨了却什么服务都没有|楼道灯坏了物业一直不修|物业不让装修材料进小区|小区门禁坏了好几个月|"
        "物业把小区绿地改成停车位收费|楼顶漏水找物业说没有维修基金|物业停水停电催缴物业费|"
        "小区换物业，新老物业扯皮"), _s("业主意见很大|找了好几次都不管"), "home", 6),
    "elevator": P(_s("电梯故障|电梯困人|电梯停运|电梯年检过期"), _s(
        "电梯又坏了，老人上不去楼|电梯突然停在半截，把人困在里面了|电梯运行时晃得厉害，有异响|"
        "电梯年检标志过期了|电梯门关不严|电梯停了一个多星期没人修"), _s("住十八楼，天天爬楼|太危险了"),
        "home", 2, 0.2),
    "consumer": P(_s("消费投诉|预付卡退费|商家拒绝退款|商家欺诈|虚假宣传"), _s(
        "健身房办了卡就跑路了|理发店办的会员卡不给退|买的电视刚用一周就坏了，商家不给换|网购的商品与描述不符|"
        "商场打折先涨价后降价|装修公司收了定金不干活|培训机构不退学费|超市价签和结账价格不一样"), (),
        "public", 4),
    "food": P(_s("食品安全|过期食品|餐馆卫生|无证餐饮"), _s(
        "超市卖过期的牛奶|在饭店吃完饭全家拉肚子|小饭馆后厨脏乱差|菜市场卖注水肉|外卖里吃出了头发|"
        "网红店没有营业执照"), (), "public", 2),
    "medical": P(_s("医疗服务|看病难|医生态度|疫苗接种|医院收费"), _s(
        "医院挂号排了三个小时|医生态度很差，问两句就不耐烦|医院乱收费，检查项目重复|"
        "社区卫生服务中心疫苗没有了|急诊等了很久没人管|想咨询一下孩子打疫苗的时间|诊所无证行医"), (),
        "public", 3),
    "school": P(_s("入学咨询|学校收费|课外补习|校车|转学"), _s(
        "孩子明年上小学，学区怎么划分|学校要求买指定的教辅资料|老师暗示学生课外补课|幼儿园收费太高|"
        "孩子在学校被欺负，老师不管|校车超载|转学需要什么手续"), (), "any", 3),
    "social_security": P(_s("社保咨询|医保报销|养老保险|社保卡补办|退休金"), _s(
        "想问一下灵活就业怎么交社保|医保异地报销需要什么材料|社保卡丢了怎么补办|退休金什么时候调整|"
        "养老保险断交了怎么补缴|生育保险怎么报销|医保卡里的钱能给家人用吗"), (), "none", 4),
    "hukou": P(_s("户籍咨询|身份证办理|户口迁移|居住证"), _s(
        "身份证到期了在哪里换|孩子上户口需要准备什么材料|户口从外地迁过来怎么办|居住证怎么办理|"
        "身份证丢了能异地补办吗|户口本上名字写错了怎么改"), (), "none", 2),
    "welfare": P(_s("低保申请|社会救助|养老服务|困难补助|残疾人补贴"), _s(
        "家里困难想申请低保，不知道找谁|独居老人没人照顾，能不能帮帮忙|残疾人补贴一直没发下来|"
        "想给老人申请养老院|临时救助怎么申请|路边有流浪人员，天冷了需要救助"), (), "any", 2, 0.05),
}

# Texts that fit more than one category, with how often the hotline filed each under which.
AMBIGUOUS: tuple[tuple[str, dict[str, float]], ...] = (
    ("烧烤店晚上又吵又呛，噪音和烟都很大", {"noise": .5, "fumes": .5}),
    ("工地晚上施工噪音太大睡不着", {"construction": .55, "noise": .45}),
    ("饭店在门口摆桌子烧烤，烟也大", {"vending": .6, "fumes": .4}),
    ("暖气管道漏水，楼道里全是水", {"heating": .6, "property": .25, "water": .15}),
    ("井盖周围积水排不出去", {"waterlogging": .6, "manhole": .4}),
    ("自来水管爆了，路面冒水都冻成冰了", {"water": .5, "snow": .2, "waterlogging": .3}),
    ("路灯被树枝挡住了，晚上很黑", {"streetlight": .5, "trees": .5}),
    ("小区里乱停车，物业也不管", {"parking": .5, "property": .5}),
    ("电梯坏了物业一直拖着不修", {"elevator": .6, "property": .4}),
    ("超市卖过期食品还不给退钱", {"food": .6, "consumer": .4}),
    ("医保报销比例是多少，医院也说不清", {"social_security": .6, "medical": .4}),
    ("孩子入学需要把户口迁过来吗", {"school": .5, "hukou": .5}),
    ("路面塌了，下面的水管在漏水", {"road": .5, "water": .3, "waterlogging": .2}),
    ("渣土车撒了一路土，灰很大", {"construction": .6, "pollution": .2, "garbage": .2}),
    ("饭店往下水道倒泔水，把下水道堵了", {"waterlogging": .4, "pollution": .3, "fumes": .3}),
    ("公交站被私家车占了", {"parking": .6, "bus": .4}),
    ("红绿灯坏了，公交车都堵在路口", {"signal": .7, "bus": .3}),
    ("垃圾站臭味太大，还有人在旁边烧垃圾", {"garbage": .5, "pollution": .5}),
    ("楼顶有人私自加盖，物业不管", {"illegal_building": .6, "property": .4}),
    ("楼道里小广告贴满了，物业也不清理", {"ads": .6, "property": .4}),
    ("燃气管道施工把路挖了一直没恢复", {"road": .4, "gas": .3, "construction": .3}),
    ("清雪把垃圾也堆在路边了", {"snow": .5, "garbage": .5}),
    ("独居老人家里暖气不热", {"heating": .6, "welfare": .4}),
    ("养老金和低保能同时领吗", {"social_security": .5, "welfare": .5}),
    ("树枝挂着电线，路灯也不亮", {"trees": .5, "streetlight": .5}),
    ("出租车在路边乱停拉客", {"taxi": .5, "parking": .5}),
    ("学校门口小摊卖三无食品", {"food": .5, "vending": .3, "school": .2}),
    ("医院门口乱停车，救护车进不去", {"parking": .7, "medical": .3}),
    ("冬天供水管冻上了，家里没水也没暖气", {"water": .6, "heating": .4}),
    ("楼下门市装修，天天电钻响", {"noise": .6, "construction": .4}),
)
VAGUE = _s("上次反映的问题到现在还没解决|之前打过电话了，一直没人处理|还是那个老问题，请尽快回复|"
           "问题依旧存在，希望相关部门重视|我要反映个情况，具体的你们来看看就知道了")

ROADS = _s("解放大路|吉林大街|重庆街|北京路|松江东路|松江中路|珲春街|越山路|长春路|遵义东路|青岛街|天津街|"
           "河南街|光华路|致和街|徐州路|东昌街|沈阳街|黄旗街|通江路|北安路|新华街|哈达湾路|江湾路")
COMPOUNDS = _s("江湾花园|世纪城|松江华府|桃源小区|锦江小区|阳光花园|东方家园|北山花园|吉电小区|化工小区|"
               "临江小区|江南一品|滨江小区|铁东小区|新村小区|电力小区")
LANDMARKS = _s("吉林站|东市场|世纪广场|江南公园|北山公园|人民广场|万达广场|河南街商圈|市中心医院|北华大学|"
               "临江门广场|火车站广场|汽车客运站|市政府附近")
SPOTS = _s("与{road2}交汇处|{n}号门前|公交站附近|路口|中段|桥下|往北一百米左右|附近的人行道上")
TIMES = _s("|最近|这几天|昨天晚上|今天早上|从上个月开始|已经一个多月了|入冬以来|每天晚上十点以后|上周末|"
           "前天下午|好长时间了")
OPENERS = _s("|您好，|你好，我想反映个事，|我是{community}的居民，|市民来电反映：|来电人反映，|喂，你好，|"
             "我要反映一下，")
OPENERS_CONSULT = _s("|您好，|麻烦问一下，|想咨询一下，|我是{community}的居民，|来电人咨询：")
INSPECTOR = _s("监督员巡查发现：|巡查发现，|网格员上报：")
ASKS = _s("|希望有关部门尽快处理|请尽快派人来看看|麻烦给解决一下，谢谢|请相关部门管一管|希望给个答复|"
          "都反映好几次了，到底有没有人管|赶紧给整整吧")
ASKS_CONSULT = _s("|请帮忙解答一下|想咨询一下具体流程|麻烦告诉我应该找哪个部门|谢谢")
EFFECTS = _s("存在安全隐患|影响居民生活|多次反映无人处理|附近居民意见很大|给出行带来不便")
TYPOS = {"反映": "反应", "已经": "以经", "暖气": "暧气", "井盖": "井概", "路灯": "路登", "物业": "物叶",
         "小区": "小去", "垃圾": "拉圾", "噪音": "燥音", "电梯": "电题", "投诉": "投述", "赶紧": "赶进",
         "现在": "现再", "希望": "希忘", "处理": "处里", "没人": "没银"}
KIND_WORDS = {"consultation": "咨询", "help": "求助", "complaint": "投诉", "report": "举报",
              "suggestion": "建议"}
DISTRICT_CENTRES = {"220202": (126.574, 43.882), "220203": (126.562, 43.911), "220204": (126.541, 43.834),
                    "220211": (126.562, 43.821)}
SATISFACTION = (("satisfied", 72), ("basic", 20), ("unsatisfied", 8))


@dataclass(frozen=True)
class HistoryCase:
    """One generated closed case: what was said, how it was filed, where, and how it ended."""

    title: str
    description: str
    category: str
    line: str
    kind: str
    urgent: bool
    days_ago: int
    satisfaction: str
    district: str
    street: str
    address: str
    lon: float
    lat: float
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """What the dispatch model reads (the same join as `dispatching.case_text`)."""
        return f"{self.title}\n{self.description}"


class _Writer:
    """One generator run: a seeded random source and the place tables."""

    def __init__(self, seed: int, categories: Sequence[CategorySpec]) -> None:
        self.rng = random.Random(seed)
        self.categories = list(categories)
        self.codes = [c.code for c in self.categories]
        self.weights = [PHRASES[c].weight if c in PHRASES else 3 for c in self.codes]
        known = set(self.codes)
        self.ambiguous = [(t, w) for t, w in AMBIGUOUS if set(w) <= known]
        self.streets = [(d, s) for d, items in data.STREETS.items() for s, _en in items]
        self.communities = {s: [c for c, _en in data.COMMUNITIES.get(f"{d}{i:03d}", [])]
                            for d, items in data.STREETS.items() for i, (s, _en) in enumerate(items, start=1)}

    def pick(self, items: Sequence[str]) -> str:
        return items[self.rng.randrange(len(items))] if items else ""

    def place(self, where: str) -> tuple[str, str, str, str]:
        """(district code, street name, address, the place's short name) of a place of this kind."""
        rng = self.rng
        district, street = self.streets[rng.randrange(len(self.streets))]
        if where == "any":
            where = rng.choice(("home", "street", "public"))
        if where == "home":
            name = self.pick(COMPOUNDS)
            address = f"{name}{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元"
            if rng.random() < 0.4:
                address = f"{street}{address}"
        elif where == "street":
            name = self.pick(ROADS)
            address = name + self.pick(SPOTS).format(road2=self.pick(ROADS), n=rng.randint(1, 999))
        elif where == "public":
            name = address = self.pick(LANDMARKS)
        else:
            name = address = ""
        return district, street, address, name

    def typos(self, text: str) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            wrong = [w for w in TYPOS if w in text]
            if wrong:
                w = rng.choice(wrong)
                text = text.replace(w, TYPOS[w], 1)
        if rng.random() < 0.05 and len(text) > 10:
            i = rng.randrange(len(text))
            text = text[:i] + text[i + 1:]
        if rng.random() < 0.05:
            text = text.replace("，", " ").replace("。", " ")
        if rng.random() < 0.08:
            text = text.rstrip("。") + "！！"
        return text

    def one(self) -> HistoryCase:
        rng = self.rng
        code = rng.choices(self.codes, self.weights)[0]
        spec = BY_CODE.get(code) or next(c for c in self.categories if c.code == code)
        ph = PHRASES.get(code) or Phrases(spec.keywords, tuple(f"{k}有问题" for k in spec.keywords))
        roll = rng.random()
        effects: Sequence[str] = ph.effects
        if roll < 0.09 and self.ambiguous:  # a text that fits several categories
            problem, weights = self.ambiguous[rng.randrange(len(self.ambiguous))]
            code = rng.choices(list(weights), list(weights.values()))[0]
            spec, short, effects = BY_CODE.get(code, spec), problem.split("，")[0][:10], ()
            ph = PHRASES.get(code, ph)
        elif roll < 0.12:  # filed under a neighbouring category by the dispatcher
            problem, short = self.pick(ph.problems), self.pick(ph.shorts)
            near = [c for c in self.categories if c.group == spec.group and c.code != code] or self.categories
            spec = rng.choice(near)
            code = spec.code
        elif roll < 0.135:  # says almost nothing
            problem = self.pick(VAGUE)
            spec = rng.choice(self.categories)
            code, short, effects = spec.code, problem.split("，")[0][:8], ()
        else:
            problem, short = self.pick(ph.problems), self.pick(ph.shorts)
        district, street, address, name = self.place(ph.where)
        kind = spec.kind
        if spec.line == "hotline" and rng.random() < 0.1:
            kind = rng.choice(list(KIND_WORDS))
        title = self.title(short, name, kind)
        description = self.description(spec, problem, effects, address, street, kind)
        lon0, lat0 = DISTRICT_CENTRES.get(district, (126.55, 43.85))
        return HistoryCase(
            title=self.typos(title) if rng.random() < 0.3 else title, description=self.typos(description),
            category=code, line=spec.line, kind=kind, urgent=rng.random() < ph.urgent,
            days_ago=rng.randint(1, 730), satisfaction=rng.choices(*zip(*SATISFACTION, strict=True))[0],
            district=district, street=street, address=address,
            lon=round(lon0 + rng.uniform(-0.02, 0.02), 6), lat=round(lat0 + rng.uniform(-0.015, 0.015), 6),
            attributes=self.attributes(spec, problem))

    def title(self, short: str, where: str, kind: str) -> str:
        rng = self.rng
        forms = [short, f"{where}{short}", f"反映{where}{short}问题",
                 f"关于{short}的{KIND_WORDS.get(kind, '反映')}",
                 f"{short}，{self.pick(('急', '请处理', '多次反映', '盼回复'))}"]
        return forms[rng.randrange(len(forms))]

    def description(self, spec: CategorySpec, problem: str, effects: Sequence[str], address: str,
                    street: str, kind: str) -> str:
        rng = self.rng
        community = self.pick(self.communities.get(street, [])) or street
        if spec.line == "citymgmt" and rng.random() < 0.35:
            opener = self.pick(INSPECTOR)
        else:
            openers = OPENERS_CONSULT if kind == "consultation" else OPENERS
            opener = self.pick(openers).format(community=community)
        when = self.pick(TIMES)
        parts = [f"{opener}{when}{'，' if when else ''}{address}{'，' if address else ''}{problem}"]
        if rng.random() < 0.6:
            pool = list(effects) + list(EFFECTS) if effects else list(EFFECTS)
            parts.append(self.pick(pool))
        ask = self.pick(ASKS_CONSULT if kind == "consultation" else ASKS)
        if ask:
            parts.append(ask)
        return "，".join(parts) + "。"

    def attributes(self, spec: CategorySpec, problem: str) -> dict[str, str]:
        """Open311 attribute values that agree with what the text says, where it says it."""
        hints = {"missing": ("丢", "没盖", "偷", "缺"), "sunk": ("塌", "低", "陷"),
                 "loose": ("松", "晃", "咣当"), "day": ("白天",), "flicker": ("闪",), "pole": ("杆", "灯罩"),
                 "fallen": ("倒",), "branch": ("断", "枝"), "damage": ("挖", "草皮")}
        out: dict[str, str] = {}
        for attr in spec.attributes:
            keys = [v["key"] for v in attr["values"]]
            found = [k for k in keys if any(h in problem for h in hints.get(k, ()))]
            if found or attr["required"]:
                out[attr["code"]] = found[0] if found else keys[1 if len(keys) > 1 else 0]
        return out


def history(n: int, seed: int = data.SEED,
            categories: Sequence[CategorySpec] = CATEGORIES) -> list[HistoryCase]:
    """n generated closed cases over the catalog (the same list for the same seed)."""
    writer = _Writer(seed, categories)
    return [writer.one() for _ in range(n)]


def category_rows() -> list[dict[str, Any]]:
    """The catalog as plain rows (without the department, which the seed resolves from the slug)."""
    return [{"code": c.code, "name": c.name, "name_en": c.name_en, "group": c.group, "line": c.line,
             "kind": c.kind, "department": c.department, "keywords": list(c.keywords), "gbt_code": c.gbt_code,
             "attributes": [dict(a) for a in c.attributes], "workflow_code": c.line, "sort": i}
            for i, c in enumerate(CATEGORIES, start=1)]
