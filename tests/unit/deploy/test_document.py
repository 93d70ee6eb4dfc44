"""The SSM documents in deploy/cloudformation/processor.yaml, and the template reader.

The rules checked here are the ones that keep an S3 object key from ever being
read as shell code: ENV_VAR interpolation, "$SSM_<Name>" only inside double
quotes, no double-brace placeholders, strict patterns that mean the same to
the SSM service, the SSM Agent (Go RE2) and Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.tools import require_module
from worker.local import cfn
from worker.local.patterns import pattern_matches

TEMPLATE = cfn.default_template_path()


@pytest.fixture(scope="module")
def documents(template: dict[str, Any]) -> dict[str, cfn.DocumentSpec]:
    return {spec.logical_id: spec for spec in cfn.ssm_documents(template, "processor")}


def _patterns(documents: dict[str, cfn.DocumentSpec]) -> dict[str, str]:
    params = documents["SubmitDocument"].content["parameters"]
    return {name: definition["allowedPattern"] for name, definition in params.items()}


def _matches(pattern: str, value: str) -> bool:
    """Both semantics must agree: the agent's (RE2 search) and a full match."""
    agent = pattern_matches(pattern, value)
    full = re.fullmatch(pattern, value) is not None
    assert agent == full, f"dialects disagree on {value!r}: agent={agent} fullmatch={full}"
    return agent


def _scripts(spec: cfn.DocumentSpec) -> Iterator[str]:
    for step in spec.content["mainSteps"]:
        if step["action"] == "aws:runShellScript":
            yield "\n".join(step["inputs"]["runCommand"]) + "\n"


#: A reference to an SSM_ variable: $SSM_X, ${SSM_X}, ${SSM_X-}, ${SSM_X+set}.
_SSM_REF = re.compile(r"\$(?:SSM_(\w+)|\{SSM_(\w+)(?:[-+][A-Za-z]*)?\})")


def _ssm_references(script: str) -> Iterator[tuple[str, str, bool]]:
    """(name, text, inside double quotes) for each $SSM_ expansion, per POSIX sh quoting."""
    quote: str | None = None
    i = 0
    while i < len(script):
        ch = script[i]
        if quote == "'":
            if ch == "'":
                quote = None
            i += 1
            continue
        if ch == "\\":
            i += 2
            continue
        if quote is None and ch == "#" and (i == 0 or script[i - 1] in " \t\n;"):
            end = script.find("\n", i)
            i = len(script) if end < 0 else end
            continue
        if quote is None and ch == "'":
            quote = "'"
        elif ch == '"':
            quote = None if quote == '"' else '"'
        elif ch == "$" and script.startswith(("$SSM_", "${SSM_"), i):
            match = _SSM_REF.match(script, i)
            assert match, f"unexpected SSM_ expansion at {script[i : i + 30]!r}"
            yield (match.group(1) or match.group(2), match.group(0), quote == '"')
            i = match.end()
            continue
        i += 1


# --- the template ---------------------------------------------------------------------


def test_template_is_a_cloudformation_template(template: dict[str, Any]) -> None:
    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    assert template["Description"]
    assert set(template["Outputs"]) >= {"SubmitDocumentName", "StatusDocumentName"}
    assert template["Outputs"]["SubmitDocumentName"]["Value"] == {"Ref": "SubmitDocument"}


def test_no_double_braces_anywhere_in_the_file() -> None:
    assert "{{" not in TEMPLATE.read_text(encoding="utf-8")


def test_submit_document_resource(template: dict[str, Any]) -> None:
    props = template["Resources"]["SubmitDocument"]["Properties"]
    assert props["DocumentType"] == "Command"
    assert props["DocumentFormat"] == "YAML"
    assert props["UpdateMethod"] == "NewVersion"
    assert props["Name"] == {"Fn::Sub": "${AWS::StackName}-SubmitDocument"}


def test_documents_resolve_names_for_a_stack(documents: dict[str, cfn.DocumentSpec]) -> None:
    assert documents["SubmitDocument"].name == "processor-SubmitDocument"
    assert documents["StatusDocument"].name == "processor-StatusDocument"
    for spec in documents.values():
        assert spec.content["schemaVersion"] == "2.2"
        assert spec.content["description"]
        # What create_documents sends is the same content.
        assert yaml.safe_load(spec.content_text()) == spec.content


def test_every_parameter_is_described_env_var_and_patterned(
    documents: dict[str, cfn.DocumentSpec],
) -> None:
    for spec in documents.values():
        for name, definition in spec.content.get("parameters", {}).items():
            where = f"{spec.logical_id}.{name}"
            assert definition["type"] == "String", where
            assert definition.get("description"), where
            assert definition.get("allowedPattern"), where
            # interpolationType is a per-parameter property in the SSM schema.
            assert definition.get("interpolationType") == "ENV_VAR", where
            pattern = definition["allowedPattern"]
            assert pattern.startswith("^") and pattern.endswith("$"), where
            if "default" in definition:
                assert _matches(pattern, str(definition["default"])), where


