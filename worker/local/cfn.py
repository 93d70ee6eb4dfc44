"""Read the CloudFormation template and load its SSM documents into an SSM endpoint.

The local stack (``processor local``) calls :func:`create_documents` against the
emulator, so the document content that runs locally is, byte for byte, the
content CloudFormation deploys on AWS: there is one source of truth,
``deploy/cloudformation/processor.yaml``.

PyYAML's ``SafeLoader`` rejects CloudFormation's short-form tags (``!Sub``,
``!Ref``, ...); :class:`CfnLoader` turns each into its long form
(``{"Fn::Sub": ...}``, ``{"Ref": ...}``) and nothing else, so the result is the
same dict a JSON template would give.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

#: Where the template lives in a source checkout, relative to the repository root.
TEMPLATE_RELPATH = Path("deploy/cloudformation/processor.yaml")
#: Where setup.cfg's data_files installs it, relative to ``sys.prefix``.
INSTALLED_RELPATH = Path("share/processor/cloudformation/processor.yaml")

#: Short-form tags whose long form is ``Fn::<Name>``.
_FN_TAGS = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAZs",
    "GetAtt",
    "If",
    "ImportValue",
    "Join",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
)

#: Pseudo parameters that :func:`resolve_name` can substitute in ``Fn::Sub``.
_SUB_PLACEHOLDER = re.compile(r"\$\{([^}!]+)\}")


class CfnLoader(yaml.SafeLoader):
    """A SafeLoader that also reads CloudFormation's short-form intrinsic tags."""


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise yaml.constructor.ConstructorError(  # pragma: no cover - yaml has no other kinds
        None, None, f"unexpected node {type(node).__name__}", node.start_mark
    )


def _fn_constructor(long_name: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        return {long_name: _construct_any(loader, node)}

    return construct


def _construct_ref(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Ref": _construct_any(loader, node)}


def _construct_condition(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Condition": _construct_any(loader, node)}


def _construct_getatt(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    value = _construct_any(loader, node)
    if isinstance(value, str):
        # "!GetAtt Resource.Attribute" (the attribute may itself contain dots).
        resource, sep, attribute = value.partition(".")
        if not sep:
            raise yaml.constructor.ConstructorError(
                None, None, f"!GetAtt needs Resource.Attribute, got {value!r}", node.start_mark
            )
        return {"Fn::GetAtt": [resource, attribute]}
    return {"Fn::GetAtt": value}


for _tag in _FN_TAGS:
    CfnLoader.add_constructor(f"!{_tag}", _fn_constructor(f"Fn::{_tag}"))
CfnLoader.add_constructor("!GetAtt", _construct_getatt)
CfnLoader.add_constructor("!Ref", _construct_ref)
CfnLoader.add_constructor("!Condition", _construct_condition)


@dataclass(frozen=True)
class DocumentSpec:
    """One ``AWS::SSM::Document`` of the template, its name resolved for a stack."""

    logical_id: str
    name: str
    content: dict[str, Any]
    document_type: str
    document_format: str

    def content_text(self) -> str:
        """The content serialised in this document's ``DocumentFormat``."""
        if self.document_format == "YAML":
            return yaml.safe_dump(
                self.content, sort_keys=False, allow_unicode=True, default_flow_style=False
            )
        return json.dumps(self.content, indent=2, ensure_ascii=False)


class SsmDocumentClient(Protocol):
    """The one call of a boto3 SSM client that :func:`create_documents` needs."""

    def create_document(self, **kwargs: Any) -> Any: ...


def default_template_path() -> Path:
    """The repository's template, else the copy installed under ``sys.prefix``."""
    repo_copy = Path(__file__).resolve().parents[2] / TEMPLATE_RELPATH
    if repo_copy.is_file():
        return repo_copy
    installed = Path(sys.prefix) / INSTALLED_RELPATH
    if installed.is_file():
        return installed
    raise FileNotFoundError(
        f"CloudFormation template not found: looked for {repo_copy} (source checkout) "
        f"and {installed} (installed data file)"
    )


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation YAML (or JSON) template into plain dicts and lists."""
    with open(path, encoding="utf-8") as stream:
        template = yaml.load(stream, Loader=CfnLoader)  # noqa: S506 - CfnLoader is a SafeLoader
    if not isinstance(template, dict):
        raise TypeError(f"{path}: a CloudFormation template must be a mapping")
    return template


def resolve_name(value: Any, *, stack_name: str, logical_id: str, region: str = "us-east-1") -> str:
    """Resolve a document ``Name``: a plain string or ``Fn::Sub`` over pseudo parameters.

    Only ``${AWS::StackName}`` and ``${AWS::Region}`` are known here; anything
    else (another resource, a template parameter) is an error rather than a guess.
    """
    if value is None:
        return f"{stack_name}-{logical_id}"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and set(value) == {"Fn::Sub"}:
        body = value["Fn::Sub"]
        if not isinstance(body, str):
            raise ValueError(
                f"{logical_id}: Name uses the list form of Fn::Sub, which is not supported here"
            )
        known = {"AWS::StackName": stack_name, "AWS::Region": region}

        def substitute(match: re.Match[str]) -> str:
            placeholder = match.group(1)
            if placeholder not in known:
                raise ValueError(
                    f"{logical_id}: Name refers to " + "${" + placeholder + "}"
                    ", which cannot be resolved outside CloudFormation"
                )
            return known[placeholder]

        # "${!Literal}" is CloudFormation's escape for a literal "${Literal}".
        return _SUB_PLACEHOLDER.sub(substitute, body).replace("${!", "${")
    raise ValueError(f"{logical_id}: unsupported Name {value!r}")


def ssm_documents(
    template: Mapping[str, Any], stack_name: str, *, region: str = "us-east-1"
) -> list[DocumentSpec]:
    """Every ``AWS::SSM::Document`` resource of ``template``, in template order."""
    specs: list[DocumentSpec] = []
    resources = template.get("Resources") or {}
    for logical_id, resource in resources.items():
        if not isinstance(resource, Mapping) or resource.get("Type") != "AWS::SSM::Document":
            continue
        props = resource.get("Properties") or {}
        content = props.get("Content")
        if isinstance(content, str):
            # CloudFormation also accepts Content as a JSON/YAML string.
            content = yaml.safe_load(content)
        if not isinstance(content, dict):
            raise TypeError(f"{logical_id}: Content must be a mapping")
        specs.append(
            DocumentSpec(
                logical_id=logical_id,
                name=resolve_name(
                    props.get("Name"), stack_name=stack_name, logical_id=logical_id, region=region
                ),
                content=content,
                document_type=str(props.get("DocumentType", "Command")),
                # CloudFormation's default DocumentFormat is JSON.
                document_format=str(props.get("DocumentFormat", "JSON")),
            )
        )
    return specs


def create_documents(ssm_client: SsmDocumentClient, specs: Iterable[DocumentSpec]) -> None:
    """``CreateDocument`` for each spec, with the content in its own format."""
    for spec in specs:
        ssm_client.create_document(
            Content=spec.content_text(),
            Name=spec.name,
            DocumentType=spec.document_type,
            DocumentFormat=spec.document_format,
        )
