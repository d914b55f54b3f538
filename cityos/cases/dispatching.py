"""Smart dispatch (智能派单): suggest a case's category and responsible department.

Two sources, in order. Rules (派单规则) are data — "a location inside a polygon of this map
layer → this category and department" — checked with the one map, and they always win. Then a
character n-gram linear model (scikit-learn: TF-IDF of 1–3 character n-grams, which suits
Chinese without word segmentation, and a logistic-loss SGD classifier, which trains in seconds
on a city's history and gives probabilities) trained on the city's closed cases
(`cityos cases train`). Below the confidence threshold (`cases_dispatch_threshold`) a person
classifies and dispatches; above it the suggestion is pre-filled.

Training holds out a stratified share of the cases and reports top-1 and top-3 accuracy on
them, then refits on everything. The fitted pipeline is kept in `case_models`, pickled: only
CityOS writes that table, and only from `train_from_db`, so loading it trusts nothing outside.
"""

from __future__ import annotations

import pickle
import threading
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sqlalchemy import select
from sqlalchemy.orm import Session

import cityos.maps.service as maps
from cityos.cases.models import Case, CaseCategory, CaseModel
from cityos.core import access, audit
from cityos.core.access import SYSTEM, Actor
from cityos.core.errors import Forbidden, Invalid, NotFound

FORMAT = 1  # of the stored blob; a change means "train again"
TOP = 3
CONFIDENCE_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9)  # held-out accuracy above each, to choose the threshold
MODEL_NAME = "tfidf char 1-3 + SGD log-loss"


def case_text(title: str, description: str) -> str:
    """What the model reads of a case: its title and description."""
    return f"{title}\n{description}"


def pipeline(seed: int = 0) -> Pipeline:
    """A fresh, unfitted model. Measured on the demo history: as accurate as LogisticRegression
    (lbfgs or saga) or LinearSVC within half a point, and several times faster to fit."""
    return Pipeline([
        ("tfidf", TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2,
                                  max_features=300_000, dtype=np.float32)),
        ("clf", SGDClassifier(loss="log_loss", alpha=1e-5, random_state=seed)),
    ])


@dataclass
class Trained:
    """A fitted pipeline and what its training measured."""

    pipeline: Pipeline
    metrics: dict[str, Any]
    sklearn_version: str = field(default=sklearn.__version__)

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.pipeline.classes_]