def test_scripts_read_parameters_only_as_double_quoted_env_vars(
    documents: dict[str, cfn.DocumentSpec],
) -> None:
    for spec in documents.values():
        declared = set(spec.content.get("parameters", {}))
        seen: set[str] = set()
        steps = spec.content["mainSteps"]
        assert steps
        for step in steps:
            assert step["action"] == "aws:runShellScript"
            # Short for operator actions; the reconciler may list a large bucket.
            assert 0 < int(step["inputs"]["timeoutSeconds"]) <= 1800
        for script in _scripts(spec):
            assert "{{" not in script
            assert not re.search(r"\beval\b|\bsh -c\b|\bbash -c\b", script)
            for name, text, quoted in _ssm_references(script):
                assert name in declared, f"{spec.logical_id}: {text} is not a declared parameter"
                assert quoted, f"{spec.logical_id}: {text} is not inside double quotes"
                seen.add(name)
        assert seen == declared, f"{spec.logical_id}: parameters never read: {declared - seen}"


def test_quote_scanner_catches_unquoted_references() -> None:
    refs = list(_ssm_references('echo $SSM_Key "$SSM_Key" \'$SSM_Key\' "${SSM_ETag-}"\n'))
    assert [(n, q) for n, _, q in refs] == [("Key", False), ("Key", True), ("ETag", True)]


def test_submit_script_execs_processorctl_with_opt_equals_value(
    documents: dict[str, cfn.DocumentSpec],
) -> None:
    (script,) = _scripts(documents["SubmitDocument"])
    assert (
        'exec processorctl submit --bucket="$SSM_Bucket" --key="$SSM_Key" '
        '--version-id="${SSM_VersionId-}" --etag="${SSM_ETag-}"'
    ) in script
    assert (
        'exec processorctl submit --bucket="$SSM_Bucket" --key-base64="$SSM_KeyBase64" '
        '--version-id="${SSM_VersionId-}" --etag="${SSM_ETag-}"'
    ) in script


# --- the patterns ---------------------------------------------------------------------

KEYS_ACCEPTED = [
    "a.csv",
    "dir/sub/file name.csv",
    "$(touch /tmp/pwned);rm -rf ~ `id` | & > < \"q\" 'q'",
    "-rf",
    "--help",
    "../../etc/passwd",
    "résumé 日本.csv",
    "{" * 2 + " Key " + "}" * 2,
    "k" * 1024,
    "日" * 1024,
    "",  # the default: the key is in KeyBase64 (the script wants exactly one)
]
KEYS_REJECTED = [
    "k" * 1025,
    "a\nb",
    "a.csv\n",
    "a\rb",
    "a\tb",
    "a\x00b",
    "a\x1b[31mred",
    "a\x7fb",
]


@pytest.mark.parametrize("key", KEYS_ACCEPTED, ids=lambda k: repr(k)[:40])
def test_key_pattern_accepts(documents: dict[str, cfn.DocumentSpec], key: str) -> None:
    assert _matches(_patterns(documents)["Key"], key)


@pytest.mark.parametrize("key", KEYS_REJECTED, ids=lambda k: repr(k)[:40])
def test_key_pattern_rejects(documents: dict[str, cfn.DocumentSpec], key: str) -> None:
    assert not _matches(_patterns(documents)["Key"], key)


@pytest.mark.parametrize(
    ("bucket", "ok"),
    [
        ("processor-input", True),
        ("abc", True),
        ("my.bucket.example", True),
        ("a" * 63, True),
        ("Bad_Bucket", False),
        ("a", False),
        ("ab", False),
        ("-x-", False),
        ("a" * 64, False),
        ("bucket-", False),
        ("bucket\n", False),
        ("buck et", False),
    ],
)
def test_bucket_pattern(documents: dict[str, cfn.DocumentSpec], bucket: str, ok: bool) -> None:
    assert _matches(_patterns(documents)["Bucket"], bucket) is ok


@pytest.mark.parametrize(
    ("version_id", "ok"),
    [
        ("", True),
        ("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo", True),
        ("null", True),
        ("v" * 1024, True),
        ("v" * 1025, False),
        ("a b", False),
        ("a;b", False),
        ("a\n", False),
    ],
)
def test_version_id_pattern(
    documents: dict[str, cfn.DocumentSpec], version_id: str, ok: bool
) -> None:
    assert _matches(_patterns(documents)["VersionId"], version_id) is ok


