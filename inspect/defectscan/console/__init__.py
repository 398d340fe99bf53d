"""The operator console: FastAPI + Jinja2 + htmx over the results database and the archive.

``create_app(settings)`` (:mod:`.app`) builds it; ``defectscan console`` serves it with uvicorn.
Pages render what :mod:`defectscan.store` functions return; every asset is served by the app.
"""
