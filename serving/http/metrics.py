"""Prometheus series labelled by route template, never by raw path.

BentoML's HTTP metrics middleware labels every series with the request's path, so each customer id read
(/v1/customers/C000123) and every random path a scanner tries adds series for as long as the worker lives. The
subclass here hands it the route template instead (/v1/customers/{customer_id}; "other" for a path that matches no
operation), taken from the service's OpenAPI document so the routes are written once, and gives the real path back
to the routes behind it. `install(spec)` puts it in place of BentoML's class before the HTTP app is built.
"""

from __future__ import annotations

import re

from bentoml._internal.server.http import instruments

REAL_PATH = "segments.real_path"
UNMATCHED = "other"


def templates_of(spec: dict) -> list[tuple[re.Pattern, str]]:
    """(pattern, template) per path of an OpenAPI document; a parameter matches one path segment, except a
    trailing `{path}` (the reports' files), which matches the rest."""
    out = []
    for template in spec.get("paths", {}):
        pattern = re.escape(template)
        pattern = re.sub(r"\\\{path\\\}$", ".*", pattern)
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
        out.append((re.compile(f"^{pattern}$"), template))
    # most specific first: literal paths before templated ones, longer before shorter
    return sorted(out, key=lambda item: ("{" in item[1], -len(item[1])))


def route_template(path: str, templates: list[tuple[re.Pattern, str]]) -> str:
    if path == "/":
        return path
    return next((template for pattern, template in templates if pattern.match(path)), UNMATCHED)


def install(spec) -> None:
    """Replace BentoML's HTTP metrics middlewares (the API server's and the service's, which BentoML 1.4 both
    stacks) by ones that label by route template (`spec()` returns the OpenAPI document, read on first use)."""
    for name in ("HTTPTrafficMetricsMiddleware", "RunnerTrafficMetricsMiddleware"):
        base = getattr(instruments, name)
        if not getattr(base, "labels_route_templates", False):
            setattr(instruments, name, _templated(base, spec))


def _templated(base, spec):
    class RouteTemplateMetrics(base):
        labels_route_templates = True

        def __init__(self, app, *args, **kwargs):
            super().__init__(_with_real_path(app), *args, **kwargs)
            self.templates = None

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and REAL_PATH not in scope:
                if self.templates is None:
                    self.templates = templates_of(spec())
                scope = {**scope, "path": route_template(scope["path"], self.templates), REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    RouteTemplateMetrics.__name__ = f"RouteTemplate{base.__name__}"
    return RouteTemplateMetrics


def _with_real_path(app):
    async def restore(scope, receive, send):
        if REAL_PATH in scope:
            scope = {**scope, "path": scope[REAL_PATH]}
            del scope[REAL_PATH]
        await app(scope, receive, send)

    return restore