@pytest.mark.parametrize(
    ("etag", "ok"),
    [
        ("", True),
        ("d41d8cd98f00b204e9800998ecf8427e", True),
        ("D41D8CD98F00B204E9800998ECF8427E-12", True),
        ("d41d8cd98f00b204e9800998ecf8427e-10000", True),
        ('"d41d8cd98f00b204e9800998ecf8427e"', False),
        ("d41d8cd98f00b204e9800998ecf8427", False),
        ("d41d8cd98f00b204e9800998ecf8427e-", False),
        ("zz1d8cd98f00b204e9800998ecf8427e", False),
    ],
)
def test_etag_pattern(documents: dict[str, cfn.DocumentSpec], etag: str, ok: bool) -> None:
    assert _matches(_patterns(documents)["ETag"], etag) is ok


# --- the reader -----------------------------------------------------------------------

SHORT_FORMS = """
Resources:
  Thing:
    Type: AWS::Test::Thing
    Properties:
      A: !Ref Other
      B: !Sub "${AWS::StackName}-x"
      C: !GetAtt Other.Arn.Deep
      D: !GetAtt [Other, Arn]
      E: !Join [",", [a, !Ref Other]]
      F: !If [Cond, !Base64 yes, !ImportValue shared]
      G: !Select [0, !Split [",", !FindInMap [M, K, V]]]
      H: !GetAZs ""
      I: !Cidr [!Ref Vpc, 6, 5]
Conditions:
  Cond: !And [!Equals [a, b], !Not [!Condition Other], !Or [!Condition X, !Condition Y]]
"""


def test_short_form_tags_become_long_form(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(SHORT_FORMS, encoding="utf-8")
    template = cfn.load_template(path)
    props = template["Resources"]["Thing"]["Properties"]
    assert props["A"] == {"Ref": "Other"}
    assert props["B"] == {"Fn::Sub": "${AWS::StackName}-x"}
    assert props["C"] == {"Fn::GetAtt": ["Other", "Arn.Deep"]}
    assert props["D"] == {"Fn::GetAtt": ["Other", "Arn"]}
    assert props["E"] == {"Fn::Join": [",", ["a", {"Ref": "Other"}]]}
    assert props["F"] == {"Fn::If": ["Cond", {"Fn::Base64": "yes"}, {"Fn::ImportValue": "shared"}]}
    assert props["G"] == {
        "Fn::Select": [0, {"Fn::Split": [",", {"Fn::FindInMap": ["M", "K", "V"]}]}]
    }
    assert props["H"] == {"Fn::GetAZs": ""}
    assert props["I"] == {"Fn::Cidr": [{"Ref": "Vpc"}, 6, 5]}
    assert template["Conditions"]["Cond"] == {
        "Fn::And": [
            {"Fn::Equals": ["a", "b"]},
            {"Fn::Not": [{"Condition": "Other"}]},
            {"Fn::Or": [{"Condition": "X"}, {"Condition": "Y"}]},
        ]
    }


def test_names_resolve_pseudo_parameters_and_defaults() -> None:
    template = {
        "Resources": {
            "Plain": {"Type": "AWS::SSM::Document", "Properties": {"Name": "fixed", "Content": {}}},
            "Subbed": {
                "Type": "AWS::SSM::Document",
                "Properties": {
                    "Name": {"Fn::Sub": "${AWS::StackName}-${AWS::Region}-d"},
                    "Content": {},
                },
            },
            "Unnamed": {"Type": "AWS::SSM::Document", "Properties": {"Content": {}}},
            "Other": {"Type": "AWS::S3::Bucket"},
        }
    }
    specs = cfn.ssm_documents(template, "stk", region="eu-west-1")
    assert [(s.logical_id, s.name) for s in specs] == [
        ("Plain", "fixed"),
        ("Subbed", "stk-eu-west-1-d"),
        ("Unnamed", "stk-Unnamed"),
    ]
    assert specs[0].document_format == "JSON"


def test_unresolvable_name_is_an_error() -> None:
    template = {
        "Resources": {
            "D": {
                "Type": "AWS::SSM::Document",
                "Properties": {"Name": {"Fn::Sub": "${Env}-d"}, "Content": {}},
            }
        }
    }
    with pytest.raises(ValueError, match="Env"):
        cfn.ssm_documents(template, "stk")


def test_create_documents_sends_content_in_its_format(
    documents: dict[str, cfn.DocumentSpec],
) -> None:
    calls: list[dict[str, Any]] = []

    class FakeSsm:
        def create_document(self, **kwargs: Any) -> None:
            calls.append(kwargs)

    cfn.create_documents(FakeSsm(), documents.values())
    assert [c["Name"] for c in calls] == [
        f"processor-{name}Document"
        for name in ("Submit", "Status", "Retry", "Cancel", "Reconcile", "Drain")
    ]
    for call in calls:
        assert call["DocumentType"] == "Command"
        assert call["DocumentFormat"] == "YAML"
        assert yaml.safe_load(call["Content"])["schemaVersion"] == "2.2"


def test_cfn_lint_passes() -> None:
    api = require_module("cfnlint.api", hint="it is in the test extra: pip install -e '.[test]'")
    matches = api.lint_file(TEMPLATE)
    assert [str(m) for m in matches] == []
