#!/usr/bin/env python3
"""Reader-study server under load: N simulated readers answer M images each at the same time.

Starts the real command (`medsyn reader-study serve`, uvicorn, 127.0.0.1, a free port) on a fresh study of
M random 64 px images, runs one thread per reader (each: register, then M times fetch the page, fetch the
image, post the answer) and stops the server. It then counts the answers in the study file (answers lost =
posted and acknowledged with a redirect, but not stored) and prints latency percentiles of the answer POSTs
and the page/image GETs, with the machine load. Nothing is retried: any non-2xx/3xx answer is counted.

Usage: benchmarks/bench_reader_study.py [--readers 20] [--answers 100] [--port 0]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from medsyn.readerstudy import Study
from medsyn.readerstudy.create import png_bytes
from medsyn.readerstudy.store import StudyImage, write_study

ADMIN = "bench-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_study(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    images = [StudyImage(png_bytes(rng.integers(0, 256, (1, 64, 64), dtype=np.uint8)), ("real", "synthetic")[i % 2],
                         "normal", {}) for i in range(n)]  # fmt: skip
    write_study(path, images, {"seed": 0, "n": n, "groups": ["normal"]}, seed=0)


def reader(base: str, name: str, answers: int, lat: dict[str, list[float]], errors: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        resp = client.post("/start", data={"name": name})
        if resp.status_code != 303:
            errors.append(f"{name} start: {resp.status_code}")
            return
        token = resp.headers["location"].rsplit("/", 1)[1]
        for k in range(answers):
            t = time.perf_counter()
            page = client.get(f"/r/{token}")
            lat["page"].append(time.perf_counter() - t)
            m = re.search(r'name="image_id" value="([0-9a-f]+)"', page.text)
            if not m:
                errors.append(f"{name} page {k}: {page.status_code} no image")
                return
            t = time.perf_counter()
            img = client.get(f"/r/{token}/image/{m.group(1)}")
            lat["image"].append(time.perf_counter() - t)
            t = time.perf_counter()
            resp = client.post(f"/r/{token}/answer",
                               data={"image_id": m.group(1), "answer": "real", "confidence": str(k % 5 + 1)})  # fmt: skip
            lat["answer"].append(time.perf_counter() - t)
            if resp.status_code != 303 or img.status_code != 200:
                errors.append(f"{name} answer {k}: {resp.status_code} (image {img.status_code})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--answers", type=int, default=100)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study.sqlite"
        make_study(study, args.answers)
        cmd = [sys.executable, "-m", "medsyn", "reader-study", "serve", str(study), "--port", str(port),
               "--admin-token", ADMIN]  # fmt: skip
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            else:
                raise SystemExit("server did not start within 120 s")
            lat: dict[str, list[float]] = {"page": [], "image": [], "answer": []}
            errors: list[str] = []
            threads = [threading.Thread(target=reader, args=(base, f"reader{i:02d}", args.answers, lat, errors))
                       for i in range(args.readers)]  # fmt: skip
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0
            served = httpx.get(f"{base}/admin/counts.json", headers={"Authorization": f"Bearer {ADMIN}"}).json()["answers"]
        finally:
            server.terminate()
            server.wait(timeout=30)
        stored = len(Study(study).answer_table())
    acknowledged = len(lat["answer"]) - sum("answer" in e for e in errors)
    print(f"{args.readers} readers x {args.answers} answers against `medsyn reader-study serve` (uvicorn, SQLite WAL)")
    print(f"answers posted {len(lat['answer'])}, acknowledged {acknowledged}, stored {stored}, "
          f"lost {acknowledged - stored}, admin count {served}, errors {len(errors)}")  # fmt: skip
    for e in errors[:5]:
        print("  error:", e)
    for kind, values in lat.items():
        v = np.array(values) * 1000
        print(f"{kind:>6} latency ms: p50 {np.percentile(v, 50):.1f}  p95 {np.percentile(v, 95):.1f}  "
              f"max {v.max():.1f}  (n={len(v)})")  # fmt: skip
    print(f"wall {wall:.1f} s, {len(lat['answer']) / wall:.1f} answers/s; loadavg {os.getloadavg()}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