def _split(labels: NDArray[Any], holdout: float, seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """A stratified hold-out: the same share of every category, none of one seen only once."""
    rng = np.random.default_rng(seed)
    train: list[NDArray[np.intp]] = []
    test: list[NDArray[np.intp]] = []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        k = min(int(round(len(idx) * holdout)), len(idx) - 1) if len(idx) >= 2 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _ranked(pipe: Pipeline, texts: Sequence[str], k: int) -> tuple[NDArray[np.intp], NDArray[Any]]:
    """Class indices and probabilities of the k likeliest classes per text, best first."""
    proba = pipe.predict_proba(list(texts))
    k = min(k, proba.shape[1])
    idx = np.argpartition(-proba, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(proba, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(part, order, axis=1)


def _fit(texts: Sequence[str], labels: NDArray[Any], seed: int) -> Pipeline:
    pipe = pipeline(seed)
    try:
        pipe.fit(list(texts), labels)
    except ValueError as exc:  # e.g. no n-gram seen twice: nothing to learn from
        raise Invalid("cases", f"cannot train on these cases: {exc} / 无法用这些工单训练模型") from None
    return pipe


def _held_out(pipe: Pipeline, texts: Sequence[str], labels: NDArray[Any]) -> dict[str, Any]:
    classes = pipe.classes_
    idx, proba = _ranked(pipe, texts, TOP)
    truth = np.searchsorted(classes, labels)
    hit1 = idx[:, 0] == truth
    hit3 = (idx == truth[:, None]).any(axis=1)
    best = proba[:, 0]
    by_conf = [{"at_least": t, "share": float((best >= t).mean()),
                "accuracy": float(hit1[best >= t].mean()) if (best >= t).any() else None}
               for t in CONFIDENCE_STEPS]
    per_class = {str(c): round(float(hit1[labels == c].mean()), 4) for c in np.unique(labels)}
    return {"accuracy": round(float(hit1.mean()), 4), "top3": round(float(hit3.mean()), 4),
            "by_confidence": by_conf, "class_accuracy": per_class}


def train(texts: Sequence[str], labels: Sequence[str], *, seed: int = 0, holdout: float = 0.2) -> Trained:
    """Fit the model (训练), measuring it on a stratified hold-out first, then on all cases."""
    if len(texts) != len(labels):
        raise Invalid("labels", "one label per text / 文本与类别数量须一致")
    if not 0 <= holdout < 1:
        raise Invalid("holdout", "between 0 and 1 / 应在0到1之间")
    y = np.asarray([str(label) for label in labels], dtype=object)
    if len(np.unique(y)) < 2:
        raise Invalid("cases", "cases of at least two categories are needed / 至少需要两个类别的工单")
    started = time.perf_counter()
    train_idx, test_idx = _split(y, holdout, seed)
    scores: dict[str, Any] = {"accuracy": None, "top3": None, "by_confidence": [], "class_accuracy": {}}
    if len(test_idx) and len(np.unique(y[train_idx])) >= 2:
        pipe = _fit([texts[i] for i in train_idx], y[train_idx], seed)
        scores = _held_out(pipe, [texts[i] for i in test_idx], y[test_idx])
    final = _fit(texts, y, seed)
    labels_, counts = np.unique(y, return_counts=True)
    metrics = {**scores, "n": len(y), "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
               "seconds": round(time.perf_counter() - started, 3), "labels": [str(c) for c in labels_],
               "counts": {str(c): int(n) for c, n in zip(labels_, counts, strict=True)},
               "model": MODEL_NAME, "features": len(final.named_steps["tfidf"].vocabulary_),
               "sklearn": sklearn.__version__, "seed": seed, "holdout": holdout}
    return Trained(final, metrics)


def report_lines(metrics: Mapping[str, Any]) -> list[str]:
    """What training measured, in a few lines for the CLI (训练结果)."""
    def pct(v: Any) -> str:
        return "—" if v is None else f"{100 * v:.1f}%"

    lines = [f"cases / 工单: {metrics['n']} (train {metrics['n_train']}, "
             f"held out / 留出 {metrics['n_test']}), categories / 类别: {len(metrics['labels'])}, "
             f"{metrics['seconds']:.1f} s",
             f"held-out top-1 accuracy / 留出集首选准确率: {pct(metrics['accuracy'])}",
             f"held-out top-3 accuracy / 留出集前三准确率: {pct(metrics['top3'])}"]
    for step in metrics.get("by_confidence", []):
        lines.append(f"confidence ≥ {step['at_least']:.1f} / 置信度≥{step['at_least']:.1f}: "
                     f"{pct(step['share'])} of cases, accuracy / 准确率 {pct(step['accuracy'])}")
    return lines


def dumps(trained: Trained) -> bytes:
    """The stored form (pickle + zlib). Only CityOS writes `case_models`, so only CityOS's own
    pickles are ever loaded."""
    return zlib.compress(pickle.dumps((FORMAT, trained), protocol=pickle.HIGHEST_PROTOCOL), 6)


def loads(blob: bytes) -> Trained:
    """A stored model back; one from another format or scikit-learn version asks for retraining."""
    try:
        fmt, trained = pickle.loads(zlib.decompress(blob))  # written by CityOS only
    except Exception as exc:
        raise Invalid("model", f"unreadable model ({exc}): run `cityos cases train` / "
                               "模型无法读取，请重新训练") from None
    if fmt != FORMAT or not isinstance(trained, Trained) or trained.sklearn_version != sklearn.__version__:
        raise Invalid("model", "trained by another version: run `cityos cases train` / "
                               "模型版本不符，请重新训练")
    return trained


def suggest_texts(trained: Trained, texts: Sequence[str], k: int = TOP) -> list[list[tuple[str, float]]]:
    """The k likeliest categories of each text with their probabilities, best first (批量分类)."""
    if not texts:
        return []
    idx, proba = _ranked(trained.pipeline, texts, k)
    names = np.asarray(trained.labels, dtype=object)[idx]
    return [list(zip(row_names.tolist(), row_p.tolist(), strict=True))
            for row_names, row_p in zip(names, proba.astype(float), strict=True)]


# -- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A location inside a polygon of `layer` → this category and department (派单规则).

    A polygon counts when its `code` attribute is set: the one map's `assign` answers with it. The
    layer must be readable by whoever suggests: public (as the demo's parks) or shared with them."""

    layer: str
    category: str
    department: str
    reason: str


def rules_from(items: Iterable[Mapping[str, str] | Sequence[str]],
               departments: Mapping[str, str] | None = None) -> list[Rule]:
    """Rules from data: mappings with layer, category, department and reason, or 4-tuples in that
    order. `departments` translates department names (e.g. the demo's slugs) into codes."""
    out: list[Rule] = []
    for n, item in enumerate(items):
        if isinstance(item, Mapping):
            values = [item.get(k) for k in ("layer", "category", "department", "reason")]
        else:
            values = list(item)
        if len(values) != 4 or not all(isinstance(v, str) and v.strip() for v in values[:3]):
            raise Invalid(f"rules[{n}]", "layer, category, department and reason / "
                                         "须包含图层、类别、部门和理由")
        layer, category, department, reason = (str(v or "").strip() for v in values)
        if departments is not None:
            if department not in departments:
                raise Invalid(f"rules[{n}].department", f"unknown department {department!r} / 未知部门")
            department = departments[department]
        out.append(Rule(layer, category, department, reason or f"inside {layer} / 位于{layer}范围内"))
    return out


def rule_hit(session: Session, rules: Sequence[Rule], lon: float | None, lat: float | None, *,
             actor: Actor = SYSTEM) -> Rule | None:
    """The first rule whose layer holds the point, if any. A rule whose layer is gone or not
    readable is skipped: a map's change must not stop cases from being filed."""
    if lon is None or lat is None or not rules:
        return None
    seen: dict[str, bool] = {}
    for rule in rules:
        if rule.layer not in seen:
            try:
                found = maps.assign(session, actor, rule.layer, [lon], [lat], "code")
                seen[rule.layer] = found[0] is not None
            except (NotFound, Forbidden):
                seen[rule.layer] = False
        if seen[rule.layer]:
            return rule
    return None


# -- suggesting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """What smart dispatch proposes for one case, and why."""

    category: str | None
    department: str | None  # department code
    confidence: float  # 0..1; a rule is certain
    top3: list[tuple[str, float]]
    source: str  # rule|model|none
    reason: str

    def confident(self, threshold: float) -> bool:
        """Pre-fill the dispatch (above the threshold), or leave it to a person (below)."""
        return self.source == "rule" or (self.source == "model" and self.confidence >= threshold)

    def as_dict(self) -> dict[str, Any]:
        """The JSON kept with the case (`Case.suggestion`)."""
        out = asdict(self)
        out["top3"] = [[c, round(p, 4)] for c, p in self.top3]
        out["confidence"] = round(self.confidence, 4)
        return out


# database URL → ((id, trained_at), the model, or why it cannot be used: asked once, not per keystroke)
_cache: dict[str, tuple[tuple[int, Any], Trained | Invalid]] = {}
_cache_lock = threading.Lock()


def newest_model(session: Session) -> tuple[int, Trained] | None:
    """The newest trained model (id, model), loaded once per database and model; Invalid when it
    was stored by another version."""
    head = session.execute(select(CaseModel.id, CaseModel.trained_at)
                           .order_by(CaseModel.id.desc()).limit(1)).first()
    if head is None:
        return None
    url = session.get_bind().engine.url.render_as_string(hide_password=True)
    key = (int(head[0]), head[1])
    with _cache_lock:
        hit = _cache.get(url)
    if hit is None or hit[0] != key:
        blob = session.scalar(select(CaseModel.blob).where(CaseModel.id == key[0]))
        got: Trained | Invalid
        try:
            got = loads(blob or b"")
        except Invalid as exc:
            got = exc
        hit = (key, got)
        with _cache_lock:
            _cache[url] = hit
    if isinstance(hit[1], Invalid):
        raise Invalid("model", hit[1].errors[0].reason)
    return key[0], hit[1]


def suggest(session: Session, text: str, lon: float | None, lat: float | None, *,
            categories: Mapping[str, str | None], rules: Sequence[Rule] = (),
            actor: Actor = SYSTEM) -> Suggestion:
    """Suggest a category and department for one case (智能派单建议): a rule's answer when the
    location falls under one, else the model's best among the active `categories`
    (category code → department code)."""
    ranked: list[tuple[str, float]] = []
    model_id = 0
    note = "no model trained yet: run `cityos cases train` / 尚未训练派单模型"
    try:
        newest = newest_model(session)
    except Invalid as exc:
        newest, note = None, exc.errors[0].reason
    if newest is not None:
        model_id, trained = newest
        every = suggest_texts(trained, [text], k=len(trained.labels))[0]
        ranked = [(c, p) for c, p in every if c in categories][:TOP]
        note = f"model #{model_id} / 模型#{model_id}" if ranked else \
            f"model #{model_id} knows none of the active categories / 模型#{model_id}中没有可用类别"
    hit = rule_hit(session, rules, lon, lat, actor=actor)
    if hit is not None:
        return Suggestion(hit.category, hit.department, 1.0, ranked, "rule", hit.reason)
    if not ranked:
        return Suggestion(None, None, 0.0, [], "none", note)
    category, p = ranked[0]
    return Suggestion(category, categories[category], p, ranked, "model",
                      f"model #{model_id}: {p:.0%} from the text / 模型#{model_id}按文本判断，置信度{p:.0%}")


# -- training from the city's cases -----------------------------------------------------------------


def train_from_db(session: Session, actor: Actor, *, min_cases: int = 50, seed: int = 0,
                  holdout: float = 0.2) -> CaseModel:
    """Train on the city's closed, categorised cases and keep the model as the newest (训练派单模型)."""
    access.require(actor, "cases.workflow.write", None, session)
    rows = session.execute(
        select(Case.title, Case.description, CaseCategory.code)
        .join(CaseCategory, Case.category_id == CaseCategory.id)
        .where(Case.status == "closed").order_by(Case.id)).all()
    if len(rows) < min_cases:
        raise Invalid("cases", f"at least {min_cases} closed cases with a category are needed, found "
                               f"{len(rows)} / 至少需要{min_cases}件已办结且已分类的工单，现有{len(rows)}件")
    labels = [code for _t, _d, code in rows]
    if len(set(labels)) < 2:
        raise Invalid("cases", "closed cases of at least two categories are needed / "
                               "至少需要两个类别的已办结工单")
    trained = train([case_text(t, d or "") for t, d, _c in rows], labels, seed=seed, holdout=holdout)
    row = CaseModel(trained_by=actor.name, cases=len(rows), metrics=trained.metrics, blob=dumps(trained))
    session.add(row)
    session.flush()
    audit.append(session, actor=actor.name, action="cases.model.train", department=actor.department_code,
                 object_type="cases.model", object_id=row.id,
                 detail={k: trained.metrics[k] for k in ("n", "accuracy", "top3", "seconds")})
    return row
