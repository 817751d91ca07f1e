"""openapi.yaml is valid OpenAPI (openapi-spec-validator) and documents every route the HTTP
API registers (each `router.<method>("<path>")` in Sources/OutboxServer), with its method.

Run by scripts/test.sh: python3 -m unittest -v Tests/OpenAPI/test_openapi.py
"""
import pathlib
import re
import unittest

import yaml
from openapi_spec_validator import validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROUTE = re.compile(r'router\.(get|post|put|patch|delete|head)\("([^"]+)"')


def registered_routes():
    routes = set()
    for source in sorted((ROOT / "Sources" / "OutboxServer").rglob("*.swift")):
        for method, path in ROUTE.findall(source.read_text()):
            # Hummingbird's ":id" is OpenAPI's "{id}".
            routes.add((method, re.sub(r":([A-Za-z_][A-Za-z0-9_]*)", r"{\1}", path)))
    return routes


class OpenAPIDocument(unittest.TestCase):
    def setUp(self):
        self.spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())

    def test_valid_openapi(self):
        validate(self.spec)  # raises with the offending path on an invalid document

    def test_every_route_is_documented(self):
        routes = registered_routes()
        self.assertGreaterEqual(len(routes), 5, f"found too few routes in the sources: {routes}")
        paths = self.spec.get("paths", {})
        missing = sorted(f"{m.upper()} {p}" for m, p in routes if m not in (paths.get(p) or {}))
        self.assertEqual(missing, [], "routes the server has and openapi.yaml lacks")

    def test_no_documented_route_is_missing_from_the_server(self):
        routes = registered_routes()
        methods = {"get", "post", "put", "patch", "delete", "head"}
        documented = {(m, p) for p, item in self.spec.get("paths", {}).items() for m in item if m in methods}
        self.assertEqual(sorted(documented - routes), [], "routes openapi.yaml documents and the server lacks")


if __name__ == "__main__":
    unittest.main()
