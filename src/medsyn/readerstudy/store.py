"""The study file: one SQLite database holding the images (PNG bytes under opaque ids), the readers and
their answers.

    images   id (random hex), position, png, truth (real | synthetic), grp (class group), labels (JSON)
    readers  token (random, the reader's resume link), name (unique), created, sequence (JSON image ids)
    answers  (reader, image) primary key, answer, confidence 1-5, finding, answered_at

The web server opens a fresh connection per request (SQLite connections are not shared across threads),
in WAL mode so readers never block each other's writes for long, and records each answer with one
INSERT, which is one transaction: an answer is either stored whole or not at all, and the primary key
turns a repeated submission into a clear "already answered" instead of a duplicate row.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.errors import DataError, MedsynError

STUDY_FORMAT = "medsyn-reader-study"
STUDY_VERSION = 1
ANSWERS = ("real", "synthetic")
MAX_NAME = 80
MAX_FINDING = 120

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
  id TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, png BLOB NOT NULL,
  truth TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')), grp TEXT NOT NULL, labels TEXT NOT NULL);
CREATE TABLE readers (
  token TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL, sequence TEXT NOT NULL);
CREATE TABLE answers (
  reader TEXT NOT NULL REFERENCES readers(token), image TEXT NOT NULL REFERENCES images(id),
  answer TEXT NOT NULL CHECK (answer IN ('real', 'synthetic')),
  confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5), finding TEXT, answered_at TEXT NOT NULL,
  PRIMARY KEY (reader, image));
"""


