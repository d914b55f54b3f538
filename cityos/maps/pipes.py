"""Underground pipes (地下管线): network model, topology checks, burst analysis, "before you dig".

Pure logic over in-memory features (shapely geometries in lon/lat WGS-84); the service layer loads
a district's layers and calls `Network.build`. Lengths, distances and buffers are computed in a
local Transverse Mercator centred on the data, where a metre is a metre to within ~1e-6 across a
city (UTM 52N is off by ~1e-4 at Jilin, which sits 2.5° from that zone's central meridian).

The graph: nodes are pipe endpoints snapped together, points where an endpoint meets another
pipe's interior (a tee drawn without splitting the main), and valves; edges are the pieces of
pipe between them. A valve is always its own node, so closing it cuts exactly the pipe it sits on.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry
from shapely.ops import substring

from cityos.core.errors import Invalid, NotFound

Ints = npt.NDArray[np.int64]
Geoms = npt.NDArray[np.object_]


@dataclass(frozen=True)
class PipeKind:
    """One utility (专业) of the underground network, described as data."""

    code: str
    zh: str
    en: str
    colour: str  # the CJJ 61 map colour of the utility
    supplied: bool  # pressurized, fed from sources through valves: burst analysis applies
    depth_m: tuple[float, float]  # usual cover to the top of the pipe


PIPE_KINDS: dict[str, PipeKind] = {k.code: k for k in (
    # Water lies below the frost line (about 1.8 m in Jilin); power and telecom have switch points,
    # not valves, and drainage flows by gravity, so none of those three is "supplied".
    PipeKind("water", "给水", "Water supply", "#00bfff", True, (1.8, 2.5)),
    PipeKind("drainage", "排水", "Drainage", "#8b4513", False, (1.5, 5.0)),
    PipeKind("gas", "燃气", "Gas", "#ff00ff", True, (0.9, 1.5)),
    PipeKind("heat", "热力", "District heating", "#ff8c00", True, (1.0, 2.5)),
    PipeKind("power", "电力", "Power cable", "#ff0000", False, (0.7, 1.5)),
    PipeKind("telecom", "通信", "Telecom", "#00a000", False, (0.7, 1.2)),
)}

# Fittings that legitimately end a pipe, so its end is not "dangling".
TERMINAL_KINDS: dict[str, tuple[str, str]] = {
    "plug": ("堵头", "plug"),
    "hydrant": ("消火栓", "fire hydrant"),
    "outfall": ("排放口", "outfall"),
}


@dataclass(frozen=True)
class IssueKind:
    """A finding of the topology check or the burst analysis, with its message templates."""

    code: str
    zh: str
    en: str


ISSUE_KINDS: dict[str, IssueKind] = {k.code: k for k in (
    IssueKind("dangling_end", "管线 {id} 端点悬空", "pipe {id} has a dangling end"),
    IssueKind("unconnected_valve", "阀门 {id} 在 {m} 米内没有同类管线",
              "valve {id} is not on any pipe of its kind within {m} m"),
    IssueKind("unattached_customer", "用户 {id} 在 {m} 米内没有可接管线",
              "customer {id} has no pipe within {m} m"),
    IssueKind("unattached_source", "水源 {id} 在 {m} 米内没有同类管线",
              "source {id} has no pipe of its kind within {m} m"),
    IssueKind("unattached_terminal", "附属物 {id} 不在管线端点上", "terminal {id} is not at a pipe end"),
    IssueKind("disconnected_part", "{n} 段管线（{len} 米，含 {id}）与任何水源都不连通",
              "{n} pipes ({len} m, including {id}) are not connected to any source"),
    IssueKind("closed_off_part", "{n} 段管线（{len} 米，含 {id}）被关闭的阀门隔断，无水源供给",
              "{n} pipes ({len} m, including {id}) are cut off from every source by closed valves"),
    IssueKind("zero_length", "管线 {id} 长度不足 {m} 米", "pipe {id} is shorter than {m} m"),
    IssueKind("duplicate_pipe", "管线 {id} 与 {other} 重复", "pipe {id} duplicates {other}"),
    IssueKind("no_valve", "没有阀门能隔离爆管，须从水源停供整个连通部分",
              "no valve bounds the break: the whole connected part must be shut at its sources"),
    IssueKind("valve_already_closed", "阀门 {id} 已处于关闭状态，请现场确认",
              "valve {id} is already closed: confirm on site"),
    IssueKind("source_in_zone", "水源 {id} 位于隔离区内", "source {id} lies inside the isolated zone"),
)}


@dataclass(frozen=True)
class Issue:
    """One finding: its kind (a key of ISSUE_KINDS), the feature id, where, and a bilingual message."""

    kind: str
    id: str
    geom: BaseGeometry
    message: str


def _issue(kind: str, id: str, geom: BaseGeometry, **values: object) -> Issue:
    k = ISSUE_KINDS[kind]
    return Issue(kind, id, geom, f"{k.zh.format(id=id, **values)} / {k.en.format(id=id, **values)}")


@dataclass(frozen=True)
class Pipe:
    """A pipe segment (管段) as it lies in the ground."""

    id: str
    kind: str
    geom: LineString
    material: str | None = None
    diameter_mm: float | None = None
    depth_m: float | None = None
    year: int | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Valve:
    """A valve (阀门) on a pipe of its kind; only open valves can be closed to isolate a break."""

    id: str
    kind: str
    geom: Point
    status: Literal["open", "closed"] = "open"


@dataclass(frozen=True)
class Customer:
    """A service connection or meter (用户接水点); kind None attaches to the nearest pipe of any kind."""

    id: str
    geom: Point
    name: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class Source:
    """Where supply comes from (水源): a plant, pressure station or reservoir feeding pipes of `kind`."""

    id: str
    kind: str
    geom: Point
    name: str | None = None


@dataclass(frozen=True)
class Terminal:
    """A fitting that ends a pipe on purpose: a plug, hydrant or outfall (see TERMINAL_KINDS)."""

    id: str
    kind: str
    geom: Point


@dataclass(frozen=True)
class BurstResult:
    """What to do about a broken pipe (爆管分析): valves to close, and what loses supply."""

    pipe_id: str
    segment: LineString  # the broken piece, between its nearest cut points (lon/lat)
    valves_to_close: tuple[Valve, ...]
    valves_already_closed: tuple[Valve, ...]
    isolated_pipe_ids: tuple[str, ...]  # pipes (wholly or partly) between the valves
    isolated_length_m: float
    unsupplied_pipe_ids: tuple[str, ...]  # beyond the valves, no longer reached from any source
    customers_in_zone: tuple[Customer, ...]
    customers_downstream: tuple[Customer, ...]  # supplied before, not after the valves close
    area: BaseGeometry  # buffer of isolated and unsupplied pipes (lon/lat)
    warnings: tuple[Issue, ...]

    @property
    def customers_cut_off(self) -> tuple[Customer, ...]:
        """Everyone without supply while the valves are closed."""
        return self.customers_in_zone + self.customers_downstream


class _Frame:
    """A local Transverse Mercator (k=1) around a centre: metres for a city-sized area."""

    def __init__(self, lon: float, lat: float) -> None:
        local = CRS.from_proj4(f"+proj=tmerc +lat_0={lat} +lon_0={lon} +k=1 +ellps=WGS84 +units=m")
        self._fwd = Transformer.from_crs("EPSG:4326", local, always_xy=True)
        self._inv = Transformer.from_crs(local, "EPSG:4326", always_xy=True)

    @classmethod
    def around(cls, geoms: Sequence[BaseGeometry]) -> _Frame:
        if not geoms:
            return cls(0.0, 0.0)
        x0, y0, x1, y1 = shapely.total_bounds(np.asarray(geoms, dtype=object))
        return cls((x0 + x1) / 2, (y0 + y1) / 2)

    def xy(self, geoms: Any) -> Any:
        """Lon/lat to local metres (one geometry or an array of them)."""
        return shapely.transform(geoms, lambda c: np.column_stack(self._fwd.transform(c[:, 0], c[:, 1])))

    def lonlat(self, geoms: Any) -> Any:
        """Local metres back to lon/lat."""
        return shapely.transform(geoms, lambda c: np.column_stack(self._inv.transform(c[:, 0], c[:, 1])))


def _geoms(items: Iterable[Any]) -> Geoms:
    return np.asarray([f.geom for f in items] or [], dtype=object)


class Network:
    """A pipe network (管网) as a graph over pipe pieces; build it with `Network.build`."""

    pipes: tuple[Pipe, ...]
    valves: tuple[Valve, ...]
    customers: tuple[Customer, ...]
    sources: tuple[Source, ...]
    terminals: tuple[Terminal, ...]
    snap_m: float
    attach_m: float
    _frame: _Frame
    _lines: Geoms  # pipes in local metres
    _length: npt.NDArray[np.float64]
    _tree: shapely.STRtree
    _ends: Geoms
    _ends_tree: shapely.STRtree
    _pipe_kind: Ints
    _index: dict[str, int]
    _issues: list[Issue]  # found while building
    _node_xy: list[tuple[float, float]]
    _node_valve: dict[int, int]
    _end_node: list[int]  # endpoint k (pipe k % n; start if k < n) -> node
    _adj: list[list[int]]  # node -> edges
    _edge_u: list[int]
    _edge_v: list[int]
    _edge_pipe: list[int]
    _edge_s: list[tuple[float, float]]  # where the edge starts and ends along its pipe
    _pipe_edges: list[list[int]]
    _pipe_starts: list[list[float]]
    _served: set[int]  # nodes where a customer, source or terminal ends a pipe
    _edge_customers: dict[int, list[int]]
    _source_edges: list[int]
    _baseline: set[int] | None  # edges supplied with the valves as they are

    @classmethod
    def build(
        cls,
        pipes: Iterable[Pipe],
        valves: Iterable[Valve] = (),
        customers: Iterable[Customer] = (),
        sources: Iterable[Source] = (),
        terminals: Iterable[Terminal] = (),
        snap_m: float = 0.5,
        attach_m: float = 30.0,
    ) -> Network:
        """Snap endpoints within snap_m, put valves (within 4·snap_m) on pipes, attach the rest."""
        net = cls.__new__(cls)
        net.pipes, net.valves = tuple(pipes), tuple(valves)
        net.customers, net.sources, net.terminals = tuple(customers), tuple(sources), tuple(terminals)
        net.snap_m, net.attach_m = snap_m, attach_m
        net._validate()
        everything = [f.geom for group in (net.pipes, net.valves, net.customers, net.sources, net.terminals)
                      for f in group]
        net._frame = _Frame.around(everything)
        net._lines = net._frame.xy(_geoms(net.pipes))
        net._length = shapely.length(net._lines)
        net._tree = shapely.STRtree(net._lines)
        net._index = {pipe.id: i for i, pipe in enumerate(net.pipes)}
        kind_ids = {code: i for i, code in enumerate(PIPE_KINDS)}
        net._pipe_kind = np.asarray([kind_ids[p.kind] for p in net.pipes], dtype=np.int64)
        net._issues = []
        cuts = net._build_nodes(snap_m)
        net._build_valves(cuts, kind_ids)
        net._build_edges(cuts)
        net._served, net._edge_customers, net._baseline = set(), {}, None
        for c, e in enumerate(net._attach(net.customers, kind_ids, "unattached_customer")):
            if e >= 0:
                net._edge_customers.setdefault(e, []).append(c)
        net._source_edges = net._attach(net.sources, kind_ids, "unattached_source")
        net._attach_terminals()
        return net

    def _validate(self) -> None:
        for name, group in (("pipes", self.pipes), ("valves", self.valves), ("customers", self.customers),
                            ("sources", self.sources), ("terminals", self.terminals)):
            ids = [f.id for f in group]
            if len(set(ids)) != len(ids):
                raise Invalid(name, "ids must be unique")
        for p in self.pipes:
            if p.kind not in PIPE_KINDS:
                raise Invalid("pipes", f"{p.id}: unknown kind {p.kind!r}")
            if not isinstance(p.geom, LineString) or p.geom.is_empty:
                raise Invalid("pipes", f"{p.id}: a pipe is a non-empty LineString")
        for v in self.valves:
            if v.status not in ("open", "closed"):
                raise Invalid("valves", f"{v.id}: status is open or closed")
        for t in self.terminals:
            if t.kind not in TERMINAL_KINDS:
                raise Invalid("terminals", f"{t.id}: unknown kind {t.kind!r}")

    def _build_nodes(self, snap_m: float) -> list[dict[int, float]]:
        """Cluster endpoints (union-find over STRtree pairs); find tees on pipe interiors."""
        n = len(self.pipes)
        ends = np.concatenate([shapely.get_point(self._lines, 0), shapely.get_point(self._lines, -1)])
        end_kind = np.concatenate([self._pipe_kind, self._pipe_kind])
        self._ends, self._ends_tree = ends, shapely.STRtree(ends)
        a, b = self._ends_tree.query(ends, predicate="dwithin", distance=snap_m)
        keep = (a < b) & (end_kind[a] == end_kind[b])
        parent = list(range(2 * n))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in zip(a[keep].tolist(), b[keep].tolist(), strict=True):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
        xy = shapely.get_coordinates(ends)
        roots: dict[int, int] = {}
        self._node_xy, self._end_node = [], []
        for k in range(2 * n):
            r = find(k)
            if r not in roots:
                roots[r] = len(self._node_xy)
                self._node_xy.append((float(xy[r, 0]), float(xy[r, 1])))
            self._end_node.append(roots[r])
        # An endpoint on another pipe's interior is a tee: cut that pipe there.
        cuts: list[dict[int, float]] = [{} for _ in range(n)]
        i, j = self._tree.query(ends, predicate="dwithin", distance=snap_m)
        keep = (j != i % max(n, 1)) & (self._pipe_kind[j] == end_kind[i])
        i, j = i[keep], j[keep]
        s = shapely.line_locate_point(self._lines[j], ends[i])
        inner = (s > snap_m) & (s < self._length[j] - snap_m)
        for ii, jj, ss in zip(i[inner].tolist(), j[inner].tolist(), s[inner].tolist(), strict=True):
            cuts[jj].setdefault(self._end_node[ii], ss)
        return cuts

    def _nearest(self, points: Geoms, max_m: float, kinds: Ints) -> tuple[Ints, npt.NDArray[np.float64]]:
        """Nearest pipe of a matching kind (-1: any) within max_m for each point; -1 if none."""
        qi, pj = self._tree.query(points, predicate="dwithin", distance=max_m)
        ok = (kinds[qi] == -1) | (kinds[qi] == self._pipe_kind[pj])
        qi, pj = qi[ok], pj[ok]
        order = np.lexsort((shapely.distance(points[qi], self._lines[pj]), qi))
        qi, pj = qi[order], pj[order]
        first = np.r_[True, qi[1:] != qi[:-1]] if len(qi) else np.zeros(0, dtype=bool)
        best = np.full(len(points), -1, dtype=np.int64)
        best[qi[first]] = pj[first]
        pos = np.zeros(len(points))
        found = best >= 0
        pos[found] = shapely.line_locate_point(self._lines[best[found]], points[found])
        return best, pos

    def _build_valves(self, cuts: list[dict[int, float]], kind_ids: dict[str, int]) -> None:
        points = self._frame.xy(_geoms(self.valves))
        kinds = np.asarray([kind_ids.get(v.kind, -2) for v in self.valves], dtype=np.int64)
        best, pos = self._nearest(points, 4 * self.snap_m, kinds)
        self._node_valve = {}
        for v, (p, s) in enumerate(zip(best.tolist(), pos.tolist(), strict=True)):
            if p < 0:
                self._issues.append(_issue("unconnected_valve", self.valves[v].id, self.valves[v].geom,
                                           m=4 * self.snap_m))
                continue
            at = self._lines[p].interpolate(s)
            node = len(self._node_xy)
            self._node_xy.append((at.x, at.y))
            self._node_valve[node] = v
            cuts[p][node] = s

    def _build_edges(self, cuts: list[dict[int, float]]) -> None:
        n = len(self.pipes)
        self._adj = [[] for _ in self._node_xy]
        self._edge_u, self._edge_v, self._edge_pipe, self._edge_s = [], [], [], []
        self._pipe_edges, self._pipe_starts = [], []
        for p in range(n):
            inner = sorted((s, node) for node, s in cuts[p].items())
            chain = [(0.0, self._end_node[p]), *inner, (float(self._length[p]), self._end_node[p + n])]
            edges, starts = [], []
            for (s0, u), (s1, v) in pairwise(chain):
                e = len(self._edge_u)
                self._edge_u.append(u)
                self._edge_v.append(v)
                self._edge_pipe.append(p)
                self._edge_s.append((s0, s1))
                self._adj[u].append(e)
                self._adj[v].append(e)
                edges.append(e)
                starts.append(s0)
            self._pipe_edges.append(edges)
            self._pipe_starts.append(starts)

    def _edge_at(self, p: int, s: float) -> int:
        return self._pipe_edges[p][max(bisect_right(self._pipe_starts[p], s) - 1, 0)]

    def _attach(self, feats: Sequence[Customer | Source], kind_ids: dict[str, int],
                issue: str) -> list[int]:
        """The edge each customer or source hangs on (-1 if no pipe within attach_m)."""
        points = self._frame.xy(_geoms(feats))
        kinds = np.asarray([kind_ids.get(f.kind, -2) if f.kind else -1 for f in feats], dtype=np.int64)
        best, pos = self._nearest(points, self.attach_m, kinds)
        out = []
        for f, p, s in zip(feats, best.tolist(), pos.tolist(), strict=True):
            if p < 0:
                self._issues.append(_issue(issue, f.id, f.geom, m=self.attach_m))
                out.append(-1)
                continue
            e = self._edge_at(p, s)
            s0, s1 = self._edge_s[e]
            if s - s0 <= self.snap_m:
                self._served.add(self._edge_u[e])
            if s1 - s <= self.snap_m:
                self._served.add(self._edge_v[e])
            out.append(e)
        return out

    def _attach_terminals(self) -> None:
        points = self._frame.xy(_geoms(self.terminals))
        qi, ej = self._ends_tree.query(points, predicate="dwithin", distance=4 * self.snap_m)
        self._served.update(self._end_node[j] for j in ej.tolist())
        for i in sorted(set(range(len(self.terminals))) - set(qi.tolist())):
            t = self.terminals[i]
            self._issues.append(_issue("unattached_terminal", t.id, t.geom))

    # -- graph searches ---------------------------------------------------------------------------

    def _other(self, e: int, node: int) -> int:
        return self._edge_v[e] if self._edge_u[e] == node else self._edge_u[e]

    def _reach(self, cut: set[int], shut: set[int]) -> set[int]:
        """Edges reached from the sources, not crossing cut edges or shut valve nodes."""
        reached: set[int] = set()
        stack: list[int] = []
        for e in self._source_edges:
            if e >= 0 and e not in cut and e not in reached:
                reached.add(e)
                stack += (self._edge_u[e], self._edge_v[e])
        visited: set[int] = set()
        while stack:
            node = stack.pop()
            if node in visited or node in shut:
                continue
            visited.add(node)
            for e in self._adj[node]:
                if e not in reached and e not in cut:
                    reached.add(e)
                    stack.append(self._other(e, node))
        return reached

    def _closed_nodes(self) -> set[int]:
        return {node for node, v in self._node_valve.items() if self.valves[v].status == "closed"}

    def _supplied(self) -> set[int]:
        if self._baseline is None:
            self._baseline = self._reach(set(), self._closed_nodes())
        return self._baseline

    def _parts(self, edges: set[int]) -> list[list[int]]:
        """Connected pieces of the subgraph made of `edges`, valves ignored."""
        parts, seen = [], set()
        for start in sorted(edges):
            if start in seen:
                continue
            part, stack = [start], [self._edge_u[start], self._edge_v[start]]
            seen.add(start)
            while stack:
                node = stack.pop()
                for e in self._adj[node]:
                    if e in edges and e not in seen:
                        seen.add(e)
                        part.append(e)
                        stack.append(self._other(e, node))
            parts.append(part)
        return parts

    def _edge_geom(self, e: int) -> LineString:
        p, (s0, s1) = self._edge_pipe[e], self._edge_s[e]
        line: LineString = self._lines[p]
        return line if s0 == 0 and s1 == self._length[p] else substring(line, s0, s1)

    def _part_issue(self, kind: str, part: list[int]) -> Issue:
        pipes = sorted({self._edge_pipe[e] for e in part})
        length = sum(self._edge_s[e][1] - self._edge_s[e][0] for e in part)
        geom = shapely.multilinestrings([self.pipes[p].geom for p in pipes])
        return _issue(kind, self.pipes[pipes[0]].id, geom, n=len(pipes), len=round(length))

    # -- public -----------------------------------------------------------------------------------

    def check(self) -> list[Issue]:
        """Topology check (拓扑检查): dangling ends, stray valves and customers, cut-off parts."""
        issues = list(self._issues)
        groups: dict[tuple[int, int, int], list[int]] = {}
        n = len(self.pipes)
        for p, pipe in enumerate(self.pipes):
            if self._length[p] < self.snap_m:
                issues.append(_issue("zero_length", pipe.id, pipe.geom, m=self.snap_m))
            a, b = sorted((self._end_node[p], self._end_node[p + n]))
            groups.setdefault((int(self._pipe_kind[p]), a, b), []).append(p)
        for group in groups.values():
            for k, p in enumerate(group[1:], 1):
                twin = next((q for q in group[:k] if shapely.hausdorff_distance(
                    self._lines[p], self._lines[q]) <= self.snap_m), None)
                if twin is not None:
                    issues.append(_issue("duplicate_pipe", self.pipes[p].id, self.pipes[p].geom,
                                         other=self.pipes[twin].id))
        for k, node in enumerate(self._end_node):
            if len(self._adj[node]) == 1 and node not in self._node_valve and node not in self._served:
                x, y = self._node_xy[node]
                issues.append(_issue("dangling_end", self.pipes[k % n].id, self._frame.lonlat(Point(x, y))))
        supplied, sourced = self._supplied(), {e for e in self._source_edges if e >= 0}
        for part in self._parts(set(range(len(self._edge_u)))):
            if not any(PIPE_KINDS[self.pipes[self._edge_pipe[e]].kind].supplied for e in part):
                continue
            if sourced.isdisjoint(part):
                issues.append(self._part_issue("disconnected_part", part))
            else:
                issues += [self._part_issue("closed_off_part", off)
                           for off in self._parts(set(part) - supplied)]
        return issues

    def burst(self, pipe_id: str, at: Point | None = None, buffer_m: float = 50.0) -> BurstResult:
        """Burst analysis (爆管分析): the valves that isolate a break at `at` (default: mid-pipe)."""
        p = self._index.get(pipe_id)
        if p is None:
            raise NotFound("pipe", pipe_id)
        if not PIPE_KINDS[self.pipes[p].kind].supplied:
            raise Invalid("pipe_id", f"{self.pipes[p].kind} pipes are not fed through valves")
        s = self._length[p] / 2 if at is None else self._lines[p].project(self._frame.xy(at))
        broken = self._edge_at(p, float(s))
        zone, stack, seen = {broken}, [self._edge_u[broken], self._edge_v[broken]], set()
        while stack:  # grow the zone outward; every valve stops it
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in self._node_valve:
                continue
            for e in self._adj[node]:
                if e not in zone:
                    zone.add(e)
                    stack.append(self._other(e, node))
        # A valve with the zone on both sides (a loop with one valve) isolates nothing.
        bounds = sorted(self._node_valve[node] for node in seen
                        if node in self._node_valve and any(e not in zone for e in self._adj[node]))
        to_close = [self.valves[v] for v in bounds if self.valves[v].status == "open"]
        closed = [self.valves[v] for v in bounds if self.valves[v].status == "closed"]
        shut = self._closed_nodes() | {node for node, v in self._node_valve.items() if v in bounds}
        downstream = self._supplied() - self._reach(zone, shut) - zone
        warnings = [_issue("valve_already_closed", v.id, v.geom) for v in closed]
        if not bounds:
            warnings.append(_issue("no_valve", pipe_id, self.pipes[p].geom))
        warnings += [_issue("source_in_zone", src.id, src.geom)
                     for src, e in zip(self.sources, self._source_edges, strict=True) if e in zone]
        lines = [g for g in (self._edge_geom(e) for e in sorted(zone | downstream)) if g.length > 0]
        area = shapely.buffer(shapely.multilinestrings(lines), buffer_m) if lines else shapely.Polygon()
        return BurstResult(
            pipe_id=pipe_id,
            segment=self._frame.lonlat(self._edge_geom(broken)),
            valves_to_close=tuple(to_close),
            valves_already_closed=tuple(closed),
            isolated_pipe_ids=self._pipe_ids(zone),
            isolated_length_m=float(sum(self._edge_s[e][1] - self._edge_s[e][0] for e in zone)),
            unsupplied_pipe_ids=self._pipe_ids(downstream),
            customers_in_zone=self._customers_on(zone),
            customers_downstream=self._customers_on(downstream),
            area=self._frame.lonlat(area),
            warnings=tuple(warnings),
        )

    def _pipe_ids(self, edges: set[int]) -> tuple[str, ...]:
        return tuple(self.pipes[p].id for p in sorted({self._edge_pipe[e] for e in edges}))

    def _customers_on(self, edges: set[int]) -> tuple[Customer, ...]:
        found = sorted(c for e in edges for c in self._edge_customers.get(e, ()))
        return tuple(self.customers[c] for c in found)

    def near(self, geom: BaseGeometry, metres: float, kinds: Iterable[str] | None = None,
             ) -> list[tuple[Pipe, float]]:
        """Before you dig (开挖前查询): pipes within `metres` of a point or line, nearest first."""
        g = self._frame.xy(geom)
        idx = self._tree.query(g, predicate="dwithin", distance=metres)
        wanted = None if kinds is None else set(kinds)
        found = [(self.pipes[i], float(d)) for i, d in
                 zip(idx.tolist(), shapely.distance(self._lines[idx], g).tolist(), strict=True)
                 if wanted is None or self.pipes[i].kind in wanted]
        return sorted(found, key=lambda hit: hit[1])


def generate_network(
    center_lon: float, center_lat: float, size_m: float, spacing_m: float, seed: int,
) -> tuple[list[Pipe], list[Valve], list[Customer], list[Source]]:
    """A plausible district water network (演示管网): mains under a street grid, deterministic by seed.

    Every street block is one pipe; most pipes carry a valve 3 m from their west or south junction
    (so most junctions can be shut on two legs); 0-3 service connections hang 8-20 m off each pipe;
    one source (水厂) feeds the west edge. Every fifth street carries a trunk main.
    """
    rng = random.Random(seed)
    frame = _Frame(center_lon, center_lat)
    n = int(size_m // spacing_m) + 1
    half, jitter = (n - 1) * spacing_m / 2, spacing_m * 0.08
    node = {(i, j): (i * spacing_m - half + rng.uniform(-jitter, jitter),
                     j * spacing_m - half + rng.uniform(-jitter, jitter)) for i in range(n) for j in range(n)}
    specs, lines, valve_pts, customer_pts = [], [], [], []
    for (i, j), a in node.items():
        for di, dj, street in ((1, 0, j), (0, 1, i)):
            b = node.get((i + di, j + dj))
            if b is None:
                continue
            trunk = street % 5 == 0
            year = rng.randint(1978, 2023)
            old = "steel" if trunk else "cast_iron"
            material = old if year < 1995 else rng.choice(("ductile_iron", "PE"))
            specs.append((material, float(rng.choice((400, 500, 600) if trunk else (100, 150, 200, 300))),
                          round(rng.uniform(1.8, 2.6), 2), year))
            lines.append(LineString([a, b]))
            length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
            ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
            if rng.random() < 0.8:
                valve_pts.append(Point(a[0] + 3 * ux, a[1] + 3 * uy))
            for _ in range(rng.randint(0, 3)):
                t, off = rng.uniform(0.1, 0.9) * length, rng.choice((-1, 1)) * rng.uniform(8, 20)
                customer_pts.append(Point(a[0] + t * ux - off * uy, a[1] + t * uy + off * ux))
    source_xy = node[(0, n // 2)]
    geoms = frame.lonlat(np.asarray([*lines, *valve_pts, *customer_pts, Point(source_xy)], dtype=object))
    k1, k2 = len(lines), len(lines) + len(valve_pts)
    pipes = [Pipe(f"W{k:06d}", "water", g, m, d, depth, year, "市供水公司")
             for k, (g, (m, d, depth, year)) in enumerate(zip(geoms[:k1], specs, strict=True))]
    valves = [Valve(f"V{k:06d}", "water", g) for k, g in enumerate(geoms[k1:k2])]
    customers = [Customer(f"C{k:06d}", g, f"用户{k:06d}") for k, g in enumerate(geoms[k2:-1])]
    return pipes, valves, customers, [Source("S1", "water", geoms[-1], "水厂 Water plant")]
