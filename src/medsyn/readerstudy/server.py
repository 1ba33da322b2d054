"""`medsyn reader-study serve`: the reader web app (FastAPI + Jinja2 templates, served by uvicorn).

    GET  /                         enter a name (new reader) or a token (resume)
    POST /start                    name -> a new reader, redirected to their page
    GET  /resume?token=T           -> the reader's page
    GET  /r/{token}                the next image (or "done"), with progress and the answer form
    GET  /r/{token}/image/{id}     PNG bytes of an image in this reader's sequence
    POST /r/{token}/answer         image_id, answer (real|synthetic), confidence 1-5, finding (optional)
    GET  /r/{token}/stop           "your answers are saved" page with the resume link
    GET  /admin                    live counts, or the admin sign-in form (admin token printed at start)
    POST /admin/login              token -> an HttpOnly, SameSite=Strict session cookie, redirected to /admin
    GET  /admin/counts.json        live counts as JSON: the session cookie or `Authorization: Bearer A`

The admin token never travels in a URL (addresses end up in browser history, proxy and server logs): it is
typed into a form once, or sent as a header by a script.

Readers see image ids (random), their own progress and nothing else: no truth, no class, no source.
Every error a request can cause is a 4xx with a one-line message; the app itself raises no 500 for
bad input (validation errors become 422, unknown tokens 404, repeated answers 409, a wrong admin token 403).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Cookie, FastAPI, Form, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from medsyn.readerstudy.store import Study, StudyRequestError

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
NO_STORE = {"Cache-Control": "no-store"}
SESSION_COOKIE = "medsyn_admin"


def _page(request: Request, template: str, status: int = 200, **context: object) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status, headers=NO_STORE)


def _message(request: Request, title: str, text: str, status: int) -> HTMLResponse:
    return _page(request, "message.html", status, title=title, text=text)


def make_app(study_path: str | Path, admin_token: str | None = None) -> FastAPI:
    """The app for one study file; `admin_token` guards the admin view (a random one when None)."""
    study = Study(study_path)
    admin = admin_token or secrets.token_urlsafe(16)
    app = FastAPI(title="medsyn reader study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.admin_token = admin
    app.state.study = study

    @app.exception_handler(StudyRequestError)
    async def _study_error(request: Request, exc: StudyRequestError) -> HTMLResponse:
        return _message(request, "Cannot do that", str(exc), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                 for e in exc.errors()]  # fmt: skip
        return _message(request, "Invalid request", "; ".join(parts), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return _message(request, "Not available", str(exc.detail), exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        return _page(request, "home.html", images=len(study.image_table()))

    @app.post("/start")
    def start(name: Annotated[str, Form(max_length=200)]) -> RedirectResponse:
        token = study.add_reader(name)
        return RedirectResponse(f"/r/{token}", status_code=303)

    @app.get("/resume")
    def resume(token: str) -> RedirectResponse:
        study.reader(token.strip())  # 404 for an unknown token
        return RedirectResponse(f"/r/{token.strip()}", status_code=303)

    @app.get("/r/{token}", response_class=HTMLResponse)
    def read(request: Request, token: str) -> HTMLResponse:
        name, image_id, answered, total = study.progress(token)
        if image_id is None:
            return _page(request, "done.html", name=name, total=total)
        return _page(request, "read.html", name=name, token=token, image_id=image_id, answered=answered,
                     total=total, findings=study.findings)  # fmt: skip

    @app.get("/r/{token}/image/{image_id}")
    def image(token: str, image_id: str) -> Response:
        return Response(study.image_png(token, image_id), media_type="image/png", headers=NO_STORE)

    @app.post("/r/{token}/answer")
    def answer(
        token: str,
        image_id: Annotated[str, Form(max_length=64)],
        answer: Annotated[str, Form(max_length=20)],
        confidence: Annotated[int, Form()],
        finding: Annotated[str, Form(max_length=200)] = "",
    ) -> RedirectResponse:
        study.answer(token, image_id, answer, confidence, finding)
        return RedirectResponse(f"/r/{token}", status_code=303)

    @app.get("/r/{token}/stop", response_class=HTMLResponse)
    def stop(request: Request, token: str) -> HTMLResponse:
        name, _, answered, total = study.progress(token)
        return _page(request, "stop.html", name=name, token=token, answered=answered, total=total)

    sessions: set[str] = set()  # admin sign-ins of this server process (a restart signs everyone out)

    def _is_admin(session: str | None, authorization: str | None) -> bool:
        bearer = (authorization or "").removeprefix("Bearer ").strip()
        return bool(session and session in sessions) or secrets.compare_digest(bearer.encode(), admin.encode())

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
                   authorization: Annotated[str | None, Header()] = None) -> HTMLResponse:  # fmt: skip
        if not _is_admin(session, authorization):
            return _page(request, "admin_login.html")
        return _page(request, "admin.html", counts=study.counts())

    @app.post("/admin/login")
    def admin_login(token: Annotated[str, Form(max_length=200)]) -> RedirectResponse:
        if not secrets.compare_digest(token.strip().encode(), admin.encode()):
            raise StudyRequestError(403, "wrong admin token (it is printed when the server starts)")
        session = secrets.token_urlsafe(24)
        sessions.add(session)
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/admin")
        return response

    @app.get("/admin/counts.json")
    def admin_counts(session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
                     authorization: Annotated[str | None, Header()] = None) -> JSONResponse:  # fmt: skip
        if not _is_admin(session, authorization):
            raise StudyRequestError(403, "admin only: sign in at /admin or send 'Authorization: Bearer TOKEN'")
        return JSONResponse(study.counts(), headers=NO_STORE)

    return app


def serve(study_path: str | Path, host: str = "127.0.0.1", port: int = 8765, admin_token: str | None = None,
          echo: bool = True) -> None:  # fmt: skip
    """Run the app under uvicorn until interrupted; prints the reader and admin addresses first."""
    import uvicorn

    app = make_app(study_path, admin_token)
    if echo:
        print(f"readers: http://{host}:{port}/", flush=True)
        print(f"admin:   http://{host}:{port}/admin (admin token: {app.state.admin_token})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