class StudyRequestError(MedsynError):
    """A reader's request that cannot be served; `status` is the HTTP status the server answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StudyImage:
    """One image of the study before it is written: PNG bytes, the truth and its class group."""

    png: bytes
    truth: str
    group: str
    labels: dict[str, float]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _open(path: Path) -> sqlite3.Connection:
    # isolation_level=None: autocommit, so each statement is its own transaction unless BEGIN says otherwise
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 30000")
    con.execute("PRAGMA foreign_keys = ON")
    return con


def write_study(path: str | Path, images: list[StudyImage], meta: dict[str, Any], seed: int) -> Path:
    """Write a new study file (refuses to overwrite one: it may hold answers). Image ids are random
    (`secrets`), and the stored order is shuffled with `seed`, so neither reveals which image is real."""
    path = Path(path)
    if path.exists():
        raise DataError(f"{path} exists; a study file may hold answers, so choose a new name or delete it yourself")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    order = np.random.default_rng([seed, 1]).permutation(len(images))
    con = _open(tmp)
    try:
        con.executescript(SCHEMA)
        con.execute("BEGIN")
        info = {"format": STUDY_FORMAT, "version": STUDY_VERSION, "created": _now(), **meta}
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in info.items()])
        for position, i in enumerate(order):
            im = images[int(i)]
            con.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)",
                (secrets.token_hex(8), position, im.png, im.truth, im.group, json.dumps(im.labels)),
            )
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode = WAL")  # stored in the file: every later connection uses WAL
    finally:
        con.close()
    tmp.replace(path)  # atomic: a killed `create` leaves no half-written study under the real name
    return path


class Study:
    """Access to one study file; every method opens its own short-lived connection (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: study file not found (make one with `medsyn reader-study create`)")
        try:
            with self.connect() as con:
                rows = con.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a reader-study file ({exc})") from None
        self.meta = {k: json.loads(v) for k, v in rows}
        if self.meta.get("format") != STUDY_FORMAT or self.meta.get("version") != STUDY_VERSION:
            raise DataError(f"{self.path}: not a version-{STUDY_VERSION} reader-study file")

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        con = _open(self.path)
        try:
            yield con
        finally:
            con.close()

    @property
    def findings(self) -> list[str]:
        """The finding choices offered to readers (the study's class groups)."""
        return list(self.meta.get("groups", []))

    def add_reader(self, name: str) -> str:
        """Register a reader; returns the token of their (resumable) session. Their image order is a
        permutation seeded by the study seed and their number, so two readers see different orders."""
        name = " ".join(name.split())
        if not 0 < len(name) <= MAX_NAME:
            raise StudyRequestError(422, f"a reader name has 1 to {MAX_NAME} characters")
        token = secrets.token_urlsafe(12)
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")  # the reader count and the insert must not interleave
            try:
                if con.execute("SELECT 1 FROM readers WHERE name = ?", (name,)).fetchone():
                    raise StudyRequestError(409, f"the name {name!r} is taken; resume with your own link or "
                                                 "token, or choose another name")  # fmt: skip
                number = con.execute("SELECT COUNT(*) FROM readers").fetchone()[0]
                ids = [r[0] for r in con.execute("SELECT id FROM images ORDER BY position")]
                rng = np.random.default_rng([int(self.meta.get("seed", 0)), 2, number])
                sequence = [ids[i] for i in rng.permutation(len(ids))]
                con.execute("INSERT INTO readers VALUES (?, ?, ?, ?)", (token, name, _now(), json.dumps(sequence)))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return token

    def reader(self, token: str) -> tuple[str, list[str]]:
        """(name, image sequence) of a reader; 404 for an unknown token."""
        with self.connect() as con:
            row = con.execute("SELECT name, sequence FROM readers WHERE token = ?", (token,)).fetchone()
        if row is None:
            raise StudyRequestError(404, "unknown reader token; start again from the study's home page")
        return row[0], json.loads(row[1])

    def progress(self, token: str) -> tuple[str, str | None, int, int]:
        """(name, next unanswered image id or None when done, answered, total)."""
        name, sequence = self.reader(token)
        with self.connect() as con:
            done = {r[0] for r in con.execute("SELECT image FROM answers WHERE reader = ?", (token,))}
        nxt = next((i for i in sequence if i not in done), None)
        return name, nxt, len(done), len(sequence)

    def image_png(self, token: str, image_id: str) -> bytes:
        """PNG bytes of an image in this reader's sequence (404 otherwise)."""
        _, sequence = self.reader(token)
        if image_id not in sequence:
            raise StudyRequestError(404, "no such image in this reader's study")
        with self.connect() as con:
            return bytes(con.execute("SELECT png FROM images WHERE id = ?", (image_id,)).fetchone()[0])

    def answer(self, token: str, image_id: str, answer: str, confidence: int, finding: str | None) -> None:
        """Store one answer (one INSERT = one transaction). 404 unknown image, 409 already answered,
        422 a value out of range."""
        if answer not in ANSWERS:
            raise StudyRequestError(422, f"answer must be 'real' or 'synthetic', got {answer[:40]!r}")
        if not 1 <= confidence <= 5:
            raise StudyRequestError(422, f"confidence must be 1 to 5, got {confidence}")
        finding = (finding or "").strip() or None
        if finding is not None and finding not in self.findings:
            raise StudyRequestError(422, f"unknown finding {finding[:MAX_FINDING]!r}; choose one of the listed ones")
        _, sequence = self.reader(token)
        if image_id not in sequence:
            raise StudyRequestError(404, "no such image in this reader's study")
        with self.connect() as con:
            try:
                con.execute(
                    "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                    (token, image_id, answer, confidence, finding, _now()),
                )
            except sqlite3.IntegrityError:
                raise StudyRequestError(409, "this image is already answered; answers cannot be changed") from None

    def counts(self) -> dict[str, Any]:
        """Live counts for the admin view: images, answers, and per reader answered / total."""
        with self.connect() as con:
            images = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            rows = con.execute(
                "SELECT r.name, r.created, COUNT(a.image), MAX(a.answered_at) FROM readers r "
                "LEFT JOIN answers a ON a.reader = r.token GROUP BY r.token ORDER BY r.created"
            ).fetchall()
        readers = [{"name": n, "started": c, "answered": k, "total": images, "last_answer": last}
                   for n, c, k, last in rows]  # fmt: skip
        return {"images": images, "readers": readers, "answers": sum(r["answered"] for r in readers)}

    def answer_table(self) -> list[dict[str, Any]]:
        """Every answer with the truth and class group of its image (for the analysis, never served)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT r.name, a.image, i.truth, i.grp, a.answer, a.confidence, a.finding, a.answered_at "
                "FROM answers a JOIN readers r ON r.token = a.reader JOIN images i ON i.id = a.image "
                "ORDER BY r.created, a.answered_at"
            ).fetchall()
        keys = ("reader", "image", "truth", "group", "answer", "confidence", "finding", "answered_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def image_table(self) -> list[dict[str, Any]]:
        """id, truth and group of every image (the key; for the analysis, never served)."""
        with self.connect() as con:
            rows = con.execute("SELECT id, truth, grp FROM images ORDER BY position").fetchall()
        return [{"image": i, "truth": t, "group": g} for i, t, g in rows]
