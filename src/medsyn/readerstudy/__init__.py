"""Reader study: can people tell real from synthetic images?

    create_study(real_spec, synthetic_folder, "study.sqlite", n=100, seed=0, by_class=True)
    serve("study.sqlite", host="127.0.0.1", port=8765)      # readers answer in a browser
    analyze("study.sqlite", "study-results/")               # reader_study.json + report.html
    section = reader_study_section("study.sqlite")          # the metrics.json section

The study file is one SQLite database (see `store`); images are stored as PNG bytes under random ids.
"""

from __future__ import annotations

from medsyn.readerstudy.analyze import reader_study_section
from medsyn.readerstudy.create import create_study
from medsyn.readerstudy.page import analyze
from medsyn.readerstudy.server import make_app, serve
from medsyn.readerstudy.store import Study

__all__ = ["Study", "analyze", "create_study", "make_app", "reader_study_section", "serve"]
