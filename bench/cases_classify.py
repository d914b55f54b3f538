"""How well and how fast does smart dispatch (智能派单) classify?

Run: .venv/bin/python bench/cases_classify.py [--history 10000] [--texts 20000] [--repeat 3]

Generates the demo's case history (`cityos.demo.cases_history`), trains the dispatch model on it
(`dispatching.train`: stratified 20% hold-out, then a refit on everything) and prints the held-out
top-1 and top-3 accuracy (aim: top-1 ≥ 85%), then times `suggest_texts` — the vectorised
classification a batch or the agent screen uses — on texts generated with another seed, by wall
clock and by CPU time (the fairer figure on a shared machine: the work is single-threaded),
against the aim of 2,000 texts/s. It reports; it asserts nothing. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sklearn  # noqa: E402

from cityos.cases import dispatching  # noqa: E402
from cityos.demo.cases_history import CATEGORIES, history  # noqa: E402

AIM_RATE = 2_000  # texts/s
AIM_ACCURACY = 0.85


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=10_000, help="generated closed cases to train on")
    parser.add_argument("--texts", type=int, default=20_000, help="texts to classify in the timed part")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--seed", type=int, default=2202)
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, scikit-learn {sklearn.__version__}, "
          f"{len(CATEGORIES)} categories, model: {dispatching.MODEL_NAME}")

    t0 = time.perf_counter()
    cases = history(args.history, seed=args.seed)
    texts = [c.text for c in history(args.texts, seed=args.seed + 1)]
    print(f"  generated {len(cases):,} + {len(texts):,} cases in {time.perf_counter() - t0:.1f} s")

    start, start_cpu = time.perf_counter(), time.process_time()
    trained = dispatching.train([c.text for c in cases], [c.category for c in cases], seed=0)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    m = trained.metrics
    print(f"training: wall {wall:.1f} s, CPU {cpu:.1f} s (hold-out fit + refit), {m['features']:,} n-grams, "
          f"model {len(dispatching.dumps(trained)) / 1e6:.1f} MB stored")
    for line in dispatching.report_lines(m):
        print(f"  {line}")
    print(f"  top-1 {m['accuracy']:.1%} against the aim of {AIM_ACCURACY:.0%}: "
          f"{verdict(m['accuracy'] >= AIM_ACCURACY)}")
    worst = sorted(m["class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    print("  hardest categories: " + ", ".join(f"{c} {a:.0%}" for c, a in worst))

    best_wall = best_cpu = float("inf")
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        got = dispatching.suggest_texts(trained, texts)
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    assert len(got) == len(texts)
    rate_wall, rate_cpu = len(texts) / best_wall, len(texts) / best_cpu
    print(f"suggest_texts on {len(texts):,} texts (best of {args.repeat}): "
          f"wall {best_wall:.2f} s = {rate_wall:,.0f} texts/s, "
          f"CPU {best_cpu:.2f} s = {rate_cpu:,.0f} texts/s; {rate_cpu / AIM_RATE:.1f}× the aim of "
          f"{AIM_RATE:,} texts/s: {verdict(rate_cpu >= AIM_RATE)}")


if __name__ == "__main__":
    main()
