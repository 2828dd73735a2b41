"""The client against the broker's OpenAPI document.

tre_client.wire declares every operation the client calls and every field
it reads; these tests fail when the document (api/openapi.json, or
TRE_OPENAPI, or the live broker's at TRE_BROKER) and the declarations
disagree, and when the client's code reads a field it does not declare.
"""

import ast
import json
import os
import re
import unittest
import urllib.request

import tre_client
from tre_client import errors, wire

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_DOC = os.path.join(HERE, "..", "..", "..", "api", "openapi.json")


def load_document():
    """The OpenAPI document: TRE_OPENAPI, the repository's, or the live
    broker's; None when there is none."""
    path = os.environ.get("TRE_OPENAPI") or (REPO_DOC if os.path.isfile(REPO_DOC) else None)
    if path:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    broker = os.environ.get("TRE_BROKER")
    if broker:
        with urllib.request.urlopen(broker.rstrip("/") + "/api/v1/openapi.json", timeout=30) as resp:
            return json.load(resp)
    return None


class Document:
    def __init__(self, doc):
        self.doc = doc
        self.schemas = doc["components"]["schemas"]

    def resolve(self, s):
        while "$ref" in s:
            s = self.schemas[s["$ref"].rsplit("/", 1)[1]]
        return s

    def properties(self, s):
        """Every property a schema may have, through $ref and allOf."""
        s = self.resolve(s)
        props = dict(s.get("properties", {}))
        for part in s.get("allOf", []):
            props.update(self.properties(part))
        return props

    def schema(self, dotted):
        """The schema named "Name" or "Name.property.property"."""
        name, *path = dotted.split(".")
        s = self.schemas[name]
        for p in path:
            s = self.properties(s)[p]
        return s

    def refs(self, s):
        """The schema names s is, or is oneOf."""
        if "$ref" in s:
            return {s["$ref"].rsplit("/", 1)[1]}
        return {r for part in s.get("oneOf", []) for r in self.refs(part)}


class WireTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        doc = load_document()
        if doc is None:
            raise unittest.SkipTest("no OpenAPI document: set TRE_OPENAPI or TRE_BROKER, or run from the tre repository")
        cls.d = Document(doc)

    def test_operations(self):
        for name, op in wire.OPERATIONS.items():
            with self.subTest(name):
                item = self.d.doc["paths"].get(op.path)
                self.assertIsNotNone(item, "path {} not in the document".format(op.path))
                doc_op = item.get(op.method.lower())
                self.assertIsNotNone(doc_op, "{} {} not in the document".format(op.method, op.path))
                params = {p["name"] for p in doc_op.get("parameters", []) if p["in"] == "query"}
                self.assertLessEqual(set(op.params), params, "query parameters")
                body = doc_op.get("requestBody")
                if op.request is None:
                    self.assertFalse(body and body.get("required"), "the document requires a body")
                else:
                    self.assertIsNotNone(body, "the document takes no body")
                    self.assertEqual(self.d.refs(body["content"]["application/json"]["schema"]), {op.request})
                ok = [r for code, r in doc_op["responses"].items() if code.startswith("2")]
                self.assertEqual(len(ok), 1, "success responses")
                content = ok[0].get("content", {})
                if op.response == ("text/csv",):
                    self.assertIn("text/csv", content)
                else:
                    self.assertEqual(self.d.refs(content["application/json"]["schema"]), set(op.response))

    def test_requests(self):
        for name, fields in wire.REQUESTS.items():
            with self.subTest(name):
                s = self.d.schema(name)
                self.assertLessEqual(set(fields), set(self.d.properties(s)))
                self.assertLessEqual(set(self.d.resolve(s).get("required", [])), set(fields),
                                     "the document requires fields the client never sends")

    def test_fields(self):
        for name, fields in wire.FIELDS.items():
            with self.subTest(name):
                self.assertLessEqual(set(fields), set(self.d.properties(self.d.schema(name))))
        # Every schema a declared operation answers with has its fields
        # declared when the client reads it (or is passed on whole).
        for name in ("Query", "ResultResponse", "DryRunResponse", "Column", "ResearcherCell"):
            self.assertIn(name, wire.FIELDS)

    def test_enums(self):
        self.assertEqual(tuple(self.d.schemas["Status"]["enum"]), wire.STATUSES)
        self.assertLessEqual(set(wire.ENDED) | set(wire.AT_SITE), set(wire.STATUSES))
        codes = self.d.properties(self.d.schema("Error.error"))["code"]["enum"]
        self.assertEqual(set(codes), set(errors._BY_CODE))

    def test_code_reads_only_declared_fields(self):
        declared = {f for fields in wire.FIELDS.values() for f in fields}
        declared |= {f for fields in wire.REQUESTS.values() for f in fields}
        declared |= {p for op in wire.OPERATIONS.values() for p in op.params}
        # Values of the API's enums, checked by test_enums.
        declared |= set(wire.STATUSES) | set(errors._BY_CODE)
        pkg = os.path.dirname(tre_client.__file__)
        for fn in sorted(os.listdir(pkg)):
            if not fn.endswith(".py") or fn == "wire.py":  # the declarations themselves
                continue
            with open(os.path.join(pkg, fn), encoding="utf-8") as f:
                tree = ast.parse(f.read(), fn)
            for key, line in _literal_keys(tree):
                # The API's fields are snake case: capitalised keys are
                # HTTP headers (Retry-After) or environment variables.
                if re.match(r"[A-Z]", key):
                    continue
                with self.subTest(file=fn, line=line, key=key):
                    self.assertTrue(key in declared, "{}:{} reads {!r}, which tre_client.wire does not declare".format(fn, line, key))


def _literal_keys(tree):
    """The string literals used as keys: x["k"], x.get("k"), {"k": …}."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                yield key.value, node.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                yield key.value, node.lineno
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    yield key.value, node.lineno


if __name__ == "__main__":
    unittest.main()
