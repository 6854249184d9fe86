"""Regenerate the pinned KEDA schemas in deploy/kubernetes/schemas/ (not run by the tests).

KEDA publishes its CRDs' OpenAPI schemas in its CRD YAML, which no package registry ships as
such: npm's ``@kubernetes-models/keda`` (2.0.0) ships only compiled JavaScript validators.
PyPI's ``cloudcoil-models-keda`` ships pydantic models generated from KEDA's CRDs, versioned
as KEDA (2.16.1.0: KEDA v2.16.1); pydantic writes them back out as JSON Schema. This script
keeps the two kinds lrtune uses (ScaledJob, TriggerAuthentication) and makes them strict and
small:

- every object with declared properties gets ``additionalProperties: false``: the API server
  rejects unknown fields of a structural CRD schema (``kubectl apply``'s field validation is
  strict by default), so the offline check must too;
- ``metadata`` and the ScaledJob's ``jobTargetRef`` (a batch/v1 JobSpec) point at Kubernetes'
  own strict definitions, which kubernetes-validate ships (``https://kubernetes.io/api/
  _definitions.json``); the test resolves them there;
- a field that may be null in pydantic but not in the CRD loses its null, titles and defaults
  are dropped, ``status`` is left out (the operator writes it), ``apiVersion``, ``kind`` and
  ``metadata`` are required as for every Kubernetes object.

Run it in a throwaway environment::

    python3 -m venv /tmp/keda && /tmp/keda/bin/pip install cloudcoil-models-keda==2.16.1.0
    /tmp/keda/bin/python tests/deploy/keda_schema.py
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

PACKAGE, VERSION = "cloudcoil-models-keda", "2.16.1.0"
K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"
OBJECT_META = {"$ref": K8S + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
JOB_SPEC = {"$ref": K8S + "io.k8s.api.batch.v1.JobSpec"}
OUT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "schemas"


def strict(node: Any) -> Any:
    """The schema ``node`` without nulls, titles or defaults, closed to unknown properties."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    options = node.get("anyOf")
    if options is not None:
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "title", "default")}
            return strict({**kept[0], **rest})
    out = {k: strict(v) for k, v in node.items()
           if k not in ("title", "default", "description")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def used(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with only the ``$defs`` it reaches."""
    defs, seen, todo = schema.pop("$defs"), set(), [schema]
    while todo:
        text = json.dumps(todo.pop())
        for name in defs:
            if f'"#/$defs/{name}"' in text and name not in seen:
                seen.add(name)
                todo.append(defs[name])
    return {**schema, "$defs": {n: defs[n] for n in sorted(seen)}} if seen else schema


def kind_schema(model: Any, kind: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    props = schema["properties"]
    props.pop("status", None)
    props["metadata"] = OBJECT_META
    if kind == "ScaledJob":
        schema["$defs"]["ScaledJobSpec"]["properties"]["jobTargetRef"] = JOB_SPEC
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    out = used(strict(schema))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"KEDA keda.sh/v1alpha1 {kind}: from PyPI {PACKAGE}=={VERSION} (KEDA "
                        "v2.16.1's CRDs as pydantic models) by tests/deploy/keda_schema.py",
            **out}


def main() -> None:
    assert importlib.metadata.version(PACKAGE) == VERSION, f"install {PACKAGE}=={VERSION}"
    from cloudcoil.models.keda import v1alpha1  # type: ignore[import-not-found]

    for kind in ("ScaledJob", "TriggerAuthentication"):
        path = OUT / f"{kind.lower()}.json"
        path.write_text(json.dumps(kind_schema(getattr(v1alpha1, kind), kind), indent=1,
                                   sort_keys=True) + "\n")
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
